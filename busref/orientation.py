"""Edge-orientation agreement of an IR/visible pair, and an exhaustive similarity search on it.

The measure: each image's Gaussian-smoothed gradient ``g`` becomes the complex number
``z = (g_x + i g_y)^2 / (|g|^2 + e^2)``: its angle is twice the edge orientation (so a hot road,
bright in IR and dark in visible, agrees with itself: polarity does not matter), its modulus is
~1 on edges and ~0 where the image is flat (``e``, the edge noise, sets the divide). The agreement
of two aligned images is ``Re(z_a conj(z_b))`` averaged over the valid pixels: ``|z_a||z_b|
cos(2 dtheta)``, the normalised gradient fields (NGF) measure of the offline refinement in
another form. Because it is a correlation of ``z`` fields, every translation is scored at once
by FFT, so a grid over rotation and scale with the FFT over translation searches the whole
capture range of an uncalibrated rig (degrees, %, 15 % of the width) without a start.

Why: the registration network cannot be trusted to improve on a prior it was not trained near
(on the synthetic demo scene its correction of a 10 degree rotation was worse than none), so
``busref calibrate`` locks the prior with this search, and the daemon keeps a new estimate only
when it does not lower this agreement on the pair it came from (:mod:`.plausibility`).

Conventions: images are (H, W) float32 in [0, 1] or uint8, pixel centres at integers; a
correction ``C`` is a 3x3 map of reference (visible) pixels to moving-image pixels: the moving
image registered is ``moving(C p)`` (``cv2.warpAffine(..., WARP_INVERSE_MAP)``). ``valid`` masks
mark the moving image's pixels that show its camera's content (pre-warped canvases have empty
corners): their border is never an edge.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

log = logging.getLogger(__name__)

#: Gradient magnitude (intensity units per pixel, images in [0, 1]) below which an edge is noise.
EDGE_NOISE = 0.02
#: Gaussian smoothing (pixels at the working size) before the gradient: sensor noise of a
#: visible camera otherwise scores as edges everywhere.
SMOOTHING = 1.0
#: Pixels of the valid area's rim left out (the smoothed gradient of a fill edge reaches ~2 sigma).
RIM = 3


def orientation_field(image: np.ndarray, valid: np.ndarray | None = None, *, smoothing: float = SMOOTHING,
                      edge_noise: float = EDGE_NOISE) -> np.ndarray:
    """The doubled-angle edge field ``z`` of ``image`` (H, W), uint8 or float in [0, 1]: (H, W) complex64.

    ``valid`` (H, W) bool or {0, 1}: where the image has content; ``z`` is 0 outside it and on
    its rim (:data:`RIM` px), so an empty corner's border is never an edge.

    Example::

        >>> z = orientation_field(np.tile(np.arange(32, dtype=np.float32) / 31, (32, 1)))
        >>> bool(np.all(np.abs(z[4:-4, 4:-4].imag) < 1e-6))  # vertical... gradient along x: angle 0
        True
    """
    if image.ndim != 2:
        raise ValueError(f"image must be (H, W), got shape {image.shape}")
    f = image.astype(np.float32) * np.float32(1 / 255 if image.dtype == np.uint8 else 1)
    if smoothing > 0:
        f = cv2.GaussianBlur(f, (0, 0), smoothing)
    gx = cv2.Sobel(f, cv2.CV_32F, 1, 0, ksize=3, borderType=cv2.BORDER_REPLICATE) / 8
    gy = cv2.Sobel(f, cv2.CV_32F, 0, 1, ksize=3, borderType=cv2.BORDER_REPLICATE) / 8
    z = (gx + 1j * gy) ** 2 / (gx * gx + gy * gy + edge_noise * edge_noise)
    z = z.astype(np.complex64)
    if valid is not None:
        inner = cv2.erode(np.asarray(valid, np.uint8), np.ones((2 * RIM + 1, 2 * RIM + 1), np.uint8),
                          borderType=cv2.BORDER_CONSTANT, borderValue=0)
        z[inner == 0] = 0
    return z


def agreement(reference: np.ndarray, moving: np.ndarray, valid: np.ndarray | None = None) -> float:
    """Mean edge-orientation agreement of two aligned images (H, W): in [-1, 1], 0 for unrelated
    images, higher when their edges line up. Averaged over all pixels: a grid that pushes the
    moving image's content out of view loses the agreement it had there.

    Example::

        >>> rng = np.random.default_rng(0)
        >>> a, b = (cv2.GaussianBlur(rng.random((64, 64), np.float32), (0, 0), 2) for _ in range(2))
        >>> agreement(a, 1 - a) == agreement(a, a) > 0.1 > 0.01 > abs(agreement(a, b))  # either polarity
        True
    """
    return agreement_with(orientation_field(reference), moving, valid)


def agreement_with(reference_field: np.ndarray, moving: np.ndarray, valid: np.ndarray | None = None) -> float:
    """:func:`agreement` with the reference's :func:`orientation_field` computed once by the caller."""
    if reference_field.shape != moving.shape:
        raise ValueError(f"reference {reference_field.shape} and moving {moving.shape} differ in shape")
    z = orientation_field(moving, valid)
    return float(np.real(np.vdot(z, reference_field))) / reference_field.size


