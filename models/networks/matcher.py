"""The learned cross-modal descriptor's towers (visible, IR): per-pixel unit vectors that agree
where the two images show the same point.

They serve the offline refinement (:mod:`busref.models.refinement`) and, inside the register and
track graphs, the Lucas-Kanade stage's learned-descriptor iterations
(:class:`busref.models.networks.lucas_kanade.LucasKanade`). Training and the descriptor file:
:mod:`busref.models.descriptor`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from busref.models.config import DescriptorConfig

Tensor = torch.Tensor


class _Tower(nn.Module):
    def __init__(self, channels: int, dims: int) -> None:
        super().__init__()
        c = channels
        self.body = nn.Sequential(
            nn.Conv2d(1, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU(),
            nn.Conv2d(c, c, 3, padding=2, dilation=2), nn.BatchNorm2d(c), nn.ReLU(),
            nn.Conv2d(c, c, 3, padding=4, dilation=4), nn.BatchNorm2d(c), nn.ReLU(),
            nn.Conv2d(c, c, 3, padding=1), nn.ReLU(),
            nn.Conv2d(c, dims, 1))

    def forward(self, image: Tensor) -> Tensor:
        # The local mean is removed first: the two modalities' absolute levels are unrelated.
        local = image - F.avg_pool2d(image, 15, stride=1, padding=7, count_include_pad=False)
        features = self.body(local)
        # Centring per image keeps the descriptors from sharing one dominant direction (without it
        # every cosine starts near 1 and the softmax does not learn).
        return F.normalize(features - features.mean(dim=(2, 3), keepdim=True), dim=1)


class CrossModalDescriptor(nn.Module):
    """``vis(image)`` / ``ir(image)``: ``(B, 1, H, W)`` float in [0, 1] -> ``(B, dims, H, W)`` unit
    vectors (L2 over the channel axis), at the input's size. Their dot product is high where the
    visible and the IR image show the same point; the receptive field is about 31 pixels."""

    def __init__(self, config: DescriptorConfig = DescriptorConfig()) -> None:
        super().__init__()
        self.config = config
        self.vis = _Tower(config.channels, config.dims)
        self.ir = _Tower(config.channels, config.dims)
