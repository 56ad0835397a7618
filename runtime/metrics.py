"""Minimal Prometheus text exposition (format 0.0.4) over ``http.server``, and latency histograms.

The daemon's counters live in its components (capture threads, pairer, publisher...); they are
gathered at scrape time into :class:`Family` objects, so nothing is counted twice. Stage
latencies are :class:`Histogram` objects that also keep a window of recent samples, from which
the bench and the status topic read percentiles.
"""

from __future__ import annotations

import bisect
import logging
import math
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Literal

import numpy as np

log = logging.getLogger(__name__)

#: Latency buckets (seconds): 1 ms .. 2 s, dense around a 30 fps frame budget.
LATENCY_BUCKETS: tuple[float, ...] = (0.001, 0.0025, 0.005, 0.01, 0.015, 0.02, 0.025, 0.033, 0.04, 0.05,
                                      0.065, 0.08, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.0)

Labels = dict[str, str]


@dataclass
class Family:
    """One metric family at scrape time: ``samples`` are (labels, value) pairs."""

    name: str
    kind: Literal["counter", "gauge"]
    help: str
    samples: list[tuple[Labels, float]] = field(default_factory=list)


def _labels(labels: Labels) -> str:
    if not labels:
        return ""
    escaped = (f'{k}="{v}"'.replace("\\", "\\\\").replace("\n", "\\n") for k, v in labels.items())
    return "{" + ",".join(escaped) + "}"


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if math.isnan(value):
        return "NaN"
    return repr(float(value))


class Histogram:
    """Thread-safe latency histogram (seconds) with a window of the most recent samples.

    The window is a ring of ``window`` float64 values allocated and written once, at
    construction, so its memory is constant from the first sample. (A ``deque`` of Python
    floats costs ~32 bytes a sample: the daemon's nine histograms grew by ~8 kB/s at 30 fps until
    their windows filled, after 11 minutes for the per-frame stages and 55 for ``register`` at
    6 Hz, which is the steady RSS growth a 10-minute run measured: +230 kB every 30 s.)
    """

    def __init__(self, buckets: Sequence[float] = LATENCY_BUCKETS, window: int = 20000) -> None:
        if window < 1:
            raise ValueError(f"window must be at least 1 sample, got {window}")
        self.buckets = tuple(sorted(buckets))
        self._counts = [0] * (len(self.buckets) + 1)
        self._sum = 0.0
        self._count = 0
        # np.full writes every page now; np.zeros would leave the kernel to map them in one by
        # one as the ring fills: the same slow RSS growth over the first minutes again.
        self._ring = np.full(window, math.nan)
        self._next = 0  # ring index of the next sample
        self._filled = 0  # samples in the ring since the last reset, at most ``window``
        self._lock = threading.Lock()

    def observe(self, seconds: float) -> None:
        with self._lock:
            self._counts[bisect.bisect_left(self.buckets, seconds)] += 1
            self._sum += seconds
            self._count += 1
            self._ring[self._next] = seconds
            self._next = (self._next + 1) % self._ring.size
            self._filled = min(self._filled + 1, self._ring.size)

    def reset(self) -> None:
        """Forget everything observed (a bench discards its warm-up this way)."""
        with self._lock:
            self._counts = [0] * (len(self.buckets) + 1)
            self._sum = 0.0
            self._count = 0
            self._next = self._filled = 0

    @property
    def count(self) -> int:
        return self._count

    def percentiles(self, qs: Iterable[float] = (50, 99)) -> dict[str, float]:
        """``{"p50": s, "p99": s, ...}`` over the recent window (NaN when empty)."""
        recent = self.recent()
        return {f"p{q:g}": float(np.percentile(recent, q)) if recent.size else math.nan for q in qs}

    def recent(self) -> np.ndarray:
        """The samples in the window, oldest first (a copy)."""
        with self._lock:
            if self._filled < self._ring.size:
                return self._ring[:self._filled].copy()
            return np.concatenate((self._ring[self._next:], self._ring[:self._next]))

    def exposition(self, name: str, labels: Labels) -> list[str]:
        with self._lock:
            counts, total, count = list(self._counts), self._sum, self._count
        lines = []
        cumulative = 0
        for bound, n in zip((*self.buckets, math.inf), counts, strict=True):
            cumulative += n
            lines.append(f"{name}_bucket{_labels({**labels, 'le': _number(bound)})} {cumulative}")
        lines.append(f"{name}_sum{_labels(labels)} {_number(total)}")
        lines.append(f"{name}_count{_labels(labels)} {count}")
        return lines


@dataclass
class HistogramFamily:
    name: str
    help: str
    label: str
    members: dict[str, Histogram]


def render(families: Iterable[Family], histograms: Iterable[HistogramFamily] = ()) -> str:
    """The text exposition of ``families`` and ``histograms``."""
    lines: list[str] = []
    for fam in families:
        lines += [f"# HELP {fam.name} {fam.help}", f"# TYPE {fam.name} {fam.kind}"]
        lines += [f"{fam.name}{_labels(labels)} {_number(value)}" for labels, value in fam.samples]
    for hist in histograms:
        lines += [f"# HELP {hist.name} {hist.help}", f"# TYPE {hist.name} histogram"]
        for key, member in hist.members.items():
            lines += member.exposition(hist.name, {hist.label: key} if hist.label else {})
    return "\n".join(lines) + "\n"


class MetricsServer:
    """Serves ``text()`` at ``http://host:port/metrics`` from a daemon thread; port 0 picks a free one."""

    def __init__(self, host: str, port: int, text: Callable[[], str]) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.split("?")[0] not in ("/metrics", "/"):
                    self.send_error(404, "only /metrics is served")
                    return
                body = text().encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                log.debug("metrics: " + format, *args)

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.1},
                                        name="metrics-http", daemon=True)
        self._thread.start()
        log.info("Prometheus metrics at http://%s:%d/metrics", host, self.port)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
