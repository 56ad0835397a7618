"""The rig daemon: wire capture, pairing, registration, fusion and publishing together, and stop them.

Startup order makes failures cheap and clear: models first (nothing is bound yet), then the
publisher and metrics sockets, then the cameras, which must each deliver a frame within the
startup timeout. Each failure is a :class:`StartupError` carrying its exit code
(:mod:`busref.runtime.exit_codes`). After startup nothing exits on its own: a camera that disappears
is reopened by its capture thread while the status topic reports ``degraded``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from typing import Literal

import numpy as np

from busref.client.wire import StatusHeader
from busref.rig_config.schema import RigConfig
from busref.runtime import exit_codes
from busref.runtime.artifact import REGISTRATION_GRAPHS, ArtifactError, GraphKind, check_modality, registration_size_for
from busref.runtime.backends.base import BackendUnavailable, InferenceBackend, ModelMissing
from busref.runtime.backends.select import open_backend
from busref.runtime.capture import CaptureThread
from busref.runtime.memory import release_free_heap
from busref.runtime.metrics import Family, HistogramFamily, MetricsServer, render
from busref.runtime.pairing import Pairer
from busref.runtime.pipeline import Pipeline
from busref.runtime.publisher import CurveServerKeys, EndpointError, Publisher, PublisherError

log = logging.getLogger(__name__)

STATUS_PERIOD_S = 1.0
#: A pair that failed this recently (seconds) is named in the status ``message``.
FAULT_RECENT_S = 5.0
#: The window of ``Pipeline.fps``: no frame published for this long is ``degraded``.
STALL_S = 2.0
#: How often freed heap memory is handed back to the OS (:mod:`busref.runtime.memory`).
RELEASE_PERIOD_S = 60.0


class StartupError(RuntimeError):
    """The daemon cannot start; ``exit_code`` says why (see :mod:`busref.runtime.exit_codes`)."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class StartupInterrupted(StartupError):
    """``interrupt`` was set (SIGINT/SIGTERM) during start-up: not a failure, exit code 0."""

    def __init__(self, step: str) -> None:
        super().__init__(f"start-up interrupted {step}", exit_codes.OK)


def open_graph(config: RigConfig, graph: GraphKind) -> InferenceBackend:
    """The backend for one of the rig's graphs; :class:`StartupError` (exit 3 or 6) when it cannot load."""
    inf = config.inference
    onnx_path, engine = {
        "register": (inf.register_model, inf.register_engine),
        "track": (inf.track_model, inf.track_engine),
        "fuse": (inf.fuse_model, inf.fuse_engine),
        "frame": (inf.frame_model, inf.frame_engine),
    }[graph]
    threads = inf.threads
    if graph in REGISTRATION_GRAPHS and threads == 0:
        # Registration runs a few times a second beside the fuse graph: a second pool as wide
        # as the CPU would only fight the fuse pool for the same cores.
        threads = 1
    try:
        backend = open_backend(graph, onnx_path, engine, choice=inf.backend, threads=threads)
        check_modality(backend.metadata, config.cameras.ir.modality, source=str(onnx_path))
        return backend
    except ModelMissing as exc:
        raise StartupError(f"{exc} (set inference.{graph}_model in the rig file, or put the graph there)",
                           exit_codes.MISSING_MODEL) from None
    except (ArtifactError, BackendUnavailable) as exc:
        raise StartupError(str(exc), exit_codes.BAD_MODEL) from None


def open_frame_graph(config: RigConfig, fuse: InferenceBackend) -> InferenceBackend | None:
    """The ``frame`` graph's backend where it can pay off, else None.

    None when the fuse graph runs on the CPU (``cv2.remap`` + ``fuse`` is faster there, so the
    file is not even loaded) or when ``inference.frame_model`` does not exist (an artifact folder
    exported before the frame graph; the pipeline logs the fallback). A frame graph that exists
    but does not load is logged and skipped: the CPU path still works.
    """
    if not fuse.gpu_resident or not config.inference.frame_model.is_file():
        return None
    try:
        return open_graph(config, "frame")
    except StartupError as exc:
        log.warning("the frame graph is not used, warping on the CPU instead: %s", exc)
        return None


