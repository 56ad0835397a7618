"""The register graph's fine stage: iterative Lucas-Kanade on MIND descriptors, then (optionally)
on the descriptors of small learned towers.

Why: the learned stages leave a smooth residual (the Deformable Net recovers ~3 % of the
protocol's elastic warp) that no one-shot read-out of their cost volumes resolves. Lucas-Kanade
solves for it directly: each iteration compares the visible image's MIND descriptors with the
warped IR's (MIND describes local self-similarity, so it holds across modalities and contrast
inversion), linearises the difference around the current grid and takes a damped Gauss-Newton
step. Blurring the descriptors in the first iterations widens the capture range; an affine fit of
the update plus its smoothed non-affine rest keeps the field plausible where the images are
flat. Everything is fixed arithmetic that exports to ONNX (opset 17) and runs in the daemon.

The MIND objective's optimum lies a few pixels from the truth on thermal pairs (IR and visible
edges do not coincide: halos, blur), so the thermal stage ends with iterations of the same solver on
the descriptors of a cross-modal matcher (:mod:`busref.models.networks.matcher`, trained on aligned
pairs: :mod:`busref.models.descriptor`), guarded by the MIND residual (:func:`descriptor_phase`).

Convention: grids are normalised sampling grids of the reference (visible) frame into the moving
(IR) image, ``(B, H, W, 2)``, x first, ``align_corners=True`` (:mod:`busref.models.geometry`); the
update ``u`` is a displacement in pixels of the registration size, and the new grid is
``G(p + u(p))``, composed on the displacement ``G - p`` so that a step beyond the frame's edge
extrapolates it instead of clamping the grid. Pixels whose descriptors are not of the scene (the
IR's zero padding, a band along either frame's edge) do not enter the normal equations
(:func:`content_mask`).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from busref.models.config import LucasKanadeConfig
from busref.models.geometry import warp_features
from busref.models.local_structure import image_gradients, mind_descriptor
from busref.models.networks.layers import cells_to_normalised, coordinates
from busref.models.networks.matcher import CrossModalDescriptor
from busref.orientation import EDGE_NOISE, RIM, SMOOTHING

Tensor = torch.Tensor


def gaussian_blur(x: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian blur of ``(B, C, H, W)``, replicate borders, kernel radius ``ceil(3 sigma)``.

    ``sigma`` in pixels of ``x``; 0 returns ``x``. The kernel is a constant of the graph.

    Example::

        >>> gaussian_blur(torch.ones(1, 4, 8, 8), 1.0).allclose(torch.ones(1, 4, 8, 8))
        True
    """
    if sigma <= 0:
        return x
    radius = max(1, math.ceil(3 * sigma))
    taps = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    kernel = torch.exp(-taps * taps / (2 * sigma * sigma))
    kernel = kernel / kernel.sum()
    # Depthwise, with the channel count a constant of the graph (every caller's is fixed): ONNX
    # Runtime ran it 3.5x faster than one single-channel convolution over B * C planes (1.0
    # against 3.6 ms for 4 channels at 192x256).
    channels = int(x.shape[1])
    x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="replicate"),
                 kernel.view(1, 1, 1, -1).repeat(channels, 1, 1, 1), groups=channels)
    return F.conv2d(F.pad(x, (0, 0, radius, radius), mode="replicate"),
                    kernel.view(1, 1, -1, 1).repeat(channels, 1, 1, 1), groups=channels)


def solve_symmetric3(a: Tensor, b: Tensor) -> Tensor:
    """Solve ``a x = b`` for symmetric positive definite ``a`` ``(B, 3, 3)`` and ``b`` ``(B, 3, K)``.

    By the adjugate (cofactors over the determinant): ONNX has no linear solver, and a 3x3 system
    is a handful of products. Returns ``(B, 3, K)``.

    Example::

        >>> a = torch.diag(torch.tensor([2.0, 4.0, 8.0]))[None]
        >>> solve_symmetric3(a, torch.ones(1, 3, 1)).flatten().tolist()
        [0.5, 0.25, 0.125]
    """
    m00, m01, m02 = a[:, 0, 0], a[:, 0, 1], a[:, 0, 2]
    m11, m12, m22 = a[:, 1, 1], a[:, 1, 2], a[:, 2, 2]
    c00 = m11 * m22 - m12 * m12
    c01 = m02 * m12 - m01 * m22
    c02 = m01 * m12 - m02 * m11
    c11 = m00 * m22 - m02 * m02
    c12 = m01 * m02 - m00 * m12
    c22 = m00 * m11 - m01 * m01
    det = m00 * c00 + m01 * c01 + m02 * c02
    adjugate = torch.stack((torch.stack((c00, c01, c02), -1), torch.stack((c01, c11, c12), -1),
                            torch.stack((c02, c12, c22), -1)), -2)
    return adjugate @ b / det[:, None, None]


def affine_basis(like: Tensor) -> Tensor:
    """``(B, 3, h, w)``: the normalised x and y (``align_corners=True``) and 1 at each point of the
    grid of ``like`` ``(B, C, h, w)``, the basis :func:`affine_part` fits on."""
    return torch.cat((coordinates(like), torch.ones_like(like[:, :1])), dim=1)


