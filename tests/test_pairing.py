"""Pairing by nearest capture time: unequal rates, jitter, out-of-order arrival, latest-pair semantics."""

from __future__ import annotations

import itertools
import threading
import time

import numpy as np
import pytest

from busref.rig_config.schema import CameraConfig, IRCameraConfig, SyntheticSource
from busref.runtime.capture import CaptureThread, Frame
from busref.runtime.pairing import FramePair, Pairer

PIXEL = np.zeros((1, 1), np.uint8)


def stream(camera: str, fps: float, seconds: float, rng: np.random.Generator, jitter_s: float,
           offset_s: float = 0.0) -> list[Frame]:
    n = int(seconds * fps)
    return [Frame(camera, i, i / fps + offset_s + rng.normal(0, jitter_s), PIXEL) for i in range(n)]


def run_pairer(pairer: Pairer, frames: list[Frame], rng: np.random.Generator) -> list[FramePair]:
    """Feed frames in arrival order (capture time + a random transport delay), taking every pair."""
    arrival = sorted(frames, key=lambda f: f.t_capture + rng.uniform(0, 0.012))
    pairs = []
    for frame in arrival:
        pairer.add(frame)
        pair = pairer.latest_pair(timeout=0)
        if pair is not None:
            pairs.append(pair)
    return pairs


@pytest.mark.parametrize(("ir_fps", "rgb_fps", "max_skew_ms"), [
    (30, 60, 20), (9, 30, 20), (30, 30, 17), (30, 9, 20), (60, 25, 25),
])
def test_unequal_rates_with_jitter(ir_fps: float, rgb_fps: float, max_skew_ms: float) -> None:
    rng = np.random.default_rng(int(ir_fps * 100 + rgb_fps))
    seconds = 6.0
    ir = stream("ir", ir_fps, seconds, rng, jitter_s=0.002, offset_s=0.004)
    rgb = stream("rgb", rgb_fps, seconds, rng, jitter_s=0.002)
    pairer = Pairer(max_skew_ms / 1000.0)
    pairs = run_pairer(pairer, ir + rgb, rng)
    slower = min(ir_fps, rgb_fps) * seconds
    # The slower camera's frames almost all find a partner; the faster's surplus is dropped.
    assert len(pairs) >= 0.9 * slower
    skews = np.array([p.skew_s for p in pairs])
    assert np.all(np.abs(skews) <= max_skew_ms / 1000.0)
    np.testing.assert_allclose(skews, [p.ir.t_capture - p.rgb.t_capture for p in pairs])
    assert len({p.ir.seq for p in pairs}) == len(pairs)  # no frame is used twice
    assert len({p.rgb.seq for p in pairs}) == len(pairs)
    assert all(a.ir.t_capture < b.ir.t_capture for a, b in itertools.pairwise(pairs))
    for pair in pairs:  # each RGB partner is the nearest RGB frame to its IR frame
        nearest = min(rgb, key=lambda f: abs(f.t_capture - pair.ir.t_capture))
        assert abs(pair.rgb.t_capture - nearest.t_capture) < 1e-9 or abs(pair.skew_s) <= 0.004 + 0.006
    stats = pairer.stats
    assert stats.pairs == len(pairs) + stats.superseded  # one frame can decide two pairs at once
    # every frame is paired, counted as unmatched, or still waiting (at most `history` per camera)
    assert stats.pairs + stats.unmatched_ir >= len(ir) - pairer.history
    assert stats.pairs + stats.unmatched_rgb >= len(rgb) - pairer.history
    assert stats.unmatched_rgb >= len(rgb) - slower - pairer.history - 1


def test_frames_beyond_max_skew_are_dropped_and_counted() -> None:
    rng = np.random.default_rng(1)
    pairer = Pairer(0.010)
    # The RGB camera runs 16 ms behind the IR camera: no frame has a partner within 10 ms.
    pairs = run_pairer(pairer, stream("ir", 30, 2, rng, 0.0) + stream("rgb", 30, 2, rng, 0.0, 0.016), rng)
    assert pairs == []
    assert pairer.stats.pairs == 0 and pairer.stats.unmatched_ir >= 55


