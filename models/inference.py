"""Run a trained BusReF on full-size numpy images (eval, ``busref register``, ``busref fuse``)."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from busref.models.descriptor import CrossModalDescriptor
from busref.models.geometry import normalised_to_pixel
from busref.models.networks import BusReF
from busref.models.refinement import RefinementConfig, refine_grid


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
    def estimate(self, vis: np.ndarray, ir: np.ndarray) -> RegistrationResult:
        rh, rw = self.model.config.registration_size
        small_v = cv2.resize(vis.astype(np.float32), (rw, rh), interpolation=cv2.INTER_AREA)
        small_i = cv2.resize(ir.astype(np.float32), (rw, rh), interpolation=cv2.INTER_AREA)
        reg = self.model.register(to_tensor(small_v, self.device), to_tensor(small_i, self.device))
        h, w = vis.shape
        grid = F.interpolate(reg.grid.permute(0, 3, 1, 2), size=(h, w), mode="bilinear", align_corners=True)
        grid = grid.permute(0, 2, 3, 1)
        if self.refinement is not None:
            grid = refine_grid(to_tensor(vis, self.device), to_tensor(ir, self.device), grid, self.refinement,
                              self.descriptor)
        grid = normalised_to_pixel(grid, *ir.shape)
        return RegistrationResult(grid[0].float().cpu().numpy(), reg.theta[0].float().cpu().numpy())

    def register(self, vis: np.ndarray, ir: np.ndarray) -> np.ndarray:
        return self.estimate(vis, ir).grid


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
