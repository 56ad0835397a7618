"""Run a trained BusReF on full-size numpy images (eval, ``busref register``, ``busref fuse``)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from busref.keypoints import keypoint_affine
from busref.models.geometry import (
    affine_to_grid,
    apply_affine,
    compose_affine,
    identity_grid,
    normalised_to_pixel,
    pixel_affine_to_theta,
    pixel_to_normalised,
)
from busref.models.networks import BusReF
from busref.models.networks.matcher import CrossModalDescriptor
from busref.models.refinement import RefinementConfig, refine_grid
from busref.orientation import agreement_with, orientation_field

log = logging.getLogger(__name__)


def to_tensor(image: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
    """(H, W) float array in [0, 1] -> (1, 1, H, W) float32 tensor."""
    return torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None, None].to(device)


@dataclass(frozen=True)
class RegistrationResult:
    """``grid`` (H, W, 2) float32 pixel sampling grid of the visible frame into the IR image
    (the protocol convention); ``theta`` (2, 3) the coarse affine, normalised coordinates."""

    grid: np.ndarray
    theta: np.ndarray


class BusReFRegistration:
    """The learned method behind the same interface as the classical baselines.

    Both images are resized (area) to the model's registration size; the normalised output grid
    is upsampled bilinearly (align_corners=True) to the visible frame and converted to pixels of
    the IR image. With ``refinement`` the full-size grid is then refined on the pair itself
    (:func:`busref.models.refinement.refine_grid`, about a second per pair on a CPU core).

    A model with ``keypoint_start`` (both shipped weights) also tries the SIFT + RANSAC affine of
    :mod:`busref.keypoints`, as the daemon's first run does (``busref.runtime.registration.keypoint_start``): where
    it aligns the pair's edges better than the raw input does (:func:`busref.orientation.agreement_with`),
    the IR is pre-warped by it (out-of-view pixels repeat the nearest IR pixel, as the daemon's
    canvas does) and the register graph refines from there; of the network's answer from the raw
    input, the keypoint affine alone and the network's answer from the affine, the one whose
    edges agree best with the visible image wins. Why: the register graph's capture range is a
    few degrees, keypoints have none, and on a near-rigid pair the affine alone can be the best.
    """

    def __init__(self, model: BusReF, device: torch.device | str = "cpu",
                 refinement: RefinementConfig | None = None, descriptor: CrossModalDescriptor | None = None
                 ) -> None:
        self.model = model.eval().to(device)
        self.device = device
        self.refinement = refinement
        self.descriptor = descriptor.eval().to(device) if descriptor is not None else None
        self.name = "busref" if refinement is None else "busref-refined"

    @torch.no_grad()
    def _network(self, vis: np.ndarray, ir: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """The register graph on a pair: normalised grid (1, H, W, 2) at ``vis``'s size, and theta."""
        rh, rw = self.model.config.registration_size
        small_v = cv2.resize(vis.astype(np.float32), (rw, rh), interpolation=cv2.INTER_AREA)
        small_i = cv2.resize(ir.astype(np.float32), (rw, rh), interpolation=cv2.INTER_AREA)
        reg = self.model.register(to_tensor(small_v, self.device), to_tensor(small_i, self.device))
        grid = F.interpolate(reg.grid.permute(0, 3, 1, 2), size=vis.shape, mode="bilinear", align_corners=True)
        return grid.permute(0, 2, 3, 1), reg.theta

    def _candidates(self, vis: np.ndarray, ir: np.ndarray, reference: np.ndarray | None
                    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(pixel grid (1, H, W, 2) into ``ir``, normalised theta (1, 2, 3)) of each start tried;
        ``reference`` the visible image's orientation field, None without the keypoint start."""
        grid, theta = self._network(vis, ir)
        candidates = [(normalised_to_pixel(grid, *ir.shape), theta)]
        found = keypoint_affine(vis, ir) if reference is not None else None
        if found is None:
            return candidates
        h, w = vis.shape
        matrix = torch.from_numpy(found.matrix)[None].to(self.device)
        affine = affine_to_grid(matrix, h, w).to(grid.dtype)
        # The network's own start: the IR stretched onto the visible frame (identity at equal sizes).
        stretched = normalised_to_pixel(pixel_to_normalised(identity_grid(h, w), h, w), *ir.shape)
        if _agreement(reference, ir, affine) <= _agreement(reference, ir, stretched):
            return candidates
        pre = cv2.warpAffine(ir.astype(np.float32), found.matrix, (w, h), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                             borderMode=cv2.BORDER_REPLICATE)
        fine, fine_theta = self._network(vis, pre)
        keypoint_theta = pixel_affine_to_theta(matrix, (h, w), ir.shape).to(theta.dtype)
        composed = apply_affine(matrix.to(grid.dtype), normalised_to_pixel(fine, h, w))
        return [*candidates, (affine, keypoint_theta), (composed, compose_affine(keypoint_theta, fine_theta))]

    @torch.no_grad()
    def estimate(self, vis: np.ndarray, ir: np.ndarray) -> RegistrationResult:
        reference = orientation_field(vis) if self.model.config.keypoint_start else None
        candidates = self._candidates(vis, ir, reference)
        if reference is not None and len(candidates) > 1:
            scores = [_agreement(reference, ir, grid) for grid, _ in candidates]
            log.debug("%s: agreement of the network, keypoint and keypoint + network starts: %s", self.name,
                      [round(v, 4) for v in scores])
            grid, theta = candidates[int(np.argmax(scores))]
        else:
            grid, theta = candidates[0]
        if self.refinement is not None:
            grid = refine_grid(to_tensor(vis, self.device), to_tensor(ir, self.device),
                               pixel_to_normalised(grid, *ir.shape), self.refinement, self.descriptor)
            grid = normalised_to_pixel(grid, *ir.shape)
        return RegistrationResult(grid[0].float().cpu().numpy(), theta[0].float().cpu().numpy())

    def register(self, vis: np.ndarray, ir: np.ndarray) -> np.ndarray:
        return self.estimate(vis, ir).grid


def _agreement(reference_field: np.ndarray, ir: np.ndarray, grid: torch.Tensor) -> float:
    """Edge-orientation agreement of the visible image (its field) and ``ir`` sampled at the pixel
    ``grid`` (1, H, W, 2); IR pixels that are exactly 0 (a protocol pair's padding) do not count."""
    g = grid[0].float().cpu().numpy()
    x, y = np.ascontiguousarray(g[..., 0]), np.ascontiguousarray(g[..., 1])
    moving = cv2.remap(ir.astype(np.float32), x, y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    valid = cv2.remap((ir > 0).astype(np.uint8), x, y, cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    return agreement_with(reference_field, moving, valid)


@torch.no_grad()
def fuse_luminance(model: BusReF, vis: np.ndarray, ir: np.ndarray, device: torch.device | str = "cpu"
                   ) -> np.ndarray:
    """Fuse (H, W) luminance and registered IR in [0, 1]; pads to a multiple of 8 (reflect)."""
    h, w = vis.shape
    ph, pw = (-h) % 8, (-w) % 8
    pad = ((0, ph), (0, pw))
    v = np.pad(vis, pad, mode="reflect") if ph or pw else vis
    i = np.pad(ir, pad, mode="reflect") if ph or pw else ir
    fused = model.fuse(to_tensor(v, device), to_tensor(i, device))
    return fused[0, 0, :h, :w].float().cpu().numpy()
