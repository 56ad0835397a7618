"""Classical IR -> visible registration baselines behind one interface (numpy, OpenCV, SimpleITK).

Every method takes the reference ``vis`` (visible converted to gray, ``(H, W)`` float in [0, 1])
and the moving ``ir`` (misaligned IR, same shape and range) and returns a pixel sampling grid
``(H, W, 2)`` float32 with ``G[y, x] = (x', y')`` in IR pixels (reference -> moving, the
``irvis-reg-v1`` convention; pixel centres at integer coordinates, ``x`` the column), so that
``warp(ir, G)`` is the IR registered onto the visible frame. ``None`` means the method failed;
the evaluator then scores the identity grid and counts a failure.

The OpenCV and SimpleITK baselines estimate one affine ``G(p) = M[:, :2] p + M[:, 2]`` (``M`` is
2x3, in pixels); :class:`NgfMindElastic` fits an affine plus a smooth field (torch). The learned
BusReF method implements the same :class:`RegistrationMethod` interface.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import cv2
import numpy as np
import SimpleITK as sitk
import torch

from busref.conventions import affine_grid, identity_grid
from busref.keypoints import keypoint_affine
from busref.models import geometry
from busref.models.geometry import normalised_to_pixel, pixel_to_normalised
from busref.models.local_structure import image_gradients
from busref.models.refinement import RefinementConfig, refine_grid

log = logging.getLogger(__name__)


@runtime_checkable
class RegistrationMethod(Protocol):
    """A registration method: ``register(vis, ir)`` -> pixel grid ``(H, W, 2)`` float32 or ``None``."""

    name: str

    def register(self, vis: np.ndarray, ir: np.ndarray) -> np.ndarray | None:
        """Grid mapping reference (``vis``) pixels to moving (``ir``) pixels; ``None`` on failure."""
        ...


def _check_pair(vis: np.ndarray, ir: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Validate a (reference, moving) pair and return both as float32 ``(H, W)`` arrays."""
    images = []
    for name, image in (("vis", vis), ("ir", ir)):
        array = np.asarray(image, dtype=np.float32)
        if array.ndim != 2:
            raise ValueError(f"{name} must be a 2-D gray image (H, W), got shape {array.shape}")
        if min(array.shape) < 16:
            raise ValueError(f"{name} is {array.shape[0]}x{array.shape[1]}; registration needs >= 16 px a side")
        if not np.isfinite(array).all() or array.min() < 0.0 or array.max() > 1.0:
            raise ValueError(f"{name} must hold finite values in [0, 1], got range "
                             f"[{np.nanmin(array):.4g}, {np.nanmax(array):.4g}]")
        images.append(array)
    if images[0].shape != images[1].shape:
        raise ValueError(f"vis {images[0].shape} and ir {images[1].shape} must have the same shape")
    return images[0], images[1]


def _checked_affine_grid(name: str, matrix: np.ndarray, shape: tuple[int, int]) -> np.ndarray | None:
    """Grid of an estimated affine, or ``None`` if it is non-finite or implausible.

    Implausible means a singular value of the linear part outside [1/2, 2]: far beyond any
    rig's misalignment, it marks a collapsed or diverged fit, which the evaluator should count
    as a failure rather than score as a (much worse than identity) estimate.
    """
    if not np.isfinite(matrix).all():
        log.debug("%s: non-finite affine %s", name, np.asarray(matrix).tolist())
        return None
    singular = np.linalg.svd(np.asarray(matrix, dtype=np.float64)[:, :2], compute_uv=False)
    if singular.max() > 2.0 or singular.min() < 0.5:
        log.debug("%s: implausible affine %s", name, np.asarray(matrix).tolist())
        return None
    return affine_grid(matrix, *shape, coordinates="pixel")


@dataclass
class IdentityMethod:
    """No registration: ``G(p) = p``; the floor every other method must beat."""

    name: str = field(default="identity", init=False)

    def register(self, vis: np.ndarray, ir: np.ndarray) -> np.ndarray | None:
        vis32, _ = _check_pair(vis, ir)
        return identity_grid(*vis32.shape, coordinates="pixel")


