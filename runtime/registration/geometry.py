"""Registration geometry: the IR->RGB prior, the network's coordinates, and the warp maps they give.

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

import math
from dataclasses import dataclass
from functools import cached_property

import cv2
import numpy as np

from busref.orientation import agreement_with, orientation_field
from busref.rig_config.schema import RigConfig
from busref.runtime.backends.base import InferenceBackend

Size = tuple[int, int]  # (width, height)


def norm_to_reg(reg_hw: tuple[int, int]) -> np.ndarray:
    """3x3 map from normalised canvas ``(u, v, 1)`` (``align_corners=True``) to registration pixels."""
    h, w = reg_hw
    return np.array([[(w - 1) / 2, 0.0, (w - 1) / 2], [0.0, (h - 1) / 2, (h - 1) / 2], [0.0, 0.0, 1.0]])


def rgb_to_norm(rgb_size: Size, reg_hw: tuple[int, int]) -> np.ndarray:
    """3x3 map from RGB pixel ``(x, y, 1)`` to the registration canvas' normalised ``(u, v, 1)``."""
    return np.linalg.inv(norm_to_reg(reg_hw)) @ rgb_to_reg(rgb_size, reg_hw)


def rgb_to_reg(rgb_size: Size, reg_hw: tuple[int, int]) -> np.ndarray:
    """3x3 map from RGB pixels to registration-canvas pixels (``cv2.resize``'s half-pixel convention)."""
    w_rgb, h_rgb = rgb_size
    h_r, w_r = reg_hw
    sx, sy = w_r / w_rgb, h_r / h_rgb
    return np.array([[sx, 0.0, 0.5 * sx - 0.5], [0.0, sy, 0.5 * sy - 0.5], [0.0, 0.0, 1.0]])


def identity_theta() -> np.ndarray:
    return np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])


def homogeneous(theta: np.ndarray) -> np.ndarray:
    """A (2, 3) affine as its 3x3 matrix (last row ``0 0 1``), to compose and invert."""
    return np.vstack([theta, [0.0, 0.0, 1.0]])


def theta_to_pixels(theta: np.ndarray, rgb_size: Size, reg_hw: tuple[int, int]) -> np.ndarray:
    """The normalised affine ``theta`` (2x3) as a 3x3 map of RGB pixels to pre-warped-canvas RGB pixels."""
    n = rgb_to_norm(rgb_size, reg_hw)
    return np.linalg.inv(n) @ homogeneous(theta) @ n


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


