"""``busref bench --soak MINUTES``: run the daemon for a long time and watch for drift.

A rig runs for weeks: beyond the bench's speed, memory must level off and the frame rate and
latency must not trend. The soak runs the daemon in this process with one header-only
subscriber (as the bench does) and records, once per window, the resident memory, threads,
memory blocks held by Python's allocator, published and received frame rates,
capture->publish latency and the machine's load. (Not ``gc.get_objects()``: the list it returns
holds every tracked object, also a tuple another thread is still filling, and then OpenCV's
``PyTuple_SetItem`` fails in that thread: a short soak counting objects failed a pair that way.)

Two memory figures per window: ``rss_mb``, the RSS as ``ps`` shows it at the window's end, and
``rss_floor_mb``, the least of a few readings each taken right after returning the free heap to
the OS (:func:`~busref.runtime.memory.release_free_heap`, which the daemon itself does once a
minute): the floor leaves out heap that is free but kept, so when the RSS grows it tells a leak
(the floor grows too) from the allocator keeping more (it does not).

The verdict: after ``settle_min`` minutes (imports, allocator pools and latency windows
filling) the RSS growth over the remaining windows, taken from its least-squares trend (trend
per minute x minutes, so that one busy reading neither fails nor passes a run), must not exceed
``bound_mb``. (The floor is the noisier of the two, by a few MB from one reading to the next:
what is in flight at the instant it is read varies, while 60 s of running fills the RSS back to
the same level. A 12-minute demo-rig run: floor 303.8-312.6 MB, RSS 322.7-322.8 MB in 8 of 9
windows.)
"""

from __future__ import annotations

import gc
import math
import os
import sys
import threading
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from busref.runtime.daemon import Daemon
from busref.runtime.memory import os_threads, release_free_heap, rss_mb

#: Readings of the memory floor per window, this far apart (seconds): frames in flight vary
#: from one instant to the next, the least of a few readings much less.
FLOOR_READINGS, FLOOR_SPACING_S = 5, 0.2
#: Allocation sites listed in the report (with ``trace``).
_TOP = 10


@dataclass(frozen=True)
class Window:
    """What one soak window measured; ``t_min`` is minutes since the soak began."""

    t_min: float
    rss_mb: float
    rss_floor_mb: float
    threads: int
    python_blocks: int
    fps: float
    received_fps: float
    capture_to_publish_p50_ms: float
    capture_to_publish_p99_ms: float
    cpu_utilisation: float
    load_1m: float


def _ms(values: np.ndarray, q: float) -> float:
    return float(np.percentile(values, q) * 1e3) if values.size else math.nan


def trend_per_minute(t_min: list[float], values: list[float]) -> float:
    """Least-squares slope of ``values`` per minute (NaN with fewer than 3 finite points)."""
    points = [(t, v) for t, v in zip(t_min, values, strict=True) if math.isfinite(v)]
    if len(points) < 3:
        return math.nan
    t, v = np.asarray(points).T
    return float(np.polyfit(t, v, 1)[0])


def memory_floor() -> float:
    """The least RSS of a few readings, each right after the free heap went back to the OS."""
    readings = []
    for i in range(FLOOR_READINGS):
        if i:
            time.sleep(FLOOR_SPACING_S)
        release_free_heap()
        readings.append(rss_mb())
    return min(readings)