@dataclass
class SiftRansacAffine:
    """SIFT keypoints on both 8-bit images at full size, all of them, Lowe's ratio test, RANSAC affine
    (visible -> IR points): :func:`busref.keypoints.keypoint_affine` as OpenCV's examples use it
    (3 px threshold, no keypoint limit), so the baseline is not weakened by the daemon's budget.

    Fails (``None``) when fewer than ``min_inliers`` matches survive RANSAC; on thermal/visible
    pairs that is the usual outcome, since the two modalities rarely share descriptors.
    """

    name: str = field(default="sift", init=False)
    ratio: float = 0.75
    ransac_threshold_px: float = 3.0
    min_inliers: int = 6

    def register(self, vis: np.ndarray, ir: np.ndarray) -> np.ndarray | None:
        vis32, ir32 = _check_pair(vis, ir)
        found = keypoint_affine(vis32, ir32, max_side=None, max_keypoints=None, ratio=self.ratio,
                                ransac_px=self.ransac_threshold_px, min_inliers=self.min_inliers)
        return None if found is None else affine_grid(found.matrix, *vis32.shape, coordinates="pixel")


def _gradient_magnitude(image: np.ndarray) -> np.ndarray:
    """Sobel gradient magnitude of a lightly smoothed float32 image (same shape)."""
    smooth = cv2.GaussianBlur(image, (0, 0), sigmaX=1.0)
    gx = cv2.Sobel(smooth, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(smooth, cv2.CV_32F, 0, 1, ksize=3)
    return cv2.magnitude(gx, gy)


def _content_mask(image: np.ndarray, margin: int) -> np.ndarray:
    """uint8 (H, W): 1 where ``image`` holds content, 0 on exact-zero padding and ``margin`` px
    around it. A misaligned IR frame has zero padding where the warp left the sensor; its edge is
    the strongest gradient in the frame and would otherwise drag the fit along. ``margin`` must
    cover the support of the filters applied before matching, which spread that edge inwards.
    """
    size = 2 * margin + 1
    return cv2.erode((image > 0).astype(np.uint8), np.ones((size, size), np.uint8))


# findTransformECC's own Gaussian (5x5) on top of _gradient_magnitude's sigma-1 blur (radius 4)
# and 3x3 Sobel spread the padding edge about 7 px; a 6 px margin keeps the fit on the truth
# (measured: starting from the true affine, margin 2 drifts 1.6 px, margins 4 and 6 stay < 0.1 px).
_ECC_BLUR = 5
_ECC_MASK_MARGIN = 6


@dataclass
class EccGradient:
    """Affine ECC (``cv2.findTransformECC``) on Sobel gradient magnitudes, coarse to fine.

    IR and visible intensities are not comparable (a hot road is bright in IR and dark in
    visible) but their edges largely coincide, so ECC correlates gradient magnitudes; the IR's
    zero padding and its border are left out of the correlation (``inputMask``). Levels are
    ``cv2.pyrDown`` halvings (coarse pixel ``i`` sits on fine pixel ``2 i``, so only the
    translation doubles going up a level), one per entry of ``motions`` (coarse to fine; the
    coarsest are dropped where a side would fall under ``min_side``). The default fits a
    translation at 1/4 size, a rigid motion at 1/2 and the affine at full size: on 40 RoadScene
    training pairs (moderate level) a full affine at every level sometimes sheared away at 1/4
    size (mean EPE 13.1 px vs 7.8 px) and a 4th level hurt too.
    ``findTransformECC(template=vis, input=ir)`` returns ``W`` with ``vis(p) ~ ir(W [p; 1])``
    (the ``WARP_INVERSE_MAP`` convention), i.e. a reference -> moving map: exactly our grid.
    Returns ``None`` when ECC does not converge at some level (``cv2.error``) or ends on an
    implausible affine.
    """

    name: str = field(default="ecc", init=False)
    motions: tuple[int, ...] = (cv2.MOTION_TRANSLATION, cv2.MOTION_EUCLIDEAN, cv2.MOTION_AFFINE)
    min_side: int = 24
    iterations: int = 100
    epsilon: float = 1e-6

    def __post_init__(self) -> None:
        if not self.motions or self.motions[-1] != cv2.MOTION_AFFINE:
            raise ValueError(f"EccGradient motions must end with MOTION_AFFINE, got {self.motions}")

    def register(self, vis: np.ndarray, ir: np.ndarray) -> np.ndarray | None:
        vis32, ir32 = _check_pair(vis, ir)
        pyramid = [(vis32, ir32)]
        while len(pyramid) < len(self.motions) and min(pyramid[-1][0].shape) >= 2 * self.min_side:
            pyramid.append((cv2.pyrDown(pyramid[-1][0]), cv2.pyrDown(pyramid[-1][1])))
        motions = self.motions[len(self.motions) - len(pyramid):]
        criteria = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, self.iterations, self.epsilon)
        matrix = np.eye(2, 3, dtype=np.float32)
        for level, ((vis_level, ir_level), motion) in enumerate(zip(reversed(pyramid), motions, strict=True)):
            if level > 0:
                matrix[:, 2] *= 2.0
            try:
                _, matrix = cv2.findTransformECC(_gradient_magnitude(vis_level), _gradient_magnitude(ir_level),
                                                 matrix, motion, criteria,
                                                 _content_mask(ir_level, _ECC_MASK_MARGIN), _ECC_BLUR)
            except cv2.error as error:
                log.debug("ecc: no convergence at %dx%d: %s", *vis_level.shape, error)
                return None
        return _checked_affine_grid(self.name, matrix, vis32.shape)