def affine_part(u: Tensor, weight: Tensor, basis: Tensor) -> Tensor:
    """The weighted least-squares affine field closest to ``u``.

    ``u`` ``(B, 2, h, w)`` a displacement field, ``weight`` ``(B, 1, h, w)`` >= 0 (not all zero),
    ``basis`` :func:`affine_basis` of that grid (made once by the caller: the stage's every
    iteration solves on the same cells). Each component is fitted as ``a x + b y + c``.
    Returns ``(B, 2, h, w)``.

    Example (a constant field is its own affine part)::

        >>> u = torch.full((1, 2, 6, 8), 1.5)
        >>> affine_part(u, torch.rand(1, 1, 6, 8) + 0.1, affine_basis(u)).allclose(u, atol=1e-4)
        True
    """
    phi = basis
    weighted = (phi * weight).flatten(2)
    normal = weighted @ phi.flatten(2).transpose(1, 2)  # (B, 3, 3)
    rhs = weighted @ u.flatten(2).transpose(1, 2)  # (B, 3, 2)
    eye = torch.eye(3, dtype=u.dtype, device=u.device)
    # A relative ridge keeps a weightless image (a lens cap) solvable.
    normal = normal + 1e-6 * normal.diagonal(dim1=1, dim2=2).mean(-1)[:, None, None] * eye + 1e-12 * eye
    coefficients = solve_symmetric3(normal, rhs)  # (B, 3, 2)
    return (coefficients.transpose(1, 2) @ phi.flatten(2)).view_as(u)


def gauss_newton_step(reference: Tensor, moving: Tensor, grid: Tensor, base: Tensor, content: Tensor,
                      frame: Tensor, basis: Tensor | None, *, cells: int, sigma: float, window: float,
                      field_window: float, rest_prior: float, damping: float, gain: float = 1.0,
                      linearised: tuple[Tensor, Tensor, Tensor] | None = None) -> tuple[Tensor, Tensor]:
    """One iteration of the stage (steps 1-4 of :class:`LucasKanade`) on any per-pixel features.

    ``reference`` ``(B, C, h, w)``: the visible image's features, already blurred by ``sigma``;
    ``moving`` ``(B, C, hm, wm)``: the IR image's (unwarped, of any size); ``grid`` ``(B, h, w, 2)``
    the current grid; ``base`` ``(B, 2, h, w)`` the identity (:func:`coordinates`); ``content``
    ``(B, 1, hm, wm)`` the IR's :func:`content_mask`; ``frame`` ``(1, 1, h / cells, w / cells)`` 1 on the cells away
    from the visible frame's edge; ``basis`` the cells' :func:`affine_basis` (None: made here and
    returned, so that a caller makes it once). ``gain`` scales the update (1: the Gauss-Newton step).
    ``linearised``: the :func:`linearisation` the step solves on; None: that of the warped features,
    made here (forward additive); else that of ``reference``, made once for every iteration on it (the
    reference's gradients stand in for the warped features', as in inverse-compositional
    Lucas-Kanade: two of the five per-pixel products and no gradients are left to each iteration).
    Returns the new grid and the basis.
    """
    warped = gaussian_blur(warp_features(moving, grid, padding_mode="border"), sigma)
    residual = reference - warped
    gx, gy, products = linearisation(warped, cells) if linearised is None else linearised
    steepest = torch.cat((_channel_sum(gx * residual), _channel_sum(gy * residual)), dim=1)
    terms = torch.cat((products, F.avg_pool2d(steepest, cells) if cells > 1 else steepest), dim=1)
    # Cells whose features are valid in both images: the grid samples the IR's content, away from its
    # frame, and the cell is away from the visible frame's edge (out of the IR, border padding repeats
    # the mask's 0). Judged per cell at its centre: a second warp of the mask at every pixel cost ~60
    # ms a call (NIR register graph 227 against 165 ms, one thread).
    centres = F.avg_pool2d(grid.permute(0, 3, 1, 2), cells).permute(0, 2, 3, 1) if cells > 1 else grid
    inside = (warp_features(content, centres, padding_mode="border") > 0.999).to(reference.dtype) * frame
    terms = gaussian_blur(terms * inside, window)
    # The absolute floor keeps a flat image (a lens cap, the daemon's start-up probe) solvable: there
    # every term is 0 and the update must come out 0, not 0 / 0.
    ridge = damping * (terms[:, :1] + terms[:, 1:2]).mean(dim=(2, 3), keepdim=True) + 1e-10
    axx, ayy, axy = terms[:, :1] + ridge, terms[:, 1:2] + ridge, terms[:, 2:3]
    bx, by = terms[:, 3:4], terms[:, 4:5]
    det = axx * ayy - axy * axy
    u = torch.cat((ayy * bx - axy * by, axx * by - axy * bx), dim=1) / det
    weight = det / (axx + ayy)
    if basis is None:
        basis = affine_basis(u[:1])  # one for any batch: the cells are the same
    affine = affine_part(u, weight, basis)
    rest = gaussian_blur(weight * (u - affine), field_window) / \
        (gaussian_blur(weight, field_window) + rest_prior * weight.mean(dim=(2, 3), keepdim=True) + 1e-12)
    # No multiply at gain 1: the register and track graphs stay the graphs they were exported as.
    update = affine + rest if gain == 1.0 else gain * (affine + rest)
    u = cells_to_normalised(F.interpolate(update, size=reference.shape[-2:], mode="bilinear", align_corners=True))
    target = (base + u).permute(0, 2, 3, 1)
    displacement = warp_features(grid.permute(0, 3, 1, 2) - base, target, padding_mode="border")
    return displacement.permute(0, 2, 3, 1) + target, basis