def similarity(rotation_deg: float, scale: float, centre: tuple[float, float]) -> np.ndarray:
    """3x3 rotation by ``rotation_deg`` (x right, y down: positive turns x towards y) and isotropic
    ``scale`` about ``centre`` (x, y) pixels."""
    a = math.radians(rotation_deg)
    m = np.eye(3)
    m[:2, :2] = scale * np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    m[:2, 2] = np.asarray(centre) - m[:2, :2] @ np.asarray(centre)
    return m


@dataclass(frozen=True)
class SearchResult:
    """The correction found (3x3, reference pixel -> moving pixel, at the size given), its
    rotation (degrees), scale and shift (pixels), and the pooled agreement score there."""

    correction: np.ndarray
    rotation_deg: float
    scale: float
    shift_px: tuple[float, float]
    score: float


def _peak(values: np.ndarray, index: int) -> float:
    """Sub-sample position of a 1-D maximum by a parabola through it and its neighbours."""
    if index <= 0 or index >= len(values) - 1:
        return float(index)
    left, mid, right = values[index - 1], values[index], values[index + 1]
    if not np.all(np.isfinite((left, mid, right))):  # a neighbour outside the allowed range
        return float(index)
    denominator = left - 2 * mid + right
    return float(index) if denominator >= 0 else index + 0.5 * float(left - right) / float(denominator)


def _shift_peak(corr: np.ndarray, max_dy: float, max_dx: float) -> tuple[float, float, float]:
    """The maximum of a circular correlation surface ``corr`` (wrapped shift indices) among shifts
    within ``max_dy``, ``max_dx`` samples: ``(value, dy, dx)``, the shift to sub-sample precision
    (a parabola along each axis), signed (the wrapped upper half is negative)."""
    ny, nx = corr.shape
    wy = np.minimum(np.arange(ny), ny - np.arange(ny))
    wx = np.minimum(np.arange(nx), nx - np.arange(nx))
    window = (wy[:, None] <= max_dy) & (wx[None, :] <= max_dx)
    ky, kx = np.unravel_index(int(np.argmax(np.where(window, corr, -np.inf))), corr.shape)
    dy = _peak(corr[:, kx].take(range(ky - 1, ky + 2), mode="wrap"), 1) - 1 + ky
    dx = _peak(corr[ky, :].take(range(kx - 1, kx + 2), mode="wrap"), 1) - 1 + kx
    return float(corr[ky, kx]), (dy - ny if dy > ny / 2 else dy), (dx - nx if dx > nx / 2 else dx)


