"""Registration of the IR stream onto the RGB stream: when to estimate, what to trust, how to warp.

Coordinate conventions (all sizes as (width, height) for frames, (H, W) for network tensors):

* The IR->RGB prior homography ``P`` (``RigConfig.prior_homography``: calibrated, else the
  same-field-of-view default) maps IR pixels to RGB pixels; it is applied first: the ``register``
  network sees the IR already warped by ``P`` into the RGB frame's geometry (the "pre-warped
  canvas"), at the registration size.
* Both network inputs are made at the registration size with OpenCV's half-pixel convention
  (``cv2.resize``): RGB pixel ``x`` <-> registration pixel ``(x + 0.5) * W_reg / W_rgb - 0.5``.
* The network's normalised coordinates follow ``align_corners=True`` at the registration size:
  ``u = 2 x_reg / (W_reg - 1) - 1``. Its ``grid[y, x] = (u, v)`` says where in the pre-warped
  canvas the reference pixel ``(x, y)`` samples; through ``P^-1`` that is an IR pixel.
  (With equal sizes and no prior this is ``x_ir = (u + 1) / 2 * (W_ir - 1)``.)
* :meth:`RegistrationGeometry.sampling` upsamples the grid bilinearly to the output size and
  converts it to IR pixel coordinates (:func:`ir_pixels`), once per new estimate (never per
  frame), for ``cv2.remap`` maps and, for the ``frame`` graph (GPU backends), :func:`frame_grid`:
  the same IR locations normalised to the IR frame (``align_corners=True``:
  ``u = 2 x_ir / (W_ir - 1) - 1``).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import cv2
import numpy as np

from rig_config.schema import RegistrationConfig, RigConfig
from runtime.backends.base import InferenceBackend

log = logging.getLogger(__name__)

Size = tuple[int, int]  # (width, height)

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


# --------------------------------------------------------------------------- geometry


def rgb_to_norm(rgb_size: Size, reg_hw: tuple[int, int]) -> np.ndarray:
    """3x3 map from RGB pixel ``(x, y, 1)`` to the registration canvas' normalised ``(u, v, 1)``."""
    h_r, w_r = reg_hw
    to_norm = np.array([[2.0 / (w_r - 1), 0.0, -1.0], [0.0, 2.0 / (h_r - 1), -1.0], [0.0, 0.0, 1.0]])
    return to_norm @ rgb_to_reg(rgb_size, reg_hw)


def rgb_to_reg(rgb_size: Size, reg_hw: tuple[int, int]) -> np.ndarray:
    """3x3 map from RGB pixels to registration-canvas pixels (``cv2.resize``'s half-pixel convention)."""
    w_rgb, h_rgb = rgb_size
    h_r, w_r = reg_hw
    sx, sy = w_r / w_rgb, h_r / h_rgb
    return np.array([[sx, 0.0, 0.5 * sx - 0.5], [0.0, sy, 0.5 * sy - 0.5], [0.0, 0.0, 1.0]])


def identity_theta() -> np.ndarray:
    return np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])


def affine_grid(theta: np.ndarray, reg_hw: tuple[int, int]) -> np.ndarray:
    """``F.affine_grid(theta, align_corners=True)`` in numpy: (H, W, 2) float32 normalised (u, v)."""
    h, w = reg_hw
    xs = np.linspace(-1.0, 1.0, w)
    ys = np.linspace(-1.0, 1.0, h)
    gx, gy = np.meshgrid(xs, ys)
    t = np.asarray(theta, dtype=np.float64)
    u = t[0, 0] * gx + t[0, 1] * gy + t[0, 2]
    v = t[1, 0] * gx + t[1, 1] * gy + t[1, 2]
    return np.stack([u, v], axis=-1).astype(np.float32)


def theta_to_pixels(theta: np.ndarray, rgb_size: Size, reg_hw: tuple[int, int]) -> np.ndarray:
    """The normalised affine ``theta`` (2x3) as a 3x3 map of RGB pixels to pre-warped-canvas RGB pixels."""
    n = rgb_to_norm(rgb_size, reg_hw)
    return np.linalg.inv(n) @ np.vstack([theta, [0.0, 0.0, 1.0]]) @ n


