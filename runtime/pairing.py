"""Pair IR and RGB frames by capture time, and hand the consumer only the newest pair.

Matching rule: an IR frame ``a`` and an RGB frame ``b`` pair when each is the other's nearest
frame in time and ``|t_a - t_b| <= max_skew``. Each frame is used at most once, so cameras at
different rates (IR 30 Hz with RGB 60 Hz, a 9 Hz Lepton with 30 Hz RGB) give pairs at the
slower rate and the surplus frames of the faster camera are dropped and counted.

A pair is decided as soon as no future frame can be nearer: each camera's next frame is
expected no earlier than ``GUARD`` of its frame period after its latest one (the period is
estimated from recent timestamps), so a pair is usually decided when its second frame
arrives instead of one frame period later. Jitter beyond ``1 - GUARD`` of a period can make
a pair slightly less than optimal, never wrong by more than the max skew.

Latest-pair semantics: a decided pair replaces any pair the consumer has not taken yet
(counted as ``superseded``); a slow consumer always gets the newest pair, never a backlog.
"""

from __future__ import annotations

import bisect
import itertools
import statistics
import threading
from collections import deque
from dataclasses import dataclass

from busref.runtime.capture import Frame

IR, RGB = "ir", "rgb"
#: A camera's next frame is assumed to come at least this fraction of its period after the last.
GUARD = 0.75
_PERIOD_WINDOW = 9  # timestamps per camera used to estimate its frame period


@dataclass(frozen=True)
class FramePair:
    """An IR and an RGB frame taken at nearly the same time; ``skew_s = ir.t - rgb.t`` (signed)."""

    ir: Frame
    rgb: Frame
    skew_s: float


@dataclass(frozen=True)
class PairingStats:
    """``pairs``: pairs formed; ``unmatched_*``: frames dropped without a partner;
    ``superseded``: pairs replaced by a newer one before the consumer took them."""

    pairs: int
    unmatched_ir: int
    unmatched_rgb: int
    superseded: int
    last_skew_s: float | None


class Pairer:
    """Thread-safe pairing of frames from the ``"ir"`` and ``"rgb"`` capture threads.

    ``max_skew_s``: largest accepted ``|t_ir - t_rgb|``. ``history``: frames kept per camera
    while waiting for a partner (bounds memory when one camera stalls).
    """

    def __init__(self, max_skew_s: float, history: int = 8) -> None:
        if max_skew_s <= 0:
            raise ValueError(f"max_skew_s must be positive, got {max_skew_s}")
        self.max_skew_s = max_skew_s
        self.history = history
        self._pending: dict[str, list[Frame]] = {IR: [], RGB: []}
        self._recent: dict[str, deque[float]] = {c: deque(maxlen=_PERIOD_WINDOW) for c in (IR, RGB)}
        self._latest: FramePair | None = None
        self._cond = threading.Condition()
        self._counts = {"pairs": 0, "unmatched_ir": 0, "unmatched_rgb": 0, "superseded": 0}
        self._last_skew: float | None = None

    # ------------------------------------------------------------------ producers

    def add(self, frame: Frame) -> None:
        """Feed one frame (from any thread); ``frame.camera`` must be ``"ir"`` or ``"rgb"``."""
        if frame.camera not in self._pending:
            raise ValueError(f"frame from unknown camera {frame.camera!r}; expected 'ir' or 'rgb'")
        with self._cond:
            pending = self._pending[frame.camera]
            # Timestamps can jitter out of order; keep each camera's list sorted by time.
            bisect.insort(pending, frame, key=lambda f: f.t_capture)
            self._recent[frame.camera].append(frame.t_capture)
            while len(pending) > self.history:
                pending.pop(0)
                self._counts[f"unmatched_{frame.camera}"] += 1
            self._match()

    # ------------------------------------------------------------------ consumer

    def latest_pair(self, timeout: float | None = None) -> FramePair | None:
        """Take the newest pair not yet taken; waits up to ``timeout`` s (None: forever) for one."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._latest is not None, timeout):
                return None
            pair, self._latest = self._latest, None
            return pair

    @property
    def stats(self) -> PairingStats:
        with self._cond:
            return PairingStats(**self._counts, last_skew_s=self._last_skew)

    # ------------------------------------------------------------------ matching

    def _earliest_next(self, camera: str) -> float:
        """Earliest capture time the camera's next frame can plausibly have."""
        recent = sorted(self._recent[camera])
        if len(recent) < 3:
            return recent[-1]
        period = statistics.median(b - a for a, b in itertools.pairwise(recent))
        return recent[-1] + GUARD * period

    def _match(self) -> None:
        """Decide every pair that can be decided now (caller holds the lock)."""
        irs, rgbs = self._pending[IR], self._pending[RGB]
        while irs and rgbs:
            a = irs[0]
            b = min(rgbs, key=lambda f: abs(f.t_capture - a.t_capture))
            gap = abs(b.t_capture - a.t_capture)
            if self._earliest_next(RGB) - a.t_capture < gap:
                return  # a future RGB frame could still be nearer to a
            if gap > self.max_skew_s:
                irs.pop(0)
                self._counts["unmatched_ir"] += 1
                continue
            nearest = min(irs, key=lambda f: abs(f.t_capture - b.t_capture))
            if self._earliest_next(IR) - b.t_capture < abs(nearest.t_capture - b.t_capture):
                return  # likewise a future IR frame could be nearer to b
            if nearest is not a:
                irs.pop(0)  # a later IR frame suits b better; a has no partner
                self._counts["unmatched_ir"] += 1
                continue
            index = rgbs.index(b)
            self._counts["unmatched_rgb"] += index  # older RGB frames can no longer pair
            del rgbs[:index + 1]
            irs.pop(0)
            self._emit(FramePair(a, b, a.t_capture - b.t_capture))

    def _emit(self, pair: FramePair) -> None:
        if self._latest is not None:
            self._counts["superseded"] += 1
        self._latest = pair
        self._counts["pairs"] += 1
        self._last_skew = pair.skew_s
        self._cond.notify_all()
