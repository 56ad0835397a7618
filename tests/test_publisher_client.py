"""Publisher and Subscriber over real ZeroMQ sockets (tcp loopback and ipc)."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np
import pytest
import zmq.auth

from busref.client import CurveClientKeys, SilenceError, Subscriber
from busref.client.wire import FrameHeader, Registration, StatusHeader
from busref.runtime.publisher import CurveServerKeys, Publisher, PublisherError

TCP_ANY = "tcp://127.0.0.1:*"


def frame(seq: int, width: int = 32, height: int = 24, encoding: str = "bgr8") -> tuple[FrameHeader, np.ndarray]:
    now = time.time()
    header = FrameHeader(
        seq=seq, rig_id="t", t_capture_ir=now, t_capture_rgb=now, t_publish=now, skew_ms=0.0,
        width=width, height=height, encoding=encoding,
        registration=Registration(affine=[[1, 0, 0], [0, 1, 0]], source="fine", age_s=0.0, confidence=1.0),
        model_id="m",
    )
    image = np.full((height, width, 3), seq % 256, dtype=np.uint8)
    return header, image


def first_frame(pub: Publisher, sub: Subscriber, timeout_s: float = 5.0) -> tuple[int, np.ndarray]:
    """Publish until the subscriber has joined (ZeroMQ's slow joiner) and return what it got."""
    deadline = time.monotonic() + timeout_s
    seq = 0
    while time.monotonic() < deadline:
        pub.publish_frame("fused", *frame(seq))
        seq += 1
        got = sub.recv(timeout_s=0.02)
        if got is not None:
            return got[1].seq, got[2]
    raise AssertionError("the subscriber never received a frame")


@pytest.fixture
def ipc_endpoint(tmp_path: Path) -> str:
    return f"ipc://{tmp_path}/busref.sock"


@pytest.mark.parametrize("transport", ["tcp", "ipc"])
def test_frames_arrive_in_order(transport: str, ipc_endpoint: str) -> None:
    endpoint = TCP_ANY if transport == "tcp" else ipc_endpoint
    with Publisher([endpoint], hwm=100) as pub, Subscriber(pub.endpoints, rcvhwm=100) as sub:
        start, image = first_frame(pub, sub)
        assert image.shape == (24, 32, 3) and int(image[0, 0, 0]) == start % 256
        for seq in range(start + 1, start + 21):
            pub.publish_frame("fused", *frame(seq))
        got = [sub.recv(timeout_s=2.0) for _ in range(20)]
        assert [g[1].seq for g in got] == list(range(start + 1, start + 21))
        assert all(int(g[2][5, 5, 1]) == g[1].seq % 256 for g in got)
        assert sub.stats.lost == 0 and pub.dropped == 0


def test_topics_filter(ipc_endpoint: str) -> None:
    with Publisher([ipc_endpoint]) as pub, Subscriber(pub.endpoints, topics=("registered_ir",)) as sub:
        deadline = time.monotonic() + 5
        got = None
        while got is None and time.monotonic() < deadline:
            pub.publish_frame("fused", *frame(1))
            pub.publish_frame("registered_ir", *frame(2))
            got = sub.recv(timeout_s=0.02)
        assert got is not None and got[0] == "registered_ir" and got[1].seq == 2


def test_stalled_subscriber_does_not_slow_the_publisher(ipc_endpoint: str) -> None:
    header, image = frame(0, width=640, height=512)
    with Publisher([ipc_endpoint], hwm=2) as pub, Subscriber(pub.endpoints, rcvhwm=2) as stalled:
        first_frame(pub, stalled)  # connected; from now on it reads nothing
        started = time.perf_counter()
        for seq in range(1, 501):  # ~500 MB offered to a reader that takes nothing
            pub.publish_frame("fused", dataclasses.replace(header, seq=seq), image)
        elapsed = time.perf_counter() - started
        assert elapsed < 3.0, f"500 sends took {elapsed:.2f} s: the publisher waited for the stalled reader"
        # The reader wakes up: it gets a few queued frames, then sees the gap.
        for _ in range(10):
            if stalled.recv(timeout_s=0.2) is None:
                break
        pub.publish_frame("fused", dataclasses.replace(header, seq=501), image)
        while (got := stalled.recv(timeout_s=1.0)) is not None and got[1].seq != 501:
            pass
        assert got is not None and stalled.stats.lost > 400


def test_latest_only_keeps_the_newest(ipc_endpoint: str) -> None:
    with Publisher([ipc_endpoint], hwm=1000) as pub, \
            Subscriber(pub.endpoints, latest_only=True, rcvhwm=1000) as sub:
        start, _ = first_frame(pub, sub)
        for seq in range(start + 1, start + 51):
            pub.publish_frame("fused", *frame(seq))
        time.sleep(0.3)  # the drain thread empties the socket meanwhile
        got = sub.recv(timeout_s=1.0)
        assert got is not None and got[1].seq == start + 50
        assert sub.stats.superseded >= 45
        assert sub.recv(timeout_s=0.1) is None


def test_status_is_a_heartbeat_not_a_frame(ipc_endpoint: str) -> None:
    status = StatusHeader(rig_id="t", t_publish=time.time(), uptime_s=1.0, state="running")
    with Publisher([ipc_endpoint]) as pub, Subscriber(pub.endpoints, silence_timeout_s=0.5) as sub:
        deadline = time.monotonic() + 5
        while sub.last_status is None and time.monotonic() < deadline:
            pub.publish_status(status)
            assert sub.recv(timeout_s=0.05) is None  # status is never returned as a frame
        assert sub.last_status == status and sub.seconds_since_last_message < 0.5


def test_silence_is_reported(ipc_endpoint: str) -> None:
    started = time.monotonic()
    with Subscriber(ipc_endpoint, silence_timeout_s=0.3) as sub, pytest.raises(SilenceError, match="nothing from"):
        next(iter(sub))
    assert time.monotonic() - started < 2.0


def test_subscriber_reconnects_after_publisher_restart() -> None:
    with Publisher([TCP_ANY]) as pub:
        endpoint = pub.endpoints[0]
        sub = Subscriber(endpoint)
        first_frame(pub, sub)
    try:
        with Publisher([endpoint]) as pub2:
            seq, _ = first_frame(pub2, sub)
            assert seq >= 0
    finally:
        sub.close()


def test_invalid_messages_are_counted_and_skipped(ipc_endpoint: str) -> None:
    with Publisher([ipc_endpoint], hwm=10) as pub, Subscriber(pub.endpoints) as sub:
        first_frame(pub, sub)
        pub.send([b"fused", b'{"schema": "other/9"}', b""])
        pub.publish_frame("fused", *frame(99))
        got = sub.recv(timeout_s=2.0)
        assert got is not None and got[1].seq == 99 and sub.stats.invalid == 1


def test_bind_errors_are_clear(tmp_path: Path) -> None:
    with pytest.raises(PublisherError, match="does not exist"):
        Publisher([f"ipc://{tmp_path}/missing/dir.sock"])
    with Publisher([TCP_ANY]) as pub, pytest.raises(PublisherError, match="cannot bind"):
        Publisher(pub.endpoints)


@pytest.fixture
def curve_keys(tmp_path: Path) -> dict[str, Path]:
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    server_pub, server_secret = zmq.auth.create_certificates(tmp_path, "server")
    _, client_secret = zmq.auth.create_certificates(allowed, "client")
    stranger_dir = tmp_path / "stranger"
    stranger_dir.mkdir()
    _, stranger_secret = zmq.auth.create_certificates(stranger_dir, "stranger")
    return {"server_pub": Path(server_pub), "server_secret": Path(server_secret), "allowed": allowed,
            "client_secret": Path(client_secret), "stranger_secret": Path(stranger_secret)}


def test_curve_admits_only_allowed_clients(curve_keys: dict[str, Path]) -> None:
    server = CurveServerKeys.from_files(curve_keys["server_secret"], curve_keys["allowed"])
    allowed = CurveClientKeys.from_files(curve_keys["server_pub"], curve_keys["client_secret"])
    stranger = CurveClientKeys.from_files(curve_keys["server_pub"], curve_keys["stranger_secret"])
    with Publisher([TCP_ANY], curve=server) as pub, \
            Subscriber(pub.endpoints, curve=allowed) as good, \
            Subscriber(pub.endpoints, curve=stranger) as bad, \
            Subscriber(pub.endpoints) as plain:
        first_frame(pub, good)
        for seq in range(1000, 1020):
            pub.publish_frame("fused", *frame(seq))
            time.sleep(0.01)
        assert bad.recv(timeout_s=0.2) is None and plain.recv(timeout_s=0.01) is None
        assert bad.stats.received == plain.stats.received == 0
        assert good.recv(timeout_s=1.0) is not None


def test_curve_key_errors_are_clear(curve_keys: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(PublisherError, match="holds no secret key"):
        CurveServerKeys.from_files(curve_keys["server_pub"], curve_keys["allowed"])
    with pytest.raises(PublisherError, match="cannot read"):
        CurveServerKeys.from_files(tmp_path / "nope.key_secret", curve_keys["allowed"])
    with pytest.raises(PublisherError, match="not a folder"):
        CurveServerKeys.from_files(curve_keys["server_secret"], tmp_path / "nope")
