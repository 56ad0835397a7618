"""Small building blocks shared by the networks."""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn


class Match(NamedTuple):
    """One matching level's estimate: reference locations ``points`` (B, N, 2) and the moving-image
    locations ``matched`` (B, N, 2) they correspond to, both normalised (x first, align_corners=True).
    Training supervises every level with the synthetic truth (losses.match_loss)."""

    points: torch.Tensor
    matched: torch.Tensor


def conv(cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, groups=groups)


def act() -> nn.Module:
    return nn.LeakyReLU(0.1, inplace=True)


def separable(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    """Depthwise 3x3 then pointwise 1x1: a 3x3 conv at a fraction of the cost (the graphs' CPU speed budget)."""
    return nn.Sequential(conv(cin, cin, stride=stride, groups=cin), nn.Conv2d(cin, cout, 1))


class ResidualBlock(nn.Module):
    """Residual feature extraction (RFE) block: two depthwise-separable 3x3 convs and a skip."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(separable(channels, channels), act(), separable(channels, channels))
        self.out = act()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(x + self.body(x))


class DynamicConv2d(nn.Module):
    """Dynamic convolution (Chen et al., CVPR 2020): attention over K kernels.

    Per sample, ``pi = softmax(MLP(avgpool(x)) / T)`` weighs K kernels and biases that are summed
    into one kernel. Implemented with a grouped convolution over the batch so that it exports to
    ONNX with a dynamic batch. ``(B, Cin, H, W) -> (B, Cout, H, W)``.
    """

    def __init__(self, cin: int, cout: int, k: int = 3, kernels: int = 4, temperature: float = 4.0) -> None:
        super().__init__()
        self.cin, self.cout, self.k, self.kernels, self.temperature = cin, cout, k, kernels, temperature
        hidden = max(cin // 4, 4)
        self.attention = nn.Sequential(nn.Linear(cin, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, kernels))
        self.weight = nn.Parameter(torch.empty(kernels, cout, cin, k, k))
        self.bias = nn.Parameter(torch.zeros(kernels, cout))
        for i in range(kernels):
            nn.init.kaiming_uniform_(self.weight[i], a=0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        pi = torch.softmax(self.attention(x.mean(dim=(2, 3))) / self.temperature, dim=1)  # (B, K)
        weight = (pi @ self.weight.flatten(1)).reshape(b * self.cout, self.cin, self.k, self.k)
        bias = (pi @ self.bias).reshape(b * self.cout)
        out = F.conv2d(x.reshape(1, b * self.cin, h, w), weight, bias, padding=self.k // 2, groups=b)
        return out.reshape(b, self.cout, h, w)


def ramp(x: torch.Tensor, dim: int) -> torch.Tensor:
    """Values -1..1 (align_corners=True spacing) along ``dim`` of ``x``, other dims of size 1.

    Built from ``cumsum`` rather than ``linspace``: the ONNX exporter turns ``linspace`` into a
    float64 Range that ONNX Runtime's Conv then refuses, and this form keeps H, W dynamic.
    """
    index = [slice(None, 1)] * x.dim()
    index[dim] = slice(None)
    steps = torch.cumsum(torch.ones_like(x[tuple(index)]), dim=dim) - 1.0
    return steps / steps.amax(dim=dim, keepdim=True) * 2.0 - 1.0


def coordinates(x: torch.Tensor) -> torch.Tensor:
    """Normalised (u, v) coordinate channels in [-1, 1] shaped like ``x`` (B, 2, H, W).

    Rotation and scale show as displacements that depend on position, so the registration
    heads see their position (CoordConv), and the affine fit uses them as its points.
    """
    b, _, h, w = x.shape
    u = ramp(x, 3).expand(b, 1, h, w)
    v = ramp(x, 2).expand(b, 1, h, w)
    return torch.cat((u, v), dim=1)


def correlation(fa: torch.Tensor, fb: torch.Tensor, radius: int) -> torch.Tensor:
    """Local cost volume: ``out[:, k, y, x] = mean_c fa[:, c, y, x] * fb[:, c, y + dy, x + dx]``
    for the ``(2r+1)^2`` offsets ``(dy, dx)`` in row-major order, zero outside ``fb``.

    ``(B, C, H, W) x 2 -> (B, (2r+1)^2, H, W)``. Plain slicing, so it exports to ONNX. The products
    are reduced over the *last* axis (channels moved there once): ONNX Runtime reduces a middle
    axis several times slower, which was most of the cost volumes' time.
    """
    h, w = fa.shape[-2:]
    a = fa.permute(0, 2, 3, 1)
    b = F.pad(fb, (radius, radius, radius, radius)).permute(0, 2, 3, 1)
    return torch.stack([(a * b[:, dy:dy + h, dx:dx + w]).mean(dim=-1)
                        for dy in range(2 * radius + 1) for dx in range(2 * radius + 1)], dim=1)


def expected_offset(cost: torch.Tensor, radius: int) -> torch.Tensor:
    """Soft-argmax of a local cost volume: ``(B, (2r+1)^2, H, W)`` (offsets in the row-major
    order of :func:`correlation`, already scaled as logits) -> expected ``(dx, dy)`` in cells of
    that grid, ``(B, 2, H, W)``.

    Giving the networks this explicit geometric read-out of the cost volume is what lets them
    learn from few steps; the conv heads only add a residual and a confidence. Computed as
    ``exp(cost - max)`` and one 1x1 convolution giving ``sum e dx``, ``sum e dy`` and ``sum e``, then
    two divisions: the same softmax expectation, but ONNX Runtime's Softmax over the channel axis
    transposes and cost ~0.8 ms on the 1/4 level alone.
    """
    span = torch.arange(-radius, radius + 1, dtype=cost.dtype, device=cost.device)
    dx = span.repeat(2 * radius + 1)
    dy = span.repeat_interleave(2 * radius + 1)
    moments = torch.stack((dx, dy, torch.ones_like(dx)))[:, :, None, None]
    sums = F.conv2d(torch.exp(cost - cost.amax(dim=1, keepdim=True)), moments)
    return sums[:, :2] / sums[:, 2:]


def cost_logits(cost: torch.Tensor, sharpness: torch.Tensor) -> torch.Tensor:
    """A local cost volume ``(B, K, H, W)`` -> logits for :func:`expected_offset`: each location's
    K costs standardised (zero mean, unit deviation over the offsets), times ``sharpness``.

    Why standardise: neighbouring bus features are smooth, so raw cosines differ by ~0.03 across
    the offsets; times a learned scale that started at 10 the softmax stayed near uniform (max
    probability 0.02-0.09 against 0.01-0.04 uniform) and every soft-argmax shrank towards zero,
    which is what held the shipped nets at ~7 px.
    """
    centred = cost - cost.mean(dim=1, keepdim=True)
    return centred * torch.rsqrt((centred * centred).mean(dim=1, keepdim=True) + 1e-8) * sharpness


def cosine_cost(a: torch.Tensor, b: torch.Tensor, radius: int, sharpness: torch.Tensor) -> torch.Tensor:
    """Descriptors ``a``, ``b`` (B, C, H, W) -> logits (B, (2r+1)^2, H, W) of their local cost
    volume of cosine similarities (:func:`correlation` of the L2-normalised descriptors, then
    :func:`cost_logits`), ready for :func:`expected_offset`."""
    return cost_logits(correlation(F.normalize(a, dim=1), F.normalize(b, dim=1), radius), sharpness)


def cells_to_normalised(flow: torch.Tensor) -> torch.Tensor:
    """A displacement in grid cells ``(B, 2, h, w)`` -> normalised units (align_corners=True),
    where one cell of a ``w``-wide grid is ``2 / (w - 1)``."""
    h, w = flow.shape[-2:]
    return torch.cat((flow[:, :1] * (2.0 / (w - 1)), flow[:, 1:] * (2.0 / (h - 1))), dim=1)


def descriptor(cin: int, width: int, separables: int = 1) -> nn.Sequential:
    """Per-modality descriptor for a cost volume: a 1x1 reduction to ``width``, then ``separables``
    depthwise-separable 3x3 convs (receptive field ``2 * separables + 1``), no final activation."""
    layers: list[nn.Module] = [nn.Conv2d(cin, width, 1)]
    for _ in range(separables):
        layers += [act(), separable(width, width)]
    return nn.Sequential(*layers)


#: Initial scale of standardised costs: a peak 2-3 deviations above the rest gets most of the mass.
SHARPNESS = 4.0


class Matcher(nn.Module):
    """Learned per-modality projections (1x1, separable 3x3 conv), L2-normalised, then a local cost volume
    of cosine similarities, standardised and scaled (:func:`cost_logits`), for :func:`expected_offset`.

    The bus features are not modality-invariant (the bus is an auto-encoder); the projections
    let the registration nets learn what to compare across IR and visible.
    """

    def __init__(self, cin: int, cproj: int, radius: int) -> None:
        super().__init__()
        self.px, self.py = descriptor(cin, cproj), descriptor(cin, cproj)
        self.sharpness = nn.Parameter(torch.tensor(SHARPNESS))
        self.radius = radius
        self.channels = (2 * radius + 1) ** 2

    def forward(self, fx: torch.Tensor, fy: torch.Tensor) -> torch.Tensor:
        return cosine_cost(self.px(fx), self.py(fy), self.radius, self.sharpness)
