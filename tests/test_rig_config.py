"""Rig files: the shipped ones validate, bad ones give every error with field path and line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import zmq
import zmq.auth

from busref.rig_config import DEMO_RIG, RigConfig, RigConfigError, default_model_path, load_rig, parse_rig, weights_dir
from busref.rig_config.resources import WEIGHTS_ENV
from busref.rig_config.schema import (
    DEFAULT_REGISTRATION_RATE_HZ,
    FixedWindow,
    IRCameraConfig,
    PercentileWindow,
    SyntheticSource,
    V4L2Source,
    same_view_homography,
)
from busref.runtime import exit_codes
from busref.runtime.cli.config import check_files
from busref.runtime.cli.keys import generate_keys

REPO = Path(__file__).resolve().parent.parent
SHIPPED = sorted((REPO / "rig_config").glob("*.yaml"))

MINIMAL = """\
rig_id: t
cameras:
  ir: {source: {kind: synthetic}, width: 64, height: 48, fps: 30}
  rgb: {source: {kind: synthetic}, width: 64, height: 48, fps: 30}
"""


def write(tmp_path: Path, text: str, name: str = "rig.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def errors_of(tmp_path: Path, text: str) -> list[str]:
    with pytest.raises(RigConfigError) as info:
        load_rig(write(tmp_path, text))
    assert str(tmp_path / "rig.yaml") in str(info.value)
    return info.value.errors


def test_shipped_rigs_pass_the_cli_check() -> None:
    assert {p.name for p in SHIPPED} == {"demo.yaml", "demo_nir.yaml", "usb_thermal_rgb.yaml", "jetson_csi.yaml",
                                         "nir_rgb.yaml"}
    proc = subprocess.run([sys.executable, "-m", "busref", "config", "check", *map(str, SHIPPED)],
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count(": OK") == 5


def test_the_nir_rig_declares_its_modality() -> None:
    assert load_rig(REPO / "rig_config" / "nir_rgb.yaml").cameras.ir.modality == "nir"
    nir = load_rig(REPO / "rig_config" / "demo_nir.yaml")
    assert nir.cameras.ir.modality == "nir"
    # Graphs the file does not name are the shipped ones of its modality; a named one stays.
    assert nir.inference.register_model == default_model_path("register", "nir") == weights_dir() / "nir/register.onnx"
    assert nir.inference.track_model == weights_dir() / "nir/track.onnx" and nir.inference.track_model.is_file()
    text = (REPO / "rig_config" / "demo_nir.yaml").read_text().replace(
        "inference:\n", "inference:\n  fuse_model: /models/mine.onnx\n")
    named = parse_rig(text, REPO / "rig_config" / "x.yaml").inference
    assert named.fuse_model == Path("/models/mine.onnx") and named.register_model == nir.inference.register_model
    assert load_rig(REPO / "rig_config" / "demo.yaml").cameras.ir.modality == "thermal"  # the default


def test_demo_rig_is_synthetic_jpeg_on_loopback_with_shipped_models() -> None:
    rig = load_rig(DEMO_RIG)
    assert isinstance(rig.cameras.ir.source, SyntheticSource)
    assert isinstance(rig.cameras.rgb.source, SyntheticSource)
    for cam in (rig.cameras.ir, rig.cameras.rgb):
        assert (cam.width, cam.height, cam.fps) == (640, 512, 30)
    assert rig.publisher.endpoints == ["tcp://127.0.0.1:5555"]
    assert rig.publisher.encoding == "jpeg"
    assert rig.inference.register_model == weights_dir() / "register.onnx"
    assert rig.inference.fuse_model == default_model_path("fuse.onnx") == weights_dir() / "fuse.onnx"
    assert rig.inference.register_model.is_file() and rig.inference.fuse_model.is_file()
    assert rig.inference.track_model == weights_dir() / "track.onnx" and rig.inference.track_model.is_file()


def test_busref_weights_replaces_the_shipped_folder_and_the_rig_file_overrides_both(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(WEIGHTS_ENV, str(tmp_path / "mine"))
    assert weights_dir() == tmp_path / "mine"
    assert load_rig(DEMO_RIG).inference.fuse_model == tmp_path / "mine" / "fuse.onnx"
    rig = tmp_path / "rig.yaml"
    rig.write_text(DEMO_RIG.read_text().replace("inference:\n", "inference:\n  fuse_model: graphs/fuse.onnx\n", 1))
    loaded = load_rig(rig).inference
    assert loaded.fuse_model == tmp_path / "graphs" / "fuse.onnx"
    assert loaded.register_model == tmp_path / "mine" / "register.onnx"


def test_usb_rig_requests_y16_from_the_thermal_camera() -> None:
    rig = load_rig(REPO / "rig_config" / "usb_thermal_rgb.yaml")
    assert isinstance(rig.cameras.ir.source, V4L2Source)
    assert rig.cameras.ir.source.fourcc == "Y16 "  # padded to the V4L2 spelling
    assert isinstance(rig.cameras.ir.thermal, PercentileWindow)
    assert rig.logging.json_ is True
    assert rig.model_dump()["logging"] == {"level": "INFO", "json": True}


def test_bad_file_lists_every_error_with_path_and_line(tmp_path: Path) -> None:
    errors = errors_of(tmp_path, """\
