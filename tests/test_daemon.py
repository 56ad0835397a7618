"""End to end: the daemon on the demo rig (tiny real ONNX graphs), real sockets, real processes."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import yaml
import zmq.auth
from rigs import REPO, busref, demo_rig, free_port, take, write_graphs
from tiny_graphs import write_register

from busref.client import CurveClientKeys, Subscriber
from busref.rig_config import DEMO_RIG, load_rig
from busref.runtime import exit_codes
from busref.runtime.daemon import Daemon


@pytest.fixture(scope="module")
def graphs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_graphs(tmp_path_factory.mktemp("graphs"))


@pytest.fixture
def running(tmp_path: Path, graphs: dict[str, Path]):
    """A started in-process daemon on the demo rig (raw frames + registered IR, metrics on)."""
    rig = demo_rig(tmp_path, graphs, publisher={"encoding": "raw", "publish_registered_ir": True})
    daemon = Daemon(load_rig(rig), metrics_port=free_port())
    daemon.start()
    yield daemon
    daemon.stop()


def test_publishes_valid_sensible_frames_on_tcp_and_ipc(running: Daemon) -> None:
    tcp, ipc = running.publisher.endpoints
    assert tcp.startswith("tcp://") and ipc.startswith("ipc://")
    for endpoint in (tcp, ipc):
        with Subscriber(endpoint, topics=("fused", "registered_ir"), rcvhwm=100) as sub:
            frames = take(sub, 12)
        before = time.time()
        for topic, header, image in frames:
            assert header.rig_id == "demo" and (header.width, header.height) == (640, 512)
            assert header.encoding == ("bgr8" if topic == "fused" else "mono8")
            assert header.registration.source == "fine" and header.registration.affine is not None
            assert header.t_capture_rgb <= header.t_publish <= before
            assert abs(header.skew_ms) <= 20 and header.model_id.startswith("tiny-register")
            assert image.std() > 5  # a scene, not a blank frame
        by_seq: dict[int, dict[str, np.ndarray]] = {}
        for topic, header, image in frames:
            by_seq.setdefault(header.seq, {})[topic] = image
        pairs = [v for v in by_seq.values() if len(v) == 2]
        assert pairs, "no fused frame arrived together with its registered IR"
        times: dict[int, set[tuple[float, float]]] = {}
        for _, header, _ in frames:  # one pair, one seq: the two images share their capture times
            times.setdefault(header.seq, set()).add((header.t_capture_ir, header.t_capture_rgb))
        assert all(len(t) == 1 for t in times.values())
        for pair in pairs:
            # the tiny fuse graph is max(vis, ir): the fused luminance is never darker than the IR
            fused_y = cv2.cvtColor(pair["fused"], cv2.COLOR_BGR2YCrCb)[:, :, 0].astype(int)
            assert np.mean(fused_y >= pair["registered_ir"].astype(int) - 3) > 0.99
            assert np.abs(pair["fused"][:, :, 0].astype(int) - pair["fused"][:, :, 2]).mean() > 1  # colour


def test_metrics_and_status(running: Daemon) -> None:
    with Subscriber(running.publisher.endpoints[1]) as sub:
        take(sub, 1)
        deadline = time.monotonic() + 3

        def published(s: object) -> bool:  # a 1 Hz status sent before the first frame counts none
            return s is not None and s.counters.get("frames_published_total", 0) > 0

        while not published(sub.last_status) and time.monotonic() < deadline:
            sub.recv(timeout_s=0.1)
    status = sub.last_status
    assert status is not None and status.state in ("running", "starting") and status.message == ""
    docs = (REPO / "docs" / "runtime.md").read_text()
    undocumented = [key for key in (*status.counters, *status.gauges) if f"`{key}`" not in docs]
    assert not undocumented, f"status keys missing from docs/runtime.md: {undocumented}"
    assert status.counters["curve_refused_total"] == 0
    assert status.counters["frames_published_total"] > 0 and "registration_age_seconds" in status.gauges
    assert status.backends["fuse"]["backend"] == "onnxruntime"
    # On the CPU the frame graph is not even loaded: cv2.remap + the fuse graph, said so.
    assert status.backends["per_frame"]["path"] == "cpu" and "frame" not in status.backends
    text = urllib.request.urlopen(f"http://127.0.0.1:{running.metrics.port}/metrics", timeout=5).read().decode()
    assert 'busref_stage_seconds_bucket{stage="fuse",le="+Inf"}' in text
    assert "busref_fps " in text and 'busref_capture_frames_total{camera="ir"}' in text


def test_a_stalled_subscriber_does_not_slow_the_daemon(running: Daemon) -> None:
    ipc = running.publisher.endpoints[1]
    with Subscriber(ipc, rcvhwm=1) as stalled:
        take(stalled, 1)  # joined; it reads nothing from now on while ~1 MB frames keep coming
        published, started = running.pipeline.counters.published, time.monotonic()
        time.sleep(1.5)
        rate = (running.pipeline.counters.published - published) / (time.monotonic() - started)
        assert rate >= 24, f"published {rate:.1f} fps while a subscriber was stalled (cameras: 30)"
        with Subscriber(ipc, rcvhwm=100) as reader:
            _, header, _ = take(reader, 3)[-1]
            assert time.time() - header.t_capture_rgb < 0.5  # a new reader gets current frames
        take(stalled, 10)  # what was queued for it, then current frames again
        assert stalled.stats.lost > 20  # what it missed shows as seq gaps


def test_hog_example_detects_on_the_stream_or_says_what_to_install(running: Daemon) -> None:
    proc = subprocess.run(
        [sys.executable, str(REPO / "examples" / "hog_detector.py"), running.publisher.endpoints[1],
         "--seconds", "1", "--scale", "0.5"],
        cwd=REPO, env={**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])},
        capture_output=True, text=True, timeout=60)
    if hasattr(cv2, "HOGDescriptor"):  # the example sees the same OpenCV as this test
        assert proc.returncode == 0, proc.stderr
        lines = [json.loads(line) for line in proc.stdout.splitlines()]
        assert lines and all(isinstance(line["people"], list) and line["seq"] >= 0 for line in lines)
    else:  # e.g. OpenCV 5 without the contrib modules
        assert proc.returncode == 1 and proc.stdout == ""
        assert proc.stderr.strip().count("\n") == 0, proc.stderr  # one line, no traceback
        assert "pip install opencv-contrib-python" in proc.stderr and "OpenCV 4.x" in proc.stderr


def test_curve_admits_only_the_allowed_client(tmp_path: Path, graphs: dict[str, Path]) -> None:
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    server_pub, server_secret = zmq.auth.create_certificates(tmp_path, "server")
    _, client_secret = zmq.auth.create_certificates(allowed, "client")
    _, stranger_secret = zmq.auth.create_certificates(tmp_path, "stranger")
    curve = {"enabled": True, "server_secret_key_file": server_secret, "allowed_clients_dir": str(allowed)}
    rig = demo_rig(tmp_path, graphs, publisher={"curve": curve})
    daemon = Daemon(load_rig(rig))
    daemon.start()
    try:
        tcp = daemon.publisher.endpoints[0]
        good = CurveClientKeys.from_files(server_pub, client_secret)
        bad = CurveClientKeys.from_files(server_pub, stranger_secret)
        with Subscriber(tcp, curve=bad) as stranger, Subscriber(tcp) as plain, \
                Subscriber(tcp, curve=good) as friend:
            take(friend, 3)
            assert stranger.recv(timeout_s=0.5) is None and plain.recv(timeout_s=0.1) is None
            assert stranger.stats.received == plain.stats.received == 0
            assert stranger.last_status is None  # not even the heartbeat
    finally:
        daemon.stop()


def test_busref_run_publishes_and_stops_cleanly_on_sigterm(tmp_path: Path, graphs: dict[str, Path]) -> None:
    rig = demo_rig(tmp_path, graphs)
    endpoints = load_rig(rig).publisher.endpoints
    proc = busref("run", "--rig", str(rig), "--log-json")
    try:
        with Subscriber(endpoints[1]) as sub:
            frames = take(sub, 5, timeout_s=30)
        assert all(h.encoding == "jpeg" and img.shape == (512, 640, 3) for _, h, img in frames)
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=10)
        assert time.monotonic() - started < 2.0
    finally:
        proc.kill()
    assert proc.returncode == exit_codes.OK, stderr
    assert '"msg": "received SIGTERM, stopping"' in stderr and "Traceback" not in stderr
    assert not Path(endpoints[1].removeprefix("ipc://")).exists()  # ipc socket removed
    with socket.socket() as s:  # tcp port released
        s.bind(("127.0.0.1", int(endpoints[0].rsplit(":", 1)[1])))


@pytest.mark.parametrize(
    "edit,code,message",
    [
        (lambda d: d["pairing"].update(max_skew_ms=-5), exit_codes.BAD_CONFIG,
         "pairing.max_skew_ms: Input should be greater than 0"),
        (lambda d: d["inference"].update(fuse_model="/nonexistent/fuse.onnx"), exit_codes.MISSING_MODEL,
         "fuse model does not exist"),
        (lambda d: d["cameras"]["rgb"].update(source={"kind": "v4l2", "device": "/dev/video-none"}),
         # (the synthetic IR camera may be slower than 0.5 s on a loaded machine: then it is listed first)
         exit_codes.NO_CAMERA, "rgb: open failed: V4L2 device /dev/video-none does not exist"),
    ],
)
def test_startup_failures_give_one_clear_error_and_their_exit_code(
    edit: Any, code: int, message: str, tmp_path: Path, graphs: dict[str, Path]
) -> None:
    rig = demo_rig(tmp_path, graphs)
    data = yaml.safe_load(rig.read_text())
    edit(data)
    rig.write_text(yaml.safe_dump(data))
    proc = busref("run", "--rig", str(rig), "--camera-timeout", "0.5")
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == code, stderr
    assert message in stderr and "Traceback" not in stderr
    assert sum("ERROR" in line for line in stderr.splitlines()) == 1


def test_busy_port_is_exit_code_5(tmp_path: Path, graphs: dict[str, Path]) -> None:
    rig = demo_rig(tmp_path, graphs)
    port = int(load_rig(rig).publisher.endpoints[0].rsplit(":", 1)[1])
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))
        s.listen()
        proc = busref("run", "--rig", str(rig))
        _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == exit_codes.BIND_FAILED, stderr
    assert "cannot bind tcp://127.0.0.1" in stderr


def cli_args(module: Any, *argv: str) -> Any:
    import argparse

    parser = argparse.ArgumentParser()
    module.add_arguments(parser)
    return parser.parse_args(list(argv))


def test_watch_saves_frames_video_and_contact_sheet(running: Daemon, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    from busref.runtime.cli import watch

    args = cli_args(watch, running.publisher.endpoints[1], "--seconds", "1.5", "--save-dir", str(tmp_path / "f"),
                    "--video", str(tmp_path / "clip.avi"), "--contact-sheet", str(tmp_path / "sheet.jpg"),
                    "--sheet-frames", "6")
    assert watch.run(args) == exit_codes.OK
    out = capsys.readouterr().out
    assert "fps" in out and "capture->receive p50" in out
    saved = sorted((tmp_path / "f").glob("*.jpg"))
    assert len(saved) >= 20 and cv2.imread(str(saved[0])).shape == (512, 640, 3)
    sheet = cv2.imread(str(tmp_path / "sheet.jpg"))
    assert sheet is not None and sheet.shape[1] == 4 * 320 and sheet.shape[0] == 2 * 256
    video = cv2.VideoCapture(str(tmp_path / "clip.avi"))
    assert video.get(cv2.CAP_PROP_FRAME_COUNT) == len(saved)


def test_watch_reports_no_data(tmp_path: Path) -> None:
    from busref.runtime.cli import watch

    args = cli_args(watch, f"ipc://{tmp_path}/nobody.sock", "--seconds", "0.5")
    assert watch.run(args) == exit_codes.NO_DATA


@pytest.mark.slow
def test_bench_writes_json(tmp_path: Path, graphs: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    from busref.runtime.cli import bench

    # The tiny graphs register in milliseconds: ask for more than the shipped rig files' 2 Hz.
    rig = demo_rig(tmp_path, graphs, registration={"rate_hz": 6})
    args = cli_args(bench, "--rig", str(rig), "--seconds", "1.5", "--warmup", "0.5", "--json", str(tmp_path / "b.json"))
    assert bench.run(args) == exit_codes.OK
    results = json.loads((tmp_path / "b.json").read_text())
    assert results["fps"] > 20 and results["received_fps"] > 20
    assert results["stages_ms"]["fuse"]["n"] > 20 and results["registration_hz"] > 3
    assert results["capture_to_publish_ms"]["p99"] < 200
    assert "targets" in capsys.readouterr().out


def test_calibrate_writes_the_corrected_prior(tmp_path: Path, graphs: dict[str, Path]) -> None:
    """One pass on the demo rig (2 degrees, scale 1.03, (12, -8) px): the prior written moves the
    frame most of the way to the synthetic truth, and the rig's other entries stay as they were.
    (tests/test_calibrate.py checks the accuracy and the convergence on a larger misalignment.)"""
    from busref.runtime.cli import calibrate
    from busref.runtime.registration.geometry import corner_displacement
    from busref.runtime.synthetic import IRMisalignment

    rig = demo_rig(tmp_path, graphs)
    out = tmp_path / "calibrated.yaml"
    args = cli_args(calibrate, "--rig", str(rig), "--pairs", "2", "--interval", "0.05", "--max-passes", "1",
                    "--out", str(out))
    assert calibrate.run(args) == exit_codes.OK
    calibrated, original = load_rig(out), load_rig(rig)
    ir = original.cameras.ir
    truth = IRMisalignment.from_config(ir.source.misalignment, ir.width, ir.height).ir_to_rgb_homography(640, 512)
    size = (640, 512)
    before = corner_displacement(np.asarray(original.prior_homography), truth, size)
    after = corner_displacement(np.asarray(calibrated.prior_homography), truth, size)
    assert after < 0.2 * before
    assert calibrated.inference.register_model == original.inference.register_model  # paths kept (absolute)


def test_a_rig_of_another_ir_modality_than_the_graphs_is_refused_naming_the_field(
        tmp_path: Path, graphs: dict[str, Path]) -> None:
    from busref.runtime.daemon import StartupError, open_graph

    rig = load_rig(demo_rig(tmp_path, graphs))
    nir = rig.model_copy(update={"cameras": rig.cameras.model_copy(update={
        "ir": rig.cameras.ir.model_copy(update={"modality": "nir"})})})
    assert open_graph(rig, "register").metadata.modalities == ["thermal"]
    refused = r"trained for thermal IR, but the rig's cameras.ir.modality is 'nir'"
    with pytest.raises(StartupError, match=refused) as err:
        open_graph(nir, "register")
    assert err.value.exit_code == exit_codes.BAD_MODEL


@pytest.mark.parametrize("rig", ["demo.yaml", "demo_nir.yaml"])
def test_the_shipped_graphs_run_on_the_demo_rigs(tmp_path: Path, rig: str) -> None:
    from busref.rig_config import default_model_path, rig_file

    if not (default_model_path("register").is_file() and default_model_path("fuse").is_file()):
        pytest.skip("weights/register.onnx and weights/fuse.onnx are not there (export them first)")
    daemon = Daemon(load_rig(rig_file(rig)), endpoints=[f"ipc://{tmp_path}/shipped.sock"])
    daemon.start()
    try:
        with Subscriber(daemon.publisher.endpoints[0]) as sub:
            frames = take(sub, 3, timeout_s=20)
    finally:
        daemon.stop()
    meta = daemon.backends["register"].metadata
    assert all(h.model_id == f"{meta.model_id}+{daemon.backends['fuse'].metadata.model_id}" for _, h, _ in frames)
    assert all(img.shape == (512, 640, 3) and img.std() > 5 for _, _, img in frames)


@pytest.mark.slow
def test_bench_reports_the_registration_error_against_the_synthetic_truth(tmp_path: Path, graphs: dict[str, Path]
                                                                           ) -> None:
    from busref.runtime.cli import bench
    from busref.runtime.registration.geometry import pixels_to_theta
    from busref.runtime.synthetic import IRMisalignment

    config = load_rig(DEMO_RIG)
    ir = config.cameras.ir
    affine = np.vstack([IRMisalignment.from_config(ir.source.misalignment, ir.width, ir.height).affine_ref_to_ir(),
                        [0.0, 0.0, 1.0]])
    size = tuple(config.registration.size)
    errors = {}
    for name, correction in (("identity", np.eye(3)), ("truth", affine)):
        register = write_register(tmp_path / f"{name}.onnx", pixels_to_theta(correction, (640, 512), size), size)
        folder = tmp_path / name
        folder.mkdir()
        rig = demo_rig(folder, {**graphs, "register": register})
        out = folder / "b.json"
        args = cli_args(bench, "--rig", str(rig), "--seconds", "1.0", "--warmup", "0.5", "--json", str(out))
        assert bench.run(args) == exit_codes.OK
        errors[name] = json.loads(out.read_text())["registration_epe_px"]
    # The demo's misalignment is 17 px away from no registration; its affine part alone leaves only
    # the elastic term (2 px amplitude).
    assert errors["identity"]["mean"] > 15 and errors["truth"]["mean"] < 2.0
    assert not errors["truth"]["diverged"] and len(errors["truth"]["samples"]) >= 2
