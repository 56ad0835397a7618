"""From a frame pair to a published fused frame: an inference thread and an output thread.

Inference thread, per pair: IR normalisation -> RGB to YCrCb -> (the registration scheduler is
offered the pair; it runs on its own thread) -> warp of the IR with the current registration
-> fusion of the luminance. Output thread: fused Y + the RGB chroma (or gray) -> encode ->
publish. Splitting them lets the next fusion start while the last frame is encoded.

The warp and fusion run one of two ways (:func:`choose_frame_path`, logged at start and shown
in the status topic):

* CPU path: ``cv2.remap`` with the registration's maps, then the ``fuse`` graph. On a CPU this
  is the fastest way, and the only one for artifacts exported without the ``frame`` graph.
* device path, when the ``frame`` graph's backend is GPU-resident: the ``frame`` graph warps
  and fuses in one call, so a pair costs one upload of Y and IR and one download of the fused
  Y; the grid is uploaded once per new registration (:meth:`InferenceBackend.hold`), not per
  pair. There the ``warp`` stage times that upload and ``fuse`` the graph call. The registered
  IR is only made (``cv2.remap``, on the output thread) when its topic is published.

Both hand-overs keep only the newest item: the inference thread takes the newest pair from the
:class:`~busref.runtime.pairing.Pairer` (older ones are superseded and counted there), the output
thread the newest fused frame (``counters.output_superseded``). Nothing queues without bound
and capture never waits for inference.
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

from busref.client.wire import Encoding, FrameHeader, Registration
from busref.rig_config.schema import RigConfig
from busref.runtime.backends.base import InferenceBackend
from busref.runtime.metrics import Histogram
from busref.runtime.pairing import FramePair, Pairer
from busref.runtime.publisher import Publisher
from busref.runtime.registration.geometry import RegistrationGeometry
from busref.runtime.registration.plausibility import RegistrationState
from busref.runtime.registration.scheduler import RegistrationScheduler
from busref.runtime.thermal import ThermalNormaliser

log = logging.getLogger(__name__)

#: Stages timed per pair (``register`` and ``track`` run on the registration thread and are timed there).
STAGES = ("thermal", "colour", "warp", "fuse", "compose", "publish", "total", "register", "track")
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


def warp_ir(ir: np.ndarray, map1: np.ndarray, map2: np.ndarray) -> np.ndarray:
    """The CPU warp: (H_ir, W_ir) float32 normalised IR -> (H_out, W_out) float32 registered IR
    with a registration's ``cv2.remap`` maps (bilinear, zero outside the IR frame)."""
    return cv2.remap(ir, map1, map2, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0.0)


@dataclass(frozen=True)
class FramePath:
    """Which per-frame path runs (see the module docstring) and why; logged and in the status topic."""

    device: bool  # True: the frame graph on a GPU-resident backend; False: cv2.remap + fuse graph
    reason: str

    def describe(self) -> dict[str, object]:
        graph, warp = ("frame", "GridSample in the frame graph") if self.device else ("fuse", "cv2.remap on the CPU")
        return {"path": "device" if self.device else "cpu", "graph": graph, "warp": warp, "reason": self.reason}


def choose_frame_path(fuse: InferenceBackend, frame: InferenceBackend | None) -> FramePath:
    """The device path when ``frame`` (the artifact's ``frame`` graph, None when it has none or it
    was not loaded) is GPU-resident, else the CPU path; logs the choice with its reason."""
    if frame is not None and frame.gpu_resident:
        path = FramePath(True, f"the frame graph runs on a GPU ({frame.name}): one upload of Y + IR and one "
                               "download of the fused Y per pair, the grid once per registration")
    elif frame is not None:
        path = FramePath(False, f"the frame graph's backend ({frame.name}) runs on the CPU, where cv2.remap + "
                                "the fuse graph is faster")
    elif fuse.gpu_resident:
        path = FramePath(False, f"the fuse graph runs on a GPU ({fuse.name}) but the artifact has no frame graph "
                                "(export it with 'busref export onnx'): the IR is warped with cv2.remap on the "
                                "CPU and copied to the GPU per pair")
    else:
        path = FramePath(False, f"the fuse graph runs on the CPU ({fuse.name}): cv2.remap + fuse graph")
    level = logging.WARNING if frame is None and fuse.gpu_resident else logging.INFO
    log.log(level, "per-frame path: %s: %s", path.describe()["path"], path.reason)
    return path


@dataclass
class PipelineCounters:
    pairs: int = 0  # pairs taken by the inference thread
    published: int = 0  # fused frames handed to the publisher
    failures: int = 0  # pairs that raised
    output_superseded: int = 0  # fused frames replaced before the output thread took them
    unregistered: int = 0  # pairs skipped because no registration was ever accepted


