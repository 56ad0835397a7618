"""Capture threads on real sources: video files and image folders written here, the synthetic
scene, and sources that end or disappear (reopened with capped backoff)."""

from __future__ import annotations

import itertools
import os
import queue
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest

from busref.rig_config.schema import (
    CameraConfig,
    FolderSource,
    IRCameraConfig,
    Misalignment,
    SyntheticSource,
    V4L2Source,
    VideoSource,
)
from busref.runtime.capture import CaptureThread, Frame
from busref.runtime.pairing import Pairer
from busref.runtime.sources import SourceError, SyntheticCapture, make_source, y16_image
from busref.runtime.synthetic import IRRenderer, RGBRenderer, Scene

FAST_BACKOFF = (0.02, 0.16)


def write_video(path: Path, n: int, size: tuple[int, int] = (64, 48), first: int = 0) -> Path:
    """An MJPG .avi whose frame i is uniformly grey at 10 (first + i) + 5 (survives JPEG exactly enough)."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), 30, size)
    assert writer.isOpened()
    for i in range(first, first + n):
        writer.write(np.full((size[1], size[0], 3), 10 * i + 5, np.uint8))
    writer.release()
    return path


def video_index(frame: Frame) -> int:
    return round((float(frame.image.mean()) - 5) / 10)


def wait_until(condition: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return condition()


class Collector:
    """Thread-safe frame sink for a CaptureThread callback."""

    def __init__(self) -> None:
        self.frames: list[Frame] = []
        self._lock = threading.Lock()

    def __call__(self, frame: Frame) -> None:
        with self._lock:
            self.frames.append(frame)

    def __len__(self) -> int:
        with self._lock:
            return len(self.frames)


def camera(source: object, fps: float = 100, width: int = 64, height: int = 48, ir: bool = False,
           **extra: object) -> CameraConfig:
    cls = IRCameraConfig if ir else CameraConfig
    return cls(source=source, width=width, height=height, fps=fps, **extra)


def test_looping_video_file_is_paced_resized_and_timestamped(tmp_path: Path) -> None:
    path = write_video(tmp_path / "clip.avi", 20)
    got = Collector()
    cam = camera(VideoSource(kind="video", path=path, loop=True), fps=100, width=32, height=24,
                 latency_offset_ms=50)
    thread = CaptureThread("rgb", cam, got, backoff_s=FAST_BACKOFF)
    started = time.monotonic()
    thread.start()
    assert wait_until(lambda: len(got) >= 45, 5.0)
    thread.stop()
    frames = got.frames
    assert all(f.image.shape == (24, 32, 3) for f in frames)  # resized to the configured size
    indices = [video_index(f) for f in frames]
    assert indices[:3] == [0, 1, 2]
    assert all((b - a) % 20 == 1 for a, b in itertools.pairwise(indices))  # loops 19 -> 0
    assert [f.seq for f in frames] == list(range(len(frames)))
    stamps = np.array([f.t_capture for f in frames])
    assert np.all(np.diff(stamps) > 0)
    assert 0.007 < np.median(np.diff(stamps)) < 0.013  # paced at 100 fps, not read flat out
    assert stamps[0] > started - 0.05 - 0.02  # on the monotonic clock, latency offset applied
    assert thread.stats.failures == 0 and thread.stats.reconnects == 0


def test_non_looping_video_that_ends_is_reopened_with_backoff(tmp_path: Path) -> None:
    path = write_video(tmp_path / "short.avi", 8)
    got = Collector()
    thread = CaptureThread("ir", camera(VideoSource(kind="video", path=path, loop=False), fps=200, ir=True),
                           got, backoff_s=FAST_BACKOFF)
    thread.start()
    assert wait_until(lambda: thread.stats.reconnects >= 2 and len(got) >= 10, 5.0)
    thread.stop()
    stats = thread.stats
    assert stats.failures >= 2 and stats.last_error == "source ended or returned no frame"
    assert [video_index(f) for f in got.frames[:10]] == [0, 1, 2, 3, 4, 5, 6, 7, 0, 1]


def test_disappearing_file_is_retried_while_the_other_camera_runs(tmp_path: Path) -> None:
    path = write_video(tmp_path / "cam.avi", 6)
    other = Collector()
    rgb = CaptureThread("rgb", camera(SyntheticSource(kind="synthetic"), fps=50), other)
    ir = CaptureThread("ir", camera(VideoSource(kind="video", path=path, loop=False), fps=100, ir=True),
                       backoff_s=FAST_BACKOFF)
    rgb.start()
    ir.start()
    try:
        assert wait_until(lambda: ir.stats.frames >= 1, 3.0)
        path.unlink()  # the device "disappears": reopening fails until it is back
        assert wait_until(lambda: ir.stats.failures >= 3, 3.0)
        assert "does not exist" in (ir.stats.last_error or "")
        assert not ir.stats.connected
        reconnects, before = ir.stats.reconnects, len(other)
        t0, failures0 = time.monotonic(), ir.stats.failures
        time.sleep(0.8)
        # capped exponential backoff: a handful of attempts, not a busy loop
        attempts = ir.stats.failures - failures0
        assert 2 <= attempts <= 0.8 / FAST_BACKOFF[1] + 3, attempts
        assert len(other) - before >= 0.5 * 50 * (time.monotonic() - t0)  # the other camera kept going
        write_video(path, 6)
        assert wait_until(lambda: ir.stats.reconnects > reconnects, 3.0)
        frames = ir.stats.frames
        assert wait_until(lambda: ir.stats.frames > frames, 2.0)
    finally:
        rgb.stop()
        ir.stop()


def test_a_video_file_replaced_or_removed_mid_run_is_noticed(tmp_path: Path) -> None:
    path = write_video(tmp_path / "cam.avi", 6)  # frames 0..5
    got = Collector()
    thread = CaptureThread("ir", camera(VideoSource(kind="video", path=path), fps=100, ir=True), got,
                           backoff_s=FAST_BACKOFF)
    thread.start()
    try:
        assert wait_until(lambda: len(got) >= 3, 3.0)
        os.replace(write_video(tmp_path / "new.avi", 6, first=20), path)  # mv new.avi cam.avi: frames 20..25
        assert wait_until(lambda: video_index(got.frames[-1]) >= 20, 3.0), "still replaying the replaced file"
        assert thread.stats.connected and thread.stats.failures == 0  # reopened in place, no fault
        path.unlink()
        assert wait_until(lambda: not thread.stats.connected, 3.0), "still replaying a removed file"
        assert thread.stats.last_error in (f"video file {path} was removed or renamed",
                                           f"open failed: video file {path} does not exist")
        write_video(path, 6, first=10)
        frames = len(got)
        assert wait_until(lambda: len(got) > frames and thread.stats.connected, 3.0)
        assert 10 <= video_index(got.frames[-1]) <= 15
    finally:
        thread.stop()


def test_an_image_folder_that_changes_or_vanishes_is_noticed(tmp_path: Path) -> None:
    ir_dir, _ = write_pair_folders(tmp_path, 3)
    got = Collector()
    thread = CaptureThread("ir", camera(FolderSource(kind="folder", path=ir_dir), fps=100, width=50, height=40,
                                        ir=True), got, backoff_s=FAST_BACKOFF)
    thread.start()
    try:
        assert wait_until(lambda: len(got) >= 3, 3.0)
        cv2.imwrite(str(ir_dir / "003.png"), np.full((40, 50), 9000, np.uint16))  # a fourth image
        assert wait_until(lambda: any(int(f.image[0, 0]) == 9000 for f in got.frames[-10:]), 3.0)
        assert thread.stats.failures == 0
        shutil.rmtree(ir_dir)
        assert wait_until(lambda: not thread.stats.connected, 3.0)
        assert str(ir_dir) in (thread.stats.last_error or "")
    finally:
        thread.stop()


def test_missing_v4l2_device_backs_off_and_stops_promptly() -> None:
    cam = camera(V4L2Source(kind="v4l2", device="/dev/video-busref-missing", fourcc="Y16"), fps=30, ir=True)
    thread = CaptureThread("ir", cam, backoff_s=FAST_BACKOFF)
    thread.start()
    assert wait_until(lambda: thread.stats.failures >= 3, 3.0)
    t0 = time.monotonic()
    thread.stop()
    assert time.monotonic() - t0 < 1.0 and not thread.is_alive()
    stats = thread.stats
    assert stats.frames == 0 and stats.reconnects == 0 and not stats.connected
    assert stats.last_error == "open failed: V4L2 device /dev/video-busref-missing does not exist (unplugged?)"
    with pytest.raises(SourceError, match="does not exist"):
        make_source(cam).open()


def test_y16_buffer_becomes_a_uint16_image() -> None:
    counts = np.arange(12, dtype=np.uint16).reshape(3, 4) * 1000 + 7  # 14-bit values, both bytes used
    raw = np.frombuffer(counts.astype("<u2").tobytes() + b"\0\0", np.uint8)[None, :]  # as OpenCV returns it
    np.testing.assert_array_equal(y16_image(raw, 4, 3), counts)
    assert y16_image(counts, 4, 3) is counts
    with pytest.raises(ValueError, match="needs 24 bytes"):
        y16_image(raw[:, :10], 4, 3)


def write_pair_folders(root: Path, n: int) -> tuple[Path, Path]:
    """IR 16-bit PNGs (value 1000 (i + 1)) and RGB 8-bit PNGs (value 20 (i + 1)) with the same names."""
    ir_dir, rgb_dir = root / "ir", root / "rgb"
    ir_dir.mkdir()
    rgb_dir.mkdir()
    for i in range(n):
        cv2.imwrite(str(ir_dir / f"{i:03d}.png"), np.full((40, 50), 1000 * (i + 1), np.uint16))
        cv2.imwrite(str(rgb_dir / f"{i:03d}.png"), np.full((40, 50, 3), 20 * (i + 1), np.uint8))
    (ir_dir / "notes.txt").write_text("not an image")  # ignored: does not match the pattern
    return ir_dir, rgb_dir


def test_image_pair_folders_pair_up_image_for_image(tmp_path: Path) -> None:
    ir_dir, rgb_dir = write_pair_folders(tmp_path, 5)
    pairer = Pairer(max_skew_s=0.005)
    ir = CaptureThread("ir", camera(FolderSource(kind="folder", path=ir_dir), fps=40, width=50, height=40,
                                    ir=True), pairer.add)
    rgb = CaptureThread("rgb", camera(FolderSource(kind="folder", path=rgb_dir), fps=40, width=50, height=40),
                        pairer.add)
    pairs = []
    ir.start()
    rgb.start()
    try:
        while len(pairs) < 12:
            pair = pairer.latest_pair(timeout=2.0)
            assert pair is not None, "no pair from two folder sources"
            pairs.append(pair)
    finally:
        ir.stop()
        rgb.stop()
    for pair in pairs:
        assert pair.ir.image.dtype == np.uint16 and pair.ir.image.ndim == 2  # 16-bit kept as is
        assert pair.rgb.image.dtype == np.uint8 and pair.rgb.image.shape == (40, 50, 3)
        assert int(pair.ir.image[0, 0]) // 1000 == int(pair.rgb.image[0, 0, 0]) // 20  # same image name
        assert pair.skew_s == 0.0  # replayed on the shared clock
    shown = [int(p.ir.image[0, 0]) // 1000 for p in pairs]
    assert set(shown) == {1, 2, 3, 4, 5}  # loops over the folder


def test_non_looping_folder_ends_and_empty_folder_fails(tmp_path: Path) -> None:
    ir_dir, _ = write_pair_folders(tmp_path, 3)
    got = Collector()
    thread = CaptureThread("ir", camera(FolderSource(kind="folder", path=ir_dir, loop=False), fps=100,
                                        width=50, height=40, ir=True), got, backoff_s=FAST_BACKOFF)
    thread.start()
    assert wait_until(lambda: len(got) >= 4, 3.0)
    thread.stop()
    assert thread.stats.failures >= 1 and thread.stats.reconnects >= 1
    assert [int(f.image[0, 0]) for f in got.frames[:4]] == [1000, 2000, 3000, 1000]
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SourceError, match="no files matching"):
        make_source(camera(FolderSource(kind="folder", path=empty))).open()


def test_unread_queue_stays_bounded_and_keeps_the_newest() -> None:
    cam = camera(SyntheticSource(kind="synthetic"), fps=100, buffer_frames=2)
    thread = CaptureThread("rgb", cam)
    thread.start()
    assert wait_until(lambda: thread.stats.frames >= 20, 3.0)
    thread.stop()
    stats = thread.stats
    assert thread.frames.qsize() <= 2
    assert stats.drops >= stats.frames - 2 - 1
    newest = [thread.frames.get_nowait().seq for _ in range(thread.frames.qsize())]
    assert newest[-1] == stats.frames - 1
    with pytest.raises(ValueError, match="bounded"):
        CaptureThread("rgb", cam, queue.Queue())


# --------------------------------------------------------------------------- synthetic scene


def test_synthetic_sources_render_both_modalities_from_one_scene() -> None:
    ir = make_source(camera(SyntheticSource(kind="synthetic", seed=3), width=160, height=128, ir=True))
    rgb = make_source(camera(SyntheticSource(kind="synthetic", seed=3), width=160, height=128))
    for src in (ir, rgb):
        src.open()
    ok_i, ir_img, t_i = ir.read()
    ok_r, rgb_img, t_r = rgb.read()
    assert ok_i and ok_r and t_i is not None and t_r is not None
    assert ir_img.dtype == np.uint16 and ir_img.shape == (128, 160)
    assert 4000 < ir_img.min() and ir_img.max() < 2**14  # 14-bit radiometric counts
    assert rgb_img.dtype == np.uint8 and rgb_img.shape == (128, 160, 3)
    assert isinstance(ir, SyntheticCapture) and isinstance(ir.renderer, IRRenderer)
    assert ir.renderer.misalignment.rotation_deg == 2.0


def _object_mask_and_contrast(width: int, height: int, t: float) -> tuple[np.ndarray, float, float]:
    """Pixels covered by moving objects, and their contrast (mean change / image std) per modality."""
    with_objects, empty = Scene(0, 5, 40), Scene(0, 0, 40)
    ir = IRRenderer(with_objects, width, height, Misalignment()).render_aligned(t).astype(float)
    ir0 = IRRenderer(empty, width, height, Misalignment()).render_aligned(t).astype(float)
    rgb = cv2.cvtColor(RGBRenderer(with_objects, width, height).render(t), cv2.COLOR_BGR2GRAY).astype(float)
    rgb0 = cv2.cvtColor(RGBRenderer(empty, width, height).render(t), cv2.COLOR_BGR2GRAY).astype(float)
    mask = np.abs(ir - ir0) > 200
    return mask, float(np.abs(ir - ir0)[mask].mean() / ir0.std()), float(np.abs(rgb - rgb0)[mask].mean() / rgb0.std())


def test_synthetic_objects_are_warm_in_ir_faint_in_rgb_and_move() -> None:
    mask0, ir_contrast, rgb_contrast = _object_mask_and_contrast(320, 256, 0.0)
    assert mask0.mean() > 0.005
    assert ir_contrast > 2.0 and rgb_contrast < 0.6
    mask1, _, _ = _object_mask_and_contrast(320, 256, 2.0)
    assert (mask0 & mask1).sum() < 0.5 * mask0.sum()  # objects moved in 2 s

    def edges(img: np.ndarray) -> float:
        img = (img - img.min()) / (img.max() - img.min())
        return float(np.hypot(cv2.Sobel(img, cv2.CV_64F, 1, 0), cv2.Sobel(img, cv2.CV_64F, 0, 1)).mean())

    empty = Scene(0, 0, 40)
    rgb = cv2.cvtColor(RGBRenderer(empty, 320, 256).render(0), cv2.COLOR_BGR2GRAY).astype(float)
    ir = IRRenderer(empty, 320, 256, None).render(0).astype(float)
    assert edges(rgb) > 3 * edges(ir) > 0  # the street's texture is strong in RGB, weak (but there) in IR


def test_a_synthetic_nir_camera_sees_the_visible_street_with_a_dark_sky() -> None:
    """NIR is reflected light: its edges agree with the visible image's much better than the
    thermal rendering's do, the sky is darker than the facades, and people are only a little brighter."""
    from busref.orientation import agreement

    empty, busy = Scene(0, 0, 40), Scene(0, 5, 40)
    rgb = cv2.cvtColor(RGBRenderer(empty, 320, 256).render(0), cv2.COLOR_BGR2GRAY)

    def render(modality: str, scene: Scene = empty) -> np.ndarray:
        img = IRRenderer(scene, 320, 256, None, modality=modality).render_aligned(0.0).astype(np.float32)
        return (img - img.min()) / (img.max() - img.min())

    nir, thermal = render("nir"), render("thermal")
    assert agreement(rgb, nir) > 2 * agreement(rgb, thermal) > 0
    assert nir[:20].mean() < 0.5 * nir[60:100].mean()  # the sky above the roofs against the facades
    raw = IRRenderer(busy, 320, 256, None, modality="nir").render_aligned(0.0).astype(float)
    plain = IRRenderer(empty, 320, 256, None, modality="nir").render_aligned(0.0).astype(float)
    change = np.abs(raw - plain)
    assert 0 < change.max() < 2 * plain.std()  # thermal people stand out by more than 2 std (above)