def test_slow_consumer_gets_only_the_newest_pair() -> None:
    pairer = Pairer(0.010)
    for i in range(12):
        pairer.add(Frame("ir", i, i / 30, PIXEL))
        pairer.add(Frame("rgb", i, i / 30 + 0.001, PIXEL))
    pair = pairer.latest_pair(timeout=0)
    assert pair is not None and pair.ir.seq == 11 and pair.rgb.seq == 11
    assert pairer.latest_pair(timeout=0.01) is None  # taken: nothing queued behind it
    assert pairer.stats.superseded == 11 and pairer.stats.pairs == 12


def test_a_pair_is_decided_when_its_second_frame_arrives() -> None:
    """With the cameras 10 ms out of phase a pair must not wait a whole frame period."""
    pairer = Pairer(0.015)
    for i in range(10):
        pairer.add(Frame("ir", i, i / 30, PIXEL))
        assert pairer.latest_pair(timeout=0) is None or i < 3  # needs its RGB partner first
        pairer.add(Frame("rgb", i, i / 30 + 0.010, PIXEL))
        pair = pairer.latest_pair(timeout=0)
        if i >= 3:  # once both frame periods are known
            assert pair is not None and (pair.ir.seq, pair.rgb.seq) == (i, i)


def test_a_stalled_camera_does_not_grow_memory() -> None:
    pairer = Pairer(0.02, history=5)
    for i in range(100):
        pairer.add(Frame("ir", i, i / 30, PIXEL))
    assert pairer.stats.unmatched_ir == 95
    pairer.add(Frame("rgb", 0, 99 / 30, PIXEL))
    pair = pairer.latest_pair(timeout=0)
    assert pair is not None and pair.ir.seq == 99


def test_unknown_camera_and_bad_skew_are_rejected() -> None:
    with pytest.raises(ValueError, match="unknown camera"):
        Pairer(0.02).add(Frame("left", 0, 0.0, PIXEL))
    with pytest.raises(ValueError, match="positive"):
        Pairer(0.0)


def test_live_capture_threads_at_30_and_60_hz_pair_up() -> None:
    """Two real capture threads (synthetic scene) feed one Pairer; a slow consumer sees fresh pairs."""
    size = {"width": 160, "height": 128}
    ir_cam = IRCameraConfig(source=SyntheticSource(kind="synthetic"), fps=30, **size)
    rgb_cam = CameraConfig(source=SyntheticSource(kind="synthetic"), fps=60, **size)
    pairer = Pairer(max_skew_s=0.020)
    threads = [CaptureThread("ir", ir_cam, pairer.add), CaptureThread("rgb", rgb_cam, pairer.add)]
    got: list[tuple[FramePair, float]] = []
    done = threading.Event()

    def slow_consumer() -> None:
        while not done.is_set():
            pair = pairer.latest_pair(timeout=0.5)
            if pair is not None:
                got.append((pair, time.monotonic()))
                time.sleep(0.15)  # a consumer far slower than the cameras

    consumer = threading.Thread(target=slow_consumer)
    for t in [*threads, consumer]:
        t.start()
    time.sleep(1.6)
    done.set()
    for t in threads:
        t.stop()
    consumer.join(2)
    assert len(got) >= 5
    for pair, taken_at in got:
        assert pair.ir.image.dtype == np.uint16 and pair.rgb.image.shape == (128, 160, 3)
        assert abs(pair.skew_s) <= 0.020
        # Never a stale backlog: with one, the age would grow by the consumer's 0.15 s per pair. On a
        # loaded machine the consumer thread woke 0.16 s after a capture, so the bound is 0.3 s.
        assert taken_at - pair.ir.t_capture < 0.3
    stats = pairer.stats
    assert stats.superseded > 0  # pairs came faster than the consumer and were replaced
    assert stats.pairs >= 30  # about 30 pairs/s for ~1.4 s after the renderers are built
    assert threads[1].stats.frames > 1.6 * threads[0].stats.frames
