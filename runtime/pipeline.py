"""From a frame pair to a published fused frame, on the inference thread.

Per pair: IR normalisation -> RGB to YCrCb -> (registration is offered the pair; it runs on
its own thread) -> warp of the IR with the current registration maps -> ``fuse`` graph on the
luminance -> fused Y + the RGB chroma (or gray) -> encode -> publish.

The inference thread always takes the *newest* pair from the :class:`~runtime.pairing.Pairer`:
when inference is slower than the cameras, older pairs are superseded (and counted there),
never queued, and capture never waits.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

from rig_config.schema import RigConfig
from runtime.backends.base import InferenceBackend
from runtime.metrics import Histogram
from runtime.pairing import FramePair, Pairer
from runtime.publisher import Publisher
from runtime.registration import RegistrationGeometry, RegistrationScheduler, RegistrationState
from runtime.thermal import ThermalNormaliser
from runtime.wire import Encoding, FrameHeader, Registration

log = logging.getLogger(__name__)

#: Stages timed per pair (``register`` runs on its own thread and is timed there).
STAGES = ("thermal", "colour", "warp", "fuse", "compose", "publish", "total", "register")
#: Log a failing pair only now and then: a persistent fault must not flood the log at 30 Hz.
_LOG_EVERY_N_FAILURES = 100


def fuse_size(rgb_size: tuple[int, int], size_hw: tuple[int, int] | None) -> tuple[int, int]:
    """(width, height) the ``fuse`` graph runs at: configured, or the RGB size rounded down to /8."""
    if size_hw is not None:
        return size_hw[1], size_hw[0]
    w, h = rgb_size
    if w < 8 or h < 8:
        raise ValueError(f"the RGB frame {w}x{h} is smaller than the networks' 8-pixel granularity")
    return w - w % 8, h - h % 8


def split_ycrcb(bgr: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(H, W, 3) uint8 BGR -> Y, Cr, Cb as contiguous (H, W) uint8 (OpenCV's BGR2YCrCb, full range)."""
    if bgr.ndim == 2:  # a gray RGB camera: no chroma
        neutral = np.full_like(bgr, 128)
        return bgr, neutral, neutral
    y, cr, cb = cv2.split(cv2.cvtColor(bgr, cv2.COLOR_BGR2YCrCb))
    return y, cr, cb


