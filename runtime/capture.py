"""One capture thread per camera: read, timestamp, resize, hand over; reconnect on failure.

A camera that fails or disappears is closed and reopened with exponential backoff (capped)
inside its own thread, so the other camera keeps running meanwhile. Frames are handed to
a callback or put into a bounded queue where the oldest frame gives way to the newest:
capture never waits for its consumer.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

from busref.rig_config.schema import CameraConfig
from busref.runtime.sources import FrameSource, SourceError, make_source

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Frame:
    """One captured frame.

    ``t_capture``: seconds on ``time.monotonic()``'s clock when the sensor exposed it (driver
    or grab time minus the camera's ``latency_offset_ms``). ``image``: (H, W) uint8/uint16
    or (H, W, 3) uint8 BGR at the camera's configured size. ``seq`` counts this camera's
    delivered frames from 0, across reconnects.
    """

    camera: str
    seq: int
    t_capture: float
    image: np.ndarray


@dataclass(frozen=True)
class CaptureStats:
    """Counters of one capture thread.

    ``drops``: frames discarded because the consumer's queue was full. ``failures``: times
    the source failed to open, failed to read or ended. ``reconnects``: successful reopens
    after a failure.
    """

    frames: int
    drops: int
    failures: int
    reconnects: int
    connected: bool
    last_error: str | None


FrameSink = Callable[[Frame], None] | queue.Queue


class CaptureThread(threading.Thread):
    """Reads one camera in a daemon thread until :meth:`stop`.

    ``on_frame``: a callable run in this thread for every frame (keep it quick, e.g.
    ``Pairer.add``), or a bounded ``queue.Queue`` (the oldest frame is dropped when full),
    or None for a queue of ``camera.buffer_frames`` frames at :attr:`frames`.
    ``backoff_s``: (first, max) delay between reopen attempts; it doubles per failure and
    resets after a frame is read.
    """

    def __init__(self, name: str, camera: CameraConfig, on_frame: FrameSink | None = None, *,
                 backoff_s: tuple[float, float] = (0.1, 5.0)) -> None:
        super().__init__(name=f"capture-{name}", daemon=True)
        if isinstance(on_frame, queue.Queue) and on_frame.maxsize <= 0:
            raise ValueError("on_frame queue must be bounded (maxsize > 0): capture never waits")
        self.camera_name = name
        self.camera = camera
        self.frames: queue.Queue[Frame] = (on_frame if isinstance(on_frame, queue.Queue)
                                           else queue.Queue(maxsize=camera.buffer_frames))
        self._callback = on_frame if callable(on_frame) and not isinstance(on_frame, queue.Queue) else None
        self._backoff = backoff_s
        self._stop_event = threading.Event()
        self._lock = threading.Lock()
        self._counts = {"frames": 0, "drops": 0, "failures": 0, "reconnects": 0}
        self._connected = False
        self._last_error: str | None = None
        self.source: FrameSource = make_source(camera, self._stop_event)

    # ------------------------------------------------------------------ public

    @property
    def stats(self) -> CaptureStats:
        with self._lock:
            return CaptureStats(**self._counts, connected=self._connected, last_error=self._last_error)

    def stop(self, timeout: float = 1.0) -> None:
        """Ask the thread to end and wait up to ``timeout`` seconds for it."""
        self._stop_event.set()
        if self.is_alive():
            self.join(timeout)
        if self.is_alive():
            log.warning("%s: capture thread still blocked in its source after %.1f s", self.camera_name, timeout)

    # ------------------------------------------------------------------ thread

    def run(self) -> None:
        delay = self._backoff[0]
        opened_before = False
        while not self._stop_event.is_set():
            try:
                self.source.open()
            except Exception as exc:  # any driver/backend error: retry, never kill the daemon
                self._failed(f"open failed: {exc}", delay)
            else:
                if opened_before:
                    self._count("reconnects")
                    log.info("%s: source reopened", self.camera_name)
                opened_before = True
                self._set_connected(True)
                delay, error = self._read_until_failure(delay)
                self.source.close()
                self._set_connected(False)
                if error is not None:
                    self._failed(error, delay)
                else:
                    break  # stopped
            if self._stop_event.wait(delay):
                break
            delay = min(2.0 * delay, self._backoff[1])
        self.source.close()

    def _read_until_failure(self, delay: float) -> tuple[float, str | None]:
        """Read frames until the source fails (returns its error) or the thread is stopped."""
        while not self._stop_event.is_set():
            try:
                ok, image, stamp = self.source.read()
            except SourceError as exc:  # the source says what is wrong (e.g. its file was removed)
                return delay, str(exc)
            except Exception as exc:
                return delay, f"read failed: {exc}"
            if self._stop_event.is_set():
                break
            if not ok or image is None:
                return delay, "source ended or returned no frame"
            if stamp is None:
                stamp = time.monotonic()
            self._deliver(stamp - self.camera.latency_offset_ms / 1000.0, self._sized(image))
            delay = self._backoff[0]  # a working source restarts the backoff from the beginning
        return delay, None

    def _sized(self, image: np.ndarray) -> np.ndarray:
        """The image at the camera's configured size (files and drivers may deliver another)."""
        h, w = image.shape[:2]
        if (w, h) == (self.camera.width, self.camera.height):
            return image
        shrink = w > self.camera.width or h > self.camera.height
        return cv2.resize(image, (self.camera.width, self.camera.height),
                          interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)

    def _deliver(self, t_capture: float, image: np.ndarray) -> None:
        with self._lock:
            seq = self._counts["frames"]  # counts across reconnects: (camera, seq) is unique
            self._counts["frames"] += 1
        frame = Frame(self.camera_name, seq, t_capture, image)
        if self._callback is not None:
            self._callback(frame)
            return
        while True:
            try:
                self.frames.put_nowait(frame)
                return
            except queue.Full:
                try:
                    self.frames.get_nowait()
                    self._count("drops")
                except queue.Empty:
                    pass  # the consumer took one meanwhile

    def _failed(self, error: str, delay: float) -> None:
        with self._lock:
            self._counts["failures"] += 1
            self._last_error = error
        log.warning("%s: %s; retrying in %.2f s", self.camera_name, error, delay)

    def _count(self, name: str) -> None:
        with self._lock:
            self._counts[name] += 1

    def _set_connected(self, value: bool) -> None:
        with self._lock:
            self._connected = value
