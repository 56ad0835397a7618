"""SIFT keypoints + RANSAC: an affine between the visible and the IR image, from no start at all.

Why it is here: keypoints are invariant to rotation and scale, so on a pair whose two images share
local structure (near-infrared and visible do, except on vegetation, water and sky) they find an
uncalibrated rig's misalignment in one shot, where the register graph has a capture range of a few
degrees. Measured on 8 held-out NIR train pairs (oldbuilding), misaligned by up to 30 degrees of
rotation without elastic warp: the NIR register graph alone 29.97 px mean end-point error, this
affine 0.37 px median (one pair gave no answer). Thermal and visible images rarely
share descriptors: on 8 held-out RoadScene train pairs no affine reached :data:`MIN_INLIERS`.
So the learned method and the daemon use it as a *candidate start* (``keypoint_start`` of a
model), kept only where it aligns the edges better (:mod:`busref.orientation`); and the ``sift``
baseline of ``busref eval registration`` is this function at full size.

Conventions: images are (H, W) uint8, or float in [0, 1]; the two may differ in size. The affine
``M`` (2x3, float64) maps a *reference* (visible) pixel to the *moving* (IR) pixel that lands
there, pixel centres at integer coordinates (the ``irvis-reg-v1`` grid convention), so the IR
registered onto the visible frame is ``cv2.warpAffine(ir, M, (W, H), flags=WARP_INVERSE_MAP)``.
No torch.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import cv2
import numpy as np

log = logging.getLogger(__name__)

#: Lowe's ratio test: a match is kept when its distance is under this share of the second best's.
RATIO = 0.75
#: RANSAC inlier distance in moving-image pixels at full size. 8 px instead of OpenCV's usual 3:
#: the protocol's elastic warp moves points by up to 2 % of the size, and a tight threshold
#: locks onto one region's local affine (held-out NIR pairs, moderate level, SIFT then the
#: register graph: 3 px 3.45 px mean, 8 px 2.14 px).
RANSAC_PX = 8.0
#: Fewest RANSAC inliers for an answer: a margin over the 3 that any affine fits. On the held-out
#: NIR pairs 6 and 12 gave the same results; 20 refused right answers (3.45 -> 3.53 px).
MIN_INLIERS = 12
#: Long side (px) the images are shrunk to before detection, for the daemon's budget: on the
#: held-out NIR pairs (up to 1000 px wide) 0.069 s a pair on one core, median 0.37 px at 30
#: degrees (480: 0.045 s, 0.43 px); the register graph refines the rest.
MAX_SIDE = 640
#: Strongest keypoints kept per image: a textured 640x512 frame has ~6,000, and matching them all
#: took ~0.9 s on one core; the affine needs a few dozen right ones.
MAX_KEYPOINTS = 1000
#: Singular values of the linear part, over the images' size ratio, outside [1/2, 2] mark a
#: collapsed fit, not a rig.
PLAUSIBLE_SCALE = (0.5, 2.0)


@dataclass(frozen=True)
class KeypointAffine:
    """An affine found by :func:`keypoint_affine`: ``matrix`` (2, 3) float64 reference pixel ->
    moving pixel; ``inliers`` RANSAC inliers of ``matches`` ratio-test matches."""

    matrix: np.ndarray
    inliers: int
    matches: int


def _gray_uint8(name: str, image: np.ndarray) -> np.ndarray:
    array = np.asarray(image)
    if array.ndim != 2 or min(array.shape) < 16:
        raise ValueError(f"{name} must be a 2-D gray image of at least 16x16 px, got shape {array.shape}")
    if array.dtype == np.uint8:
        return array
    if not np.issubdtype(array.dtype, np.floating) or not np.isfinite(array).all():
        raise ValueError(f"{name} must be uint8 or finite float in [0, 1], got {array.dtype}")
    return np.clip(np.rint(array * 255.0), 0, 255).astype(np.uint8)


def _detect(image: np.ndarray, factor: float, limit: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Keypoint positions (N, 2) float32 in full-size pixels and their descriptors (``limit`` 0: all)."""
    small = image if factor == 1.0 else cv2.resize(image, None, fx=factor, fy=factor, interpolation=cv2.INTER_AREA)
    keypoints, descriptors = cv2.SIFT_create(nfeatures=limit).detectAndCompute(small, None)
    points = np.float32([k.pt for k in keypoints]).reshape(-1, 2)
    # Pixel centres at integers at both sizes: p_full = (p_small + 0.5) / factor - 0.5.
    return (points + 0.5) / factor - 0.5, descriptors


