"""End to end, the faults a rig meets in weeks of running: a source file replaced or removed, a
daemon restart under a connected subscriber, CURVE intruders, configuration errors and signals
during start-up."""

from __future__ import annotations

import logging
import signal
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml
import zmq.auth
from rigs import busref, demo_rig, free_port, take, write_graphs

from busref.client import CurveClientKeys, Subscriber
from busref.rig_config import load_rig
from busref.runtime import exit_codes, publisher
from busref.runtime.daemon import Daemon


@pytest.fixture(scope="module")
def graphs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_graphs(tmp_path_factory.mktemp("graphs"))


def wait_for(condition: Callable[[], bool], timeout_s: float, sub: Subscriber | None = None) -> bool:
    """Poll ``condition``; with ``sub``, keep reading it meanwhile (its status arrives that way)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        if sub is not None:
            sub.recv(timeout_s=0.05)
        else:
            time.sleep(0.05)
    return condition()


def write_clip(path: Path, shade: int) -> Path:
    """A 2-second MJPG clip, 64x48: a horizontal ramp plus ``shade``, so the IR has a range to normalise."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), 30, (64, 48))
    ramp = np.tile(np.linspace(0, 150, 64, dtype=np.uint8), (48, 1))
    for _ in range(60):
        writer.write(cv2.cvtColor(ramp + np.uint8(shade), cv2.COLOR_GRAY2BGR))
    writer.release()
    return path


def test_a_removed_source_file_is_named_in_the_status_and_its_replacement_picked_up(
    tmp_path: Path, graphs: dict[str, Path]
) -> None:
    clip = write_clip(tmp_path / "ir.avi", 0)
    rig = demo_rig(tmp_path, graphs)
    data = yaml.safe_load(rig.read_text())
    data["cameras"]["ir"]["source"] = {"kind": "video", "path": str(clip), "loop": True}
    rig.write_text(yaml.safe_dump(data))
    daemon = Daemon(load_rig(rig))
    daemon.start()
    try:
        with Subscriber(daemon.publisher.endpoints[1], rcvhwm=100, silence_timeout_s=None) as sub:
            take(sub, 3)
            clip.unlink()
            assert wait_for(lambda: sub.last_status is not None and sub.last_status.state == "degraded", 8, sub), \
                "the daemon did not notice that its source file was removed"
            message = sub.last_status.message
            assert message.startswith("ir camera: ") and str(clip) in message, message
            write_clip(tmp_path / "new.avi", 60).rename(clip)
            assert wait_for(lambda: sub.last_status.state == "running" and sub.last_status.message == "", 10, sub)
            take(sub, 3)
            assert daemon.captures["ir"].stats.reconnects >= 1
    finally:
        daemon.stop()


@pytest.mark.slow
def test_a_subscriber_tells_a_daemon_restart_from_a_drop(tmp_path: Path, graphs: dict[str, Path]) -> None:
    rig = load_rig(demo_rig(tmp_path, graphs))
    with Subscriber(rig.publisher.endpoints[1], rcvhwm=100, silence_timeout_s=None) as sub:
        first = Daemon(rig)
        first.start()
        try:
            take(sub, 3)
            assert wait_for(lambda: sub.last_status is not None and sub.last_status.uptime_s > 4, 15, sub)
            before = take(sub, 1)[0][1].seq
        finally:
            first.stop()
        restarted = time.time()
        second = Daemon(rig)
        second.start()
        try:
            deadline = time.monotonic() + 15
            while (header := take(sub, 1, timeout_s=15)[0][1]).t_capture_rgb < restarted:
                assert time.monotonic() < deadline  # frames the first daemon sent before it stopped
            assert wait_for(lambda: sub.stats.restarts == 1, 5, sub)
        finally:
            second.stop()
    # seq starts again at 0 with the new daemon, and the status says why: uptime_s fell
    assert header.seq < before, (before, header.seq)