def pixels_to_theta(matrix: np.ndarray, rgb_size: Size, reg_hw: tuple[int, int]) -> np.ndarray:
    """Inverse of :func:`theta_to_pixels`: a 3x3 affine pixel map back to a normalised 2x3 theta."""
    n = rgb_to_norm(rgb_size, reg_hw)
    return (n @ matrix @ np.linalg.inv(n))[:2]


def corner_displacement(a: np.ndarray, b: np.ndarray, size: Size) -> float:
    """Largest distance (pixels) between where 3x3 maps ``a`` and ``b`` send the frame's corners."""
    w, h = size
    corners = np.array([[0, 0, 1], [w - 1, 0, 1], [0, h - 1, 1], [w - 1, h - 1, 1]], dtype=np.float64).T
    pa, pb = a @ corners, b @ corners
    pa, pb = pa[:2] / pa[2], pb[:2] / pb[2]
    return float(np.max(np.hypot(*(pa - pb))))


def rotation_scale(matrix: np.ndarray) -> tuple[float, float]:
    """Rotation (degrees) and isotropic scale of the linear part of a 3x3 (near-)similarity."""
    a = matrix[:2, :2]
    rotation = math.degrees(math.atan2(a[1, 0] - a[0, 1], a[0, 0] + a[1, 1]))
    return rotation, math.sqrt(abs(float(np.linalg.det(a))))


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


def ir_pixels(grid: np.ndarray, norm_to_ir: np.ndarray, out_size: Size) -> tuple[np.ndarray, np.ndarray]:
    """The IR pixel ``(x, y)`` each output pixel samples: two (H_out, W_out) float32 arrays.

    ``grid``: (H_reg, W_reg, 2) float32 normalised canvas coordinates, upsampled bilinearly.
    ``norm_to_ir``: 3x3 from canvas-normalised ``(u, v, 1)`` to IR pixels
    (``P^-1 @ rgb_to_norm^-1``). ``out_size``: (width, height) of the output, covering the same
    extent as the RGB frame.
    """
    w, h = out_size
    up = cv2.resize(grid, (w, h), interpolation=cv2.INTER_LINEAR)
    m = norm_to_ir.astype(np.float32)
    u, v = up[:, :, 0], up[:, :, 1]
    x = m[0, 0] * u + m[0, 1] * v + m[0, 2]
    y = m[1, 0] * u + m[1, 1] * v + m[1, 2]
    if not np.allclose(m[2], (0.0, 0.0, 1.0)):
        z = m[2, 0] * u + m[2, 1] * v + m[2, 2]
        x /= z
        y /= z
    return x, y


def frame_grid(x: np.ndarray, y: np.ndarray, ir_size: Size) -> np.ndarray:
    """The ``frame`` graph's ``grid`` input from the IR pixel coordinates of :func:`ir_pixels`:
    (1, H_out, W_out, 2) float32 normalised to the IR frame of ``ir_size`` (width, height), x
    first, ``align_corners=True``: what ``grid_sample`` needs to sample like ``cv2.remap`` with
    :meth:`RegistrationGeometry.maps` (up to the maps' 1/32-pixel fixed point). ``x``, ``y`` are not changed."""
    w_ir, h_ir = ir_size
    u = x * np.float32(2.0 / (w_ir - 1)) - np.float32(1.0)
    v = y * np.float32(2.0 / (h_ir - 1)) - np.float32(1.0)
    return np.stack([u, v], axis=-1)[None]


# --------------------------------------------------------------------------- estimates


