"""BusReF: the four networks wired together (registration on the bus, then fusion)."""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from busref.models.config import ModelConfig
from busref.models.geometry import apply_affine, warp_normalised
from busref.models.networks.affine import AffineNet
from busref.models.networks.deformable import DeformableNet
from busref.models.networks.gaf import GAF
from busref.models.networks.layers import Match, coordinates
from busref.models.networks.lucas_kanade import LucasKanade, TrackStage
from busref.models.networks.reconstructor import Reconstructor
from busref.models.networks.tone import match_mean_tone


class Registration(NamedTuple):
    """Outputs of :meth:`BusReF.register` at the registration resolution (H, W).

    ``theta`` (B, 2, 3) coarse affine, normalised (``affine_grid`` convention);
    ``coarse_grid`` and ``grid`` (B, H, W, 2) normalised sampling grids (reference -> moving,
    align_corners=True) of the affine alone and of affine + deformable; ``displacements`` the
    per-pass deformable fields (B, 2, H, W), normalised units; ``matches`` every matching
    level's own estimate (the Affine Net's two levels, then each deformable level of each pass).
    """

    theta: torch.Tensor
    coarse_grid: torch.Tensor
    grid: torch.Tensor
    displacements: tuple[torch.Tensor, ...]
    matches: tuple[Match, ...]


def normalised_base(like: torch.Tensor) -> torch.Tensor:
    """Identity grid (B, H, W, 2) in normalised coordinates, x first, align_corners=True, for an
    image ``like`` (B, C, H, W); shape-dynamic for export."""
    return coordinates(like).permute(0, 2, 3, 1)


def sample_grid(grid: torch.Tensor, theta: torch.Tensor, step: int, points: torch.Tensor) -> torch.Tensor:
    """The current sampling ``grid`` (B, H, W, 2) read at normalised ``points`` (B, h, w, 2).

    Before the first deformable pass (``step`` 0) the grid is the affine ``theta``, applied
    analytically (exact, also outside the image); after it, bilinear with border padding.
    """
    if step == 0:
        return apply_affine(theta, points)
    return warp_normalised(grid.permute(0, 3, 1, 2), points, padding_mode="border").permute(0, 2, 3, 1)