def linearisation(features: Tensor, cells: int) -> tuple[Tensor, Tensor, Tensor]:
    """``features`` ``(B, C, h, w)`` (:func:`gauss_newton_step`'s warped or reference ones) -> their
    gradients ``gx``, ``gy`` (:func:`image_gradients`, ``(B, C, h, w)``) and the products summed over
    the channels (``gx gx``, ``gy gy``, ``gx gy``), averaged over cells of ``cells`` pixels:
    ``(B, 3, h / cells, w / cells)``. What :func:`gauss_newton_step` solves on (its ``linearised``).

    Example (a horizontal ramp has only x gradients)::

        >>> ramp = torch.linspace(0, 1, 16).expand(1, 2, 8, 16)
        >>> gx, gy, products = linearisation(ramp, 4)
        >>> products.shape, float(gy.abs().max()), bool(products[:, 0].gt(0).all())
        (torch.Size([1, 3, 2, 4]), 0.0, True)
    """
    gx, gy = image_gradients(features)
    products = torch.cat((_channel_sum(gx * gx), _channel_sum(gy * gy), _channel_sum(gx * gy)), dim=1)
    return gx, gy, F.avg_pool2d(products, cells) if cells > 1 else products


class LucasKanade(nn.Module):
    """``forward(vis, ir, grid)``: ``vis``, ``ir`` ``(B, 1, H, W)`` in [0, 1] at the registration
    size, ``grid`` ``(B, H, W, 2)`` the learned stages' estimate -> the refined grid, same shape.

    Each iteration (one per ``config.schedule`` entry ``(factor, sigma)``) works at the
    registration size / ``factor`` (both images average-pooled, the grid resampled):

    1. ``D_v``, ``D_r``: the MIND descriptors of ``vis`` and of ``ir`` warped by the current grid
       (border padding), both blurred by ``sigma`` pixels; ``r = D_v - D_r``, ``g = grad D_r``.
       Their neighbours: four axial ones at ``config.mind_radius`` pixels of the iteration's size,
       and with ``config.mind_diagonal`` four diagonal ones (8 channels; the shipped stages,
       :data:`busref.models.config.LK_MIND_DIAGONAL`). In :meth:`track` with
       ``config.track_linearisation`` ``reference``, ``g = grad D_v`` instead, computed once a call
       (:func:`linearisation`).
    2. The Lucas-Kanade normal equations ``sum g g^T u = sum g r`` (summed over the channels,
       only where the grid samples inside the IR image), averaged over cells of ``pool`` pixels of
       the registration size and a Gaussian window of ``window`` cells, damped by ``damping``
       times their mean trace, solved per cell.
    3. The per-cell update ``u`` is split into its affine fit (weighted by each cell's
       ``det / trace``, how well it constrains both directions) and the rest, which is smoothed
       by ``field_window`` cells with the same weights and shrunk towards zero where they are
       small (``rest_prior`` times their mean is added to the normaliser: a flat sky or a smooth
       slope keeps the affine motion instead of an extrapolated one); their sum is upsampled to the
       stage's size.
    4. ``G <- G(p + u(p))``.

    With ``config.descriptor_iterations`` (``descriptor_track_iterations`` in :meth:`track`) the
    stage holds the towers (``matcher``, its only weights) and ends with that many iterations of
    the same solver on their descriptors (:func:`descriptor_phase`, at the registration size /
    ``config.descriptor_factor``: the towers see the registration-size images and their
    descriptors are pooled to the iterations' size).

    With ``config.both_starts`` the iterations also run from the identity (the graph's own start:
    in the daemon, the registration in force, since the IR arrives pre-warped by it) as a second
    half of the batch, and each pair keeps the second start's result only where its
    :func:`descriptor_residual` is below :data:`SECOND_START_MARGIN` times the first's. Why:
    the thermal nets send the synthetic demo scene 40.7 px off where the identity is 17.7 px off;
    the stage from there ends 35.6 px off, from the identity 2.3 px, and the residual picks the
    latter (0.37 against 0.62), while on the 8 held-out RoadScene train pairs it kept the nets'
    start on every pair (moderate 4.59 px from the nets' start, 13.02 px from the identity).

    With ``config.blurred_prefix`` a second variant runs from the given grid alone: those
    iterations, then the schedule's first ``config.blurred_select_after`` entries as extra rows of
    the same batch; there each pair keeps the variant's result only where its
    :func:`edge_agreement` beats the first's by ``config.blurred_margin`` (:meth:`_choose_variant`),
    and the kept one runs the rest of the schedule.
    Why: blurring more widens the capture range but biases the optimum, so a pair the nets left far
    off gains and one they left close loses; the measured trade is at
    :data:`busref.models.config.LK_BLURRED_PREFIX_2X`.

    Example (four unblurred iterations at full size)::

        >>> stage = LucasKanade(LucasKanadeConfig(schedule=((1, 0.0),) * 4))
        >>> vis, ir = torch.rand(1, 1, 192, 256), torch.rand(1, 1, 192, 256)
        >>> stage(vis, ir, coordinates(vis).permute(0, 2, 3, 1)).shape
        torch.Size([1, 192, 256, 2])
    """

    def __init__(self, config: LucasKanadeConfig) -> None:
        super().__init__()
        self.config = config
        self.matcher = CrossModalDescriptor(config.descriptor) if config.uses_towers else None

    def train(self, mode: bool = True) -> LucasKanade:
        # The towers are trained on their own (models.descriptor) and frozen here: their batch norms
        # keep the running statistics even when a training stage puts the whole model in train mode.
        super().train(mode)
        if self.matcher is not None:
            self.matcher.eval()
        return self

    def forward(self, vis: Tensor, ir: Tensor, grid: Tensor) -> Tensor:
        c = self.config
        return self._iterate(vis, ir, grid, c.schedule, c.both_starts, c.select_after, c.descriptor_iterations,
                             c.blurred_prefix, c.blurred_select_after, linearise_on_reference=False)

    def track(self, vis: Tensor, ir: Tensor, grid: Tensor) -> Tensor:
        """The ``track`` graph: ``config.track_schedule``'s iterations from ``grid`` alone (one start).

        Same shapes and conventions as :meth:`forward`; ``grid`` is the registration in force (in the
        daemon, of an earlier pair of a rig that has not moved), ``ir`` the IR not pre-warped. Why:
        a still rig's registration needs no new coarse search, only a few more iterations on each
        new pair; from the answer of a register graph of 24 iterations, 8 calls of 4 unblurred iterations took
        the 8 held-out RoadScene train pairs from 4.37 to 4.17 px (moderate; hard 10.77 -> 10.59),
        at 19-22 ms a call against 131-147 ms for the register graph of then (24 iterations; ONNX Runtime, one
        thread, 192x256).

        Example::

            >>> stage = LucasKanade(LucasKanadeConfig(track_schedule=((1, 0.0),) * 2))
            >>> vis = torch.rand(1, 1, 64, 64)
            >>> stage.track(vis, vis, coordinates(vis).permute(0, 2, 3, 1)).shape
            torch.Size([1, 64, 64, 2])
        """
        c = self.config
        return self._iterate(vis, ir, grid, c.track_schedule, False, None, c.descriptor_track_iterations, (), None,
                             linearise_on_reference=c.track_linearisation == "reference")

    def _iterate(self, vis: Tensor, ir: Tensor, grid: Tensor, schedule: tuple[tuple[int, float], ...],
                 both_starts: bool, select_after: int | None, learned_iterations: int,
                 prefix: tuple[tuple[int, float], ...], variant_after: int | None, *,
                 linearise_on_reference: bool) -> Tensor:
        c = self.config
        if not schedule:
            return grid
        if vis.dim() != 4 or vis.shape[1] != 1 or ir.shape != vis.shape or \
                tuple(grid.shape) != (vis.shape[0], vis.shape[2], vis.shape[3], 2):
            raise ValueError(f"LucasKanade expects vis and ir (B, 1, H, W) and grid (B, H, W, 2), got "
                             f"{tuple(vis.shape)}, {tuple(ir.shape)} and {tuple(grid.shape)}")
        h, w = vis.shape[-2:]
        batch = vis.shape[0]
        # The batch's rows: per start (the given grid, then with both_starts the identity) the pairs,
        # then with a prefix the variant's rows (from the given grid alone) while it runs beside.
        starts = 2 if both_starts else 1
        select_after = len(schedule) if select_after is None else select_after
        variant_after = len(schedule) if variant_after is None else variant_after

        # Per factor, computed once per call: the pooled images and the IR's content mask; for the
        # iterations MIND of both images, the base grid and the frame mask per cell; the judge's axial
        # MIND, which the start choice and the towers' guard share where they work at one factor (the
        # shipped thermal graph: both at 192x256; the ONNX export already merged the two, PyTorch did not).
        pooled: dict[int, tuple[Tensor, Tensor, Tensor]] = {}
        features: dict[int, tuple[Tensor, Tensor, Tensor, Tensor, Tensor]] = {}
        judges: dict[int, Judge] = {}
        blurred: dict[tuple[int, float], Tensor] = {}
        linearised: dict[tuple[int, float], tuple[Tensor, Tensor, Tensor]] = {}
        basis: Tensor | None = None  # the cells are pool pixels of the registration size at every factor

        def pooled_at(factor: int) -> tuple[Tensor, Tensor, Tensor]:
            if factor not in pooled:
                small_r = F.avg_pool2d(ir, factor) if factor > 1 else ir
                pooled[factor] = (F.avg_pool2d(vis, factor) if factor > 1 else vis, small_r, content_mask(small_r))
            return pooled[factor]

        def features_at(factor: int) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
            if factor not in features:
                cells = c.pool // factor
                small_v, small_r, content = pooled_at(factor)
                frame = frame_cells(content_mask(torch.ones_like(small_v)), cells)
                radius, diagonal = c.mind_radius, c.mind_diagonal
                features[factor] = (mind_descriptor(small_v, radius, diagonal=diagonal),
                                    mind_descriptor(small_r, radius, diagonal=diagonal), coordinates(small_v),
                                    content, frame)
            return features[factor]

        def judge_at(factor: int) -> Judge:
            if factor not in judges:
                judges[factor] = judge_features(*pooled_at(factor))
            return judges[factor]

        def choose(grid: Tensor) -> Tensor:
            """:meth:`_choose` at the registration size / ``config.select_factor``, per variant."""
            f = c.select_factor
            return self._choose(judge_at(f), _full_size(grid, *pooled_at(f)[0].shape[-2:]), batch)

        def iterate(grid: Tensor, factor: int, sigma: float, rows: int) -> Tensor:
            """One iteration on ``grid`` (``rows`` rows per pair)."""
            nonlocal basis
            reference, moving, base, content, frame = (_rows(x, rows) for x in features_at(factor))
            if (factor, sigma) not in blurred:
                blurred[(factor, sigma)] = gaussian_blur(features[factor][0], sigma)
            if linearise_on_reference and (factor, sigma) not in linearised:
                linearised[(factor, sigma)] = linearisation(blurred[(factor, sigma)], c.pool // factor)
            if grid.shape[1] != reference.shape[-2]:
                grid = F.interpolate(grid.permute(0, 3, 1, 2), size=reference.shape[-2:], mode="bilinear",
                                     align_corners=True).permute(0, 2, 3, 1)
            grid, basis = gauss_newton_step(
                _rows(blurred[(factor, sigma)], rows), moving, grid, base, content, frame, basis,
                cells=c.pool // factor, sigma=sigma, window=c.window, field_window=c.field_window,
                rest_prior=c.rest_prior, damping=c.damping,
                linearised=tuple(_rows(x, rows) for x in linearised[(factor, sigma)]) if linearise_on_reference
                else None)
            return grid

        variant = None
        if prefix:
            variant = grid
            for factor, sigma in prefix:
                variant = iterate(variant, factor, sigma, 1)
        if both_starts:
            grid = torch.cat((grid, coordinates(vis).permute(0, 2, 3, 1)), dim=0)
        for step, (factor, sigma) in enumerate(schedule):
            if starts > 1 and step == select_after:
                grid, starts = choose(grid), 1
            if variant is not None and step == variant_after:
                grid, variant = self._choose_variant(vis, ir, grid, variant), None
            if variant is None:
                grid = iterate(grid, factor, sigma, starts)
            else:  # one batch: both results at this iteration's size
                size = features_at(factor)[0].shape[-2:]
                rows = torch.cat((_full_size(grid, *size), _full_size(variant, *size)), dim=0)
                grid, variant = iterate(rows, factor, sigma, starts + 1).split((starts * batch, batch))
        if starts > 1:
            grid = choose(grid)
        if variant is not None:
            grid = self._choose_variant(vis, ir, grid, variant)
        if self.matcher is not None and learned_iterations:
            factor = c.descriptor_factor
            grid = self._learned(vis, ir, pooled_at(factor)[:2], judge_at(factor), grid, learned_iterations)
        return _full_size(grid, h, w)

    def _choose_variant(self, vis: Tensor, ir: Tensor, grid: Tensor, variant: Tensor) -> Tensor:
        """``grid``, ``variant`` ``(B, h, w, 2)`` (the schedule's result so far and the ``blurred_prefix``
        variant's, at one size) -> ``(B, h, w, 2)``: per pair the variant's where its
        :func:`edge_agreement` at the registration size exceeds ``config.blurred_margin`` times the
        first's (by that fraction of its magnitude, were it negative).

        Why a second variant and this judge: descriptors blurred by 2 px at a quarter of the
        registration size first widen the capture range but bias the optimum, so on a start already
        close they cost accuracy (8 held-out RoadScene train pairs, thermal graph, the variant
        always: hard 9.03 -> 8.04 px, wide 14.81 -> 12.74, moderate 2.66 -> 3.51). The stage's
        MIND residual (:meth:`_choose`) kept the first result on every pair; the edge-orientation
        agreement, a measure neither result was optimised on, picked the variant where it helped
        (ratios 1.11-1.31 on the hard pairs it gained on, at most 1.01 on any moderate pair).
        """
        batch = grid.shape[0]
        both = _full_size(torch.cat((grid, variant), dim=0), *vis.shape[-2:])
        first, second = edge_agreement(vis, ir, both).split(batch)
        keep = second > first + (self.config.blurred_margin - 1) * first.abs()
        return torch.where(keep.view(batch, 1, 1, 1), variant, grid)

    def _learned(self, vis: Tensor, ir: Tensor, small: tuple[Tensor, Tensor], judge: Judge, grid: Tensor,
                 iterations: int) -> Tensor:
        """:func:`descriptor_phase` at the registration size / ``config.descriptor_factor``: the towers
        see ``vis`` and ``ir`` at the registration size and their descriptors are average-pooled to
        the iterations' size (and made unit length again). ``small`` the two images at that size,
        ``judge`` their :func:`judge_features`. Where ``config.descriptor_min_detail`` is set, a pair whose
        IR has less fine detail (:func:`fine_detail`) keeps ``grid``. Returns the grid at that size."""
        c, factor = self.config, self.config.descriptor_factor
        assert self.matcher is not None
        learned = pool_descriptors((self.matcher.vis(vis), self.matcher.ir(ir)), factor)
        grid = _full_size(grid, *small[0].shape[-2:])
        result = descriptor_phase(*small, grid, learned, iterations=iterations, cells=c.descriptor_pool,
                                  gain=c.descriptor_gain, guard=c.descriptor_guard, window=c.window,
                                  field_window=c.field_window, rest_prior=c.rest_prior, damping=c.damping,
                                  judge=judge)
        if c.descriptor_min_detail <= 0:
            return result
        sharp = fine_detail(ir) >= c.descriptor_min_detail
        return torch.where(sharp.view(-1, 1, 1, 1), result, grid)

    @staticmethod
    def _choose(judge: Judge, grid: Tensor, batch: int) -> Tensor:
        """``grid`` ``(2B, H, W, 2)`` (the two starts' results, at the judge's size) -> ``(B, H, W,
        2)``: per pair, the second start's result only where its :func:`descriptor_residual` is
        below :data:`SECOND_START_MARGIN` times the first's; ``judge`` the pairs' :func:`judge_features`.

        The residual is judged per pixel, on the pixels both results see inside the IR. The second
        start has to win by a margin: on a wide-level NIR test pair both results were far off (40 and
        110 px) and the second's residual was 1 % lower. It is :func:`paired_residuals`' axial MIND,
        whatever descriptors the iterations compare (``config.mind_radius``, ``mind_diagonal``): a
        judge that neither result was optimised on. With the shipped stages' eight neighbours it chose
        better on 3 of 20 held-out NIR train pairs (0.70 -> 0.31, 1.93 -> 1.60, 3.05 -> 2.01 px; mean
        1.82 -> 1.73 px) and alike on the 8 held-out RoadScene train pairs.
        """
        first, second = paired_residuals(judge, grid)
        keep = second >= SECOND_START_MARGIN * first
        return torch.where(keep.view(batch, 1, 1, 1), grid[:batch], grid[batch:])


class TrackStage(nn.Module):
    """``forward(vis, ir, start)`` = ``stage.track(vis, ir, start)`` (:meth:`LucasKanade.track`).

    A module of its own because the ONNX tracer scopes nodes by module calls, not method calls: held
    as ``lucas_kanade`` by the export wrapper, the track graph's nodes carry the stage's
    ``/lucas_kanade/`` scope, which keeps them FP32 in TensorRT FP16 engines
    (``busref.export.onnx_fp16.FP32_SCOPES``; through ``stage.track`` directly they had no scope).
    """

    def __init__(self, stage: LucasKanade) -> None:
        super().__init__()
        self.stage = stage

    def forward(self, vis: Tensor, ir: Tensor, start: Tensor) -> Tensor:
        return self.stage.track(vis, ir, start)


def _full_size(grid: Tensor, h: int, w: int) -> Tensor:
    """``grid`` ``(B, h', w', 2)`` resampled (bilinear, align_corners=True) to ``(B, h, w, 2)``."""
    if grid.shape[1] == h and grid.shape[2] == w:
        return grid
    return F.interpolate(grid.permute(0, 3, 1, 2), size=(h, w), mode="bilinear",
                         align_corners=True).permute(0, 2, 3, 1)


def descriptor_phase(vis: Tensor, ir: Tensor, grid: Tensor, learned: tuple[Tensor, Tensor], *, iterations: int,
                     cells: int, gain: float, guard: float, window: float, field_window: float, rest_prior: float,
                     damping: float, judge: Judge | None = None) -> Tensor:
    """``iterations`` unblurred :func:`gauss_newton_step` iterations on learned descriptors, guarded.

    ``vis`` ``(B, 1, H, W)`` and ``ir`` ``(B, 1, Hm, Wm)`` the pair (``ir`` unwarped), ``grid``
    ``(B, H, W, 2)`` the start (normalised, ``align_corners=True``), ``learned`` the descriptors of
    ``vis`` ``(B, D, H, W)`` and of ``ir`` ``(B, D, Hm, Wm)`` (:class:`CrossModalDescriptor`); the
    steps solve on cells of ``cells`` pixels, each update times ``gain``. Per pair, the start is
    kept where the result raises the axial MIND residual (:func:`paired_residuals`) by more than
    ``guard`` times; ``judge`` the pair's :func:`judge_features` where the caller has them (None:
    computed here). Returns ``(B, H, W, 2)``.

    Why: the MIND objective's optimum lies a few pixels from the truth on thermal pairs (IR and
    visible edges do not coincide), the learned descriptor's at it. The guard: on a modality or
    scene the towers never learned they can pull the wrong way, and the modality-independent MIND
    residual shows it. The register and track graphs (:class:`LucasKanade`) and the offline
    refinement (:func:`busref.models.refinement.descriptor_iterations`) run it.
    """
    judge = judge_features(vis, ir, content_mask(ir)) if judge is None else judge
    result = grid
    for iterate in descriptor_iterates(learned, grid, judge.content, judge.frame, iterations=iterations,
                                       cells=cells, gain=gain, window=window, field_window=field_window,
                                       rest_prior=rest_prior, damping=damping):
        result = iterate
    before, after = paired_residuals(judge, torch.cat((grid, result)))
    return torch.where((after <= guard * before).view(-1, 1, 1, 1), result, grid)


def descriptor_iterates(learned: tuple[Tensor, Tensor], grid: Tensor, content: Tensor, frame: Tensor, *,
                        iterations: int, cells: int, gain: float, window: float, field_window: float,
                        rest_prior: float, damping: float) -> Iterator[Tensor]:
    """Each of ``iterations`` unblurred :func:`gauss_newton_step` iterates ``(B, H, W, 2)`` on the
    learned descriptors ``learned`` (of the visible image ``(B, D, H, W)``, of the unwarped IR
    ``(B, D, Hm, Wm)``) from ``grid`` ``(B, H, W, 2)``; ``content`` ``(B, 1, Hm, Wm)`` the IR's
    :func:`content_mask`, ``frame`` ``(B, 1, H, W)`` the visible frame's edge band (:func:`content_mask`
    of an all-ones image), taken per cell of ``cells`` pixels here.

    The iterations of :func:`descriptor_phase` (unguarded), and what
    :func:`busref.models.descriptor.iterations_loss` trains the towers on, so the two cannot drift.
    """
    frame, base, basis = frame_cells(frame, cells), coordinates(learned[0]), None
    for _ in range(iterations):
        grid, basis = gauss_newton_step(learned[0], learned[1], grid, base, content, frame, basis, cells=cells,
                                        sigma=0.0, window=window, field_window=field_window,
                                        rest_prior=rest_prior, damping=damping, gain=gain)
        yield grid


def pool_descriptors(learned: tuple[Tensor, Tensor], factor: int) -> tuple[Tensor, Tensor]:
    """The towers' descriptors ``(B, D, H, W)`` (of the registration-size images) at the learned
    iterations' size: average-pooled by ``factor`` and made unit length again (1: as they are)."""
    if factor == 1:
        return learned
    return F.normalize(F.avg_pool2d(learned[0], factor), dim=1), F.normalize(F.avg_pool2d(learned[1], factor), dim=1)


def frame_cells(frame: Tensor, cells: int) -> Tensor:
    """``frame`` ``(B, 1, H, W)`` (1 away from the frame's edge band) per cell of ``cells`` pixels: 1
    where the whole cell is, ``(B, 1, H / cells, W / cells)`` (``cells`` 1: as it is)."""
    return (F.avg_pool2d(frame, cells) > 0.999).to(frame.dtype) if cells > 1 else frame


#: The second start's result replaces the first's only below this fraction of its residual.
SECOND_START_MARGIN = 0.95


def descriptor_residual(reference: Tensor, moving: Tensor, grid: Tensor, mask: Tensor) -> Tensor:
    """``(B,)``: the mean squared difference of the MIND descriptors ``reference`` and ``moving``
    ``(B, C, H, W)`` warped by ``grid`` ``(B, H, W, 2)``, summed over the channels, over the pixels
    where ``mask`` ``(B, 1, H, W)`` is 1 (0 where it is empty). What :class:`LucasKanade`
    minimises (on its own descriptors); it ranks two results of the stage on the same mask.

    Example (a grid that undoes a shift scores lower than the identity)::

        >>> from busref.models.local_structure import mind_descriptor
        >>> vis = torch.rand(1, 1, 32, 32)
        >>> ir = torch.roll(vis, 2, dims=-1)
        >>> identity = coordinates(vis).permute(0, 2, 3, 1)
        >>> shifted = identity + torch.tensor([4 / 31, 0.0])
        >>> d_v, d_r, mask = mind_descriptor(vis), mind_descriptor(ir), content_mask(torch.ones_like(vis), 4)
        >>> bool(descriptor_residual(d_v, d_r, shifted, mask) < descriptor_residual(d_v, d_r, identity, mask))
        True
    """
    warped = warp_features(moving, grid, padding_mode="border")
    squared = _channel_sum((reference - warped) ** 2)
    return (squared * mask).sum(dim=(1, 2, 3)) / mask.sum(dim=(1, 2, 3)).clamp_min(1.0)


class Judge(NamedTuple):
    """What :func:`paired_residuals` compares two results on, for ``B`` pairs at one size: the axial
    MIND descriptors (four neighbours at radius 2, :func:`mind_descriptor`'s default) of the visible
    images ``reference`` ``(B, 4, H, W)`` and of the unwarped IR images ``moving`` ``(B, 4, hm, wm)``,
    the IR's :func:`content_mask` ``content`` ``(B, 1, hm, wm)`` and the visible frame's ``frame``
    ``(B, 1, H, W)`` (:func:`content_mask` of an all-ones image: its edge band)."""

    reference: Tensor
    moving: Tensor
    content: Tensor
    frame: Tensor


def judge_features(vis: Tensor, ir: Tensor, content: Tensor) -> Judge:
    """The :class:`Judge` of the pairs ``vis`` ``(B, 1, H, W)`` and ``ir`` ``(B, 1, hm, wm)`` (``ir``
    unwarped), with ``content`` its :func:`content_mask` (the caller usually has it already)."""
    return Judge(mind_descriptor(vis), mind_descriptor(ir), content, content_mask(torch.ones_like(vis)))


def paired_residuals(judge: Judge, grids: Tensor) -> tuple[Tensor, Tensor]:
    """Two results' :func:`descriptor_residual` on the judge's axial MIND, judged on the same
    pixels: the judge of the stage's two starts (:meth:`LucasKanade._choose`) and of the
    learned-descriptor iterations (:func:`descriptor_phase`), whatever descriptors produced the
    results.

    ``judge`` the :func:`judge_features` of ``B`` pairs; ``grids`` ``(2B, H, W, 2)``: the first
    result of each pair, then the second. The pixels are those both results sample inside the IR's
    content, away from the visible frame's edge band. Returns the first results' and the second
    results' residuals, each ``(B,)``.

    Example (of a pair shifted by 2 px, the grid that undoes the shift is the better result)::

        >>> vis = torch.rand(1, 1, 32, 32)
        >>> ir = torch.roll(vis, 2, dims=-1)
        >>> identity = coordinates(vis).permute(0, 2, 3, 1)
        >>> shifted = identity + torch.tensor([4 / 31, 0.0])
        >>> first, second = paired_residuals(judge_features(vis, ir, content_mask(ir)), torch.cat((identity, shifted)))
        >>> bool(second < first)
        True
    """
    batch = judge.reference.shape[0]
    content = judge.content
    inside = (warp_features(torch.cat((content, content), dim=0), grids, padding_mode="border") > 0.999
              ).to(judge.reference.dtype)
    common = inside[:batch] * inside[batch:] * judge.frame
    residual = descriptor_residual(*(torch.cat((x, x), dim=0) for x in (judge.reference, judge.moving)), grids,
                                   torch.cat((common, common), dim=0))
    return residual[:batch], residual[batch:]


def _rows(x: Tensor, n: int) -> Tensor:
    """``x`` ``(B, ...)`` repeated ``n`` times along the batch, result-major: ``(nB, ...)``, so that
    features computed once per pair serve every row (start or variant) of that pair."""
    return torch.cat((x,) * n, dim=0) if n > 1 else x


def edge_orientation(image: Tensor) -> tuple[Tensor, Tensor]:
    """The doubled-angle edge field of ``image`` ``(B, 1, H, W)`` in [0, 1] as its real and
    imaginary parts, each ``(B, 1, H, W)``: :func:`busref.orientation.orientation_field` (the
    daemon's and the evaluation's measure) in the graph's arithmetic, with its smoothing, 3x3 Sobel
    (replicate borders) and edge noise.

    Example (a ramp along x: angle 0, the imaginary part vanishes)::

        >>> re, im = edge_orientation(torch.linspace(0, 1, 32).expand(1, 1, 32, 32))
        >>> bool(im.abs().max() < 1e-6 and re[0, 0, 16, 16] > 0.5)
        True
    """
    f = F.pad(gaussian_blur(image, SMOOTHING), (1, 1, 1, 1), mode="replicate")
    dx = f[..., :, 2:] - f[..., :, :-2]
    dy = f[..., 2:, :] - f[..., :-2, :]
    gx = (dx[..., :-2, :] + 2 * dx[..., 1:-1, :] + dx[..., 2:, :]) / 8
    gy = (dy[..., :, :-2] + 2 * dy[..., :, 1:-1] + dy[..., :, 2:]) / 8
    norm = gx * gx + gy * gy + EDGE_NOISE * EDGE_NOISE
    return (gx * gx - gy * gy) / norm, 2 * gx * gy / norm


def edge_agreement(vis: Tensor, ir: Tensor, grids: Tensor) -> Tensor:
    """Mean edge-orientation agreement of ``vis`` ``(B, 1, H, W)`` and ``ir`` ``(B, 1, H, W)`` warped
    by each of ``grids`` ``(kB, H, W, 2)`` (``k`` results per pair, result-major): ``(kB,)``, higher
    is better aligned; :func:`busref.orientation.agreement` with the IR's content (no exactly-0
    pixel, away from its frame by :data:`busref.orientation.RIM` px) as the moving image's valid area.

    Example (the grid that undoes a 2 px shift agrees better than the identity)::

        >>> vis = gaussian_blur(torch.rand(1, 1, 32, 32), 1.5)
        >>> ir = torch.roll(vis, 2, dims=-1)
        >>> identity = coordinates(vis).permute(0, 2, 3, 1)
        >>> first, second = edge_agreement(vis, ir, torch.cat((identity, identity + torch.tensor([4 / 31, 0.0]))))
        >>> bool(second > first)
        True
    """
    k = grids.shape[0] // vis.shape[0]
    # One warp carries the IR and its content mask (warp_features is per channel).
    moving, content = warp_features(_rows(torch.cat((ir, content_mask(ir, RIM)), dim=1), k), grids).split(1, dim=1)
    valid = (content > 0.999).to(ir.dtype)
    ref_re, ref_im = (_rows(x, k) for x in edge_orientation(vis))
    re, im = edge_orientation(moving)
    return (valid * (ref_re * re + ref_im * im)).mean(dim=(1, 2, 3))


def fine_detail(image: Tensor) -> Tensor:
    """``image`` ``(B, 1, H, W)`` (any intensity scale; exact zeros are padding) -> ``(B,)``: the
    energy of its finest band, ``x - G1(x)``, over that of the next, ``G1(x) - G3(x)`` (``Gs`` a
    Gaussian blur of sigma ``s`` pixels of ``image``), over the pixels at least 10 px inside its
    content (:func:`content_mask`, a margin that covers the wider blur's support). It does not
    depend on the tone curve's scale; a blurrier or lower-resolution camera's frame scores lower.

    Why: the towers learned the sharp IR of the training camera; on a blurred or a quarter-resolution
    IR their iterations end 0.25 px behind the MIND iterations alone (:class:`LucasKanade`, held-out
    RoadScene train pairs, docs/experiments.md). At 384x512 the datasets' own IR scores 0.12-1.0,
    those pairs blurred by 2 px or at a quarter of the resolution 0.04-0.08.

    Example::

        >>> sharp = torch.rand(1, 1, 64, 64) + 0.1
        >>> bool(fine_detail(gaussian_blur(sharp, 3.0)) < 0.1 < fine_detail(sharp))
        True
    """
    inside = content_mask(image, margin=10)
    smooth, smoother = gaussian_blur(image, 1.0), gaussian_blur(image, 3.0)
    fine = (((image - smooth) ** 2) * inside).sum(dim=(1, 2, 3))
    middle = (((smooth - smoother) ** 2) * inside).sum(dim=(1, 2, 3))
    return fine / (middle + 1e-12)


def content_mask(ir: Tensor, margin: int = 6) -> Tensor:
    """``(B, 1, H, W)`` 1.0 where ``ir`` ``(B, 1, H, W)`` has content: no exactly-0 pixel and no
    frame edge within ``margin`` pixels (a square), else 0.0.

    Why: a frame pre-warped with zero padding (the evaluation protocol's moving images) has a
    black border whose edge the visible image does not have, and within the MIND support of a
    frame's edge replicate padding makes descriptors that the other image does not share; both
    pulled the update near the borders (NIR held-out train pairs: see LucasKanadeConfig).
    ``margin`` covers the MIND support (radius 2 + 1) and a blur of sigma 1.
    Of an all-ones image it is the frame band alone.

    Example::

        >>> content_mask(torch.ones(1, 1, 8, 8), margin=2)[0, 0, 2:6, 2:6].min().item()
        1.0
        >>> content_mask(torch.ones(1, 1, 8, 8), margin=2)[0, 0, 1].max().item()
        0.0
    """
    nonzero = F.pad((ir != 0).to(ir.dtype), (margin, margin, margin, margin))
    return -F.max_pool2d(-nonzero, 2 * margin + 1, stride=1)


def _channel_sum(x: Tensor) -> Tensor:
    """Sum over the channels as slices: ONNX Runtime's ReduceSum over the channel axis took ~1.8 ms
    per call for the 4 MIND channels at 192x256, most of this stage's time."""
    total = x[:, 0:1]
    for channel in range(1, int(x.shape[1])):
        total = total + x[:, channel:channel + 1]
    return total
