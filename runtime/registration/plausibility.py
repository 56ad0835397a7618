"""What to trust: plausibility checks, hold-last-good and smoothing of successive estimates.

Each estimate of the ``register`` graph (or of the ``track`` graph) is judged
(:meth:`RegistrationFilter.judge`): a folded or off-frame grid, a rotation or scale far from the
prior, or a jump from the last accepted estimate is rejected and the last good registration is
held, its confidence decaying; a run of rejected estimates that agree with one another means the
rig really moved, and is followed ("re-lock"). With ``plausibility.must_agree``, an estimate must
also align the pair it came from better than the registration in force does, by
``plausibility.agree_gain`` (before any: at least as well as the prior), by the edge-orientation
agreement of :mod:`busref.orientation`; a re-lock must pass that test too. Why: a network trained
on one camera pair can be confidently wrong on another scene (on the synthetic demo its correction
left the IR 40 px off where the prior alone was 17 px off); judged on the pair itself, a wrong
estimate is never taken, so the published registration never gets worse than what is in force;
and the gain keeps a still rig's warm-started estimates from drifting once their agreement no
longer tells a better registration from a worse one.
Accepted estimates are blended into the state in force by an exponential moving average.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from busref.conventions import affine_grid
from busref.rig_config.schema import RegistrationConfig
from busref.runtime.registration.geometry import (
    Estimate,
    RegistrationGeometry,
    corner_displacement,
    identity_theta,
    rotation_scale,
)

log = logging.getLogger(__name__)

#: A grid whose Jacobian is folded (det <= 0) on more than this fraction of cells is degenerate.
MAX_FOLDED_FRACTION = 0.02
#: Fraction of grid samples that must land inside the IR frame (with a 10 % margin).
MIN_INSIDE_FRACTION = 0.5
#: Confidence of a held estimate is multiplied by this for each consecutive rejection.
HELD_CONFIDENCE_DECAY = 0.8
#: After this many consecutive rejected estimates that agree with one another, the rig is taken
#: to have really moved (a bumped camera) and the new estimate is accepted ("re-lock").
RELOCK_AFTER = 5
NON_FINITE = "non-finite output"


def grid_quality(grid: np.ndarray) -> tuple[float, float]:
    """``(folded, inside)``: fraction of grid cells whose Jacobian determinant is <= 0, and
    fraction of samples within the moving image (normalised [-1.1, 1.1]); NaNs count as bad.

    ``grid``: (H, W, 2) normalised (u, v).
    """
    if not np.all(np.isfinite(grid)):
        return 1.0, 0.0
    du_dx = np.diff(grid[:, :, 0], axis=1)[:-1]
    dv_dx = np.diff(grid[:, :, 1], axis=1)[:-1]
    du_dy = np.diff(grid[:, :, 0], axis=0)[:, :-1]
    dv_dy = np.diff(grid[:, :, 1], axis=0)[:, :-1]
    folded = float(np.mean(du_dx * dv_dy - du_dy * dv_dx <= 0.0))
    inside = float(np.mean(np.all(np.abs(grid) <= 1.1, axis=-1)))
    return folded, inside


@dataclass(frozen=True)
class Judgement:
    accepted: bool
    confidence: float
    reason: str = ""


@dataclass(frozen=True)
class RegistrationState:
    """The registration in force: what the pipeline warps with, and what headers report."""

    version: int
    theta: np.ndarray  # (2, 3) smoothed coarse affine, normalised
    grid: np.ndarray  # (H_reg, W_reg, 2) smoothed sampling grid, normalised
    source: Literal["fine", "coarse", "held", "prior"]
    confidence: float
    t_capture: float  # capture time (monotonic s) of the pair of the newest accepted estimate
    frame_to_ir: np.ndarray  # 3x3: published-frame pixel -> IR pixel (coarse part)
    map1: np.ndarray = field(repr=False)  # cv2.remap maps at the output size
    map2: np.ndarray = field(repr=False)
    # The frame graph's grid input (1, H_out, W_out, 2), when the filter was asked for it
    # (GPU per-frame path); the same array object for as long as this estimate is in force.
    sampling_grid: np.ndarray | None = field(default=None, repr=False)


class RegistrationFilter:
    """Plausibility check, hold-last-good and EMA smoothing of successive estimates.

    Not thread-safe: one registration thread feeds it. :meth:`update` returns the new state
    (also when the estimate is rejected: then ``source`` is ``held``). With ``sampling_grid``
    each new state also carries the ``frame`` graph's grid (:meth:`RegistrationGeometry.frame_grid`).
    """

    def __init__(self, config: RegistrationConfig, geometry: RegistrationGeometry, *,
                 sampling_grid: bool = False) -> None:
        self.config = config
        self.geometry = geometry
        self.sampling_grid = sampling_grid
        self.state: RegistrationState | None = None
        self.accepted = 0
        self.rejected = 0
        self.consecutive_rejections = 0
        self.not_better = 0  # estimates that aligned their pair worse than the registration in force
        # The prior's own grid (no correction): what an estimate must beat before any is accepted.
        self.prior_grid = affine_grid(identity_theta(), *geometry.reg_hw, coordinates="normalised")
        self._last_rejected: Estimate | None = None
        self._held_confidence = 0.0

    def judge(self, estimate: Estimate) -> Judgement:
        """Is ``estimate`` plausible, and how much is it trusted (confidence in [0, 1])?"""
        lim = self.config.plausibility
        g = self.geometry
        if not (np.all(np.isfinite(estimate.theta)) and np.all(np.isfinite(estimate.grid))):
            return Judgement(False, 0.0, NON_FINITE)
        folded, inside = grid_quality(estimate.grid)
        pixels = g.theta_pixels(estimate.theta)
        rotation, scale = rotation_scale(pixels)
        jump = 0.0
        if self.state is not None:
            jump = corner_displacement(pixels, g.theta_pixels(self.state.theta), g.rgb_size)
        confidence = (
            max(0.0, 1.0 - folded / MAX_FOLDED_FRACTION)
            * min(1.0, max(0.0, (inside - MIN_INSIDE_FRACTION) / (1.0 - MIN_INSIDE_FRACTION)))
            * max(0.0, 1.0 - (jump / lim.max_jump_px) ** 2)
        )
        if folded > MAX_FOLDED_FRACTION:
            return Judgement(False, confidence, f"grid folded on {folded:.1%} of cells")
        if inside < MIN_INSIDE_FRACTION:
            return Judgement(False, confidence, f"only {inside:.0%} of the grid samples the IR frame")
        if abs(rotation) > lim.max_rotation_deg:
            return Judgement(False, confidence, f"rotation {rotation:.1f} deg > {lim.max_rotation_deg}")
        if abs(scale - 1.0) > lim.max_scale_change:
            return Judgement(False, confidence, f"scale {scale:.3f} off by > {lim.max_scale_change}")
        if jump > lim.max_jump_px:
            return Judgement(False, confidence, f"jump of {jump:.1f} px > {lim.max_jump_px}")
        if confidence < lim.min_confidence:
            return Judgement(False, confidence, f"confidence {confidence:.2f} < {lim.min_confidence}")
        return Judgement(True, confidence)

    def _relock(self, estimate: Estimate) -> bool:
        """Consecutive rejections that agree with each other mean the rig moved: follow it."""
        previous = self._last_rejected
        if previous is None or self.consecutive_rejections + 1 < RELOCK_AFTER:
            return False
        g = self.geometry
        moved = corner_displacement(g.theta_pixels(estimate.theta), g.theta_pixels(previous.theta),
                                    g.rgb_size)
        folded, inside = grid_quality(estimate.grid)
        return (moved <= self.config.plausibility.max_jump_px and folded <= MAX_FOLDED_FRACTION
                and inside >= MIN_INSIDE_FRACTION)

    def disagreement(self, estimate: Estimate) -> str:
        """Why ``estimate`` does not align its own pair clearly better than the registration in force
        (``agree_gain``; before any: at least as well as the prior), by :meth:`PairView.agreement`;
        "" when it does, or when it cannot be told."""
        plausibility = self.config.plausibility
        if not plausibility.must_agree or estimate.view is None:
            return ""
        held = self.state
        in_force = held is not None and held.source != "prior"
        current = held.grid if held is not None else self.prior_grid
        # Track estimates too must gain: the stage's own bias on a scene then cannot walk the registration
        # away. With no gain asked of them the demo rig went from 1.67 to 2.43 px in 20 s (`busref
        # bench`), with it it stayed at 1.67 px; on 8 held-out RoadScene train pairs (still rig, the
        # register graph every 10th run) the gain cost 0.09 px by the 10th run (4.80 against 4.71 px).
        gain = plausibility.agree_gain if in_force else 0.0
        new, old = estimate.view.agreement(estimate.grid), estimate.view.agreement(current)
        if new >= old + gain * abs(old):
            return ""
        what = f"the registration in force by {gain:.0%}" if in_force else "the prior"
        return f"edges agree no better than with {what} ({new:.4f} against {old:.4f})"

    def update(self, estimate: Estimate, *, smoothing: float | None = None) -> RegistrationState | None:
        """Fold ``estimate`` in; returns the state now in force (None while nothing is: no estimate
        accepted yet, and the prior not shown to align the pairs better than one). ``smoothing``: the
        EMA weight of this estimate, in (0, 1] (None: ``registration.smoothing``)."""
        if smoothing is not None and not 0.0 < smoothing <= 1.0:
            raise ValueError(f"smoothing must be in (0, 1], got {smoothing}")
        judgement = self.judge(estimate)
        held = self.state
        # Without hold-last-good every finite estimate is taken, judged only for its confidence.
        finite = judgement.reason != NON_FINITE
        worse = self.disagreement(estimate) if finite else ""
        accept = not worse and (judgement.accepted or (not self.config.hold_last_good and finite))
        relock = not accept and not worse and self._relock(estimate)
        if worse:
            # The registration in force aligns this pair better: it stays, confirmed, at full confidence.
            self.not_better += 1
            log.debug("registration estimate not taken: %s", worse)
            if held is None:
                return self._install(identity_theta(), self.prior_grid, 0.0, estimate.t_capture, "prior")
            return held
        if not accept and not relock:
            self.rejected += 1
            self.consecutive_rejections += 1
            self._last_rejected = estimate
            log.info("registration estimate rejected (%s); holding the last good one", judgement.reason)
            if held is None:
                return None
            confidence = self._held_confidence * HELD_CONFIDENCE_DECAY**self.consecutive_rejections
            self.state = dataclasses.replace(held, source="held", confidence=confidence)
            return self.state
        if relock:
            log.warning("registration re-locked after %d consecutive rejections: the rig moved?",
                        self.consecutive_rejections)
        self.accepted += 1
        self.consecutive_rejections = 0
        self._last_rejected = None
        a = self.config.smoothing if smoothing is None else smoothing
        if held is None or relock or held.source == "prior":
            theta, grid, confidence = estimate.theta, estimate.grid, judgement.confidence
        else:
            theta = (1.0 - a) * held.theta + a * estimate.theta
            grid = (1.0 - a) * held.grid + a * estimate.grid
            confidence = (1.0 - a) * self._held_confidence + a * judgement.confidence
        if not self.config.deformable:
            grid = affine_grid(theta, *self.geometry.reg_hw, coordinates="normalised")
        return self._install(theta, grid, confidence, estimate.t_capture,
                             "fine" if self.config.deformable else "coarse")

    def _install(self, theta: np.ndarray, grid: np.ndarray, confidence: float, t_capture: float,
                 source: Literal["fine", "coarse", "prior"]) -> RegistrationState:
        """Make ``theta``/``grid`` the registration in force (warp maps computed once, here)."""
        held = self.state
        self._held_confidence = confidence
        map1, map2, sampling_grid = self.geometry.sampling(grid, with_frame_grid=self.sampling_grid)
        self.state = RegistrationState(
            version=0 if held is None else held.version + 1,
            theta=theta,
            grid=grid.astype(np.float32, copy=False),
            source=source,
            confidence=confidence,
            t_capture=t_capture,
            frame_to_ir=self.geometry.frame_to_ir(theta),
            map1=map1,
            map2=map2,
            sampling_grid=sampling_grid,
        )
        return self.state