@dataclass
class MattesMIAffine:
    """Affine registration maximising Mattes mutual information (SimpleITK), multi-resolution.

    Fixed = visible, moving = IR, spacing 1 and origin 0 so physical points are pixel
    coordinates ``(x, y)``. A SimpleITK transform maps fixed points to moving points, which is
    exactly the grid direction, so the grid is the final transform applied to every reference
    pixel. The IR's zero padding is masked out of the metric (see :func:`_content_mask`):
    on 20 RoadScene training pairs (moderate level) that took the mean EPE from 22.5 px to
    8.2 px; a step of 0.5 px and sampling all / half / a quarter of the pixels at the shrink
    factors 4 / 2 / 1 were the steadiest settings there (a quarter at every level: 9.7 px).
    Metric samples are drawn at random with ``seed`` (SimpleITK reads seed 0 as "wall clock",
    hence >= 1); the registration runs single-threaded so that the result is the same on every
    machine and every run. Returns ``None`` when SimpleITK raises (e.g. every sample mapped
    outside the moving image) or the affine is implausible.
    """

    name: str = field(default="mi", init=False)
    bins: int = 50
    seed: int = 1
    iterations: int = 200
    learning_rate: float = 0.5
    shrink_factors: tuple[int, ...] = (4, 2, 1)
    smoothing_sigmas: tuple[float, ...] = (2.0, 1.0, 0.0)
    sampling: tuple[float, ...] = (1.0, 0.5, 0.25)
    mask_padding: bool = True
    mask_margin: int = 2

    def __post_init__(self) -> None:
        if self.seed < 1:
            raise ValueError(f"MattesMIAffine seed must be >= 1 (SimpleITK takes 0 as wall clock), got {self.seed}")
        if not len(self.shrink_factors) == len(self.smoothing_sigmas) == len(self.sampling):
            raise ValueError("MattesMIAffine shrink_factors, smoothing_sigmas and sampling need one entry per level")

    def register(self, vis: np.ndarray, ir: np.ndarray) -> np.ndarray | None:
        vis32, ir32 = _check_pair(vis, ir)
        # The Mattes metric splits its samples over ITK's global default thread count (the
        # method's own SetNumberOfThreads does not reach it) and the split changes the result
        # even with a fixed seed, so pin it to one thread for this call.
        threads = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
        try:
            matrix = self._estimate(vis32, ir32)
        finally:
            sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)
        return None if matrix is None else _checked_affine_grid(self.name, matrix, vis32.shape)

    def _estimate(self, vis32: np.ndarray, ir32: np.ndarray) -> np.ndarray | None:
        """The fitted affine as a 2x3 pixel matrix (reference -> moving), or ``None``."""
        fixed = sitk.GetImageFromArray(vis32)
        moving = sitk.GetImageFromArray(ir32)
        initial = sitk.CenteredTransformInitializer(fixed, moving, sitk.AffineTransform(2),
                                                    sitk.CenteredTransformInitializerFilter.GEOMETRY)
        method = sitk.ImageRegistrationMethod()
        method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=self.bins)
        if self.mask_padding:
            method.SetMetricMovingMask(sitk.GetImageFromArray(_content_mask(ir32, self.mask_margin)))
        method.SetMetricSamplingStrategy(method.RANDOM)
        method.SetMetricSamplingPercentagePerLevel(list(self.sampling), self.seed)
        method.SetInterpolator(sitk.sitkLinear)
        method.SetOptimizerAsRegularStepGradientDescent(learningRate=self.learning_rate, minStep=1e-3,
                                                        numberOfIterations=self.iterations,
                                                        relaxationFactor=0.5,
                                                        gradientMagnitudeTolerance=1e-8)
        method.SetOptimizerScalesFromPhysicalShift()
        method.SetShrinkFactorsPerLevel(list(self.shrink_factors))
        method.SetSmoothingSigmasPerLevel(list(self.smoothing_sigmas))
        method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOff()
        method.SetInitialTransform(initial, inPlace=False)
        try:
            transform = method.Execute(fixed, moving)
        except RuntimeError as error:
            log.debug("mi: SimpleITK failed: %s", error)
            return None
        # The transform is affine, so the images of three points determine its 2x3 matrix.
        origin, unit_x, unit_y = (np.array(transform.TransformPoint(p)) for p in ((0.0, 0.0), (1.0, 0.0), (0.0, 1.0)))
        return np.column_stack((unit_x - origin, unit_y - origin, origin))


