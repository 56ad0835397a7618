"""The engine file format (header + plan), its refusal of broken files, and the platform check."""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import pytest
from tiny_graphs import metadata, write_fuse

from busref.conventions import file_sha256
from busref.runtime.artifact import ArtifactError, ArtifactMetadata
from busref.runtime.backends.base import BackendUnavailable
from busref.runtime.backends.onnxruntime import OnnxRuntimeBackend
from busref.runtime.backends.select import open_backend
from busref.runtime.engine_header import (
    MAGIC,
    EngineHeader,
    EngineTensor,
    Platform,
    bytes_sha256,
    decode_engine,
    encode_engine,
    header_platform,
    mismatch_message,
    platform_mismatches,
    read_engine,
    write_engine,
)

HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None
PLAN = bytes(range(256)) * 40  # stands in for a serialized TensorRT plan: the format does not parse it
ORIN = Platform("10.3.0", "12.6", "Orin", "8.7")


def make_header(plan: bytes = PLAN, graph: str = "fuse", **overrides: object) -> EngineHeader:
    image = [1, 1, -1, -1]
    fields: dict[str, object] = {
        "tensorrt_version": ORIN.tensorrt_version, "cuda_version": ORIN.cuda_version, "gpu_name": ORIN.gpu_name,
        "compute_capability": ORIN.compute_capability, "onnx_sha256": "a" * 64, "precision": "fp16",
        "inputs": [EngineTensor(name=n, shape=image, min=[1, 1, 128, 160], opt=[1, 1, 512, 640],
                                max=[1, 1, 1080, 1920]) for n in ("vis", "ir")],
        "outputs": [EngineTensor(name="fused", shape=image)] if graph == "fuse" else
                   [EngineTensor(name="theta", shape=[1, 2, 3]), EngineTensor(name="grid", shape=[1, 64, 80, 2])],
        "metadata": ArtifactMetadata.from_json(metadata(graph, registration_size=(64, 80) if graph == "register"
                                                        else None)),
        "plan_size": len(plan), "plan_sha256": bytes_sha256(plan),
    }
    fields.update(overrides)
    return EngineHeader(**fields)


def test_round_trip_through_a_file(tmp_path: Path) -> None:
    header = make_header()
    path = tmp_path / "fuse.engine"
    write_engine(path, header, PLAN)
    got_header, got_plan = read_engine(path)
    assert got_header == header
    assert got_plan == PLAN
    assert path.read_bytes().startswith(MAGIC)
    assert not list(tmp_path.glob(".*tmp")), "the temp file of the atomic write is left behind"
    # The nested metadata keeps its 'schema' key and validates on the way back.
    assert got_header.metadata.schema_ == header.metadata.schema_
    assert got_header.inputs[0].max == [1, 1, 1080, 1920]


def test_writer_refuses_a_header_that_does_not_describe_the_plan() -> None:
    with pytest.raises(ValueError, match="do not describe this plan"):
        encode_engine(make_header(), PLAN + b"x")


@pytest.mark.parametrize(
    ("mangle", "message"),
    [
        (lambda d: b"\x00" * 8 + d[8:], "not a busref TensorRT engine"),
        (lambda d: PLAN, "not a busref TensorRT engine"),  # a bare plan without our header
        (lambda d: d[:10], "truncated inside the engine header"),
        (lambda d: d[:40], "truncated: the header needs"),
        (lambda d: d[:-100], "truncated or padded"),
        (lambda d: d + b"\x00", "truncated or padded"),
        (lambda d: d[:-1] + bytes([d[-1] ^ 0xFF]), "the plan is corrupt"),
        (lambda d: MAGIC + (1 << 30).to_bytes(4, "little") + d[12:], "implausible"),
        (lambda d: MAGIC + (9).to_bytes(4, "little") + b'{"a": 1}' + b" " + PLAN, "header is not valid"),
        (lambda d: b"", "not a busref TensorRT engine"),
    ],
)
def test_broken_files_are_refused_with_the_reason(tmp_path: Path, mangle, message: str) -> None:
    good = encode_engine(make_header(), PLAN)
    path = tmp_path / "broken.engine"
    path.write_bytes(mangle(good))
    with pytest.raises(ArtifactError, match=message) as info:
        read_engine(path)
    assert str(path) in str(info.value)


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="no such engine file"):
        read_engine(tmp_path / "absent.engine")