def keypoint_affine(reference: np.ndarray, moving: np.ndarray, *, max_side: int | None = MAX_SIDE,
                    max_keypoints: int | None = MAX_KEYPOINTS, ratio: float = RATIO, ransac_px: float = RANSAC_PX,
                    min_inliers: int = MIN_INLIERS) -> KeypointAffine | None:
    """SIFT on both images, Lowe's ratio test, RANSAC affine from reference to moving points.

    ``reference`` (H, W) and ``moving`` (H', W'): uint8, or float in [0, 1]. ``max_side``: each
    image is shrunk (area) on its own so its long side is at most this (``None``: full size; SIFT
    is scale-invariant, and one factor for both would shrink a small IR frame beside a 1920x1080
    visible one to a third of its size);
    ``max_keypoints`` the strongest kept per image (``None``: all). Returns
    ``None`` when fewer than ``min_inliers`` matches survive RANSAC or the affine is implausible
    (:data:`PLAUSIBLE_SCALE`): no keypoint answer, not an error.

    Example::

        >>> rng = np.random.default_rng(0)
        >>> texture = cv2.GaussianBlur(rng.random((240, 320)).astype(np.float32), (0, 0), 2)
        >>> texture = (texture - texture.min()) / np.ptp(texture)
        >>> m = cv2.getRotationMatrix2D((160, 120), 20, 1.0)  # moving(M p) = reference(p)
        >>> moving = cv2.warpAffine(texture, m, (320, 240), flags=cv2.WARP_INVERSE_MAP)
        >>> found = keypoint_affine(texture, moving)
        >>> bool(np.abs(found.matrix - cv2.invertAffineTransform(m)).max() < 0.5)
        True
    """
    if not 0.0 < ratio < 1.0 or ransac_px <= 0 or min_inliers < 3 or (max_keypoints is not None and max_keypoints < 3):
        raise ValueError(f"need 0 < ratio < 1, ransac_px > 0, min_inliers >= 3 and max_keypoints >= 3, got {ratio}, "
                         f"{ransac_px}, {min_inliers}, {max_keypoints}")
    images = _gray_uint8("reference", reference), _gray_uint8("moving", moving)
    factors = [1.0 if max_side is None else min(1.0, max_side / max(i.shape)) for i in images]
    (ref_points, ref_desc), (mov_points, mov_desc) = (
        _detect(image, factor, max_keypoints or 0) for image, factor in zip(images, factors, strict=True))
    if ref_desc is None or mov_desc is None or len(ref_points) < 2 or len(mov_points) < 2:
        log.debug("keypoints: too few (reference %d, moving %d)", len(ref_points), len(mov_points))
        return None
    pairs = cv2.BFMatcher(cv2.NORM_L2).knnMatch(ref_desc, mov_desc, k=2)
    good = [m[0] for m in pairs if len(m) == 2 and m[0].distance < ratio * m[1].distance]
    if len(good) < min_inliers:
        log.debug("keypoints: %d matches pass the ratio test, need %d", len(good), min_inliers)
        return None
    src = ref_points[[m.queryIdx for m in good]]
    dst = mov_points[[m.trainIdx for m in good]]
    matrix, mask = cv2.estimateAffine2D(src, dst, method=cv2.RANSAC, ransacReprojThreshold=ransac_px)
    inliers = 0 if mask is None else int(mask.sum())
    if matrix is None or inliers < min_inliers or not np.isfinite(matrix).all():
        log.debug("keypoints: %d RANSAC inliers of %d matches, need %d", inliers, len(good), min_inliers)
        return None
    # Relative to the images' size ratio: an IR frame at half the visible resolution is scale 1/2.
    singular = np.linalg.svd(matrix[:, :2], compute_uv=False) / np.sqrt(images[1].size / images[0].size)
    if singular.min() < PLAUSIBLE_SCALE[0] or singular.max() > PLAUSIBLE_SCALE[1]:
        log.debug("keypoints: implausible affine %s", matrix.tolist())
        return None
    return KeypointAffine(matrix.astype(np.float64), inliers, len(good))