def to_unit(gray_u8: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(H, W) uint8 -> float32 [0, 1] at ``size`` (width, height), resized with INTER_AREA when needed."""
    if (gray_u8.shape[1], gray_u8.shape[0]) != size:
        gray_u8 = cv2.resize(gray_u8, size, interpolation=cv2.INTER_AREA)
    out = gray_u8.astype(np.float32)
    out *= np.float32(1.0 / 255.0)
    return out


def unit_to_u8(x: np.ndarray) -> np.ndarray:
    """float [0, 1] -> uint8 (rounded, clipped)."""
    return cv2.convertScaleAbs(np.clip(x, 0.0, 1.0), alpha=255.0)


@dataclass
class PipelineCounters:
    pairs: int = 0  # pairs processed
    published: int = 0  # fused frames handed to the publisher
    failures: int = 0  # pairs that raised


class Pipeline:
    """The per-pair processing and the inference thread that drives it.

    ``to_wall`` converts the capture clock (``time.monotonic``) to Unix time for headers.
    The ``register`` graph runs in :attr:`registration`, a scheduler started with the pipeline.
    """

    def __init__(
        self,
        config: RigConfig,
        *,
        register: InferenceBackend,
        fuse: InferenceBackend,
        publisher: Publisher,
        pairer: Pairer,
        to_wall: Callable[[float], float],
    ) -> None:
        self.config = config
        self.fuse = fuse
        self.publisher = publisher
        self.pairer = pairer
        self._to_wall = to_wall
        cams = config.cameras
        self.rgb_size = (cams.rgb.width, cams.rgb.height)
        self.out_size = fuse_size(self.rgb_size, config.fusion.size)
        self.stages = {name: Histogram() for name in STAGES}
        geometry = RegistrationGeometry.from_config(
            config.registration, rgb_size=self.rgb_size, ir_size=(cams.ir.width, cams.ir.height),
            out_size=self.out_size,
        )
        self.registration = RegistrationScheduler(register, config.registration, geometry, observe=self.observe)
        self.normaliser = ThermalNormaliser(cams.ir.thermal)
        self.model_id = f"{register.metadata.model_id}+{fuse.metadata.model_id}"
        pub = config.publisher
        colour = config.fusion.output == "colour"
        self.encoding: Encoding = "jpeg" if pub.encoding == "jpeg" else ("bgr8" if colour else "mono8")
        self.ir_encoding: Encoding = "jpeg" if pub.encoding == "jpeg" else "mono8"
        self.capture_to_publish = Histogram()
        self.counters = PipelineCounters()
        self.last_skew_s = 0.0
        self._seq = {"fused": 0, "registered_ir": 0}
        self._publish_times: deque[float] = deque(maxlen=256)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ per pair

    def observe(self, stage: str, seconds: float) -> None:
        self.stages[stage].observe(seconds)

    def process(self, pair: FramePair) -> None:
        """Process one pair to a published frame (the registration is run inline the first time)."""
        t0 = time.perf_counter()
        ir = self.normaliser(pair.ir.image)
        t1 = time.perf_counter()
        y, cr, cb = split_ycrcb(pair.rgb.image)
        t2 = time.perf_counter()
        state = self.registration.state
        if state is None:
            state = self.registration.register_now(y, ir, pair.rgb.t_capture)
            if state is None:
                log.warning("the first registration estimate was rejected; retrying on the next pair")
                return
        else:
            self.registration.offer(y, ir, pair.rgb.t_capture)
        t3 = time.perf_counter()
        registered = cv2.remap(ir, state.map1, state.map2, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                               borderValue=0.0)
        t4 = time.perf_counter()
        vis = to_unit(y, self.out_size)
        fused = self.fuse.run({"vis": vis[None, None], "ir": registered[None, None]})["fused"][0, 0]
        t5 = time.perf_counter()
        image = self._compose(fused, cr, cb)
        t6 = time.perf_counter()
        self._publish(pair, state, image, registered)
        t7 = time.perf_counter()
        for name, seconds in zip(STAGES, (t1 - t0, t2 - t1, t4 - t3, t5 - t4, t6 - t5, t7 - t6, t7 - t0),
                                 strict=False):
            self.stages[name].observe(seconds)

    def _compose(self, fused: np.ndarray, cr: np.ndarray, cb: np.ndarray) -> np.ndarray:
        """Fused luminance (+ the RGB chroma) at the RGB frame size, uint8."""
        fused_y = unit_to_u8(fused)
        if self.out_size != self.rgb_size:
            fused_y = cv2.resize(fused_y, self.rgb_size, interpolation=cv2.INTER_LINEAR)
        if self.config.fusion.output == "gray":
            return fused_y
        return cv2.cvtColor(cv2.merge((fused_y, cr, cb)), cv2.COLOR_YCrCb2BGR)

    def _header(self, topic: str, pair: FramePair, state: RegistrationState, image: np.ndarray,
                encoding: Encoding) -> FrameHeader:
        seq = self._seq[topic]
        self._seq[topic] = seq + 1
        return FrameHeader(
            seq=seq,
            rig_id=self.config.rig_id,
            t_capture_ir=self._to_wall(pair.ir.t_capture),
            t_capture_rgb=self._to_wall(pair.rgb.t_capture),
            t_publish=time.time(),
            skew_ms=pair.skew_s * 1000.0,
            width=image.shape[1],
            height=image.shape[0],
            encoding=encoding,
            registration=Registration.from_matrix(
                state.frame_to_ir, source=state.source, confidence=state.confidence,
                age_s=max(0.0, pair.rgb.t_capture - state.t_capture),
            ),
            model_id=self.model_id,
        )

    def _publish(self, pair: FramePair, state: RegistrationState, image: np.ndarray,
                 registered: np.ndarray) -> None:
        quality = self.config.publisher.jpeg_quality
        header = self._header("fused", pair, state, image, self.encoding)
        self.publisher.publish_frame("fused", header, image, jpeg_quality=quality)
        if self.config.publisher.publish_registered_ir:
            ir8 = unit_to_u8(registered)
            ir_header = self._header("registered_ir", pair, state, ir8, self.ir_encoding)
            self.publisher.publish_frame("registered_ir", ir_header, ir8, jpeg_quality=quality)
        now = time.monotonic()
        self.capture_to_publish.observe(now - min(pair.ir.t_capture, pair.rgb.t_capture))
        self._publish_times.append(now)
        self.counters.published += 1
        self.last_skew_s = pair.skew_s

    # ------------------------------------------------------------------ thread

    @property
    def fps(self) -> float:
        """Published frames per second over the last ~2 s (0 when nothing was published lately)."""
        times = [t for t in self._publish_times if t > time.monotonic() - 2.0]
        if len(times) < 2:
            return 0.0
        return (len(times) - 1) / (times[-1] - times[0])

    def _loop(self) -> None:
        while not self._stop.is_set():
            pair = self.pairer.latest_pair(timeout=0.1)
            if pair is None:
                continue
            self.counters.pairs += 1
            try:
                self.process(pair)
            # One bad pair (odd frame, transient backend error) must not stop the stream.
            except Exception:
                self.counters.failures += 1
                if self.counters.failures % _LOG_EVERY_N_FAILURES == 1:
                    log.exception("processing a pair failed (%d failures so far)", self.counters.failures)

    def start(self) -> None:
        self.registration.start()
        self._thread = threading.Thread(target=self._loop, name="inference", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 1.0) -> None:
        self._stop.set()
        deadline = time.monotonic() + timeout
        if self._thread is not None:
            self._thread.join(timeout)
        self.registration.stop(max(0.05, deadline - time.monotonic()))