def open_track_graph(config: RigConfig, register: InferenceBackend) -> InferenceBackend | None:
    """The ``track`` graph's backend, or None: when the rig does not use it (``registration.warm_start`` off,
    ``register_every`` 1), when ``inference.track_model`` does not exist (graphs exported without one),
    or when it is not the register graph's twin (another checkpoint, another size: it would refine
    grids it was not made for). The last two are logged; registration then runs the register graph
    every time."""
    reg = config.registration
    path = config.inference.track_model
    if not reg.warm_start or reg.register_every == 1:
        return None
    if not path.is_file():
        log.info("no track graph at %s: every registration run is a register-graph run", path)
        return None
    try:
        track = open_graph(config, "track")
    except StartupError as exc:
        log.warning("the track graph is not used: %s", exc)
        return None
    mine, theirs = track.metadata, register.metadata
    if (mine.checkpoint_sha256, mine.registration_size) != (theirs.checkpoint_sha256, theirs.registration_size):
        log.warning("the track graph %s is not used: it comes from checkpoint %s at %s, the register graph from "
                    "%s at %s (export both from one checkpoint)", path, mine.model_id, mine.registration_size,
                    theirs.model_id, theirs.registration_size)
        return None
    return track


def _warm_up(backend: InferenceBackend, inputs: dict[str, np.ndarray]) -> None:
    """One run at the real sizes: shape mismatches fail at startup, and the first frame is not slow."""
    try:
        backend.run(inputs)
    # Whatever the backend raises for a wrong input size, the user needs the sizes and the file.
    except Exception as exc:
        shapes = {name: array.shape for name, array in inputs.items()}
        raise StartupError(f"{backend.describe().get('path')}: cannot run on inputs of shapes {shapes}: {exc}",
                           exit_codes.BAD_MODEL) from None


def _zeros(*shape: int) -> np.ndarray:
    return np.zeros(shape, dtype=np.float32)