#: Below this share of pixels with a gradient above ``edge_noise`` there is nothing to align.
_MIN_EDGE_SHARE = 0.01


@dataclass
class NgfMindElastic:
    """Affine + smooth elastic registration by normalised gradient fields and MIND descriptors,
    from the identity.

    The optimiser (:func:`busref.models.refinement.refine_grid`) that ``busref-refined`` starts from the
    network's grid, started here from nothing, so it shows what the network adds. It begins one
    scale coarser (1/8) than the refinement's default, for a wider capture range, and keeps the
    classical four-neighbour MIND: from the identity the refinement's eight neighbours did not help it
    (8 held-out RoadScene train pairs, moderate: 8.76 -> 9.08 px mean EPE, MNCC 0.762 -> 0.768).
    """

    name: str = field(default="ngf-mind", init=False)
    config: RefinementConfig = field(default_factory=lambda: RefinementConfig(
        scales=(8, 4, 2, 1), iterations=(80, 60, 40, 30), mind_diagonal=0))

    def register(self, vis: np.ndarray, ir: np.ndarray) -> np.ndarray | None:
        vis32, ir32 = _check_pair(vis, ir)
        reference, moving = torch.from_numpy(vis32)[None, None], torch.from_numpy(ir32)[None, None]
        for name, image in (("vis", reference), ("ir", moving)):
            gx, gy = image_gradients(image)
            if float((gx * gx + gy * gy > self.config.edge_noise**2).float().mean()) < _MIN_EDGE_SHARE:
                log.debug("ngf-mind: %s has (almost) no edges above the noise level", name)
                return None
        h, w = vis32.shape
        grid = refine_grid(reference, moving, pixel_to_normalised(geometry.identity_grid(h, w), h, w), self.config)
        return normalised_to_pixel(grid, h, w)[0].numpy()


_METHODS: dict[str, Callable[[], RegistrationMethod]] = {
    "identity": IdentityMethod,
    "sift": SiftRansacAffine,
    "ecc": EccGradient,
    "mi": MattesMIAffine,
    "ngf-mind": NgfMindElastic,
}


def make_method(name: str) -> RegistrationMethod:
    """The baseline called ``name`` ("identity", "sift", "ecc", "mi" or "ngf-mind") with its default settings."""
    try:
        factory = _METHODS[name]
    except KeyError:
        raise ValueError(f"unknown registration method {name!r}; valid names: {', '.join(_METHODS)}") from None
    return factory()