class _Level:
    """One resolution of the search: the references' spectra, the moving images and their masks."""

    def __init__(self, references: Sequence[np.ndarray], movings: Sequence[np.ndarray],
                 valids: Sequence[np.ndarray], factor: float, max_shift: float) -> None:
        h, w = references[0].shape
        self.size = (max(round(w / factor), 16), max(round(h / factor), 16))
        self.factor = (w / self.size[0], h / self.size[1])
        sw, sh = self.size
        pad = math.ceil(max_shift / min(self.factor)) + 4
        self.fft_shape = (cv2.getOptimalDFTSize(sh + pad), cv2.getOptimalDFTSize(sw + pad))
        self.ref_spectra = [np.fft.fft2(orientation_field(cv2.resize(r, self.size, interpolation=cv2.INTER_AREA)),
                                        s=self.fft_shape) for r in references]
        self.movings = [cv2.resize(m, self.size, interpolation=cv2.INTER_AREA) for m in movings]
        self.valids = [cv2.resize(v.astype(np.uint8), self.size, interpolation=cv2.INTER_NEAREST) for v in valids]
        # Pixel maps between the full and this level's size (half-pixel convention of cv2.resize).
        fx, fy = self.factor
        self.down = np.array([[1 / fx, 0, 0.5 / fx - 0.5], [0, 1 / fy, 0.5 / fy - 0.5], [0, 0, 1]])
        self.up = np.linalg.inv(self.down)

    def correlation(self, linear: np.ndarray) -> np.ndarray:
        """Pooled correlation over translations for the full-size correction ``linear`` (3x3):
        ``out[dy, dx]`` (wrapped indices) pairs reference pixel ``q + d`` with warped moving pixel
        ``q``: it scores the correction ``linear @ T(-d)``, ``d`` in this level's pixels."""
        m = (self.down @ linear @ self.up)[:2]
        total = np.zeros(self.fft_shape, np.complex128)
        for spectrum, moving, valid in zip(self.ref_spectra, self.movings, self.valids, strict=True):
            warped = cv2.warpAffine(moving, m, self.size, flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                                    borderMode=cv2.BORDER_CONSTANT, borderValue=0)
            inside = cv2.warpAffine(valid, m, self.size, flags=cv2.INTER_NEAREST | cv2.WARP_INVERSE_MAP,
                                    borderMode=cv2.BORDER_CONSTANT, borderValue=0)
            total += spectrum * np.conj(np.fft.fft2(orientation_field(warped, inside), s=self.fft_shape))
        return np.real(np.fft.ifft2(total))