rig_id: "has space"
cameras:
  ir:
    source:
      kind: v4l2
      fourcc: Y16
    width: 640
    height: -1
    fps: 30
    thermal: {mode: fixed, low: 100, high: 50}
  rgb:
    source: {kind: video, path: x.avi, lop: true}
    width: 640
    height: 480
    fps: 30
registration:
  size: [250, 320]
publisher:
  endpoints: ["tcp://127.0.0.1:5555", "udp://x"]
  hwm: 2
  hwm: 3
""")
    assert errors == [
        "line 1: rig_id: String should match pattern '^[A-Za-z0-9_.\\-]+$'",
        "line 5: cameras.ir.source.device: Field required",
        "line 8: cameras.ir.height: Input should be greater than 0",
        "line 10: cameras.ir.thermal: high (50.0) must be above low (100.0)",
        "line 12: cameras.rgb.source.lop: Extra inputs are not permitted",
        "line 17: registration.size: both entries of (H, W) must be multiples of 8, got [250, 320]",
        "line 19: publisher.endpoints: not a tcp://HOST:PORT or ipc://PATH endpoint: udp://x",
        "line 21: publisher.hwm: key given more than once",
    ]


def test_yaml_syntax_error_names_the_line(tmp_path: Path) -> None:
    errors = errors_of(tmp_path, "rig_id: x\ncameras:\n  ir: [1, 2\n  rgb: {}\n")
    assert len(errors) == 1
    assert errors[0].startswith("line 4, column 6: YAML syntax error")


@pytest.mark.parametrize(("text", "expected"), [
    ("", "the file must be a YAML mapping"),
    ("- a\n- b\n", "the file must be a YAML mapping"),
    (MINIMAL.replace("{kind: synthetic}, width: 64", "{kind: webcam}, width: 64", 1),
     "line 3: cameras.ir.source: Input tag 'webcam' found using 'kind' does not match"),
    (MINIMAL.replace("{kind: synthetic}", "{path: a.avi}", 1), "line 3: cameras.ir.source: missing 'kind'"),
    (MINIMAL + "registration: {rate_hz: 5, every_n_pairs: 2}\n",
     "line 5: registration: set either every_n_pairs or rate_hz, not both"),
    (MINIMAL + "publisher: {curve: {enabled: true}}\n",
     "line 5: publisher.curve: curve.enabled needs server_secret_key_file and allowed_clients_dir"),
    (MINIMAL + "registration: {prior_homography: [[1, 0, 0], [2, 0, 0], [0, 0, 1]]}\n",
     "line 5: registration: prior_homography is singular"),
    (MINIMAL.replace("rgb: {source: {kind: synthetic}", "rgb: {source: {kind: synthetic, seed: 7}"),
     "line 3: cameras: both synthetic cameras render one scene: source.seed differs (ir 0, rgb 7)"),
    (MINIMAL.replace("rgb: {source: {kind: synthetic}", "rgb: {source: {kind: synthetic, misalignment: {}}"),
     "line 3: cameras: rgb.source.misalignment: only the IR camera is misaligned"),
    (MINIMAL.replace("width: 64, height: 48, fps: 30}\n  rgb", "width: 64, height: 48, fps: 30, "
                     "thermal: {mode: percentile, low_pct: 90, high_pct: 10}}\n  rgb"),
     "line 3: cameras.ir.thermal: high_pct (10.0) must be above low_pct (90.0)"),
    (MINIMAL.replace("rgb: {source: {kind: synthetic}, width: 64, height: 48, fps: 30}",
                     "rgb: {source: {kind: synthetic}, width: 64, height: 48, fps: 30, thermal: {mode: x}}"),
     "line 4: cameras.rgb.thermal: Extra inputs are not permitted"),
    (MINIMAL.replace("width: 64, height: 48, fps: 30}\n  rgb",
                     "width: 64, height: 48, fps: 30, modality: swir}\n  rgb"),
     "line 3: cameras.ir.modality: Input should be 'thermal' or 'nir'"),
])
def test_single_clear_error(tmp_path: Path, text: str, expected: str) -> None:
    errors = errors_of(tmp_path, text)
    assert len(errors) == 1, errors
    assert errors[0].startswith(expected), errors[0]


def test_unreadable_file_is_a_rig_error(tmp_path: Path) -> None:
    with pytest.raises(RigConfigError, match="cannot read the file"):
        load_rig(tmp_path / "absent.yaml")


def test_relative_paths_resolve_against_the_rig_folder(tmp_path: Path) -> None:
    (tmp_path / "rigs").mkdir()
    path = write(tmp_path / "rigs", MINIMAL.replace("{kind: synthetic}", "{kind: video, path: clips/ir.avi}", 1) + """\
