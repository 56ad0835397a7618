"""Deformable Net: fine registration as a dense displacement field, coarse to fine (1/8, then 1/4)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from busref.models.geometry import warp_features
from busref.models.networks.layers import (
    SHARPNESS,
    act,
    cells_to_normalised,
    conv,
    coordinates,
    cosine_cost,
    descriptor,
    expected_offset,
    separable,
)
from busref.models.networks.reconstructor import Features


class _Level(nn.Module):
    """Standardised cost volume of cosine similarities (radius ``radius``) -> soft-argmax + a residual head."""

    def __init__(self, width: int, radius: int) -> None:
        super().__init__()
        self.radius = radius
        self.sharpness = nn.Parameter(torch.tensor(SHARPNESS))
        cost = (2 * radius + 1) ** 2
        self.head = nn.Sequential(nn.Conv2d(cost + 2 * width + 2, width, 1), act(), separable(width, width), act(),
                                  separable(width, width), act(), conv(width, 2))
        nn.init.zeros_(self.head[-1].weight)
        nn.init.zeros_(self.head[-1].bias)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Descriptors ``a``, ``b`` (B, C, h, w) -> displacement (B, 2, h, w), normalised units."""
        cost = cosine_cost(a, b, self.radius, self.sharpness)
        residual = self.head(torch.cat((cost, a, b, coordinates(a)), dim=1))
        return cells_to_normalised(expected_offset(cost, self.radius)) + residual


class DeformableNet(nn.Module):
    """F1..F4 of the reference and of the affinely corrected moving image -> displacement.

    Coarse to fine (PWC-Net style) instead of parallel per-level proposals: at 1/8 the deep
    features (F3, F4) of each modality go through their own descriptor tower and a radius-3 cost
    volume (+-24 px at the registration size); at 1/4 F2 joins the upsampled deep descriptors, the
    moving descriptors are warped by the 1/8 estimate and a radius-2 cost volume (+-8 px) adds the
    residual. Why: the parallel design's F2/F3 matchers compared shallow auto-encoder features
    across IR and visible, and their soft-argmax had cosine ~0 with the true residual.

    Output ``(B, 2, H, W)``: displacement ``d`` in *normalised* units (align_corners=True) of the
    registration resolution, channel 0 = du; the registered image is ``I_a(p + d(p))``. Also
    returns each level's full estimate ``(B, 2, h_l, w_l)`` (same units) for per-level supervision.
    """

    def __init__(self, bus_width: int, width: int = 24) -> None:
        super().__init__()
        c = bus_width
        # Two separable convs each (a 5x5 receptive field): one more than the Affine Net's matchers.
        self.deep_x, self.deep_y = descriptor(8 * c, width, 2), descriptor(8 * c, width, 2)
        self.fine_x, self.fine_y = descriptor(2 * c + width, width, 2), descriptor(2 * c + width, width, 2)
        self.coarse = _Level(width, 3)
        self.fine = _Level(width, 2)

    def forward(self, fx: Features, fy: Features, size: tuple[int, int]
                ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        a8 = self.deep_x(torch.cat((fx.f3, fx.f4), dim=1))
        b8 = self.deep_y(torch.cat((fy.f3, fy.f4), dim=1))
        flow8 = self.coarse(a8, b8)
        quarter = fx.f2.shape[-2:]

        def up(t: torch.Tensor) -> torch.Tensor:
            return F.interpolate(t, size=quarter, mode="bilinear", align_corners=True)

        a4 = self.fine_x(torch.cat((fx.f2, up(a8)), dim=1))
        b4 = self.fine_y(torch.cat((fy.f2, up(b8)), dim=1))
        prior = up(flow8)
        # The moving descriptors are read where the 1/8 estimate points, so the 1/4 cost volume
        # only sees the residual (an FP32 warp in every engine: see warp_features).
        warped = warp_features(b4, coordinates(b4).permute(0, 2, 3, 1) + prior.permute(0, 2, 3, 1),
                                 padding_mode="border")
        flow4 = prior + self.fine(a4, warped)
        field = F.interpolate(flow4, size=size, mode="bilinear", align_corners=True)
        return field, (flow8, flow4)