def search_similarity(references: Sequence[np.ndarray], movings: Sequence[np.ndarray],
                      valids: Sequence[np.ndarray] | None = None, *, max_rotation_deg: float = 16.0,
                      max_scale_change: float = 0.12, max_shift_fraction: float = 0.2,
                      start: np.ndarray | None = None) -> SearchResult:
    """The similarity correction that best aligns each moving image's edges with its reference's,
    pooled over pairs (one rig: one correction for every pair).

    ``references``, ``movings``: lists of (H, W) images (uint8 or float in [0, 1]) of one size,
    pair by pair; ``valids``: (H, W) masks of the movings' content (default: all). The search is
    about ``start`` (3x3, default identity): rotations within ``max_rotation_deg`` and scales
    within ``max_scale_change`` of it on a grid at 1/4 size with every translation up to
    ``max_shift_fraction`` of the width (FFT), then finer grids at 1/2 size around the best, a
    parabola through the neighbours of the last maximum in each of the four parameters.
    Returns the correction at the full size (reference pixel -> moving pixel).

    Example::

        >>> rng = np.random.default_rng(0)
        >>> ref = cv2.GaussianBlur(rng.random((128, 160)).astype(np.float32), (0, 0), 3)
        >>> truth = similarity(4.0, 1.05, (80, 64)); truth[:2, 2] += (6, -3)
        >>> moving = cv2.warpAffine(ref, truth[:2], (160, 128))  # moving(truth p) = ref(p)
        >>> found = search_similarity([ref], [moving])
        >>> round(found.rotation_deg), round(found.scale, 2)
        (4, 1.05)
    """
    if not references or len(references) != len(movings):
        raise ValueError(f"need as many movings as references (>= 1), got {len(references)} and {len(movings)}")
    shapes = {r.shape for r in references} | {m.shape for m in movings}
    if len(shapes) != 1 or len(next(iter(shapes))) != 2:
        raise ValueError(f"every image must be (H, W) of one size, got shapes {sorted(shapes)}")
    h, w = references[0].shape
    valids = valids if valids is not None else [np.ones((h, w), np.uint8)] * len(movings)
    centre = ((w - 1) / 2, (h - 1) / 2)
    base = np.eye(3) if start is None else np.asarray(start, np.float64)
    max_shift = max_shift_fraction * w
    rotation, scale, shift = 0.0, 1.0, np.zeros(2)
    best_score = -math.inf
    # (factor, rotation half-range, rotation step, scale half-range, scale step): the grid of a
    # level spans two steps of the previous one, so the finer level cannot miss its peak.
    schedule = [(4.0, max_rotation_deg, 1.0, max_scale_change, 0.02),
                (2.0, 2.0, 0.5, 0.04, 0.01),
                (2.0, 0.5, 0.125, 0.01, 0.0025)]
    for factor, r_half, r_step, s_half, s_step in schedule:
        level = _Level(references, movings, valids, min(factor, max(w, h) / 64), max_shift)
        rotations = rotation + np.arange(-r_half, r_half + 1e-9, r_step)
        scales = scale + np.arange(-s_half, s_half + 1e-9, s_step)
        scores = np.full((len(rotations), len(scales)), -np.inf)
        shifts: dict[tuple[int, int], tuple[float, float]] = {}
        fx, fy = level.factor
        for i, r in enumerate(rotations):
            for j, s in enumerate(scales):
                if abs(s - 1.0) > max_scale_change + 1e-9 or abs(r) > max_rotation_deg + 1e-9:
                    continue
                # Only shifts within the allowed range count (the FFT scores every wrapped one).
                scores[i, j], dy, dx = _shift_peak(level.correlation(base @ similarity(r, s, centre)),
                                                   max_shift / fy, max_shift / fx)
                shifts[i, j] = (dy, dx)
        i, j = np.unravel_index(int(np.argmax(scores)), scores.shape)
        best_score = float(scores[i, j])
        dy, dx = shifts[i, j]
        # Sub-sample translation from the correlation surface; rotation and scale from the grid.
        rotation = rotations[0] + r_step * _peak(scores[:, j], int(i))
        scale = scales[0] + s_step * _peak(scores[i, :], int(j))
        # The correction sends reference pixel p to linear(p - d) (d back in full-size pixels).
        shift = np.array([dx * fx, dy * fy])
        log.debug("search at 1/%g: rotation %.3f deg, scale %.4f, shift (%.2f, %.2f) px, score %.4g",
                  factor, rotation, scale, shift[0], shift[1], best_score)
        base_shift = np.eye(3)
        base_shift[:2, 2] = -shift
        base = base @ similarity(rotation, scale, centre) @ base_shift
        rotation, scale = 0.0, 1.0
        max_shift = 4.0 * factor
    total_rotation = math.degrees(math.atan2(base[1, 0] - base[0, 1], base[0, 0] + base[1, 1]))
    total_scale = math.sqrt(abs(float(np.linalg.det(base[:2, :2]))))
    return SearchResult(base, total_rotation, total_scale, (float(base[0, 2]), float(base[1, 2])), best_score)


