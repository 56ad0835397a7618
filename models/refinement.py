"""Instance optimisation: refine one pair's registration grid so that the warped IR's edges and
local structure match the visible image's (normalised gradient fields + MIND; optionally, at full
size, a learned cross-modal descriptor, :mod:`models.descriptor`).

Why: the shipped register graph leaves ~3.3 px of error on the moderate level (RoadScene test),
mostly a smooth residual that its MIND-based Lucas-Kanade stage does not find. IR and visible
intensities are unrelated, but the *orientation* of their edges largely agrees (up to sign),
which NGF scores, and so does the pattern of local self-similarity, which MIND describes;
starting from the network's grid, a few hundred Adam steps on a small smooth residual pull the
two together. It is a per-pair optimisation (a few seconds on one CPU core), so it serves offline
work (``busref eval``, ``busref register --refine``), not the real-time daemon, which runs the
exported networks only. The learned descriptor's term and iterations are an opt-in
(:data:`DESCRIPTOR_REFINEMENT`): the one trained on RoadScene matched its JPEG block grid.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_validator

from busref.models.config import LK_WINDOW, LucasKanadeConfig
from busref.models.geometry import warp_normalised
from busref.models.local_structure import image_gradients, mind_descriptor
from busref.models.networks.lucas_kanade import descriptor_phase
from busref.models.networks.matcher import CrossModalDescriptor

Tensor = torch.Tensor

#: The residual's parameters are optimised in tenths of normalised units, so that one Adam step
#: of ``learning_rate`` 0.05 moves the grid by at most ~0.005 (about 1 px of a 500-px image).
_PARAMETER_SCALE = 0.1


class RefinementConfig(BaseModel):
    """How :func:`refine_grid` optimises. The defaults were chosen on held-out *train* pairs,
    never on the test split. On the 8 validation pairs, from the shipped network's grid: moderate
    level 6.41 -> 2.76 px mean EPE (MNCC 0.851 -> 0.954), hard 13.46 -> 10.02 px with a descriptor
    trained on RoadScene (whose gain was its JPEG block grid: :data:`DESCRIPTOR_REFINEMENT`); without
    it (NGF + MIND, the defaults) 3.57 px (MNCC 0.934) and 10.49 px (0.816). NGF alone gave
    3.8-4.0 and 10.7-11.1 px (the ranges are float rounding in the start: NGF has many nearby
    optima on this data, so single pairs can move by ~2 px), MIND alone 3.92 px.
    Around the NGF + MIND defaults, on those 8 pairs and 16 more train pairs (moderate, 3.24 px):
    MIND weight 0.5 / 2: 3.36 / 3.66; smoothness 0.03 / 0.3: 3.70 / 3.50; edge noise 0.02: 3.33;
    learning rate 0.03: 3.27; 60 final-scale steps: 3.23; MIND radius 1 / 3: 3.21 / 3.41; MIND
    patch 5: 3.47; an 8 x 10 control grid: 3.54.

    The learned descriptor's term (``descriptor_weight``), on 24 train pairs held out from a
    prototype descriptor's training (3074 steps on the other 152 train pairs): 3.23 -> 2.27 px with
    weight 1 at full size only; weight 2 / 0.5: 2.33 / 2.35; at pool factors 2 and 1: 2.72; at
    every scale: 3.24 (averaged unit vectors of a coarse scale are not descriptors).

    The Lucas-Kanade iterations on the learned descriptor after the optimisation
    (``descriptor_iterations``; docs/experiments.md), on the 8 validation pairs from the thermal
    register graph's grids (moderate, 4.20 px): the optimisation alone 3.00 px (MNCC 0.950), then 64
    iterations on cells of 4 px at gain 1.5 2.64 (0.959); at gain 2 2.62, 128 at gain 1.5 2.61 (twice
    the time); the iterations alone from the network's grid 2.88, the optimisation after them 3.27.
    Hard level: 9.59 -> 9.42 px (gain 2). A gain of 2 is the largest that still converges on an exact
    Gauss-Newton step; on these descriptors the damped, smoothed steps undershoot (32 iterations at
    gain 1 / 2 / 3: 3.14 / 2.98 / 2.92 px from the network's grid). ``descriptor_guard``: on those
    pairs the iterations changed the MIND residual by +0.0 to +2.1 %; on 20 NIR train pairs, where
    the thermal descriptor pulled 11 pairs 0.1-0.7 px the wrong way (4.02 -> 4.14 px without the
    guard), by -0.9 to +77 %, +3.9 % and more on every pair it made worse by 0.2 px or more; with
    the guard 4.00 px (gain 2). With the descriptor fine-tuned on these iterations
    (``configs/descriptor/refinement_iterations.yaml``), from the shipped register graph's grids on
    the 8 validation pairs: 64 / 128 / 192 iterations moderate 2.311 / 2.262 / 2.237 px, hard 7.776 /
    7.751 px (64 / 128), wide 13.96 px for all three; 128, because each 64 more add ~3 s a pair
    (6.4 / 9.3 / 12.6 s for the whole refinement in that run) for less each time.

    The MIND term's eight neighbours (``mind_radius`` 2, ``mind_diagonal`` 1), from the register graph
    of the same neighbourhood, on the 8 validation pairs (moderate): 2.63 px with the four axial
    neighbours, 2.20 with the eight (2.27 at radius 1); on 20 held-out NIR train pairs (NIR weights)
    1.75 -> 1.73 px (docs/experiments.md).

    Starting one scale coarser (8, 4, 2, 1) was worse from the network: started *at the truth*
    it drifted 2.9 px away, against 1.7 px for the finest scale alone, so blurred NGF is biased
    and only pays where the start is far off (:class:`models.baselines.registration.NgfMindElastic`).
    A finer control grid (12 x 16) ended at 4.3-4.8 px; a Gaussian pre-blur drifted further from
    the truth.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    scales: tuple[int, ...] = Field((4, 2, 1), description="average-pool factors, coarse to fine")
    iterations: tuple[int, ...] = Field((60, 40, 30), description="Adam steps at each scale")
    learning_rate: float = Field(0.05, gt=0, le=1)
    control: tuple[int, int] = Field((6, 8), description="rows, cols of the smooth field's control grid")
    smoothness: float = Field(0.1, ge=0, description="weight of the control points' squared differences")
    edge_noise: float = Field(0.03, gt=0, description="NGF epsilon: gradients below it count as noise")
    mind_weight: float = Field(1.0, ge=0, description="weight of the MIND descriptor distance (0: NGF only)")
    mind_radius: int = Field(2, ge=1, le=3, description="that MIND's four axial neighbours at this distance (pixels "
                             "of each scale)")
    mind_diagonal: int = Field(1, ge=0, le=3, description="and, if > 0, its four diagonal ones at (+-d, +-d), at "
                               "most mind_radius")
    descriptor_weight: float = Field(0.0, ge=0, description="weight of the learned descriptor's cosine distance, "
                                     "at pool factor 1 only (used when refine_grid is given a descriptor; 0: no "
                                     "descriptor, the default: see DESCRIPTOR_REFINEMENT)")
    descriptor_iterations: int = Field(128, ge=0, description="Lucas-Kanade iterations on the learned descriptor "
                                       "after the optimisation (with a descriptor; 0: none)")
    descriptor_cells: int = Field(4, ge=1, le=16, description="those iterations solve on cells of this many pixels")
    descriptor_gain: float = Field(1.5, gt=0, lt=2, description="each of those updates times this (their "
                                   "damped, smoothed steps undershoot; 2 and more would not converge on an exact step)")
    descriptor_guard: float = Field(1.03, ge=1, description="keep the optimisation's grid where those iterations "
                                    "raise the MIND residual by more than this factor")

    @property
    def uses_descriptor(self) -> bool:
        """Whether :func:`refine_grid` reads a learned descriptor: its cosine term and the iterations
        on it both need ``descriptor_weight`` > 0."""
        return self.descriptor_weight > 0

    @model_validator(mode="after")
    def _check(self) -> RefinementConfig:
        if not self.scales or len(self.scales) != len(self.iterations):
            raise ValueError(f"scales {self.scales} and iterations {self.iterations} need the same, non-zero length")
        if min(self.scales) < 1 or min(self.iterations) < 0:
            raise ValueError("scales must be >= 1 and iterations >= 0")
        if min(self.control) < 2:
            raise ValueError(f"control needs at least 2x2 points, got {self.control}")
        if self.mind_diagonal > self.mind_radius:
            raise ValueError(f"mind_diagonal {self.mind_diagonal} must be at most mind_radius {self.mind_radius}")
        return self


#: The refinement with a learned descriptor (``busref eval`` / ``busref register --descriptor PATH``,
#: ``busref train descriptor --stage-of refinement``): its cosine term at full size (weight 1) and 128
#: Lucas-Kanade iterations on it. Not the default: a descriptor trained on RoadScene learned its JPEG
#: files' shared 8x8 block grid, a cue no pair of live cameras has. On the 8 held-out RoadScene train
#: pairs (moderate, from the register graph without towers) the refinement with the descriptor trained
#: there ended at 1.818 px as the files are and at 5.210 px with the visible image re-encoded at another
#: block phase; without it 3.682 / 3.722 px (the network alone 3.811). On 12 aligned PNG pairs of the
#: demo's synthetic street (no block grid): 3.865 px with it, 2.852 without (docs/experiments.md).
DESCRIPTOR_REFINEMENT = RefinementConfig(descriptor_weight=1.0)


def ngf_similarity(a: Tensor, b: Tensor, mask: Tensor, edge_noise: float) -> Tensor:
    """Normalised gradient fields: the masked mean of ``(g_a . g_b)^2 / (|g_a|^2 + e^2)(|g_b|^2 + e^2)``.

    ``a``, ``b`` ``(B, 1, H, W)`` images in [0, 1]; ``mask`` ``(B, 1, H, W)`` weights (1 = counts);
    ``edge_noise`` ``e`` in intensity units per pixel. Returns a scalar in [0, 1): 0 where either
    image is flat, near 1 where their edges are parallel (either polarity: a hot road is bright in
    IR and dark in visible).
    """
    if a.shape != b.shape or mask.shape != a.shape:
        raise ValueError(f"a, b and mask must have one shape, got {tuple(a.shape)}, {tuple(b.shape)}, "
                         f"{tuple(mask.shape)}")
    ax, ay = image_gradients(a)
    bx, by = image_gradients(b)
    e2 = edge_noise * edge_noise
    score = (ax * bx + ay * by) ** 2 / ((ax * ax + ay * ay + e2) * (bx * bx + by * by + e2))
    return (score * mask).sum() / mask.sum().clamp_min(1.0)


def _pool(image: Tensor, factor: int) -> Tensor:
    return F.avg_pool2d(image, factor) if factor > 1 else image


def refine_grid(vis: Tensor, ir: Tensor, grid: Tensor, config: RefinementConfig = RefinementConfig(),
                descriptor: CrossModalDescriptor | None = None) -> Tensor:
    """Refine a registration ``grid`` on one pair.

    ``vis`` ``(1, 1, H, W)`` reference and ``ir`` ``(1, 1, Hm, Wm)`` moving image, float in [0, 1];
    ``grid`` ``(1, H, W, 2)`` normalised sampling grid of the reference frame into the moving image
    (``align_corners=True``, x first; the registered image is ``warp_normalised(ir, grid)``).

    The result is ``grid(R(p))`` with the residual ``R(p) = p + L p + t + phi(p)``: an affine
    ``(L, t)`` and a smooth field ``phi`` (bicubic upsampling of a ``control`` grid), both in
    normalised units of the reference frame and both starting at zero, fitted coarse to fine to
    maximise :func:`ngf_similarity` of ``vis`` and the warped ``ir``, less ``mind_weight`` times the
    mean absolute difference of their :func:`mind_descriptor` (the moving image's, warped), over
    the pixels that land inside the moving image. With a ``descriptor``, at pool factor 1 the loss
    also adds ``descriptor_weight`` times the mean cosine distance of the visible image's
    descriptors and the moving image's (warped). Returns ``(1, H, W, 2)``, same dtype as ``grid``;
    no gradient.
    """
    if vis.dim() != 4 or vis.shape[:2] != (1, 1) or ir.dim() != 4 or ir.shape[:2] != (1, 1):
        raise ValueError(f"vis and ir must be (1, 1, H, W), got {tuple(vis.shape)} and {tuple(ir.shape)}")
    if grid.shape != (1, *vis.shape[-2:], 2):
        raise ValueError(f"grid must be (1, H, W, 2) for vis {tuple(vis.shape)}, got {tuple(grid.shape)}")
    vis, ir, start = vis.float(), ir.float(), grid.detach().float().permute(0, 3, 1, 2)
    linear = torch.zeros(1, 2, 3, device=vis.device, requires_grad=True)
    control = torch.zeros(1, 2, *config.control, device=vis.device, requires_grad=True)
    learned = None
    if descriptor is not None and config.uses_descriptor:
        with torch.no_grad():
            learned = descriptor.vis(vis), descriptor.ir(ir)

    def sampler(size: tuple[int, int]) -> Callable[[], Tensor]:
        """The composed grid ``start(R(p))`` at ``size`` as a function of the current parameters;
        the identity grid and the resampled start are built once per size, not per step."""
        ys = torch.linspace(-1, 1, size[0], device=vis.device)
        xs = torch.linspace(-1, 1, size[1], device=vis.device)
        base = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1)[None]
        start_at = F.interpolate(start, size=size, mode="bilinear", align_corners=True)

        def composed() -> Tensor:
            field = F.interpolate(control, size=size, mode="bicubic", align_corners=True).permute(0, 2, 3, 1)
            affine = base @ linear[:, :, :2].transpose(1, 2) + linear[:, None, :, 2]
            residual = base + (affine + field) * _PARAMETER_SCALE
            return warp_normalised(start_at, residual, padding_mode="border").permute(0, 2, 3, 1)

        return composed

    optimiser = torch.optim.Adam([linear, control], lr=config.learning_rate)
    with torch.enable_grad():
        for factor, steps in zip(config.scales, config.iterations, strict=True):
            reference, moving = _pool(vis, factor), _pool(ir, factor)
            composed = sampler((reference.shape[-2], reference.shape[-1]))
            inside = torch.ones_like(moving)
            if config.mind_weight > 0:
                mind_reference, mind_moving = (mind_descriptor(x, config.mind_radius, diagonal=config.mind_diagonal)
                                               for x in (reference, moving))
            for _ in range(steps):
                current = composed()
                # Only pixels that sample the moving image's content count (the IR's zero padding
                # would otherwise reward pushing its border onto visible edges).
                mask = (warp_normalised(inside, current) > 0.999).float()
                smooth = ((control[..., 1:, :] - control[..., :-1, :]) ** 2).mean() + \
                    ((control[..., 1:] - control[..., :-1]) ** 2).mean()
                loss = -ngf_similarity(reference, warp_normalised(moving, current), mask, config.edge_noise) \
                    + config.smoothness * smooth
                if config.mind_weight > 0:
                    distance = (mind_reference - warp_normalised(mind_moving, current)).abs().mean(dim=1, keepdim=True)
                    loss = loss + config.mind_weight * (distance * mask).sum() / mask.sum().clamp_min(1.0)
                # Only at full size: averaged unit vectors are no longer descriptors (see the config).
                if learned is not None and factor == 1:
                    cosine = (learned[0] * warp_normalised(learned[1], current)).sum(dim=1, keepdim=True)
                    loss = loss + config.descriptor_weight * ((1 - cosine) * mask).sum() / mask.sum().clamp_min(1.0)
                optimiser.zero_grad()
                loss.backward()
                optimiser.step()
    with torch.no_grad():
        refined = sampler((vis.shape[-2], vis.shape[-1]))()
        if learned is not None and config.descriptor_iterations > 0:
            refined = descriptor_iterations(vis, ir, refined, learned, config)
        return refined.to(grid.dtype)


