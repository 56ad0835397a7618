"""The registration nets' tone normalisation: a per-image gamma that brings an image's mean to a target.

The thermal nets learned RoadScene's tone curves (IR means 0.37-0.73) and lose most where an IR is
darker than those: on the 8 held-out RoadScene train pairs (moderate) the nets alone went from 6.41
to 12.04 px with the IR under ``x ** 2``, while brightening it (``x ** 0.33``) did not hurt them
(6.16 px) and the Lucas-Kanade stage after them held a darker IR (2.71 px from the nets' answer on
the original tone). A gamma undoes any power-law tone curve exactly and leaves the structure that
the nets match (edges, their order of brightness) in place; polarity is kept.

Convention: images ``(B, 1, H, W)`` float in [0, 1]; pixels exactly 0 are a pair's padding (the
protocol's out-of-view area; :func:`busref.models.networks.lucas_kanade.content_mask` with no margin),
left out of the mean and kept at 0.
"""

from __future__ import annotations

import math

import torch

from busref.models.networks.lucas_kanade import content_mask

Tensor = torch.Tensor

#: The gamma's range: a flat or saturated image (a lens cap, the daemon's start-up probe) has no
#: tone curve to undo, and an unbounded exponent would turn its few non-flat pixels into 0 or 1.
GAMMA_RANGE = (0.25, 4.0)


def match_mean_tone(image: Tensor, target: float, iterations: int = 3) -> Tensor:
    """``image ** g`` per image, ``g`` chosen so that the mean of the non-zero pixels is about ``target``.

    ``image`` ``(B, 1, H, W)`` float in [0, 1] -> the same shape and range. ``g`` starts at
    ``log(target) / log(mean)`` and is corrected ``iterations - 1`` times on the re-toned mean (the
    mean of a power is not the power of the mean), then held within :data:`GAMMA_RANGE`. Pixels
    that are exactly 0 stay 0 and do not count. Exports to ONNX (``Pow``, ``Log``, reductions).

    Example::

        >>> image = torch.rand(2, 1, 32, 32) ** 2
        >>> out = match_mean_tone(image, 0.6)
        >>> out.shape, bool((out[image > 0].mean() - 0.6).abs() < 0.02)
        (torch.Size([2, 1, 32, 32]), True)
    """
    if image.dim() != 4 or image.shape[1] != 1:
        raise ValueError(f"image must be (B, 1, H, W), got {tuple(image.shape)}")
    if not 0.0 < target < 1.0:
        raise ValueError(f"target must be within (0, 1), got {target}")
    if iterations < 1:
        raise ValueError(f"iterations must be >= 1, got {iterations}")
    valid = content_mask(image, margin=0)  # the one place that says what padding is
    count = valid.sum(dim=(1, 2, 3), keepdim=True).clamp_min(1.0)
    x = image.clamp(1e-6, 1.0)
    gamma = torch.ones_like(count)
    for _ in range(iterations):
        mean = ((x ** gamma) * valid).sum(dim=(1, 2, 3), keepdim=True) / count
        gamma = gamma * math.log(target) / torch.log(mean.clamp(1e-3, 0.999))
    gamma = gamma.clamp(*GAMMA_RANGE)
    return (x ** gamma) * valid