@dataclass(frozen=True)
class Estimate:
    """One output of the ``register`` graph: ``theta`` (2, 3) and ``grid`` (H_reg, W_reg, 2), normalised."""

    theta: np.ndarray
    grid: np.ndarray
    t_capture: float  # capture time (monotonic s) of the pair it was computed from


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
    source: Literal["fine", "coarse", "held"]
    confidence: float
    t_capture: float  # capture time (monotonic s) of the pair of the newest accepted estimate
    frame_to_ir: np.ndarray  # 3x3: published-frame pixel -> IR pixel (coarse part)
    map1: np.ndarray = field(repr=False)  # cv2.remap maps at the output size
    map2: np.ndarray = field(repr=False)
    # The frame graph's grid input (1, H_out, W_out, 2), when the filter was asked for it
    # (GPU per-frame path); the same array object for as long as this estimate is in force.
    sampling_grid: np.ndarray | None = field(default=None, repr=False)


@dataclass(frozen=True)
class RegistrationGeometry:
    """Sizes and the prior of one rig; converts estimates to pixels and warp maps."""

    rgb_size: Size
    ir_size: Size
    reg_hw: tuple[int, int]
    out_size: Size
    prior: np.ndarray  # 3x3 IR pixel -> RGB pixel

    @classmethod
    def from_config(cls, config: RigConfig, *, out_size: Size) -> RegistrationGeometry:
        """The rig's geometry; the prior is the resolved one (calibrated, or the same-view default)."""
        cams = config.cameras
        return cls(rgb_size=(cams.rgb.width, cams.rgb.height), ir_size=(cams.ir.width, cams.ir.height),
                   reg_hw=tuple(config.registration.size), out_size=out_size,
                   prior=np.asarray(config.prior_homography, dtype=np.float64))

    @property
    def ir_to_canvas(self) -> np.ndarray:
        """3x3 IR pixel -> registration-canvas pixel: how the IR input of the network is made."""
        return rgb_to_reg(self.rgb_size, self.reg_hw) @ self.prior

    @property
    def norm_to_ir(self) -> np.ndarray:
        return np.linalg.inv(self.prior) @ np.linalg.inv(rgb_to_norm(self.rgb_size, self.reg_hw))

    def theta_pixels(self, theta: np.ndarray) -> np.ndarray:
        """``theta`` as RGB pixel -> canvas RGB pixel (the correction on top of the prior)."""
        return theta_to_pixels(theta, self.rgb_size, self.reg_hw)

    def frame_to_ir(self, theta: np.ndarray) -> np.ndarray:
        """Published-frame (RGB) pixel -> IR pixel for the coarse affine ``theta``."""
        return np.linalg.inv(self.prior) @ self.theta_pixels(theta)

    def network_inputs(self, vis_y: np.ndarray, ir: np.ndarray) -> dict[str, np.ndarray]:
        """The ``register`` graph inputs from full-size frames.

        ``vis_y``: (H_rgb, W_rgb) uint8 luminance. ``ir``: (H_ir, W_ir) float32 [0, 1] normalised IR.
        Returns ``vis``/``ir`` float32 (1, 1, H_reg, W_reg) in [0, 1]; the IR pre-warped by the prior.
        """
        h, w = self.reg_hw
        vis = cv2.resize(vis_y, (w, h), interpolation=cv2.INTER_AREA).astype(np.float32)
        vis *= np.float32(1.0 / 255.0)
        # Smoothing before the warp stands in for INTER_AREA, which warpPerspective lacks.
        scale = min(self.ir_size[0] / w, self.ir_size[1] / h)
        src = cv2.GaussianBlur(ir, (0, 0), 0.5 * scale) if scale > 1.5 else ir
        warped = cv2.warpPerspective(src, self.ir_to_canvas, (w, h), flags=cv2.INTER_LINEAR,
                                     borderMode=cv2.BORDER_CONSTANT, borderValue=0.0)
        return {"vis": vis[None, None], "ir": warped[None, None]}

    def maps(self, grid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``cv2.remap`` maps (CV_16SC2 + CV_16UC1; fixed point, 1/32 pixel) sending each output
        pixel to its IR pixel (:func:`ir_pixels`)."""
        return self.sampling(grid, with_frame_grid=False)[:2]

    def frame_grid(self, grid: np.ndarray) -> np.ndarray:
        return frame_grid(*ir_pixels(grid, self.norm_to_ir, self.out_size), self.ir_size)

    def sampling(self, grid: np.ndarray, *, with_frame_grid: bool
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """:meth:`maps` and, if asked, :meth:`frame_grid` of one estimate, upsampling and
        projecting the grid (:func:`ir_pixels`) once for both."""
        x, y = ir_pixels(grid, self.norm_to_ir, self.out_size)
        map1, map2 = cv2.convertMaps(x, y, cv2.CV_16SC2)
        return map1, map2, frame_grid(x, y, self.ir_size) if with_frame_grid else None


def run_register(backend: InferenceBackend, geometry: RegistrationGeometry, vis_y: np.ndarray,
                 ir: np.ndarray, t_capture: float) -> Estimate:
    """Run the ``register`` graph on one pair; see :meth:`RegistrationGeometry.network_inputs`."""
    out = backend.run(geometry.network_inputs(vis_y, ir))
    theta = np.asarray(out["theta"], dtype=np.float64).reshape(2, 3)
    grid = np.asarray(out["grid"], dtype=np.float32).reshape(*geometry.reg_hw, 2)
    return Estimate(theta=theta, grid=grid, t_capture=t_capture)


# --------------------------------------------------------------------------- trust


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

    def update(self, estimate: Estimate) -> RegistrationState | None:
        """Fold ``estimate`` in; returns the state now in force (None while nothing was ever accepted)."""
        judgement = self.judge(estimate)
        held = self.state
        # Without hold-last-good every finite estimate is taken, judged only for its confidence.
        finite = judgement.reason != NON_FINITE
        accept = judgement.accepted or (not self.config.hold_last_good and finite)
        relock = not accept and self._relock(estimate)
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
        a = self.config.smoothing
        if held is None or relock:
            theta, grid, confidence = estimate.theta, estimate.grid, judgement.confidence
        else:
            theta = (1.0 - a) * held.theta + a * estimate.theta
            grid = (1.0 - a) * held.grid + a * estimate.grid
            confidence = (1.0 - a) * self._held_confidence + a * judgement.confidence
        if not self.config.deformable:
            grid = affine_grid(theta, self.geometry.reg_hw)
        self._held_confidence = confidence
        map1, map2, sampling_grid = self.geometry.sampling(grid, with_frame_grid=self.sampling_grid)
        self.state = RegistrationState(
            version=0 if held is None else held.version + 1,
            theta=theta,
            grid=grid.astype(np.float32, copy=False),
            source="fine" if self.config.deformable else "coarse",
            confidence=confidence,
            t_capture=estimate.t_capture,
            frame_to_ir=self.geometry.frame_to_ir(theta),
            map1=map1,
            map2=map2,
            sampling_grid=sampling_grid,
        )
        return self.state


# --------------------------------------------------------------------------- scheduling


class RegistrationScheduler:
    """Runs the ``register`` graph on its own thread, on the rig's cadence, on the newest pair offered.

    The pipeline calls :meth:`offer` for every pair (cheap: it only keeps references) and reads
    :attr:`state`; it never waits for registration. ``every_n_pairs`` counts offered pairs;
    ``rate_hz`` starts runs on a fixed ``1 / rate_hz`` schedule (pairs arrive on their own clock,
    so a start is at the first pair after each due time; the schedule does not drift by that
    lateness, and runs go back-to-back when one is slower than the period).
    ``observe(stage, seconds)`` receives the duration of each run (stage ``register``).
    ``sampling_grid``: see :class:`RegistrationFilter`.
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
    ) -> None:
        self.backend = backend
        self.config = config
        self.geometry = geometry
        self.filter = RegistrationFilter(config, geometry, sampling_grid=sampling_grid)
        self.runs = 0
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
        try:
            estimate = run_register(self.backend, self.geometry, vis_y, ir, t_capture)
            state = self.filter.update(estimate)
        # A transient backend failure must not kill the thread: the last good estimate stays.
        except Exception:
            self.errors += 1
            log.exception("registration failed; keeping the current estimate")
            return self.filter.state
        finally:
            self.runs += 1
        if self._observe is not None:
            self._observe("register", time.perf_counter() - started)
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
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
