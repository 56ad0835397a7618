"""Modality-independent local structure of an image: gradients and the MIND descriptor.

Pure tensor functions shared by the per-pair refinement (:mod:`busref.models.refinement`), the
register graph's Lucas-Kanade stage (:mod:`busref.models.networks.lucas_kanade`) and the
classical baselines. Every operation exports to ONNX (opset 17): slicing, replicate padding,
average pooling, ``exp``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

Tensor = torch.Tensor


def image_gradients(image: Tensor) -> tuple[Tensor, Tensor]:
    """Central differences of ``(B, C, H, W)`` images (replicate padding): ``(d/dx, d/dy)``,
    each ``(B, C, H, W)``, in intensity units per pixel."""
    gx = F.pad(image[..., :, 2:] - image[..., :, :-2], (1, 1, 0, 0), mode="replicate") / 2
    gy = F.pad(image[..., 2:, :] - image[..., :-2, :], (0, 0, 1, 1), mode="replicate") / 2
    return gx, gy


def mind_descriptor(image: Tensor, radius: int = 2, patch: int = 3, diagonal: int = 0) -> Tensor:
    """Modality-independent neighbourhood descriptor (MIND, Heinrich et al. 2012), four or eight neighbours.

    ``image`` ``(B, 1, H, W)`` -> ``(B, C, H, W)`` in (0, 1]: for the offsets ``(+-radius, 0)`` and
    ``(0, +-radius)``, and with ``diagonal`` > 0 also ``(+-diagonal, +-diagonal)`` (``C`` 4, or 8 with
    them), ``exp(-D / V)`` with ``D`` the ``patch``-box mean of the squared difference to the shifted
    image (replicate padding) and ``V`` the mean of the ``C`` values of ``D`` (floored at 1e-3 of its
    image mean), each pixel's values divided by their maximum. It describes local structure, not
    intensity: inverting the contrast leaves it unchanged, rescaling nearly (only the variance floor
    of flat areas sees the scale). The diagonal neighbours describe corners and oblique edges that
    the four axial ones see only in part (the register graph's Lucas-Kanade stage:
    :data:`busref.models.config.LK_MIND_DIAGONAL`).

    Example::

        >>> image = torch.rand(1, 1, 16, 16)
        >>> mind_descriptor(image).shape, mind_descriptor(image, diagonal=1).shape
        (torch.Size([1, 4, 16, 16]), torch.Size([1, 8, 16, 16]))
        >>> bool(torch.allclose(mind_descriptor(image, diagonal=1), mind_descriptor(1 - image, diagonal=1)))
        True
    """
    if image.dim() != 4 or image.shape[1] != 1:
        raise ValueError(f"image must be (B, 1, H, W), got {tuple(image.shape)}")
    if radius < 1 or patch < 1 or patch % 2 == 0:
        raise ValueError(f"radius must be >= 1 and patch odd and >= 1, got radius {radius}, patch {patch}")
    if not 0 <= diagonal <= radius:
        raise ValueError(f"diagonal must be within 0..radius ({radius}), got {diagonal}")
    h, w = image.shape[-2:]
    padded = F.pad(image, (radius, radius, radius, radius), mode="replicate")
    half = patch // 2
    offsets = [(radius, 0), (-radius, 0), (0, radius), (0, -radius)]
    if diagonal:
        offsets += [(diagonal, diagonal), (-diagonal, diagonal), (diagonal, -diagonal), (-diagonal, -diagonal)]
    distances = []
    for dx, dy in offsets:
        shifted = padded[..., radius + dy:radius + dy + h, radius + dx:radius + dx + w]
        squared = F.pad((image - shifted) ** 2, (half, half, half, half), mode="replicate")
        distances.append(F.avg_pool2d(squared, patch, stride=1))
    d = torch.cat(distances, dim=1)
    variance = d.mean(dim=1, keepdim=True)
    variance = torch.maximum(variance, 1e-3 * variance.mean() + 1e-6)
    descriptor = torch.exp(-d / variance)
    return descriptor / descriptor.amax(dim=1, keepdim=True)
