"""Deformable Net: fine registration as a dense displacement field."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.networks.layers import Matcher, act, conv, separable
from models.networks.reconstructor import Features


class DeformableNet(nn.Module):
    """F1..F4 of the reference and of the affinely corrected moving image -> displacement.

    Each level (a group of the paper's group convolution; the levels differ in resolution so
    each group is its own small branch) yields a 2-channel flow proposal; the four proposals are
    upsampled to the input resolution and a 3x3 conv (8 -> 2 channels) mixes them. Branch convs
    are depthwise-separable for the speed budget.
    Output ``(B, 2, H, W)``: displacement ``d`` in *normalised* units (align_corners=True) of the
    registration resolution, channel 0 = du; the registered image is ``I_a(p + d(p))``.
    The mixing conv starts at zero, so an untrained net returns no displacement.
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
        extra = [0, 49, 49, 0]
        self.branches = nn.ModuleList(
            nn.Sequential(nn.Conv2d(2 * ci + e, width, 1), act(), separable(width, width), act(),
                          separable(width, width), act(), conv(width, 2))
            for ci, e in zip(chans, extra, strict=True)
        )
        self.mix = conv(8, 2)
        nn.init.zeros_(self.mix.weight)
        nn.init.zeros_(self.mix.bias)

    def forward(self, fx: Features, fy: Features, size: tuple[int, int]) -> torch.Tensor:
        proposals = []
        for branch, matcher, a, b in zip(self.branches, self.matchers, fx, fy, strict=True):
            inputs = (a, b) if isinstance(matcher, nn.Identity) else (a, b, matcher(a, b))
            proposal = branch(torch.cat(inputs, dim=1))
            proposals.append(F.interpolate(proposal, size=size, mode="bilinear", align_corners=True))
        return self.mix(torch.cat(proposals, dim=1))
