"""Classical (non-learned) infrared-visible fusion baselines, numpy/OpenCV only.

Both take the visible luminance and the (registered) infrared image as float ``(H, W)`` arrays in
[0, 1] of one shape and return the fused luminance, float64 ``(H, W)`` in [0, 1].
"""

from __future__ import annotations

import cv2
import numpy as np

from busref.models.metrics.fusion import check_images


def average(vis: np.ndarray, ir: np.ndarray) -> np.ndarray:
    """Pixel-wise mean ``(vis + ir) / 2``."""
    v, r = check_images(0.0, 1.0, vis=vis, ir=ir)
    return (v + r) / 2.0


def _laplacian_pyramid(image: np.ndarray, levels: int) -> list[np.ndarray]:
    """``levels`` band-pass images, finest first, then the low-pass base (``levels + 1`` arrays)."""
    bands = []
    current = image
    for _ in range(levels):
        smaller = cv2.pyrDown(current)
        expanded = cv2.pyrUp(smaller, dstsize=(current.shape[1], current.shape[0]))
        bands.append(current - expanded)
        current = smaller
    bands.append(current)
    return bands


def laplacian_pyramid_maxabs(vis: np.ndarray, ir: np.ndarray, levels: int = 4) -> np.ndarray:
    """Laplacian-pyramid fusion (Burt & Adelson 1983): max-abs on detail bands, mean on the base.

    Each of the ``levels`` band-pass layers (OpenCV 5x5 Gaussian ``pyrDown``/``pyrUp``) takes, per
    pixel, the source coefficient of larger magnitude; the coarsest low-pass layer is the sources'
    mean. The reconstruction can overshoot where both sources have strong opposite edges, so it is
    clipped to [0, 1]. Both sides must be >= ``2 ** levels``.
    """
    if levels < 1:
        raise ValueError(f"levels must be >= 1, got {levels}")
    v, r = check_images(0.0, 1.0, min_side=2**levels, vis=vis, ir=ir)
    pyramid_v, pyramid_r = _laplacian_pyramid(v, levels), _laplacian_pyramid(r, levels)
    fused = (pyramid_v[-1] + pyramid_r[-1]) / 2.0
    for band_v, band_r in zip(pyramid_v[-2::-1], pyramid_r[-2::-1], strict=True):
        detail = np.where(np.abs(band_v) >= np.abs(band_r), band_v, band_r)
        fused = cv2.pyrUp(fused, dstsize=(detail.shape[1], detail.shape[0])) + detail
    return np.clip(fused, 0.0, 1.0)