def test_decode_accepts_bytes_in_memory() -> None:
    header, plan = decode_engine(encode_engine(make_header(), PLAN), source="memory")
    assert plan == PLAN and header.precision == "fp16"


def test_same_platform_has_no_mismatch() -> None:
    assert platform_mismatches(ORIN, ORIN) == ([], [])


def test_other_tensorrt_version_is_an_error_naming_both() -> None:
    errors, _ = platform_mismatches(ORIN, Platform("10.13.3", "12.6", "Orin", "8.7"))
    assert len(errors) == 1 and "10.3.0" in errors[0] and "10.13.3" in errors[0]


def test_other_gpu_architecture_is_an_error_naming_both_gpus() -> None:
    h200 = Platform("10.3.0", "12.6", "NVIDIA H200", "9.0")
    errors, _ = platform_mismatches(ORIN, h200)
    assert len(errors) == 1 and "Orin" in errors[0] and "NVIDIA H200" in errors[0] and "9.0" in errors[0]
    message = mismatch_message("x.engine", ORIN, h200, errors)
    assert ORIN.describe() in message and h200.describe() in message and "busref export engine" in message


def test_same_architecture_other_model_and_cuda_major_are_warnings() -> None:
    errors, warnings = platform_mismatches(Platform("10.3.0", "12.6", "NVIDIA A10", "8.6"),
                                           Platform("10.3.0", "13.0", "NVIDIA RTX A6000", "8.6"))
    assert errors == []
    assert len(warnings) == 2 and "RTX A6000" in warnings[0] and "13.0" in warnings[1]


def test_header_platform_is_what_the_header_records() -> None:
    assert header_platform(make_header()) == ORIN


def _tensorrt_backend():
    from busref.runtime.backends.tensorrt import EngineMismatch, TensorRTBackend

    return EngineMismatch, TensorRTBackend


def test_backend_refuses_an_engine_of_the_other_graph_before_touching_tensorrt(tmp_path: Path) -> None:
    _, TensorRTBackend = _tensorrt_backend()
    path = tmp_path / "register.engine"
    write_engine(path, make_header(graph="register"), PLAN)
    with pytest.raises(ArtifactError, match="is a 'register' graph, expected a 'fuse' graph"):
        TensorRTBackend(path, graph="fuse")


def test_backend_refuses_a_stale_engine(tmp_path: Path) -> None:
    EngineMismatch, TensorRTBackend = _tensorrt_backend()
    onnx_path = write_fuse(tmp_path / "fuse.onnx")
    engine = tmp_path / "fuse.engine"
    write_engine(engine, make_header(), PLAN)  # recorded onnx sha256 is 'aaa...', not this file's
    with pytest.raises(EngineMismatch, match="stale"):
        TensorRTBackend(engine, graph="fuse", onnx_path=onnx_path)


@pytest.mark.skipif(HAS_TENSORRT, reason="checks the message given where TensorRT is missing")
def test_backend_without_tensorrt_says_so_and_auto_falls_back(tmp_path: Path,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    _, TensorRTBackend = _tensorrt_backend()
    onnx_path = write_fuse(tmp_path / "fuse.onnx")
    engine = tmp_path / "fuse.engine"
    write_engine(engine, make_header(onnx_sha256=file_sha256(onnx_path)), PLAN)  # current, not stale
    with pytest.raises(BackendUnavailable, match="TensorRT is not installed"):
        TensorRTBackend(engine, graph="fuse")
    with caplog.at_level(logging.WARNING):
        backend = open_backend("fuse", onnx_path, engine, choice="auto")
    assert isinstance(backend, OnnxRuntimeBackend)
    assert "TensorRT is not installed" in caplog.text
    with pytest.raises(BackendUnavailable, match="TensorRT is not installed"):
        open_backend("fuse", onnx_path, engine, choice="tensorrt", allow_fallback=False)