def tile_similarity(reference: np.ndarray, moving: np.ndarray, valid: np.ndarray | None = None, *,
                    tiles: tuple[int, int] = (4, 5), max_shift_px: float = 6.0, factor: float = 2.0,
                    min_agreement: float = 0.25) -> np.ndarray | None:
    """The similarity that best explains the local shifts between two nearly aligned images.

    ``reference``, ``moving`` (H, W) as in :func:`search_similarity`, ``moving`` already close to
    aligned (within ``max_shift_px``). The frame is cut into ``tiles`` (rows, cols); in each, the
    shift of best edge-orientation agreement is found (FFT, parabolic peak, at 1/``factor`` size),
    and a tile counts when its normalised agreement there reaches ``min_agreement``. A rotation,
    scale and shift is fitted to the counted tiles' shifts by least squares, every tile weighing
    the same, twice (tiles more than 3 px off the first fit are dropped). Why tiles: the exhaustive
    search weighs each region by its edges, so a smooth non-rigid term where the edges crowd (a row
    of facades) pulls its answer; here a region of few edges counts as much as a busy one.
    Returns ``R`` (3x3, reference pixel -> pixel of ``moving``, full size: the correction to compose
    after the one ``moving`` was made with), or None with fewer than 3 counted tiles.
    """
    h, w = reference.shape
    size = (max(round(w / factor), 16), max(round(h / factor), 16))
    fx, fy = w / size[0], h / size[1]
    z_ref = orientation_field(cv2.resize(reference, size, interpolation=cv2.INTER_AREA))
    inside = None if valid is None else cv2.resize(valid.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST)
    z_mov = orientation_field(cv2.resize(moving, size, interpolation=cv2.INTER_AREA), inside)
    pad = math.ceil(max_shift_px / min(fx, fy)) + 2
    rows, cols = tiles
    ys, xs = np.linspace(0, size[1], rows + 1).astype(int), np.linspace(0, size[0], cols + 1).astype(int)
    centres, targets = [], []
    for r in range(rows):
        for c in range(cols):
            a, b = z_ref[ys[r]:ys[r + 1], xs[c]:xs[c + 1]], z_mov[ys[r]:ys[r + 1], xs[c]:xs[c + 1]]
            energy = math.sqrt(float(np.sum(np.abs(a) ** 2)) * float(np.sum(np.abs(b) ** 2)))
            if energy <= 0:
                continue
            shape = (cv2.getOptimalDFTSize(a.shape[0] + 2 * pad), cv2.getOptimalDFTSize(a.shape[1] + 2 * pad))
            corr = np.real(np.fft.ifft2(np.fft.fft2(a, s=shape) * np.conj(np.fft.fft2(b, s=shape))))
            value, dy, dx = _shift_peak(corr, pad - 2, pad - 2)
            if value / energy < min_agreement:
                continue
            # corr[d] pairs reference pixel q + d with moving pixel q: reference p sees moving p - d.
            centre = np.array([((xs[c] + xs[c + 1]) / 2 + 0.5) * fx - 0.5, ((ys[r] + ys[r + 1]) / 2 + 0.5) * fy - 0.5])
            centres.append(centre)
            targets.append(centre - np.array([dx * fx, dy * fy]))
    if len(centres) < 3:
        return None
    p, q = np.array(centres), np.array(targets)
    keep = np.ones(len(p), bool)
    for _ in range(2):
        # q = [[a, -b], [b, a]] p + t, linear in (a, b, tx, ty).
        design = np.concatenate([np.stack([p[:, 0], -p[:, 1], np.ones(len(p)), np.zeros(len(p))], 1),
                                 np.stack([p[:, 1], p[:, 0], np.zeros(len(p)), np.ones(len(p))], 1)])
        rhs = np.concatenate([q[:, 0], q[:, 1]])
        both = np.concatenate([keep, keep])
        a, b, tx, ty = np.linalg.lstsq(design[both], rhs[both], rcond=None)[0]
        fit = np.array([[a, -b, tx], [b, a, ty], [0.0, 0.0, 1.0]])
        residual = np.hypot(*(p @ fit[:2, :2].T + fit[:2, 2] - q).T)
        keep = residual <= 3.0
        if keep.sum() < 3:
            return None
    return fit