class BusReF(nn.Module):
    """The bus (Reconstructor), Affine Net, Deformable Net and GAF of one configuration."""

    def __init__(self, config: ModelConfig | None = None) -> None:
        super().__init__()
        self.config = config or ModelConfig()
        c = self.config
        self.bus = Reconstructor(c.bus.width)
        self.affine = AffineNet(c.bus.width, c.affine.width, c.affine.kernels)
        self.deformable = DeformableNet(c.bus.width, c.deformable.width)
        self.gaf = GAF(c.gaf.width, c.gaf.pool, c.gaf.levels)
        self.lucas_kanade = LucasKanade(c.lucas_kanade)

    def register(self, vis: torch.Tensor, ir: torch.Tensor) -> Registration:
        """Register ``ir`` onto ``vis``: both (B, 1, H, W) in [0, 1] at the registration size.

        Coarse: ``theta = A(F(vis), F(ir))``. Fine (method-notes: the deformable net sees the
        affinely corrected IR re-encoded by the bus, so it learns only the residual): each pass
        warps the IR by the current grid ``G``, re-encodes it and predicts ``d``; the new grid is
        ``G(p + d(p))``. The first pass is composed analytically (``G`` is affine there). Last, the
        weightless Lucas-Kanade stage (:mod:`busref.models.networks.lucas_kanade`) refines ``G`` on
        the images' MIND descriptors; ``grid`` is its result, ``coarse_grid`` the affine alone.

        With ``config.net_ir_tone_mean`` the learned stages see the IR re-toned by a per-image gamma
        to that mean (:func:`busref.models.networks.tone.match_mean_tone`) and the stage the IR as
        given: the nets learned one camera's tone curves, the stage's MIND descriptors hold others.

        With ``config.net_pool`` 2 the learned stages see both images average-pooled by 2 and the
        stage refines their (upsampled) grid at the full size: ``grid`` and ``coarse_grid`` are
        then (B, H, W, 2) at the input's size, ``displacements`` at half of it. Why: on 20 held-out
        NIR train pairs (moderate) 48 more iterations at twice the 192x256 size took the mean EPE
        from 3.14 to 2.34 px (models.config.LK_SCHEDULE_FINE; the classical ngf-mind, at the native
        size: 2.42).
        """
        if vis.shape != ir.shape:
            raise ValueError(f"vis and ir must have the same shape, got {tuple(vis.shape)} and {tuple(ir.shape)}")
        full_v, full_i = vis, ir
        if self.config.net_pool > 1:
            vis, ir = F.avg_pool2d(vis, self.config.net_pool), F.avg_pool2d(ir, self.config.net_pool)
        if self.config.net_ir_tone_mean is not None:
            ir = match_mean_tone(ir, self.config.net_ir_tone_mean)
        h, w = vis.shape[-2:]
        fx = self.bus.encode(vis)
        theta, matches = self.affine(fx, self.bus.encode(ir))
        base = normalised_base(vis)
        coarse = apply_affine(theta, base)
        grid = coarse
        displacements, level_matches = [], list(matches)
        for step in range(self.config.deformable.refinements):
            fy = self.bus.encode(warp_normalised(ir, grid))
            d, proposals = self.deformable(fx, fy, (h, w))
            for proposal in proposals:
                points = normalised_base(proposal)
                matched = sample_grid(grid, theta, step, points + proposal.permute(0, 2, 3, 1))
                level_matches.append(Match(points.flatten(1, 2), matched.flatten(1, 2)))
            displacements.append(d)
            grid = sample_grid(grid, theta, step, base + d.permute(0, 2, 3, 1))
        if self.config.net_pool > 1:
            grid = F.interpolate(grid.permute(0, 3, 1, 2), size=full_v.shape[-2:], mode="bilinear",
                                 align_corners=True).permute(0, 2, 3, 1)
            coarse = apply_affine(theta, normalised_base(full_v))
        grid = self.lucas_kanade(full_v, full_i, grid)
        return Registration(theta, coarse, grid, tuple(displacements), tuple(level_matches))

    def fuse(self, vis: torch.Tensor, ir: torch.Tensor) -> torch.Tensor:
        return self.gaf(vis, ir)


class RegisterGraph(nn.Module):
    """Export wrapper of the ``register`` graph (runtime/artifact.py): (vis, ir) -> (theta, grid)."""

    def __init__(self, model: BusReF) -> None:
        super().__init__()
        self.model = model

    def forward(self, vis: torch.Tensor, ir: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        reg = self.model.register(vis, ir)
        return reg.theta, reg.grid


class TrackGraph(nn.Module):
    """Export wrapper of the ``track`` graph: (vis, ir, start) -> grid. The registration in force
    ``start`` (1, H, W, 2) refined on a new pair ``vis``, ``ir`` (1, 1, H, W) in [0, 1] at the
    registration size (``ir`` not pre-warped) by the Lucas-Kanade stage's ``track_schedule`` alone,
    no nets (:meth:`LucasKanade.track`); the grid in :meth:`BusReF.register`'s convention."""

    def __init__(self, model: BusReF) -> None:
        super().__init__()
        self.lucas_kanade = TrackStage(model.lucas_kanade)

    def forward(self, vis: torch.Tensor, ir: torch.Tensor, start: torch.Tensor) -> torch.Tensor:
        return self.lucas_kanade(vis, ir, start)


class FuseGraph(nn.Module):
    """Export wrapper of the ``fuse`` graph: (vis, ir) -> fused, all (1, 1, H, W) in [0, 1]."""

    def __init__(self, model: BusReF) -> None:
        super().__init__()
        self.gaf = model.gaf

    def forward(self, vis: torch.Tensor, ir: torch.Tensor) -> torch.Tensor:
        return self.gaf(vis, ir)
