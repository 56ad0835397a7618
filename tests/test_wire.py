from __future__ import annotations

import json

import numpy as np
import pytest

from busref.client.wire import FrameHeader, Registration, StatusHeader, WireError, decode_message
from busref.runtime.wire import encode_frame, encode_status


def header(encoding: str = "bgr8", width: int = 32, height: int = 24, **overrides: object) -> FrameHeader:
    fields: dict[str, object] = {
        "seq": 7,
        "rig_id": "test",
        "t_capture_ir": 100.0,
        "t_capture_rgb": 100.01,
        "t_publish": 100.05,
        "skew_ms": -10.0,
        "width": width,
        "height": height,
        "encoding": encoding,
        "registration": Registration(affine=[[1, 0, 2], [0, 1, -3]], source="fine", age_s=0.1, confidence=0.9),
        "model_id": "reg+fuse",
        **overrides,
    }
    return FrameHeader(**fields)


def gradient(height: int = 24, width: int = 32, channels: int = 3) -> np.ndarray:
    y, x = np.mgrid[0:height, 0:width]
    base = ((x * 7 + y * 3) % 256).astype(np.uint8)
    return base if channels == 1 else np.stack([base, 255 - base, base // 2], axis=-1)


def roundtrip(parts: list) -> tuple:
    return decode_message([bytes(p) for p in parts])


@pytest.mark.parametrize("encoding,channels", [("bgr8", 3), ("mono8", 1)])
def test_raw_roundtrip_is_exact(encoding: str, channels: int) -> None:
    image = gradient(channels=channels)
    topic, got_header, got = roundtrip(encode_frame("fused", header(encoding), image))
    assert topic == "fused"
    assert got_header == header(encoding)
    np.testing.assert_array_equal(got, image)


def test_jpeg_roundtrip_is_close() -> None:
    image = gradient()
    parts = encode_frame("registered_ir", header("jpeg"), image, jpeg_quality=95)
    assert bytes(parts[2])[:2] == b"\xff\xd8"
    topic, _, got = roundtrip(parts)
    assert topic == "registered_ir" and got.shape == image.shape
    assert np.abs(got.astype(int) - image).mean() < 8  # lossy, but the same picture (random: ~85)


def test_header_is_plain_json_for_other_languages() -> None:
    doc = json.loads(bytes(encode_frame("fused", header(), gradient())[1]))
    assert doc["schema"] == "busref.frame/1"
    assert doc["registration"]["affine"] == [[1, 0, 2], [0, 1, -3]]
    assert {"seq", "rig_id", "t_capture_ir", "t_capture_rgb", "t_publish", "skew_ms", "width", "height",
            "encoding", "model_id"} <= doc.keys()


def test_status_roundtrip() -> None:
    status = StatusHeader(rig_id="r", t_publish=1.0, uptime_s=2.0, state="running",
                          counters={"frames": 3}, gauges={"fps": 29.5})
    topic, got, image = roundtrip(encode_status(status))
    assert (topic, got, image) == ("status", status, None)


def test_encoder_refuses_mismatched_image() -> None:
    with pytest.raises(ValueError, match="header says 32x24"):
        encode_frame("fused", header(), gradient(height=10))
    with pytest.raises(ValueError, match="mono8 needs 1 channel"):
        encode_frame("fused", header("mono8"), gradient())
    with pytest.raises(ValueError, match="not an image topic"):
        encode_frame("status", header(), gradient())


def good_parts() -> list[bytes]:
    return [bytes(p) for p in encode_frame("fused", header(), gradient())]


@pytest.mark.parametrize(
    "mutate,message",
    [
        (lambda p: p[:2], "2 part"),
        (lambda p: [b"video", *p[1:]], "unknown topic 'video'"),
        (lambda p: [p[0], b"[1, 2]", p[2]], "not a JSON object"),
        (lambda p: [p[0], p[1].replace(b"busref.frame/1", b"busref.frame/2"), p[2]], "schema 'busref.frame/2'"),
        (lambda p: [p[0], p[1].replace(b'"width":32', b'"width":-1'), p[2]], "width"),
        (lambda p: [p[0], p[1].replace(b'"seq":7,', b""), p[2]], "seq: field required"),
        (lambda p: [p[0], p[1].replace(b'"encoding":"bgr8"', b'"encoding":"rgb565"'), p[2]], "encoding"),
        (lambda p: [p[0], p[1], p[2][:-5]], "expected 2304"),
        (lambda p: [p[0], p[1].replace(b'"encoding":"bgr8"', b'"encoding":"jpeg"'), p[2]], "not a decodable JPEG"),
    ],
)
def test_decoder_names_the_problem(mutate, message: str) -> None:
    with pytest.raises(WireError, match=message):
        decode_message(mutate(good_parts()))


def test_jpeg_of_the_wrong_size_is_refused() -> None:
    parts = encode_frame("fused", header("jpeg"), gradient())
    wrong = [parts[0], bytes(parts[1]).replace(b'"width":32', b'"width":40'), parts[2]]
    with pytest.raises(WireError, match="JPEG is 32x24, header says 40x24"):
        decode_message(wrong)


def test_registration_needs_exactly_one_matrix() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        Registration(source="held", age_s=0, confidence=0.5)
    with pytest.raises(ValueError, match="affine must be 2x3"):
        Registration(affine=[[1, 0, 0]], source="held", age_s=0, confidence=0.5)


def test_registration_from_matrix_picks_the_form() -> None:
    affine = np.array([[1.0, 0.1, 5.0], [0.0, 0.9, -2.0], [0.0, 0.0, 1.0]])
    reg = Registration.from_matrix(affine, source="coarse", age_s=0.2, confidence=1.3)
    assert reg.homography is None and reg.confidence == 1.0
    np.testing.assert_allclose(reg.matrix(), affine)
    projective = affine.copy()
    projective[2, 0] = 1e-4
    reg = Registration.from_matrix(2 * projective, source="fine", age_s=0.0, confidence=0.5)
    assert reg.affine is None
    np.testing.assert_allclose(reg.matrix(), projective, atol=1e-9)
