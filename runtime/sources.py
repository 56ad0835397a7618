"""Frame sources: where one camera's frames come from (device, pipeline, file, folder, synthetic).

Every source implements :class:`FrameSource`; :func:`make_source` builds one from a
:class:`~busref.rig_config.schema.CameraConfig`. Sources only read frames; threading, reconnection
with backoff and resizing live in :mod:`busref.runtime.capture`.

Timestamps (seconds on ``time.monotonic()``'s clock):

* V4L2: OpenCV reports the driver's buffer timestamp as ``CAP_PROP_POS_MSEC``. Most UVC and
  CSI drivers stamp buffers with CLOCK_MONOTONIC, the clock of ``time.monotonic()``, but
  OpenCV does not say which clock a driver used, so it is accepted only when it is a
  plausible recent monotonic time; otherwise the source stamps ``time.monotonic()`` right
  after ``grab()`` returns (before decoding), which is what most rigs end up using.
* GStreamer: ``CAP_PROP_POS_MSEC`` is the pipeline's running time, not a capture clock, so
  the grab time is used.
* Files, folders and the synthetic scene are replayed on a clock shared by the process
  (:data:`PLAYBACK_EPOCH`) and stamped with the tick they are shown at; two replayed cameras
  at the same fps tick together, so image-pair folders and the synthetic scene pair up.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np

from busref.rig_config.schema import (
    CameraConfig,
    FolderSource,
    GStreamerSource,
    IRCameraConfig,
    SyntheticSource,
    V4L2Source,
    VideoSource,
)
from busref.runtime.synthetic import IRRenderer, RGBRenderer, Scene

log = logging.getLogger(__name__)

#: Start of the replay clock shared by every replayed source in this process.
PLAYBACK_EPOCH = time.monotonic()

#: A driver timestamp older than this (seconds) is not trusted to be on the monotonic clock.
_DRIVER_TS_MAX_AGE_S = 0.5
#: How often a replayed file or folder is checked for having been replaced or removed (seconds).
#: A stat costs microseconds; once a second is soon enough for a person swapping a file.
WATCH_PERIOD_S = 1.0

#: (ok, image, timestamp): ``image`` is None when ``ok`` is False; ``timestamp`` is a
#: ``time.monotonic()`` time, or None to let the caller stamp the frame on arrival.
ReadResult = tuple[bool, np.ndarray | None, float | None]


class SourceError(RuntimeError):
    """A source could not be opened (missing device or file, pipeline that does not start)."""


class FrameSource(Protocol):
    """One camera's frames. ``open`` raises :class:`SourceError`; ``read`` returns ``(False, None,
    None)`` when the source ended or failed (the caller closes and reopens it)."""

    def open(self) -> None: ...

    def read(self) -> ReadResult: ...

    def close(self) -> None: ...


class Ticker:
    """Paces a replayed source at ``fps`` on the shared replay clock.

    Tick ``k`` is at ``PLAYBACK_EPOCH + k / fps``. A reader that falls behind skips to the
    next tick in the future rather than bursting to catch up, as a live camera would.
    """

    def __init__(self, fps: float, interrupt: threading.Event | None = None) -> None:
        self.fps = fps
        self.interrupt = interrupt or threading.Event()
        self._last = -1

    def wait(self) -> tuple[int, float] | None:
        """Sleep until the next tick; returns ``(k, tick_time)``, or None if interrupted."""
        k = max(math.ceil((time.monotonic() - PLAYBACK_EPOCH) * self.fps), self._last + 1)
        tick = PLAYBACK_EPOCH + k / self.fps
        delay = tick - time.monotonic()
        if delay > 0 and self.interrupt.wait(delay):
            return None
        self._last = k
        return k, tick


class PathWatch:
    """Notices that the file or folder at ``path`` was removed or replaced since :meth:`arm`.

    A file is told apart by its device, inode and modification time: ``mv new.avi cam.avi``
    changes the inode, ``cp new.avi cam.avi`` the modification time, and either means an open
    handle no longer shows what is at the path (a removed file even stays readable through it).
    A folder's modification time changes when an entry is added, removed or renamed.
    """

    def __init__(self, path: Path, what: str, period_s: float = WATCH_PERIOD_S) -> None:
        self.path, self.what, self.period_s = path, what, period_s
        self._identity: tuple[int, int, int] | None = None
        self._next_check = math.inf

    def _stat(self) -> tuple[int, int, int]:
        st = os.stat(self.path)
        return st.st_dev, st.st_ino, st.st_mtime_ns

    def arm(self) -> None:
        """Remember what is at the path now (call right after opening it)."""
        self._identity = self._stat()
        self._next_check = time.monotonic() + self.period_s

    def changed(self, *, now: bool = False) -> bool:
        """True when the path holds something else than at :meth:`arm` (checked at most once per
        period unless ``now``); raises :class:`SourceError` when it is gone."""
        if not now and time.monotonic() < self._next_check:
            return False
        self._next_check = time.monotonic() + self.period_s
        try:
            identity = self._stat()
        except FileNotFoundError:
            raise SourceError(f"{self.what} was removed or renamed") from None
        except OSError as exc:
            raise SourceError(f"{self.what} cannot be read: {exc.strerror or exc}") from None
        return identity != self._identity


class _OpenCVCapture(ABC):
    """Shared open/close of a ``cv2.VideoCapture``; subclasses say how to open and read."""

    def __init__(self, what: str) -> None:
        self.what = what
        self._cap: cv2.VideoCapture | None = None

    @abstractmethod
    def _open_capture(self) -> cv2.VideoCapture: ...

    @abstractmethod
    def read(self) -> ReadResult: ...

    def open(self) -> None:
        cap = self._open_capture()
        if not cap.isOpened():
            cap.release()
            raise SourceError(f"cannot open {self.what}")
        self._cap = cap

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None

    def _grab(self) -> ReadResult:
        """Grab, stamp, then decode: the stamp is taken before the (slow) decode."""
        cap = self._cap
        if cap is None or not cap.grab():
            return False, None, None
        stamp = time.monotonic()
        ok, image = cap.retrieve()
        return (True, image, stamp) if ok and image is not None else (False, None, None)


def y16_image(raw: np.ndarray, width: int, height: int) -> np.ndarray:
    """The (height, width) uint16 image in a raw V4L2 Y16 buffer.

    With ``CAP_PROP_CONVERT_RGB`` off, OpenCV's V4L2 backend returns the driver buffer as a
    (1, bytesused) uint8 array (with it on, it keeps only the high byte of each pixel, as
    8-bit BGR). Y16 is little-endian 16-bit grey. Images already (H, W) uint16 pass through.
    """
    if raw.dtype == np.uint16 and raw.ndim == 2:
        return raw
    data = np.ascontiguousarray(raw).reshape(-1)
    need = width * height * 2
    if data.dtype != np.uint8 or data.size < need:
        raise ValueError(f"a {width}x{height} Y16 frame needs {need} bytes, got {data.size} of {data.dtype}")
    return data[:need].view("<u2").reshape(height, width)


class V4L2Capture(_OpenCVCapture):
    """A V4L2 device (``cv2.CAP_V4L2``); Y16 is delivered unconverted as (H, W) uint16."""

    def __init__(self, config: V4L2Source, camera: CameraConfig) -> None:
        super().__init__(f"V4L2 device {config.device}")
        self.config, self.camera = config, camera

    def _open_capture(self) -> cv2.VideoCapture:
        device = self.config.device
        if isinstance(device, str) and not Path(device).exists():
            raise SourceError(f"V4L2 device {device} does not exist (unplugged?)")
        cap = cv2.VideoCapture(device, cv2.CAP_V4L2)
        if cap.isOpened():
            # FOURCC first: drivers pick the sizes and rates a format offers.
            if self.config.fourcc is not None:
                cap.set(cv2.CAP_PROP_FOURCC, cv2.VideoWriter.fourcc(*self.config.fourcc))
            cap.set(cv2.CAP_PROP_FRAME_WIDTH, self.camera.width)
            cap.set(cv2.CAP_PROP_FRAME_HEIGHT, self.camera.height)
            cap.set(cv2.CAP_PROP_FPS, self.camera.fps)
            if self.config.fourcc == "Y16 ":
                # Without this OpenCV converts the 16-bit counts to 8-bit BGR and loses the radiometry.
                cap.set(cv2.CAP_PROP_CONVERT_RGB, 0)
        return cap

    def read(self) -> ReadResult:
        ok, image, stamp = self._grab()
        cap = self._cap
        if not ok or image is None or cap is None:
            return False, None, None
        if self.config.fourcc == "Y16 ":
            image = y16_image(image, int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)))
        driver = cap.get(cv2.CAP_PROP_POS_MSEC) / 1000.0  # the V4L2 buffer timestamp
        if stamp is not None and 0.0 <= stamp - driver <= _DRIVER_TS_MAX_AGE_S:
            stamp = driver
        return True, image, stamp


class GStreamerCapture(_OpenCVCapture):
    """A GStreamer pipeline ending in appsink (``cv2.CAP_GSTREAMER``)."""

    def __init__(self, config: GStreamerSource) -> None:
        super().__init__(f"GStreamer pipeline '{config.pipeline}'")
        self.config = config

    def _open_capture(self) -> cv2.VideoCapture:
        return cv2.VideoCapture(self.config.pipeline, cv2.CAP_GSTREAMER)

    def read(self) -> ReadResult:
        return self._grab()


class VideoFileCapture(_OpenCVCapture):
    """A video file replayed at the camera's fps, looping when configured.

    The path is watched (:class:`PathWatch`) once a second and at every loop: a replaced file
    is reopened from its first frame (logged); a removed one raises :class:`SourceError`, so the
    capture thread reports it and retries until a file is back.
    """

    def __init__(self, config: VideoSource, fps: float, interrupt: threading.Event | None) -> None:
        super().__init__(f"video file {config.path}")
        self.config = config
        self._ticker = Ticker(fps, interrupt)
        self._watch = PathWatch(config.path, self.what)

    def _open_capture(self) -> cv2.VideoCapture:
        if not self.config.path.is_file():
            raise SourceError(f"video file {self.config.path} does not exist")
        return cv2.VideoCapture(str(self.config.path))

    def open(self) -> None:
        super().open()
        self._watch.arm()

    def read(self) -> ReadResult:
        tick = self._ticker.wait()
        if tick is None or self._cap is None:
            return False, None, None
        if self._watch.changed():
            self._reopen()
        ok, image = self._cap.read()
        if not ok and self.config.loop:
            if self._watch.changed(now=True):
                self._reopen()
            else:
                self._cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
            ok, image = self._cap.read()
        return (True, image, tick[1]) if ok else (False, None, None)

    def _reopen(self) -> None:
        log.info("%s was replaced; reopened from its first frame", self.what)
        self.close()
        self.open()


class FolderCapture:
    """A folder of images replayed in sorted name order at the camera's fps.

    Looping folders show image ``k mod N`` at shared tick ``k``, so two folders with the same
    fps and names (an image-pair folder) always show the same pair at the same instant.
    The folder is watched once a second (:class:`PathWatch`): when images are added, removed or
    renamed the list is read again (logged); a removed folder raises :class:`SourceError`. Each
    image is read from disk when shown, so an image overwritten in place shows its new content.
    """

    def __init__(self, config: FolderSource, fps: float, flags: int, interrupt: threading.Event | None) -> None:
        self.config, self.flags = config, flags
        self._ticker = Ticker(fps, interrupt)
        self._files: list[Path] = []
        self._first_tick: int | None = None
        self._watch = PathWatch(config.path, f"image folder {config.path}")

    def open(self) -> None:
        self._list()
        self._first_tick = None

    def _list(self) -> None:
        folder = self.config.path
        if not folder.is_dir():
            raise SourceError(f"image folder {folder} does not exist")
        self._watch.arm()  # before listing: a change while listing is seen at the next check
        self._files = sorted(p for p in folder.glob(self.config.pattern) if p.is_file())
        if not self._files:
            raise SourceError(f"image folder {folder} has no files matching {self.config.pattern!r}")

    def read(self) -> ReadResult:
        tick = self._ticker.wait()
        if tick is None or not self._files:
            return False, None, None
        if self._watch.changed():
            self._relist()
        k, stamp = tick
        if self.config.loop:
            index = k % len(self._files)
        else:
            self._first_tick = k if self._first_tick is None else self._first_tick
            index = k - self._first_tick
            if index >= len(self._files):
                return False, None, None  # ended: the capture thread reopens it after a backoff
        image = cv2.imread(str(self._files[index]), self.flags)
        if image is None:
            if self._watch.changed(now=True):  # raises SourceError when the folder itself is gone
                self._relist()
                return self.read()  # the image was removed or renamed meanwhile: show the next one
            raise SourceError(f"cannot read image {self._files[index]}")
        return True, image, stamp

    def _relist(self) -> None:
        self._list()
        log.info("image folder %s changed: %d images now", self.config.path, len(self._files))

    def close(self) -> None:
        self._files = []


class SyntheticCapture:
    """The synthetic street scene, rendered in this camera's modality at its size and fps."""

    def __init__(self, config: SyntheticSource, camera: CameraConfig, interrupt: threading.Event | None) -> None:
        self.config, self.camera = config, camera
        self._ticker = Ticker(camera.fps, interrupt)
        self._renderer: IRRenderer | RGBRenderer | None = None

    def open(self) -> None:
        if self._renderer is None:  # layers take ~0.5 s to build; a reopen keeps them
            scene = Scene(self.config.seed, self.config.objects, self.config.speed_px_s)
            if isinstance(self.camera, IRCameraConfig):
                self._renderer = IRRenderer(scene, self.camera.width, self.camera.height,
                                            self.config.misalignment, modality=self.camera.modality)
            else:
                self._renderer = RGBRenderer(scene, self.camera.width, self.camera.height)

    @property
    def renderer(self) -> IRRenderer | RGBRenderer | None:
        """The renderer (after ``open``): the IR one exposes the true misalignment."""
        return self._renderer

    def read(self) -> ReadResult:
        tick = self._ticker.wait()
        if tick is None or self._renderer is None:
            return False, None, None
        k, stamp = tick
        return True, self._renderer.render(stamp - PLAYBACK_EPOCH, k), stamp

    def close(self) -> None:
        """Nothing to release; the rendered layers are kept for a reopen."""


def make_source(camera: CameraConfig, interrupt: threading.Event | None = None) -> FrameSource:
    """Build the source a camera's config describes (not opened yet).

    ``interrupt``: set it to wake a replayed source that is waiting for its next tick.
    IR cameras (:class:`IRCameraConfig`) read images unchanged (16-bit PNGs stay 16-bit).
    """
    src = camera.source
    if isinstance(src, V4L2Source):
        return V4L2Capture(src, camera)
    if isinstance(src, GStreamerSource):
        return GStreamerCapture(src)
    if isinstance(src, VideoSource):
        return VideoFileCapture(src, camera.fps, interrupt)
    if isinstance(src, FolderSource):
        flags = cv2.IMREAD_UNCHANGED if isinstance(camera, IRCameraConfig) else cv2.IMREAD_COLOR
        return FolderCapture(src, camera.fps, flags, interrupt)
    return SyntheticCapture(src, camera, interrupt)