inference: {register_model: ../models/r.onnx, fuse_model: /abs/f.onnx}
publisher: {curve: {enabled: true, server_secret_key_file: keys/s.key_secret, allowed_clients_dir: keys/ok}}
""")
    rig = load_rig(path)
    assert rig.cameras.ir.source.path == tmp_path / "rigs" / "clips" / "ir.avi"
    assert rig.inference.register_model == tmp_path / "models" / "r.onnx"
    assert rig.inference.fuse_model == Path("/abs/f.onnx")
    assert rig.publisher.curve.server_secret_key_file == tmp_path / "rigs" / "keys" / "s.key_secret"


def test_defaults_and_cadence(tmp_path: Path) -> None:
    rig = parse_rig(MINIMAL, tmp_path / "m.yaml")
    assert rig.registration.rate_hz == DEFAULT_REGISTRATION_RATE_HZ and rig.registration.every_n_pairs is None
    assert rig.registration.size is None  # the register graph's own, filled in by the daemon
    assert rig.registration.prior_homography is None
    assert rig.publisher.hwm == 2 and rig.metrics.port == 0
    assert isinstance(rig.cameras.ir, IRCameraConfig)
    every = parse_rig(MINIMAL + "registration: {every_n_pairs: 3}\n", tmp_path / "m.yaml").registration
    assert (every.every_n_pairs, every.rate_hz) == (3, None)
    fixed = parse_rig(MINIMAL.replace("fps: 30}", "fps: 30, thermal: {mode: fixed, low: 7000, high: 9000}}", 1),
                      tmp_path / "m.yaml")
    assert fixed.cameras.ir.thermal == FixedWindow(mode="fixed", low=7000, high=9000)


IDENTITY = ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0))


def test_unset_prior_is_the_identity_for_equal_sizes(tmp_path: Path) -> None:
    assert parse_rig(MINIMAL, tmp_path / "m.yaml").prior_homography == IDENTITY
    explicit_null = parse_rig(MINIMAL + "registration: {prior_homography: null}\n", tmp_path / "m.yaml")
    assert explicit_null.prior_homography == IDENTITY


def test_unset_prior_stretches_the_ir_image_onto_the_rgb_image(tmp_path: Path) -> None:
    text = MINIMAL.replace("width: 64, height: 48", "width: 640, height: 512", 1)
    text = text.replace("width: 64, height: 48", "width: 1280, height: 720", 1)
    rig = parse_rig(text, tmp_path / "m.yaml")
    sx, sy = 1280 / 640, 720 / 512
    assert rig.prior_homography == ((sx, 0.0, 0.5 * sx - 0.5), (0.0, sy, 0.5 * sy - 0.5), (0.0, 0.0, 1.0))
    # Pixel-centre convention: the IR image's edges land on the RGB image's edges.
    h = rig.prior_homography
    for x_ir, x_rgb in ((-0.5, -0.5), (639.5, 1279.5), (319.5, 639.5)):
        assert h[0][0] * x_ir + h[0][2] == pytest.approx(x_rgb)
    assert h[1][1] * 511.5 + h[1][2] == pytest.approx(719.5)
    # The shipped USB rig is such a pair of cameras with its prior left unset.
    assert load_rig(REPO / "rig_config" / "usb_thermal_rgb.yaml").prior_homography == h
    assert same_view_homography((640, 512), (1280, 720)) == h


def test_an_explicit_prior_wins(tmp_path: Path) -> None:
    text = MINIMAL.replace("width: 64, height: 48", "width: 32, height: 24", 1)
    prior = ((1.0, 0.0, 4.0), (0.0, 1.0, -2.0), (0.0, 0.0, 1.0))
    rig = parse_rig(text + f"registration: {{prior_homography: {[list(r) for r in prior]}}}\n", tmp_path / "m.yaml")
    assert rig.prior_homography == rig.registration.prior_homography == prior


def test_config_is_frozen(tmp_path: Path) -> None:
    rig = parse_rig(MINIMAL, tmp_path / "m.yaml")
    with pytest.raises(ValueError, match="frozen"):
        rig.rig_id = "other"


def test_check_files_and_schema(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = write(tmp_path, MINIMAL, "good.yaml")
    bad = write(tmp_path, MINIMAL.replace("fps: 30", "fps: 0", 1), "bad.yaml")
    assert check_files([good]) == 0
    assert check_files([good, bad]) == exit_codes.BAD_CONFIG
    out, err = capsys.readouterr()
    assert f"{good}: OK" in out
    assert f"{bad}: 1 error in rig file" in err and "line 3: cameras.ir.fps: Input should be greater than 0" in err
    schema = RigConfig.model_json_schema()
    assert set(schema["required"]) == {"rig_id", "cameras"}
    assert schema["additionalProperties"] is False
    assert json.loads(json.dumps(schema)) == schema


def test_keys_generate_writes_a_usable_curve_pair(tmp_path: Path) -> None:
    server_pub, server_sec = generate_keys(tmp_path, "server")
    client_pub, client_sec = generate_keys(tmp_path / "clients", "cam1")
    assert client_pub == tmp_path / "clients" / "cam1.key"
    assert os.stat(server_sec).st_mode & 0o777 == 0o600
    with pytest.raises(FileExistsError):
        generate_keys(tmp_path, "server")
    s_public, s_secret = zmq.auth.load_certificate(server_sec)
    c_public, c_secret = zmq.auth.load_certificate(client_sec)
    assert zmq.auth.load_certificate(server_pub) == (s_public, None)
    # A CURVE handshake only completes when each side's secret key matches its public key.
    ctx = zmq.Context.instance()
    server, client = ctx.socket(zmq.PAIR), ctx.socket(zmq.PAIR)
    try:
        server.curve_server, server.curve_secretkey, server.curve_publickey = True, s_secret, s_public
        port = server.bind_to_random_port("tcp://127.0.0.1")
        client.curve_serverkey, client.curve_publickey, client.curve_secretkey = s_public, c_public, c_secret
        client.connect(f"tcp://127.0.0.1:{port}")
        client.send(b"hello")
        assert server.poll(5000), "no message over CURVE: the generated keys do not form valid pairs"
        assert server.recv() == b"hello"
    finally:
        server.close(0)
        client.close(0)


def test_result_files_record_paths_without_the_machines_folders(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from busref.rig_config.resources import recorded_path, weight_file

    monkeypatch.chdir(REPO)
    assert recorded_path(weight_file("busref.pt")) == "weights/busref.pt"
    monkeypatch.chdir(tmp_path)
    assert recorded_path(tmp_path / "runs" / "mine.pt") == "runs/mine.pt"
    assert recorded_path(weight_file("busref.pt")) == "busref/weights/busref.pt"
    assert recorded_path(DEMO_RIG) == "busref/rig_config/demo.yaml"
