"""Affine Net: coarse registration from the bus features of both images."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from busref.models.geometry import apply_affine, warp_features
from busref.models.networks.layers import (
    DynamicConv2d,
    Match,
    Matcher,
    act,
    cells_to_normalised,
    conv,
    coordinates,
    expected_offset,
)
from busref.models.networks.reconstructor import Features


class _Stage(nn.Module):
    """Large 7x7 conv (1x1 reduce + depthwise 7x7, for speed) + dynamic 3x3 conv (Chen et al.)."""

    def __init__(self, cin: int, cout: int, kernels: int) -> None:
        super().__init__()
        self.large = nn.Sequential(nn.Conv2d(cin, cout, 1), act(), conv(cout, cout, k=7, groups=cout), act())
        self.dynamic = DynamicConv2d(cout, cout, 3, kernels)
        self.out = act()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.dynamic(self.large(x)))


def fit_affine(points: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Weighted least-squares affine ``theta`` (B, 2, 3) with ``theta [p; 1] ~ target``.

    ``points``, ``targets`` (B, N, 2), ``weights`` (B, N) >= 0. The 3x3 normal equations are
    inverted by the adjugate (explicit formula), which exports to ONNX (``linalg.solve`` does not).
    """
    ones = torch.ones_like(points[..., :1])
    a = torch.cat((points, ones), dim=-1)  # (B, N, 3)
    aw = a * weights[..., None]
    m = aw.transpose(1, 2) @ a + 1e-6 * torch.eye(3, dtype=a.dtype, device=a.device)  # (B, 3, 3)
    rhs = aw.transpose(1, 2) @ targets  # (B, 3, 2)
    m00, m01, m02 = m[:, 0, 0], m[:, 0, 1], m[:, 0, 2]
    m10, m11, m12 = m[:, 1, 0], m[:, 1, 1], m[:, 1, 2]
    m20, m21, m22 = m[:, 2, 0], m[:, 2, 1], m[:, 2, 2]
    c00, c01, c02 = m11 * m22 - m12 * m21, m02 * m21 - m01 * m22, m01 * m12 - m02 * m11
    c10, c11, c12 = m12 * m20 - m10 * m22, m00 * m22 - m02 * m20, m02 * m10 - m00 * m12
    c20, c21, c22 = m10 * m21 - m11 * m20, m01 * m20 - m00 * m21, m00 * m11 - m01 * m10
    det = m00 * c00 + m01 * c10 + m02 * c20
    adj = torch.stack((c00, c01, c02, c10, c11, c12, c20, c21, c22), dim=-1).view(-1, 3, 3)
    solution = (adj / det[:, None, None]) @ rhs  # (B, 3, 2)
    return solution.transpose(1, 2)


class _Level(nn.Module):
    """One coarse-to-fine step: cost volume -> soft-argmax displacement, refined and weighted
    by a head of 7x7 + dynamic conv stages -> per-location target points and confidences."""

    def __init__(self, cin: int, width: int, kernels: int, radius: int) -> None:
        super().__init__()
        self.matcher = Matcher(cin, width, radius)
        self.radius = radius
        self.s1 = _Stage(self.matcher.channels + 2 * cin + 2, width, kernels)
        self.s2 = _Stage(width, width, kernels)
        self.head = conv(width, 3)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Returns points, matched points (B, N, 2) normalised, and weights (B, N)."""
        cost = self.matcher(x, y)
        coords = coordinates(x)
        out = self.head(self.s2(self.s1(torch.cat((cost, x, y, coords), dim=1))))
        # The soft-argmax carries the geometry; the head adds a residual of up to about a cell.
        flow = cells_to_normalised(expected_offset(cost, self.radius) + torch.tanh(out[:, :2]))
        points = coords.flatten(2).transpose(1, 2)
        matched = points + flow.flatten(2).transpose(1, 2)
        weights = torch.sigmoid(out[:, 2].flatten(1)) + 1e-3
        return points, matched, weights


class AffineNet(nn.Module):
    """F1..F4 of the reference (visible) and moving (IR) image -> ``theta`` (B, 2, 3).

    ``theta`` is in normalised coordinates (``F.affine_grid``, align_corners=True) and maps a
    reference location to the moving location it samples.

    Coarse to fine on the deep features (F3, F4): at 1/16 resolution a learned cost volume of
    radius 4 (+-64 px, a quarter of the width at 192x256) gives each location a soft-argmax displacement, refined and
    weighted by stages of a large 7x7 conv and a dynamic convolution (the paper's Affine Net);
    a confidence-weighted least-squares affine fit turns them into ``theta_1``. The moving
    features are then warped by ``theta_1`` and the same is done at 1/8 for the
    residual (radius 2). Deviation from the paper's pooling + MLP: pooling discards the positions that
    rotation and scale depend on, and in our first training run the pooled MLP did not learn
    (validation EPE stayed at the identity's); the explicit soft-argmax made training converge.
    """

    def __init__(self, bus_width: int, width: int = 32, kernels: int = 4, radius: int = 4) -> None:
        super().__init__()
        cin = 8 * bus_width
        self.coarse = _Level(cin, width, kernels, radius)
        self.fine = _Level(cin, width, kernels, max(radius - 2, 1))

    def forward(self, fx: Features, fy: Features) -> tuple[torch.Tensor, tuple[Match, Match]]:
        """Returns ``theta`` and the matches of the coarse and the fine level (moving-image points)."""
        x8, y8 = torch.cat((fx.f3, fx.f4), dim=1), torch.cat((fy.f3, fy.f4), dim=1)
        points, matched, weights = self.coarse(F.avg_pool2d(x8, 2), F.avg_pool2d(y8, 2))
        coarse = Match(points, matched)
        theta = fit_affine(points, matched, weights)
        grid = apply_affine(theta, coordinates(x8).permute(0, 2, 3, 1))
        warped = warp_features(y8, grid)
        points, matched, weights = self.fine(x8, warped)
        # A match p -> p + d in the warped features is p -> theta(p + d) in the moving image.
        fine = Match(points, apply_affine(theta, matched))
        return fit_affine(fine.points, fine.matched, weights), (coarse, fine)