class Daemon:
    """Everything ``busref run`` runs. ``start`` (raises :class:`StartupError`), then ``stop``.

    ``endpoints`` overrides the rig's publisher endpoints (bench, tests); ``metrics_port``
    overrides ``metrics.port`` (None keeps it); ``interrupt`` aborts a startup wait.
    """

    def __init__(
        self,
        config: RigConfig,
        *,
        camera_timeout_s: float = 10.0,
        endpoints: Sequence[str] | None = None,
        metrics_port: int | None = None,
        interrupt: threading.Event | None = None,
    ) -> None:
        self.config = config
        self.camera_timeout_s = camera_timeout_s
        self.endpoints = list(endpoints or config.publisher.endpoints)
        self.metrics_port = config.metrics.port if metrics_port is None else metrics_port
        self.interrupt = interrupt or threading.Event()
        self.publisher: Publisher | None = None
        self.metrics: MetricsServer | None = None
        self.pipeline: Pipeline | None = None
        self.pairer = Pairer(config.pairing.max_skew_ms / 1000.0)
        self.captures: dict[str, CaptureThread] = {}
        self.backends: dict[str, InferenceBackend] = {}
        # Capture times are monotonic; headers carry Unix time. One fixed offset per run keeps
        # them consistent with each other even if the wall clock is stepped meanwhile.
        self._wall_offset = time.time() - time.monotonic()
        self._started = time.monotonic()
        self._status_stop = threading.Event()
        self._status_thread: threading.Thread | None = None

    def to_wall(self, t_monotonic: float) -> float:
        return t_monotonic + self._wall_offset

    # ------------------------------------------------------------------ lifecycle

    def _check_interrupt(self, step: str) -> None:
        if self.interrupt.is_set():
            raise StartupInterrupted(step)

    def _with_registration_size(self, cfg: RigConfig) -> RigConfig:
        """``cfg`` with ``registration.size`` set: the register graph's (:func:`registration_size_for`)."""
        register = self.backends["register"]
        try:
            size = registration_size_for(cfg.registration.size, register.metadata.registration_size,
                                         source=str(register.describe().get("path")))
        except ValueError as exc:
            raise StartupError(str(exc), exit_codes.BAD_CONFIG) from None
        return cfg.model_copy(update={"registration": cfg.registration.model_copy(update={"size": size})})

    def start(self) -> None:
        """Start everything; :class:`StartupError` when something cannot start, or
        :class:`StartupInterrupted` when ``interrupt`` is set meanwhile (checked between steps)."""
        cfg = self.config
        self.backends = {"register": open_graph(cfg, "register"), "fuse": open_graph(cfg, "fuse")}
        self._check_interrupt("while loading the graphs")
        cfg = self.config = self._with_registration_size(cfg)
        curve = None
        if cfg.publisher.curve.enabled:
            try:
                curve = CurveServerKeys.from_files(cfg.publisher.curve.server_secret_key_file,
                                                   cfg.publisher.curve.allowed_clients_dir)
            except PublisherError as exc:
                raise StartupError(str(exc), exit_codes.BAD_CONFIG) from None
        # A frame and its registered-IR companion leave back to back, with a status now and then:
        # the queue holds ``hwm`` pairs' worth of them, so a burst never drops its own tail.
        per_pair = 2 if cfg.publisher.publish_registered_ir else 1
        try:
            self.publisher = Publisher(self.endpoints, hwm=cfg.publisher.hwm * per_pair + 1, curve=curve)
        except EndpointError as exc:
            raise StartupError(str(exc), exit_codes.BAD_CONFIG) from None
        except PublisherError as exc:
            raise StartupError(str(exc), exit_codes.BIND_FAILED) from None
        track = open_track_graph(cfg, self.backends["register"])
        if track is not None:
            self.backends["track"] = track
        self.pipeline = Pipeline(cfg, register=self.backends["register"], fuse=self.backends["fuse"],
                                 publisher=self.publisher, pairer=self.pairer, to_wall=self.to_wall,
                                 frame=open_frame_graph(cfg, self.backends["fuse"]), track=track)
        reg_hw, out_hw = cfg.registration.size, self.pipeline.out_size[::-1]
        _warm_up(self.backends["register"], {"vis": _zeros(1, 1, *reg_hw), "ir": _zeros(1, 1, *reg_hw)})
        if track is not None:
            _warm_up(track, {"vis": _zeros(1, 1, *reg_hw), "ir": _zeros(1, 1, *reg_hw), "start": _zeros(1, *reg_hw, 2)})
        _warm_up(self.backends["fuse"], {"vis": _zeros(1, 1, *out_hw), "ir": _zeros(1, 1, *out_hw)})
        if self.pipeline.frame is not None:
            self.backends["frame"] = self.pipeline.frame
            ir = cfg.cameras.ir
            _warm_up(self.pipeline.frame, {"vis": _zeros(1, 1, *out_hw), "ir": _zeros(1, 1, ir.height, ir.width),
                                           "grid": _zeros(1, *out_hw, 2)})
        self._check_interrupt("while warming up the graphs")
        if self.metrics_port:
            try:
                self.metrics = MetricsServer(cfg.metrics.host, self.metrics_port, self.metrics_text)
            except OSError as exc:
                raise StartupError(f"cannot serve metrics on {cfg.metrics.host}:{self.metrics_port}: {exc}",
                                   exit_codes.BIND_FAILED) from None
        self._status_thread = threading.Thread(target=self._status_loop, name="status", daemon=True)
        self._status_thread.start()
        for name in ("ir", "rgb"):
            camera = getattr(cfg.cameras, name)
            self.captures[name] = CaptureThread(name, camera, self.pairer.add)
            self.captures[name].start()
        self._wait_for_cameras()
        self._check_interrupt("while waiting for the cameras")
        self.pipeline.start()
        log.info("rig %s running: %s", cfg.rig_id, self.backend_facts())

    def _wait_for_cameras(self) -> None:
        deadline = time.monotonic() + self.camera_timeout_s
        while True:
            silent = [name for name, c in self.captures.items() if c.stats.frames == 0]
            if not silent or self.interrupt.is_set():
                return
            if time.monotonic() >= deadline:
                reasons = "; ".join(f"{n}: {self.captures[n].stats.last_error or 'no frame yet'}" for n in silent)
                raise StartupError(f"no frame within {self.camera_timeout_s:g} s from camera(s) {reasons}",
                                   exit_codes.NO_CAMERA)
            self.interrupt.wait(0.02)

    def stop(self, timeout_s: float = 1.5) -> None:
        """Stop every thread and close the sockets within about ``timeout_s``; safe after a failed start."""
        deadline = time.monotonic() + timeout_s

        def left() -> float:
            return max(0.05, deadline - time.monotonic())

        for capture in self.captures.values():
            capture.stop(timeout=left() / 2)
        if self.pipeline is not None:
            self.pipeline.stop(timeout=left() / 2)
        self._status_stop.set()
        if self._status_thread is not None:
            self._status_thread.join(left() / 2)
        if self.publisher is not None:
            self.publisher.publish_status(self.status(state="stopping"))
            self.publisher.close(linger_ms=100)
        if self.metrics is not None:
            self.metrics.close()
        log.info("rig %s stopped", self.config.rig_id)

    # ------------------------------------------------------------------ status and metrics

    def backend_facts(self) -> dict[str, dict[str, object]]:
        """Each graph's ``describe()``, and under ``per_frame`` the per-frame path in use
        (:class:`~busref.runtime.pipeline.FramePath`): for logs, the status topic and the bench."""
        facts: dict[str, dict[str, object]] = {g: b.describe() for g, b in self.backends.items()}
        if self.pipeline is not None:
            facts["per_frame"] = self.pipeline.frame_path.describe()
        return facts

    def _status_loop(self) -> None:
        released = time.monotonic()
        while not self._status_stop.wait(STATUS_PERIOD_S):
            if self.publisher is not None:
                self.publisher.publish_status(self.status())
            if time.monotonic() - released >= RELEASE_PERIOD_S:
                release_free_heap()
                released = time.monotonic()

    def state(self) -> Literal["starting", "running", "degraded"]:
        if self.pipeline is None or self.pipeline.counters.published == 0:
            return "starting"
        if any(not c.stats.connected for c in self.captures.values()) or self.pipeline.fps == 0.0:
            return "degraded"
        return "running"

    def faults(self) -> list[str]:
        """What keeps the rig from running normally now, one phrase each (the status ``message``)."""
        found = [f"{name} camera: {stats.last_error or 'no frame yet'}"
                 for name, stats in ((n, c.stats) for n, c in self.captures.items()) if not stats.connected]
        pipe = self.pipeline
        if pipe is None:
            return found
        now = time.monotonic()
        if pipe.last_failure is not None and now - pipe.last_failure[0] < FAULT_RECENT_S:
            found.append(f"processing a pair failed: {pipe.last_failure[1]}")
        if pipe.counters.published == 0 and pipe.counters.unregistered:
            found.append(f"no plausible registration yet ({pipe.counters.unregistered} pairs tried)")
        elif pipe.counters.published and pipe.fps == 0.0 and not found:
            if pipe.last_pair_at is None or now - pipe.last_pair_at > STALL_S:
                found.append(f"no IR/RGB pair in the last {STALL_S:g} s (are the cameras' frames further apart "
                             "than pairing.max_skew_ms?)")
            else:
                found.append(f"no fused frame published in the last {STALL_S:g} s")
        return found

    def families(self) -> list[Family]:
        """Every counter and gauge, gathered from the components now."""
        fams: list[Family] = []

        def add(name: str, kind: Literal["counter", "gauge"], help_: str,
                samples: list[tuple[dict[str, str], float]]) -> None:
            fams.append(Family(f"busref_{name}", kind, help_, samples))

        caps = {n: c.stats for n, c in self.captures.items()}
        capture_fields: tuple[tuple[str, Literal["counter", "gauge"], str], ...] = (
            ("frames", "counter", "frames captured"),
            ("drops", "counter", "captured frames dropped before pairing"),
            ("failures", "counter", "camera open/read failures"),
            ("reconnects", "counter", "camera reopens after a failure"),
            ("connected", "gauge", "1 while the camera delivers"),
        )
        for field, kind, help_ in capture_fields:
            suffix = "_total" if kind == "counter" else ""
            add(f"capture_{field}{suffix}", kind, help_,
                [({"camera": n}, float(getattr(s, field))) for n, s in caps.items()])
        pairing = self.pairer.stats
        add("pairs_total", "counter", "IR/RGB pairs formed", [({}, pairing.pairs)])
        add("unmatched_frames_total", "counter", "frames dropped without a partner within max skew",
            [({"camera": "ir"}, pairing.unmatched_ir), ({"camera": "rgb"}, pairing.unmatched_rgb)])
        add("stale_pairs_dropped_total", "counter", "pairs superseded before inference took them",
            [({}, pairing.superseded)])
        add("pair_skew_seconds", "gauge", "skew of the last pair (t_ir - t_rgb)",
            [({}, pairing.last_skew_s or 0.0)])
        pub = self.publisher
        add("publish_dropped_total", "counter", "messages ZeroMQ refused",
            [({}, pub.dropped if pub else 0)])
        add("curve_refused_total", "counter", "client handshakes CURVE refused (key not allowed, or no CURVE)",
            [({}, pub.curve_refused if pub else 0)])
        pipe = self.pipeline
        if pipe is not None:
            add("frames_published_total", "counter", "fused frames published", [({}, pipe.counters.published)])
            add("pair_failures_total", "counter", "pairs whose processing raised", [({}, pipe.counters.failures)])
            add("output_superseded_total", "counter", "fused frames replaced before they were encoded",
                [({}, pipe.counters.output_superseded)])
            add("unregistered_pairs_total", "counter", "pairs skipped while no registration was accepted",
                [({}, pipe.counters.unregistered)])
            add("fps", "gauge", "fused frames published per second (last 2 s)", [({}, pipe.fps)])
            sched = pipe.registration
            add("registration_runs_total", "counter", "register graph runs", [({}, sched.runs)])
            add("registration_rejected_total", "counter", "estimates rejected as implausible",
                [({}, sched.filter.rejected)])
            add("registration_not_better_total", "counter",
                "estimates not taken because they aligned their pair worse than the registration in force",
                [({}, sched.filter.not_better)])
            state = sched.state
            if state is not None:
                age = time.monotonic() - state.t_capture
                add("registration_age_seconds", "gauge", "age of the registration in force", [({}, age)])
                add("registration_confidence", "gauge", "confidence of the registration in force",
                    [({}, state.confidence)])
        return fams

    def histograms(self) -> list[HistogramFamily]:
        if self.pipeline is None:
            return []
        return [
            HistogramFamily("busref_stage_seconds", "per-stage latency", "stage", self.pipeline.stages),
            HistogramFamily("busref_capture_to_publish_seconds", "older capture of the pair to publish", "",
                            {"all": self.pipeline.capture_to_publish}),
        ]

    def metrics_text(self) -> str:
        return render(self.families(), self.histograms())

    def status(self, state: Literal["stopping"] | None = None) -> StatusHeader:
        counters: dict[str, int] = {}
        gauges: dict[str, float] = {}
        for fam in self.families():
            for labels, value in fam.samples:
                key = "_".join([fam.name.removeprefix("busref_"), *labels.values()])
                if fam.kind == "counter":
                    counters[key] = int(value)
                else:
                    gauges[key] = float(value)
        if self.pipeline is not None:
            for q, v in self.pipeline.capture_to_publish.percentiles().items():
                if v == v:  # not NaN
                    gauges[f"capture_to_publish_{q}_ms"] = v * 1000.0
        return StatusHeader(
            rig_id=self.config.rig_id,
            t_publish=time.time(),
            uptime_s=time.monotonic() - self._started,
            state=state or self.state(),
            counters=counters,
            gauges=gauges,
            backends=self.backend_facts(),
            message="" if state == "stopping" else "; ".join(self.faults()),
        )
