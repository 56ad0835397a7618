"""When to estimate: the ``register`` graph on its own thread, on the rig's cadence."""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable

import numpy as np

from busref.rig_config.schema import RegistrationConfig
from busref.runtime.backends.base import InferenceBackend, RunCancelled
from busref.runtime.registration.geometry import RegistrationGeometry, run_register, run_track
from busref.runtime.registration.keypoint_start import KEYPOINT_EVERY, register_with_keypoints
from busref.runtime.registration.plausibility import RegistrationFilter, RegistrationState

log = logging.getLogger(__name__)

#: The EMA weight of a register-graph estimate on a scheduler with a track graph: taken whole. Why: the
#: register graph is the whole method (nets, stage from two starts, blurred variant), the track graph a
#: few MIND iterations that walk a still thermal rig's registration away from it, and averaging the two
#: kept half of that walk. ``scripts/eval_still_rig.py``, 8 held-out RoadScene train pairs, moderate,
#: measured with the graphs that then ran learned towers: mean EPE after the second register run (the
#: 11th run) 3.52 -> 3.38 px (NIR pairs 0.79 -> 0.77). On the demo
#: rig the later register estimates are not taken (their edges agree worse), so it does not apply.
REGISTER_SMOOTHING = 1.0


class RegistrationScheduler:
    """Runs the ``register`` graph on its own thread, on the rig's cadence, on the newest pair offered.

    The pipeline calls :meth:`offer` for every pair (cheap: it only keeps references) and reads
    :attr:`state`; it never waits for registration. ``every_n_pairs`` counts offered pairs;
    ``rate_hz`` starts runs on a fixed ``1 / rate_hz`` schedule (pairs arrive on their own clock,
    so a start is at the first pair after each due time; the schedule does not drift by that
    lateness, and runs go back-to-back when one is slower than the period).
    ``observe(stage, seconds)`` receives the duration of each run (stage ``register`` or ``track``).
    ``sampling_grid``: see :class:`RegistrationFilter`. With ``config.warm_start`` each run starts
    from the registration in force (:func:`run_register`'s ``start``). With a ``track`` graph as well,
    only every ``config.register_every``-th run (and any run while no estimate is in force) is a
    register-graph run; the others refine the registration in force, its non-affine part too, with
    the track graph (:func:`run_track`), so that a still rig's registration improves or is confirmed
    on every run at a fraction of the cost. Every estimate passes the same filter; there, with a track
    graph, ``config.smoothing`` weighs the track graph's estimates and a register-graph estimate that
    is taken replaces the registration in force whole (:data:`REGISTER_SMOOTHING`). A register graph
    exported with ``keypoint_start`` also tries the keypoint affine as a start (:mod:`.keypoint_start`)
    on the first register-graph run and every :data:`KEYPOINT_EVERY`-th after it.
    """

    def __init__(
        self,
        backend: InferenceBackend,
        config: RegistrationConfig,
        geometry: RegistrationGeometry,
        *,
        observe: Callable[[str, float], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        sampling_grid: bool = False,
        track: InferenceBackend | None = None,
    ) -> None:
        self.backend = backend
        self.track = track
        self.config = config
        self.geometry = geometry
        self.filter = RegistrationFilter(config, geometry, sampling_grid=sampling_grid)
        self.runs = 0
        self.register_runs = 0
        self.errors = 0
        self._observe = observe
        self._clock = clock
        self._cond = threading.Condition()
        self._pending: tuple[np.ndarray, np.ndarray, float] | None = None
        self._offered_since_run = 0
        self._next_due = -math.inf
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def state(self) -> RegistrationState | None:
        return self.filter.state

    def due(self) -> bool:
        if self.config.every_n_pairs is not None:
            return self._offered_since_run >= self.config.every_n_pairs
        return self._clock() >= self._next_due

    def _started_run(self) -> None:
        """Book-keeping when a run starts (caller holds the lock)."""
        self._offered_since_run = 0
        if self.config.rate_hz is not None:
            now = self._clock()
            self._next_due = max(self._next_due + 1.0 / self.config.rate_hz, now)

    def offer(self, vis_y: np.ndarray, ir: np.ndarray, t_capture: float) -> bool:
        """Hand over a pair's full-size luminance and normalised IR (not copied: do not modify them).

        Returns True when the pair became the next job (it may still be superseded by a newer
        pair if the thread is busy).
        """
        with self._cond:
            self._offered_since_run += 1
            if not self.due():
                return False
            self._pending = (vis_y, ir, t_capture)
            self._cond.notify()
            return True

    def register_now(self, vis_y: np.ndarray, ir: np.ndarray, t_capture: float) -> RegistrationState | None:
        """Estimate synchronously on the calling thread (the first pair, before the thread starts)."""
        with self._cond:
            self._next_due = self._clock()
            self._started_run()
        return self._run(vis_y, ir, t_capture)

    def _run(self, vis_y: np.ndarray, ir: np.ndarray, t_capture: float) -> RegistrationState | None:
        started = time.perf_counter()
        stage = "register"
        try:
            held = self.filter.state
            start = held.theta if self.config.warm_start and held is not None else None
            tracking = self.track is not None and self.config.warm_start
            # A track-graph run (see the class): a registration is in force and this is not a register run.
            if (tracking and held is not None and held.source != "prior"
                    and self.runs % self.config.register_every != 0):
                stage = "track"
                estimate = run_track(self.track, self.geometry, vis_y, ir, t_capture, held.theta, held.grid,
                                     with_view=self.config.plausibility.must_agree)
            elif self.backend.metadata.keypoint_start and self.register_runs % KEYPOINT_EVERY == 0:
                start_grid = held.grid if start is not None else self.filter.prior_grid
                estimate = register_with_keypoints(self.backend, self.geometry, vis_y, ir, t_capture, start,
                                                   start_grid)
            else:
                estimate = run_register(self.backend, self.geometry, vis_y, ir, t_capture, start,
                                        with_view=self.config.plausibility.must_agree)
            if stage == "register":
                self.register_runs += 1
            state = self.filter.update(estimate, smoothing=REGISTER_SMOOTHING if tracking and stage == "register"
                                       else None)
        except RunCancelled:  # stop() ended the run: nothing failed
            return self.filter.state
        # A transient backend failure must not kill the thread: the last good estimate stays.
        except Exception:
            self.errors += 1
            log.exception("registration failed; keeping the current estimate")
            return self.filter.state
        finally:
            self.runs += 1
        if self._observe is not None:
            self._observe(stage, time.perf_counter() - started)
        return state

    def _loop(self) -> None:
        while not self._stop.is_set():
            with self._cond:
                while self._pending is None and not self._stop.is_set():
                    self._cond.wait(0.1)
                if self._stop.is_set():
                    return
                job, self._pending = self._pending, None
                self._started_run()
            assert job is not None
            self._run(*job)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="registration", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 1.0) -> None:
        """Stop the thread; a run in progress is cancelled (:meth:`InferenceBackend.cancel`), so that
        the process never exits with the thread inside the backend."""
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        self.backend.cancel()
        if self.track is not None:
            self.track.cancel()
        if self._thread is not None:
            self._thread.join(timeout)
