"""Affine Net: coarse registration from the bus features of both images."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.networks.layers import DynamicConv2d, act, conv, coordinates, separable
from models.networks.reconstructor import Features

IDENTITY_THETA = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


class _Stage(nn.Module):
    """Large 7x7 conv (1x1 reduce + depthwise 7x7, for speed) + dynamic 3x3 conv, then down x2."""

    def __init__(self, cin: int, cout: int, kernels: int) -> None:
        super().__init__()
        self.large = nn.Sequential(nn.Conv2d(cin + 2, cout, 1), act(), conv(cout, cout, k=7, groups=cout), act())
        self.dynamic = DynamicConv2d(cout, cout, 3, kernels)
        self.down = nn.Sequential(act(), separable(cout, cout, stride=2), act())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(self.dynamic(self.large(torch.cat((x, coordinates(x)), dim=1))))


class AffineNet(nn.Module):
    """F1..F4 of the reference (visible) and moving (IR) image -> ``theta`` (B, 2, 3).

    ``theta`` is in normalised coordinates (``F.affine_grid``, align_corners=True) and maps a
    reference location to the moving location it samples. Stages run at 1/4, 1/8, 1/16 and
    1/32 (F1 is average-pooled to 1/4 first: the full 1/2 resolution costs too much for the
    10 ms budget); global average + max pooling and an MLP give ``theta``. The last layer starts
    at zero with the identity as bias, so an untrained net returns the identity transform.
    """

    def __init__(self, bus_width: int, width: int = 32, kernels: int = 4) -> None:
        super().__init__()
        c = bus_width
        self.s1 = _Stage(6 * c, width, kernels)  # F1 (pooled) + F2 at 1/4 -> 1/8
        self.s2 = _Stage(width + 16 * c, width, kernels)  # + F3, F4 at 1/8 -> 1/16
        self.s3 = _Stage(width, width, kernels)  # 1/16 -> 1/32
        self.mlp = nn.Sequential(nn.Linear(2 * width, width), nn.ReLU(inplace=True), nn.Linear(width, 6))
        nn.init.zeros_(self.mlp[-1].weight)
        with torch.no_grad():
            self.mlp[-1].bias.copy_(torch.tensor(IDENTITY_THETA))

    def forward(self, fx: Features, fy: Features) -> torch.Tensor:
        x = self.s1(torch.cat((F.avg_pool2d(fx.f1, 2), F.avg_pool2d(fy.f1, 2), fx.f2, fy.f2), dim=1))
        x = self.s2(torch.cat((x, fx.f3, fy.f3, fx.f4, fy.f4), dim=1))
        x = self.s3(x)
        pooled = torch.cat((F.adaptive_avg_pool2d(x, 1), F.adaptive_max_pool2d(x, 1)), dim=1).flatten(1)
        return self.mlp(pooled).view(-1, 2, 3)
