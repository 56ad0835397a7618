"""The bus: an auto-encoder whose features F1..F4 feed every other module."""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from busref.models.networks.layers import ResidualBlock, act, conv, separable


class Features(NamedTuple):
    """F1 (B, c, H/2, W/2), F2 (B, 2c, H/4, W/4), F3 and F4 (B, 4c, H/8, W/8)."""

    f1: torch.Tensor
    f2: torch.Tensor
    f3: torch.Tensor
    f4: torch.Tensor


class Reconstructor(nn.Module):
    """Three down-sampling modules, four residual blocks R1..R4, three up-sampling modules.

    Input ``(B, 1, H, W)`` in [0, 1] with H, W multiples of 8 (visible luminance or IR: one
    network for both modalities, as in the paper's Figure 3). :meth:`encode` gives F1..F4;
    :meth:`forward` reconstructs the image in [0, 1]. The decoder adds F2 and F1 back on the way
    up (skips), so F1..F4 together carry the image.
    """

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        c = width
        self.stem = nn.Sequential(conv(1, c), act())
        self.down1 = nn.Sequential(separable(c, c, stride=2), act())
        self.r1 = ResidualBlock(c)
        self.down2 = nn.Sequential(separable(c, 2 * c, stride=2), act())
        self.r2 = ResidualBlock(2 * c)
        self.down3 = nn.Sequential(separable(2 * c, 4 * c, stride=2), act())
        self.r3 = ResidualBlock(4 * c)
        self.r4 = ResidualBlock(4 * c)
        self.up1 = nn.Sequential(conv(4 * c, 2 * c), act())
        self.up2 = nn.Sequential(conv(2 * c, c), act())
        self.up3 = nn.Sequential(conv(c, c), act())
        self.head = conv(c, 1)
        self.width = width

    def encode(self, image: torch.Tensor) -> Features:
        if image.dim() != 4 or image.shape[1] != 1:
            raise ValueError(f"Reconstructor expects (B, 1, H, W), got {tuple(image.shape)}")
        if image.shape[-1] % 8 or image.shape[-2] % 8:
            raise ValueError(f"Reconstructor needs H, W multiples of 8, got {tuple(image.shape[-2:])}")
        f1 = self.r1(self.down1(self.stem(image)))
        f2 = self.r2(self.down2(f1))
        f3 = self.r3(self.down3(f2))
        f4 = self.r4(f3)
        return Features(f1, f2, f3, f4)

    def decode(self, feats: Features) -> torch.Tensor:
        def up(x: torch.Tensor) -> torch.Tensor:
            return F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)

        x = self.up1(up(feats.f4 + feats.f3)) + feats.f2
        x = self.up2(up(x)) + feats.f1
        x = self.up3(up(x))
        return torch.sigmoid(self.head(x))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(image))