def test_synthetic_misalignment_is_known_exactly() -> None:
    scene = Scene(1, 6, 40)
    renderer = IRRenderer(scene, 640, 512, Misalignment())
    mis = renderer.misalignment
    grid = mis.ref_to_ir_grid()
    identity = np.stack(np.meshgrid(np.arange(640), np.arange(512)), axis=-1)
    shift = np.linalg.norm(grid - identity, axis=-1)
    assert 8 < np.median(shift) < 30  # ~2 deg, 3 % and 12 px at 640x512: real work for registration
    inner = (slice(24, -24), slice(24, -24))
    for t in (0.3, 4.0):
        observed, aligned = renderer.render(t).astype(float), renderer.render_aligned(t).astype(float)
        registered = cv2.remap(observed, grid[..., 0], grid[..., 1], cv2.INTER_LINEAR)
        err = np.abs(registered - aligned)[inner]
        unregistered = np.abs(observed - aligned)[inner]
        assert np.median(err) < 30  # sensor noise is ~20 +- 6 counts
        assert err.mean() < 0.35 * unregistered.mean()
    # The homography (the calibration's answer) inverts the affine part.
    h = mis.ir_to_rgb_homography(640, 512)
    p = np.array([[100.0, 50.0], [500.0, 400.0]])
    ir_pts = cv2.transform(p[None], mis.affine_ref_to_ir())[0]
    back = cv2.perspectiveTransform(ir_pts[None], h)[0]
    np.testing.assert_allclose(back, p, atol=1e-6)


def test_synthetic_pair_renders_within_budget() -> None:
    scene = Scene(0, 5, 40)
    ir, rgb = IRRenderer(scene, 640, 512, Misalignment()), RGBRenderer(scene, 640, 512)
    times = []
    for k in range(40):
        t0 = time.perf_counter()
        ir.render(k / 30, k)
        rgb.render(k / 30, k)
        times.append(time.perf_counter() - t0)
    # ~2 ms on an idle core (the design target is 3 ms; `busref bench` measures the daemon's real
    # budget). This only catches a renderer that became an order of magnitude slower: with the
    # machine shared by training jobs the median was 6.7 ms.
    assert np.median(times) < 0.025