def refinement_stage(config: RefinementConfig) -> LucasKanadeConfig:
    """The Lucas-Kanade stage whose learned-descriptor iterations :func:`descriptor_iterations` runs
    for ``config``: its ``descriptor_iterations``, cells and gain at full size (factor 1), on the
    stage's default windows, prior and damping with the window of :data:`LK_WINDOW`. What
    ``busref train descriptor --stage-of refinement`` fine-tunes the refinement's descriptor on."""
    return LucasKanadeConfig(descriptor_iterations=config.descriptor_iterations, descriptor_factor=1,
                             descriptor_pool=config.descriptor_cells, descriptor_gain=config.descriptor_gain,
                             descriptor_guard=config.descriptor_guard, window=LK_WINDOW)


def descriptor_iterations(vis: Tensor, ir: Tensor, grid: Tensor, learned: tuple[Tensor, Tensor],
                          config: RefinementConfig) -> Tensor:
    """``config.descriptor_iterations`` Gauss-Newton steps of the Lucas-Kanade stage
    :func:`refinement_stage` (:func:`busref.models.networks.lucas_kanade.descriptor_phase`) on the
    learned descriptors ``learned`` (``(1, D, H, W)`` of ``vis``, ``(1, D, Hm, Wm)`` of ``ir``) from
    ``grid`` ``(1, H, W, 2)`` (normalised, align_corners=True); ``grid`` itself where they raise the
    MIND residual (:func:`busref.models.networks.lucas_kanade.paired_residuals`) by more than
    ``config.descriptor_guard`` times.

    Why: the descriptor's optimum is at the truth where NGF's and MIND's are not, and iterating on
    it converges where the Adam steps on its cosine stop short (see :class:`RefinementConfig`).
    The guard: on a modality the descriptor never learned it pulls the wrong way, and the
    modality-independent MIND residual shows it.
    """
    stage = refinement_stage(config)
    return descriptor_phase(vis, ir, grid, learned, iterations=stage.descriptor_iterations,
                            cells=stage.descriptor_pool, gain=stage.descriptor_gain, guard=stage.descriptor_guard,
                            window=stage.window, field_window=stage.field_window, rest_prior=stage.rest_prior,
                            damping=stage.damping)