@dataclass(frozen=True)
class Fused:
    """What the inference thread hands to the output thread for one pair."""

    pair: FramePair
    state: RegistrationState
    fused: np.ndarray  # (H_out, W_out) float32 [0, 1] fused luminance
    ir: np.ndarray  # (H_ir, W_ir) float32 [0, 1] normalised IR, not registered
    registered: np.ndarray | None  # (H_out, W_out) float32 [0, 1] registered IR; None on the device path
    cr: np.ndarray
    cb: np.ndarray
    started: float  # perf_counter() when the inference thread took the pair


class LatestSlot:
    """A one-item hand-over between two threads: ``put`` replaces, ``take`` waits for an item."""

    def __init__(self) -> None:
        self._item: Fused | None = None
        self._cond = threading.Condition()

    def put(self, item: Fused) -> bool:
        """Store ``item``; True when it replaced one the consumer had not taken."""
        with self._cond:
            replaced = self._item is not None
            self._item = item
            self._cond.notify()
            return replaced

    def take(self, timeout: float) -> Fused | None:
        with self._cond:
            if self._item is None:
                self._cond.wait(timeout)
            item, self._item = self._item, None
            return item


class Pipeline:
    """The per-pair processing, and the inference and output threads that drive it.

    ``to_wall`` converts the capture clock (``time.monotonic``) to Unix time for headers.
    The ``register`` graph runs in :attr:`registration`, a scheduler started with the pipeline.
    ``frame``: the artifact's ``frame`` graph, or None; it is used when its backend is
    GPU-resident (:attr:`frame_path`). ``track``: the artifact's ``track`` graph, or None; the
    scheduler runs it between register-graph runs (``registration.register_every``).
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
        frame: InferenceBackend | None = None,
        track: InferenceBackend | None = None,
    ) -> None:
        self.config = config
        self.fuse = fuse
        self.frame_path = choose_frame_path(fuse, frame)
        self.frame = frame if self.frame_path.device else None
        self._held_grid: np.ndarray | None = None  # the grid the frame backend holds
        self.publisher = publisher
        self.pairer = pairer
        self._to_wall = to_wall
        cams = config.cameras
        self.rgb_size = (cams.rgb.width, cams.rgb.height)
        self.out_size = fuse_size(self.rgb_size, config.fusion.size)
        self.stages = {name: Histogram() for name in STAGES}
        geometry = RegistrationGeometry.from_config(config, out_size=self.out_size)
        self.registration = RegistrationScheduler(register, config.registration, geometry, observe=self.observe,
                                                  sampling_grid=self.frame is not None, track=track)
        self.normaliser = ThermalNormaliser(cams.ir.thermal)
        self.model_id = f"{register.metadata.model_id}+{fuse.metadata.model_id}"
        pub = config.publisher
        colour = config.fusion.output == "colour"
        self.encoding: Encoding = "jpeg" if pub.encoding == "jpeg" else ("bgr8" if colour else "mono8")
        self.ir_encoding: Encoding = "jpeg" if pub.encoding == "jpeg" else "mono8"
        self.capture_to_publish = Histogram()
        self.counters = PipelineCounters()
        self.last_skew_s = 0.0
        #: (monotonic time, what was raised) of the last pair whose processing failed, for the status.
        self.last_failure: tuple[float, str] | None = None
        self.last_pair_at: float | None = None  # monotonic time the inference thread last took a pair
        self._seq = 0  # the next pair's: its fused and registered IR images share it
        self._publish_times: deque[float] = deque(maxlen=256)
        self._slot = LatestSlot()
        self._failure_lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    # ------------------------------------------------------------------ per pair

    def observe(self, stage: str, seconds: float) -> None:
        self.stages[stage].observe(seconds)

    def process(self, pair: FramePair) -> None:
        """Process one pair to a published frame on the calling thread."""
        fused = self.infer(pair)
        if fused is not None:
            self.output(fused)

    def infer(self, pair: FramePair) -> Fused | None:
        """Normalise, register (inline only for the very first pair), warp and fuse one pair."""
        t0 = time.perf_counter()
        ir = self.normaliser(pair.ir.image)
        t1 = time.perf_counter()
        y, cr, cb = split_ycrcb(pair.rgb.image)
        t2 = time.perf_counter()
        state = self.registration.state
        if state is None:
            state = self.registration.register_now(y, ir, pair.rgb.t_capture)
            if state is None:
                self.counters.unregistered += 1
                if self.counters.unregistered % _LOG_EVERY_N_FAILURES == 1:
                    log.warning("no plausible registration yet (%d pairs); nothing is published until one is",
                                self.counters.unregistered)
                return None
        else:
            self.registration.offer(y, ir, pair.rgb.t_capture)
        t_warp = time.perf_counter()  # the one-off inline registration is no stage of its own
        registered = None
        if self.frame is not None:
            # A state keeps its grid object for as long as it is in force (also while held):
            # a new object is a new registration, the only time the grid goes to the GPU.
            if state.sampling_grid is not self._held_grid:
                self.frame.hold("grid", state.sampling_grid)
                self._held_grid = state.sampling_grid
            graph, graph_ir = self.frame, ir
        else:
            registered = warp_ir(ir, state.map1, state.map2)
            graph, graph_ir = self.fuse, registered
        t3 = time.perf_counter()
        vis = to_unit(y, self.out_size)
        fused = graph.run({"vis": vis[None, None], "ir": graph_ir[None, None]})["fused"][0, 0]
        t4 = time.perf_counter()
        for name, seconds in (("thermal", t1 - t0), ("colour", t2 - t1), ("warp", t3 - t_warp),
                              ("fuse", t4 - t3)):
            self.stages[name].observe(seconds)
        return Fused(pair, state, fused, ir, registered, cr, cb, t0)

    def output(self, item: Fused) -> None:
        """Compose, encode and publish one fused frame."""
        t0 = time.perf_counter()
        image = self._compose(item.fused, item.cr, item.cb)
        t1 = time.perf_counter()
        self._publish(item, image)
        t2 = time.perf_counter()
        self.stages["compose"].observe(t1 - t0)
        self.stages["publish"].observe(t2 - t1)
        self.stages["total"].observe(t2 - item.started)

    def _compose(self, fused: np.ndarray, cr: np.ndarray, cb: np.ndarray) -> np.ndarray:
        """Fused luminance (+ the RGB chroma) at the RGB frame size, uint8."""
        fused_y = unit_to_u8(fused)
        if self.out_size != self.rgb_size:
            fused_y = cv2.resize(fused_y, self.rgb_size, interpolation=cv2.INTER_LINEAR)
        if self.config.fusion.output == "gray":
            return fused_y
        return cv2.cvtColor(cv2.merge((fused_y, cr, cb)), cv2.COLOR_YCrCb2BGR)

    def _header(self, seq: int, pair: FramePair, state: RegistrationState, image: np.ndarray,
                encoding: Encoding) -> FrameHeader:
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

    def _publish(self, item: Fused, image: np.ndarray) -> None:
        pair, state = item.pair, item.state
        quality = self.config.publisher.jpeg_quality
        seq, self._seq = self._seq, self._seq + 1
        header = self._header(seq, pair, state, image, self.encoding)
        self.publisher.publish_frame("fused", header, image, jpeg_quality=quality)
        if self.config.publisher.publish_registered_ir:
            registered = item.registered if item.registered is not None else warp_ir(item.ir, state.map1, state.map2)
            ir8 = unit_to_u8(registered)
            ir_header = self._header(seq, pair, state, ir8, self.ir_encoding)
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
        # list() copies without running Python code, so the output thread cannot append meanwhile.
        recent = time.monotonic() - 2.0
        times = [t for t in list(self._publish_times) if t > recent]
        if len(times) < 2:
            return 0.0
        return (len(times) - 1) / (times[-1] - times[0])

    def _guarded(self, work: Callable[[], None]) -> None:
        """Run one step; one bad pair (odd frame, transient backend error) must not stop the stream."""
        try:
            work()
        except Exception as exc:
            with self._failure_lock:  # both threads count here
                self.counters.failures += 1
                failures = self.counters.failures
                self.last_failure = (time.monotonic(), f"{type(exc).__name__}: {exc}")
            if failures % _LOG_EVERY_N_FAILURES == 1:
                log.exception("processing a pair failed (%d failures so far)", failures)

    def _infer_loop(self) -> None:
        def step(pair: FramePair) -> None:
            fused = self.infer(pair)
            if fused is not None and self._slot.put(fused):
                self.counters.output_superseded += 1

        while not self._stop.is_set():
            pair = self.pairer.latest_pair(timeout=0.1)
            if pair is not None:
                self.counters.pairs += 1
                self.last_pair_at = time.monotonic()
                self._guarded(lambda pair=pair: step(pair))

    def _output_loop(self) -> None:
        while not self._stop.is_set():
            item = self._slot.take(timeout=0.1)
            if item is not None:
                self._guarded(lambda item=item: self.output(item))

    def start(self) -> None:
        self.registration.start()
        self._threads = [threading.Thread(target=self._infer_loop, name="inference", daemon=True),
                         threading.Thread(target=self._output_loop, name="output", daemon=True)]
        for thread in self._threads:
            thread.start()

    def stop(self, timeout: float = 1.0) -> None:
        self._stop.set()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.05, deadline - time.monotonic()))
        self.registration.stop(max(0.05, deadline - time.monotonic()))