class Soak:
    """Measures a started daemon window by window; :meth:`report` summarises.

    ``received``: the subscriber's count of frames received so far. ``on_window`` is called
    after each window (to print or save progress). ``trace``: also compare tracemalloc
    snapshots (slow: every allocation is recorded) between the settled point and the end.
    """

    def __init__(self, daemon: Daemon, received: Callable[[], int], *, minutes: float, window_s: float = 60.0,
                 settle_min: float = 5.0, bound_mb: float = 2.0, trace: bool = False,
                 on_window: Callable[[Soak], None] | None = None) -> None:
        if minutes <= settle_min:
            raise ValueError(f"a soak of {minutes:g} min must last longer than its settling time ({settle_min:g} min)")
        self.daemon, self._received = daemon, received
        self.minutes, self.window_s, self.settle_min, self.bound_mb = minutes, window_s, settle_min, bound_mb
        self.trace = trace
        self.on_window = on_window
        self.stop = threading.Event()
        self.windows: list[Window] = []
        self.settled_at: int | None = None  # index of the first window after settling
        self._snapshot: tracemalloc.Snapshot | None = None
        self.allocation_growth: list[dict[str, Any]] = []

    def run(self) -> None:
        pipe = self.daemon.pipeline
        if pipe is None:
            raise RuntimeError("start the daemon before soaking it")
        if self.trace:
            tracemalloc.start(4)
        started = time.monotonic()
        end = started + self.minutes * 60.0
        while time.monotonic() < end - 1.0 and not self.stop.is_set():
            pipe.capture_to_publish.reset()
            published, received = pipe.counters.published, self._received()
            cpu, t0 = os.times(), time.monotonic()
            self.stop.wait(min(self.window_s, end - t0))
            elapsed = time.monotonic() - t0
            cpu1 = os.times()
            fps = (pipe.counters.published - published) / elapsed
            received_fps = (self._received() - received) / elapsed
            latency = pipe.capture_to_publish.recent()
            gc.collect()  # count live blocks, not garbage waiting for a collection
            window = Window(
                t_min=(time.monotonic() - started) / 60.0,
                rss_mb=rss_mb(),
                rss_floor_mb=memory_floor(),
                threads=os_threads(),
                python_blocks=sys.getallocatedblocks(),
                fps=fps,
                received_fps=received_fps,
                capture_to_publish_p50_ms=_ms(latency, 50),
                capture_to_publish_p99_ms=_ms(latency, 99),
                cpu_utilisation=((cpu1.user - cpu.user) + (cpu1.system - cpu.system)) / elapsed,
                load_1m=os.getloadavg()[0],
            )
            self.windows.append(window)
            if self.settled_at is None and window.t_min >= self.settle_min:
                self.settled_at = len(self.windows) - 1
                if self.trace:
                    self._snapshot = tracemalloc.take_snapshot()
            if self.on_window is not None:
                self.on_window(self)
        if self._snapshot is not None:
            stats = tracemalloc.take_snapshot().compare_to(self._snapshot, "lineno")
            self.allocation_growth = [{"site": str(s.traceback[0]), "kb": round(s.size_diff / 1024, 1),
                                       "count": s.count_diff} for s in stats[:_TOP]]
        if self.trace:
            tracemalloc.stop()

    def settled(self) -> list[Window]:
        """The windows from the settled point on (empty before it)."""
        return [] if self.settled_at is None else self.windows[self.settled_at:]

    def growth_mb(self, field: str = "rss_mb") -> float:
        """Growth of ``field`` (``rss_mb`` or ``rss_floor_mb``) over the settled windows, from its
        trend (NaN with fewer than 3 windows)."""
        after = self.settled()
        if len(after) < 3:
            return math.nan
        span = after[-1].t_min - after[0].t_min
        return trend_per_minute([w.t_min for w in after], [getattr(w, field) for w in after]) * span

    def passed(self) -> bool:
        growth = self.growth_mb()
        return math.isfinite(growth) and growth <= self.bound_mb

    def report(self) -> dict[str, Any]:
        """Every window; the memory growth against the bound; the fps and p99 trends; the load."""
        after = self.settled()

        def per_hour(field: str) -> float:
            return trend_per_minute([w.t_min for w in after], [getattr(w, field) for w in after]) * 60.0

        def mean(field: str, windows: list[Window]) -> float:
            values = [getattr(w, field) for w in windows if math.isfinite(getattr(w, field))]
            return float(np.mean(values)) if values else math.nan

        summary: dict[str, Any] = {
            "minutes": self.windows[-1].t_min if self.windows else 0.0,
            "window_s": self.window_s,
            "settle_min": self.settle_min,
            "rss_bound_mb": self.bound_mb,
            "rss_growth_after_settle_mb": self.growth_mb(),
            "rss_floor_growth_after_settle_mb": self.growth_mb("rss_floor_mb"),
            "passed": self.passed(),
        }
        if after:
            first, last = after[0], after[-1]
            summary.update({
                "rss_first_window_mb": self.windows[0].rss_mb,
                "rss_settled_mb": first.rss_mb, "rss_end_mb": last.rss_mb,
                "rss_min_after_settle_mb": min(w.rss_mb for w in after),
                "rss_max_after_settle_mb": max(w.rss_mb for w in after),
                "rss_floor_settled_mb": first.rss_floor_mb, "rss_floor_end_mb": last.rss_floor_mb,
                "threads_settled": first.threads, "threads_end": last.threads,
                "python_blocks_settled": first.python_blocks, "python_blocks_end": last.python_blocks,
                "fps_mean": mean("fps", after), "fps_min": min(w.fps for w in after),
                "fps_trend_per_hour": per_hour("fps"),
                "capture_to_publish_p99_ms_mean": mean("capture_to_publish_p99_ms", after),
                "capture_to_publish_p99_ms_trend_per_hour": per_hour("capture_to_publish_p99_ms"),
                "cpu_utilisation_mean": mean("cpu_utilisation", after),
            })
        summary.update({"load_1m_mean": mean("load_1m", self.windows),
                        "load_1m_max": max((w.load_1m for w in self.windows), default=math.nan),
                        "cpu_count": os.cpu_count()})
        return {"summary": summary, "windows": [asdict(w) for w in self.windows],
                "allocation_growth": self.allocation_growth}