def test_curve_refusals_are_counted_and_logged_at_a_rate_limit(
    tmp_path: Path, graphs: dict[str, Path], caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(publisher, "REFUSAL_LOG_PERIOD_S", 1.0)
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    server_pub, server_secret = zmq.auth.create_certificates(tmp_path, "server")
    zmq.auth.create_certificates(allowed, "client")
    stranger_pub, stranger_secret = zmq.auth.create_certificates(tmp_path, "stranger")
    stranger_key = zmq.auth.load_certificate(stranger_pub)[0].decode()
    curve = {"enabled": True, "server_secret_key_file": server_secret, "allowed_clients_dir": str(allowed)}
    daemon = Daemon(load_rig(demo_rig(tmp_path, graphs, publisher={"curve": curve})), metrics_port=free_port())
    caplog.set_level(logging.WARNING, logger="busref.runtime.publisher")
    daemon.start()
    try:
        tcp = daemon.publisher.endpoints[0]
        bad = CurveClientKeys.from_files(server_pub, stranger_secret)
        with Subscriber(tcp, curve=bad), Subscriber(tcp), Subscriber(tcp, curve=bad):
            assert wait_for(lambda: daemon.publisher.curve_refused >= 3, 10)
        refusals = [r.getMessage() for r in caplog.records if r.getMessage().startswith("CURVE refused a client")]
        assert len(refusals) == 1, refusals  # three refusals within the period: one line
        assert wait_for(lambda: any("more handshakes" in r.getMessage() for r in caplog.records), 3)
        assert any(stranger_key in r.getMessage() and str(allowed) in r.getMessage() for r in caplog.records)
        count = daemon.publisher.curve_refused
        assert daemon.status().counters["curve_refused_total"] == count
        text = urllib.request.urlopen(f"http://127.0.0.1:{daemon.metrics.port}/metrics", timeout=5).read().decode()
        assert f"busref_curve_refused_total {float(count)!r}" in text
    finally:
        daemon.stop()


@pytest.mark.parametrize("where,endpoint,message", [
    ("command line", "foo://bar", "--endpoint: not a tcp://HOST:PORT or ipc://PATH endpoint: foo://bar"),
    ("command line", "ipc:///nonexistent_dir/x.ipc", "folder /nonexistent_dir does not exist"),
    ("rig file", "ipc:///nonexistent_dir/x.ipc", "folder /nonexistent_dir does not exist"),
    ("rig file", "tcp://127.0.0.1:99999", "not a tcp://HOST:PORT or ipc://PATH endpoint: tcp://127.0.0.1:99999"),
])
def test_a_bad_endpoint_is_a_configuration_error(where: str, endpoint: str, message: str, tmp_path: Path,
                                                  graphs: dict[str, Path]) -> None:
    if where == "rig file":
        rig = demo_rig(tmp_path, graphs, publisher={"endpoints": [endpoint]})
        proc = busref("run", "--rig", str(rig))
    else:
        proc = busref("run", "--rig", str(demo_rig(tmp_path, graphs)), "--endpoint", endpoint)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == exit_codes.BAD_CONFIG, stderr
    assert message in stderr and "Traceback" not in stderr


def _catches(pid: int, sig: signal.Signals) -> bool:
    """Whether process ``pid`` has a handler for ``sig`` (the SigCgt mask of /proc/PID/status)."""
    try:
        with open(f"/proc/{pid}/status") as status:
            mask = next(line for line in status if line.startswith("SigCgt:")).split()[1]
    except FileNotFoundError:
        return False
    return bool(int(mask, 16) & (1 << (sig - 1)))


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_during_start_up_stops_cleanly(sig: signal.Signals, tmp_path: Path, graphs: dict[str, Path]) -> None:
    proc = busref("run", "--rig", str(demo_rig(tmp_path, graphs)))
    try:
        # As soon as busref can catch it: before the daemon's dependencies are even imported.
        assert wait_for(lambda: _catches(proc.pid, signal.SIGTERM), 10)  # Python catches SIGINT from the start
        proc.send_signal(sig)
        _, stderr = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == exit_codes.OK, stderr
    assert f"received {sig.name} during start-up, stopping" in stderr and "Traceback" not in stderr
    assert "running" not in stderr  # stopped before the cameras and the pipeline started


def test_a_registration_size_other_than_the_register_graph_s_names_the_field(tmp_path: Path,
                                                                            graphs: dict[str, Path]) -> None:
    rig = demo_rig(tmp_path, graphs, registration={"size": [96, 128], "rate_hz": 2})
    proc = busref("run", "--rig", str(rig))
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == exit_codes.BAD_CONFIG, stderr
    assert "registration.size is 96x128" in stderr and "set registration.size to [" in stderr
    assert "Traceback" not in stderr


def test_a_rig_without_registration_size_runs_at_the_register_graph_s(tmp_path: Path,
                                                                     graphs: dict[str, Path]) -> None:
    rig = demo_rig(tmp_path, graphs)
    data = yaml.safe_load(rig.read_text())
    del data["registration"]["size"]
    rig.write_text(yaml.safe_dump(data))
    config = load_rig(rig)
    assert config.registration.size is None
    daemon = Daemon(config, endpoints=[f"ipc://{tmp_path}/default_size.sock"])
    daemon.start()
    try:
        with Subscriber(daemon.publisher.endpoints[0]) as sub:
            frames = take(sub, 2)
    finally:
        daemon.stop()
    assert len(frames) == 2
    assert daemon.config.registration.size == tuple(daemon.backends["register"].metadata.registration_size)
