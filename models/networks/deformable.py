"""Deformable Net: fine registration as a dense displacement field."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.networks.layers import Matcher, act, cells_to_normalised, conv, expected_offset, separable
from models.networks.reconstructor import Features


class DeformableNet(nn.Module):
    """F1..F4 of the reference and of the affinely corrected moving image -> displacement.

    Each level (a group of the paper's group convolution; the levels differ in resolution so
    each group is its own small branch) yields a 2-channel flow proposal; the four proposals are
    brought to 1/4 resolution, a 3x3 conv (8 -> 2 channels) mixes them, and the field is
    upsampled to the input size (the misalignment is smooth: a 5x5 control grid). Branch convs
    are depthwise-separable and F1 is average-pooled to 1/4 for the speed budget (issue 3).
    Output ``(B, 2, H, W)``: displacement ``d`` in *normalised* units (align_corners=True) of the
    registration resolution, channel 0 = du; the registered image is ``I_a(p + d(p))``.

    On F2 and F3 a learned cost volume gives the proposal its geometry directly (soft-argmax,
    as in the Affine Net) and the branch adds a residual; the F1 and F4 branches propose a
    field from the features alone. Their last convs start at zero and the mixing conv starts as
    the mean of the two soft-argmax proposals: the regressing-only version did not beat the
    affine alone after 500 CPU steps.
    """

    def __init__(self, bus_width: int, width: int = 24) -> None:
        super().__init__()
        c = bus_width
        chans = (c, 2 * c, 4 * c, 4 * c)
        # Learned cost volumes on F2 (1/4, +-12 px) and F3 (1/8, +-24 px): the residual after the
        # affine is local, and comparing IR with visible needs learned projections.
        self.matchers = nn.ModuleList(
            [nn.Identity(), Matcher(2 * c, width, 3), Matcher(4 * c, width, 3), nn.Identity()]
        )
        extra = [0 if isinstance(m, nn.Identity) else m.channels for m in self.matchers]
        self.branches = nn.ModuleList(
            nn.Sequential(nn.Conv2d(2 * ci + e, width, 1), act(), separable(width, width), act(),
                          separable(width, width), act(), conv(width, 2))
            for ci, e in zip(chans, extra, strict=True)
        )
        for branch in self.branches:
            nn.init.zeros_(branch[-1].weight)
            nn.init.zeros_(branch[-1].bias)
        self.mix = conv(8, 2)
        with torch.no_grad():
            self.mix.weight.zero_()
            self.mix.bias.zero_()
            for level in (1, 2):  # channels 2l, 2l + 1 are level l's (du, dv)
                for k in (0, 1):
                    self.mix.weight[k, 2 * level + k, 1, 1] = 0.5

    def forward(self, fx: Features, fy: Features, size: tuple[int, int]
                ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """Returns the field ``(B, 2, H, W)`` at ``size`` and each level's own proposal
        ``(B, 2, h_l, w_l)`` (same units) for the per-level supervision."""
        proposals, raw = [], []
        quarter = fx.f2.shape[-2:]
        for level, (branch, matcher, a, b) in enumerate(zip(self.branches, self.matchers, fx, fy, strict=True)):
            if level == 0:  # F1 is read at 1/4 like F2: at 1/2 its branch cost a third of the budget
                a, b = F.avg_pool2d(a, 2), F.avg_pool2d(b, 2)
            if isinstance(matcher, nn.Identity):
                proposal = branch(torch.cat((a, b), dim=1))
            else:
                cost = matcher(a, b)
                proposal = cells_to_normalised(expected_offset(cost, matcher.radius)) + branch(
                    torch.cat((a, b, cost), dim=1))
            raw.append(proposal)
            proposals.append(F.interpolate(proposal, size=quarter, mode="bilinear", align_corners=True))
        field = F.interpolate(self.mix(torch.cat(proposals, dim=1)), size=size, mode="bilinear", align_corners=True)
        return field, tuple(raw)