def compose_grid(theta: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """The normalised affine ``theta`` (2, 3) applied to every point of ``grid`` (H, W, 2): where a
    grid over a canvas re-warped by ``theta`` samples the original canvas. float32."""
    t = theta.astype(np.float32)
    return (grid @ t[:, :2].T + t[:, 2]).astype(np.float32)


class PairView:
    """One pair at the registration size, to score any grid on: how well do the edges of the IR
    canvas sampled by the grid agree with the visible image's (:mod:`busref.orientation`)?

    ``vis`` (H_reg, W_reg) float32 [0, 1]; ``canvas`` the IR pre-warped by the prior, same size;
    ``valid`` (same size, uint8) where the canvas shows IR content.
    """

    def __init__(self, vis: np.ndarray, canvas: np.ndarray, valid: np.ndarray) -> None:
        self.vis, self.canvas, self.valid = vis, canvas, valid
        self._vis_field = orientation_field(vis)
        self._to_pixels = norm_to_reg(vis.shape).astype(np.float32)

    def agreement(self, grid: np.ndarray) -> float:
        """Mean edge-orientation agreement of ``vis`` and the canvas sampled at ``grid`` (H_reg, W_reg, 2)
        normalised: higher is better aligned (:func:`busref.orientation.agreement_with`)."""
        m = self._to_pixels
        x = np.ascontiguousarray(grid[..., 0] * m[0, 0] + m[0, 2])
        y = np.ascontiguousarray(grid[..., 1] * m[1, 1] + m[1, 2])
        moving = cv2.remap(self.canvas, x, y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        inside = cv2.remap(self.valid, x, y, cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        return agreement_with(self._vis_field, moving, inside)


@dataclass(frozen=True)
class Estimate:
    """One output of the ``register`` (or ``track``) graph: ``theta`` (2, 3) and ``grid`` (H_reg, W_reg, 2),
    normalised on the canvas pre-warped by the prior; ``view`` the pair it came from, when known."""

    theta: np.ndarray
    grid: np.ndarray
    t_capture: float  # capture time (monotonic s) of the pair it was computed from
    view: PairView | None = None


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

    def theta_from_frame_to_ir(self, matrix: np.ndarray) -> np.ndarray:
        """Inverse of :meth:`frame_to_ir`: an RGB pixel -> IR pixel affine ``matrix`` (2, 3) as the
        normalised correction ``theta`` on the prior's canvas (its affine part, if the prior is a
        homography)."""
        return pixels_to_theta(self.prior @ homogeneous(np.asarray(matrix, dtype=np.float64)[:2]), self.rgb_size,
                               self.reg_hw)

    def network_inputs(self, vis_y: np.ndarray, ir: np.ndarray, start: np.ndarray | None = None
                       ) -> dict[str, np.ndarray]:
        """The ``register`` graph inputs from full-size frames.

        ``vis_y``: (H_rgb, W_rgb) uint8 luminance. ``ir``: (H_ir, W_ir) float32 [0, 1] normalised IR.
        Returns ``vis``/``ir`` float32 (1, 1, H_reg, W_reg) in [0, 1]; the IR pre-warped by the prior
        (where it sees no IR, the nearest IR pixel repeated), and then by ``start`` (2, 3
        normalised, the registration in force) when given: the canvas sampled at ``start``'s grid
        (the warm start; :func:`compose_grid` brings the network's answer back onto the prior's canvas).
        """
        h, w = self.reg_hw
        vis = cv2.resize(vis_y, (w, h), interpolation=cv2.INTER_AREA).astype(np.float32)
        vis *= np.float32(1.0 / 255.0)
        return {"vis": vis[None, None], "ir": self._canvas(ir, start)[None, None]}

    def _canvas(self, ir: np.ndarray, start: np.ndarray | None = None) -> np.ndarray:
        """The IR warped onto the registration canvas (then by ``start``, when given)."""
        h, w = self.reg_hw
        to_canvas = self.ir_to_canvas
        if start is not None:
            n = norm_to_reg(self.reg_hw)
            to_canvas = n @ np.linalg.inv(homogeneous(start)) @ np.linalg.inv(n) @ to_canvas
        # Area-average first (warpPerspective has no INTER_AREA), then warp the small image: for a
        # same-view rig this is cv2.resize(INTER_AREA), what the evaluation and training feed the
        # networks. A Gaussian blur (sigma 0.5 x the scale) before the full-size warp instead left the
        # still-rig evaluation's first estimate 4.88 px from the truth (8 held-out RoadScene train pairs).
        scale = min(self.ir_size[0] / w, self.ir_size[1] / h)
        src = ir
        if scale > 1.5:
            small = (max(1, round(self.ir_size[0] / scale)), max(1, round(self.ir_size[1] / scale)))
            src = cv2.resize(ir, small, interpolation=cv2.INTER_AREA)
            to_canvas = to_canvas @ np.linalg.inv(rgb_to_reg(self.ir_size, small[::-1]))
        # Out-of-view corners repeat the nearest IR pixel instead of going black: a black corner is
        # an edge the networks match. Warm-started runs on 8 RoadScene validation pairs (moderate
        # level, the same pair 8 times): with black corners the estimate drifted 7.46 -> 10.1 px,
        # with replicated ones and the agreement check it improved 7.46 -> 6.45 px.
        return cv2.warpPerspective(src, to_canvas, (w, h), flags=cv2.INTER_LINEAR,
                                   borderMode=cv2.BORDER_REPLICATE)

    @cached_property
    def canvas_valid(self) -> np.ndarray:
        """(H_reg, W_reg) uint8: 1 where the prior's registration canvas shows IR content. It depends
        on the rig alone, so it is made once, not per registration."""
        h, w = self.reg_hw
        return cv2.warpPerspective(np.ones((self.ir_size[1], self.ir_size[0]), np.uint8), self.ir_to_canvas, (w, h),
                                   flags=cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT, borderValue=0)

    def pair_view(self, vis: np.ndarray, ir: np.ndarray, canvas: np.ndarray | None = None) -> PairView:
        """:class:`PairView` of a pair: ``vis`` the network's (H_reg, W_reg) visible input, ``ir`` the
        full-size normalised IR; ``canvas``, its prior's canvas when the caller has it already."""
        return PairView(vis, self._canvas(ir) if canvas is None else canvas, self.canvas_valid)

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


def affine_part(grid: np.ndarray) -> np.ndarray:
    """The least-squares affine (2, 3) of a normalised grid (H, W, 2): ``grid(p) ~ A @ (x, y, 1)`` over
    every 4th point of each axis (the fit of a smooth field; ~1 ms at 192x256)."""
    h, w = grid.shape[:2]
    sub = grid[::4, ::4].reshape(-1, 2).astype(np.float64)
    ys, xs = np.meshgrid(np.linspace(-1.0, 1.0, h)[::4], np.linspace(-1.0, 1.0, w)[::4], indexing="ij")
    basis = np.stack((xs.ravel(), ys.ravel(), np.ones(xs.size)), axis=1)
    return np.linalg.lstsq(basis, sub, rcond=None)[0].T


def run_track(backend: InferenceBackend, geometry: RegistrationGeometry, vis_y: np.ndarray, ir: np.ndarray,
              t_capture: float, theta: np.ndarray, grid: np.ndarray, *, with_view: bool = False) -> Estimate:
    """Run the ``track`` graph on one pair from the registration in force (``theta`` (2, 3), ``grid``
    (H_reg, W_reg, 2), normalised on the prior's canvas). The IR goes in on the prior's canvas, not
    pre-warped: the graph starts from the whole grid, its non-affine part too. The estimate's
    ``theta`` is ``theta`` moved by the change of the grid's affine part (:func:`affine_part`), so that
    it keeps meaning the coarse affine the register graph reports."""
    inputs = geometry.network_inputs(vis_y, ir)
    inputs["start"] = np.ascontiguousarray(grid, dtype=np.float32)[None]
    out = backend.run(inputs)
    new = np.asarray(out["grid"], dtype=np.float32).reshape(*geometry.reg_hw, 2)
    moved = np.asarray(theta, dtype=np.float64) + affine_part(new) - affine_part(grid)
    view = geometry.pair_view(inputs["vis"][0, 0], ir, inputs["ir"][0, 0]) if with_view else None
    return Estimate(theta=moved, grid=new, t_capture=t_capture, view=view)


def run_register(backend: InferenceBackend, geometry: RegistrationGeometry, vis_y: np.ndarray,
                 ir: np.ndarray, t_capture: float, start: np.ndarray | None = None, *,
                 with_view: bool = False) -> Estimate:
    """Run the ``register`` graph on one pair, from ``start`` (2, 3 normalised affine on the prior's
    canvas: the warm start) when given; see :meth:`RegistrationGeometry.network_inputs`. The
    estimate is on the prior's canvas either way; ``with_view`` attaches the pair to score it."""
    inputs = geometry.network_inputs(vis_y, ir, start)
    out = backend.run(inputs)
    theta = np.asarray(out["theta"], dtype=np.float64).reshape(2, 3)
    grid = np.asarray(out["grid"], dtype=np.float32).reshape(*geometry.reg_hw, 2)
    if start is not None:
        grid = compose_grid(start, grid)
        theta = (homogeneous(start) @ homogeneous(theta))[:2]
    view = None
    if with_view:  # without a start the network's IR input is the prior's canvas itself
        view = geometry.pair_view(inputs["vis"][0, 0], ir, inputs["ir"][0, 0] if start is None else None)
    return Estimate(theta=theta, grid=grid, t_capture=t_capture, view=view)
