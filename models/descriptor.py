"""A learned cross-modal descriptor for the per-pair refinement: two small towers (visible, IR)
that map each image to unit-length per-pixel vectors which agree where the two images show the
same point, trained on aligned train pairs with a local-window softmax.

Why: the hand-made similarities of :mod:`models.refinement` (NGF + MIND) are biased on
this data: started at the true grid they drift 2.5 px away, because IR and visible edges do not
coincide (thermal halos, blur) and flat areas carry no signal. A descriptor trained on the aligned
pairs learns where the two modalities' structures correspond; added to the refinement at full size
it took 24 held-out train pairs from 3.23 to 2.27 px mean EPE (moderate level).
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from busref.models.checkpoint import CheckpointError, read_payload, save_payload
from busref.models.config import DescriptorConfig, LucasKanadeConfig
from busref.models.data import LoadedPair
from busref.models.geometry import invert_affine
from busref.models.networks.layers import correlation
from busref.models.networks.lucas_kanade import content_mask, descriptor_iterates, pool_descriptors
from busref.models.networks.matcher import CrossModalDescriptor

log = logging.getLogger(__name__)

FORMAT = "busref.descriptor/1"
Tensor = torch.Tensor


def window_log_likelihood(vis: Tensor, ir: Tensor, radius: int, temperature: float) -> Tensor:
    """``(B, D, H, W)`` unit descriptors of aligned images -> ``(B, (2r+1)^2, H, W)`` log-softmax
    over the offsets ``(dx, dy)`` (row-major, dy outer): how likely visible pixel ``p`` matches IR
    pixel ``p + (dx, dy)`` (zero outside the image). The cosines are the networks' cost volume
    (:func:`models.networks.layers.correlation`, a channel mean, hence the factor ``D``)."""
    return F.log_softmax(correlation(vis, ir, radius) * vis.shape[1] / temperature, dim=1)


def _random_affine(n: int, config: DescriptorConfig, generator: torch.Generator) -> Tensor:
    """``(n, 2, 3)`` normalised rotation-scale maps (``F.affine_grid`` convention)."""
    angle = (torch.rand(n, generator=generator) * 2 - 1) * math.radians(config.max_rotation)
    scale = torch.exp((torch.rand(n, generator=generator) * 2 - 1) * config.max_log_scale)
    cos, sin = scale * torch.cos(angle), scale * torch.sin(angle)
    zero = torch.zeros(n)
    return torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)


class _Crops:
    """Random aligned crops (same window in both images), joint flips, independent gammas; of the
    pairs resized to ``config.size`` where it is set; with ``config.max_log_resize`` each crop is a
    window of ``crop * exp(U(-r, r))`` pixels per axis resized to ``crop``, for towers that hold
    across cameras' scales and aspect ratios."""

    def __init__(self, pairs: list[LoadedPair], config: DescriptorConfig) -> None:
        uneven = [p.name for p in pairs if p.vis.shape != p.ir.shape]
        if uneven:
            raise ValueError(f"aligned pairs need one size for both images; these differ: {', '.join(uneven[:5])}")
        if config.size is not None:  # checked as given, then resized (area): what the graphs see
            h, w = config.size
            pairs = [LoadedPair(p.name, cv2.resize(p.vis, (w, h), interpolation=cv2.INTER_AREA),
                                cv2.resize(p.ir, (w, h), interpolation=cv2.INTER_AREA)) for p in pairs]
        small = [p.name for p in pairs if min(p.vis.shape) <= config.crop]
        if small:
            raise ValueError(f"pairs not larger than the {config.crop}-pixel crop: {', '.join(small[:5])}")
        self.pairs, self.config = pairs, config
        self.rng = np.random.default_rng(config.seed)

    def __call__(self) -> tuple[Tensor, Tensor]:
        size, rng, vis, ir = self.config.crop, self.rng, [], []
        for _ in range(self.config.batch):
            pair = self.pairs[rng.integers(len(self.pairs))]
            h, w = pair.vis.shape
            r = self.config.max_log_resize
            # The window that becomes the crop: scaled by a random factor per axis (both images alike).
            wy, wx = ((min(n - 1, round(size * math.exp(rng.uniform(-r, r)))) for n in (h, w)) if r > 0
                      else (size, size))
            y, x = rng.integers(0, h - wy), rng.integers(0, w - wx)
            a, b = pair.vis[y:y + wy, x:x + wx], pair.ir[y:y + wy, x:x + wx]
            if (wy, wx) != (size, size):
                flags = cv2.INTER_AREA if wy * wx > size * size else cv2.INTER_LINEAR
                a, b = (cv2.resize(np.ascontiguousarray(c), (size, size), interpolation=flags) for c in (a, b))
            if rng.random() < 0.5:
                a, b = a[:, ::-1], b[:, ::-1]
            g = self.config.max_log_gamma
            vis.append(np.ascontiguousarray(a) ** math.exp(rng.uniform(-g, g)))
            ir.append(np.ascontiguousarray(b) ** math.exp(rng.uniform(-g, g)))
        return torch.from_numpy(np.stack(vis))[:, None].float(), torch.from_numpy(np.stack(ir))[:, None].float()


def _structure(vis: Tensor) -> Tensor:
    """Local visible gradient magnitude ``(B, 1, H, W)``: where a match can be learned at all."""
    gx = F.pad((vis[..., :, 2:] - vis[..., :, :-2]).abs(), (1, 1, 0, 0))
    gy = F.pad((vis[..., 2:, :] - vis[..., :-2, :]).abs(), (0, 0, 1, 1))
    return F.avg_pool2d(gx + gy, 5, stride=1, padding=2)


def descriptor_loss(model: CrossModalDescriptor, vis: Tensor, ir: Tensor,
                    generator: torch.Generator) -> tuple[Tensor, float]:
    """One batch of aligned crops ``(B, 1, S, S)`` -> (loss, share of anchors whose best offset is
    the true one). The IR crop is warped by a random rotation-scale and its descriptors warped
    back, so the towers see the misalignments they will meet, and the loss is the cross-entropy of
    the window softmax against a Gaussian label at the true offset."""
    config, r = model.config, model.config.radius
    matrix = _random_affine(len(ir), config, generator)
    warped = F.grid_sample(ir, F.affine_grid(matrix, list(ir.shape), align_corners=True),
                           align_corners=True, padding_mode="reflection")
    back = F.affine_grid(invert_affine(matrix), list(ir.shape), align_corners=True)
    ir_desc = F.grid_sample(model.ir(warped), back, align_corners=True)
    valid = F.grid_sample(torch.ones_like(ir), back, align_corners=True) > 0.999
    logp = window_log_likelihood(model.vis(vis), ir_desc, r, config.temperature)
    offsets = torch.arange(-r, r + 1, dtype=torch.float32)
    label = torch.exp(-(offsets[:, None] ** 2 + offsets[None, :] ** 2) / (2 * config.label_sigma ** 2)).flatten()
    label = label / label.sum()
    structure = _structure(vis)
    threshold = structure.flatten(1).quantile(config.structure_quantile, dim=1)[:, None, None, None]
    inner = torch.zeros_like(valid)
    inner[..., r:-r, r:-r] = True
    keep = (valid & inner & (structure > threshold))[:, 0]
    if not keep.any():  # a batch of flat crops (sky, a lens cap): no structure to prefer, but no NaN
        keep = (valid & inner)[:, 0]
    loss = -(logp * label[None, :, None, None]).sum(1)[keep].mean()
    with torch.no_grad():
        hit = (logp.argmax(1) == len(label) // 2)[keep].float().mean().item()
    return loss, hit


#: The iterations objective weighs iterate ``i`` of ``n`` by ``ITERATE_DECAY ** (n - 1 - i)``: the last
#: counts most, the earlier ones keep every step heading for the truth (RAFT's sequence loss, 0.8 there).
ITERATE_DECAY = 0.85

#: The stage's settings that :func:`iterations_loss` runs, recorded in a descriptor file it trained.
ITERATION_FIELDS = {"descriptor_iterations", "descriptor_factor", "descriptor_pool", "descriptor_gain", "window",
                    "field_window", "rest_prior", "damping"}


def iterations_loss(model: CrossModalDescriptor, stage: LucasKanadeConfig, vis: Tensor, ir: Tensor,
                    generator: torch.Generator) -> tuple[Tensor, float, float]:
    """One batch of aligned crops ``(B, 1, S, S)`` in [0, 1] -> (loss, mean start error, mean last
    error), errors in pixels of the iterations' size (the crops' over ``stage.descriptor_factor``).

    What the register graph (or the offline refinement) does with the towers, made differentiable:
    ``stage.descriptor_iterations`` iterations (the first ``config.unrolled`` where that is set) on
    their descriptors average-pooled by ``stage.descriptor_factor`` (cells of ``descriptor_pool``,
    the stage's gain, windows, prior and damping; no guard): the graph's own
    :func:`busref.models.networks.lucas_kanade.descriptor_iterates` and ``pool_descriptors``.
    The IR crop is warped by a random rotation-scale (``config.max_rotation``, ``max_log_scale``),
    reflected at its edges and masked out there as the graph masks an IR frame's padding; the
    iterations start from the true grid plus a global shift of uniform length up to
    ``config.start_error`` and a smooth field (a random 3x3 lattice, bicubic, a quarter of that per
    component). The loss: each iterate's mean end-point error over the pixels whose true match lies
    in the IR's content, weighted by :data:`ITERATE_DECAY`.

    Why: the window softmax trains a peak at the true offset, not the slope around it that the
    iterations follow; the towers it trained, started 1.1 / 3.4 / 5.6 px off the truth, ended 0.52 /
    0.55 / 7.98 px from it, while the thermal stage's MIND result lies a few pixels off. Fine-tuned
    with this loss they took 8 held-out train pairs from 2.83 to 2.66 px (docs/experiments.md).
    """
    config, batch, size = model.config, vis.shape[0], vis.shape[-1]
    factor, cells = stage.descriptor_factor, stage.descriptor_pool
    matrix = _random_affine(batch, config, generator)
    sampling = F.affine_grid(matrix, list(ir.shape), align_corners=True)
    moving = F.grid_sample(ir, sampling, align_corners=True, padding_mode="reflection")
    inside = F.grid_sample(torch.ones_like(ir), sampling, align_corners=True) > 0.999
    small = size // factor
    truth = F.affine_grid(invert_affine(matrix), [batch, 1, small, small], align_corners=True)
    angle = torch.rand(batch, generator=generator) * 2 * math.pi
    length = torch.rand(batch, generator=generator) * config.start_error / factor
    shift = torch.stack((length * torch.cos(angle), length * torch.sin(angle)), 1)[:, None, None, :]
    lattice = torch.randn(batch, 2, 3, 3, generator=generator) * (config.start_error / factor / 4)
    field = F.interpolate(lattice, size=(small, small), mode="bicubic", align_corners=True).permute(0, 2, 3, 1)
    pixel = 2 / (small - 1)
    start_grid = truth + (shift + field) * pixel
    learned = pool_descriptors((model.vis(vis), model.ir(moving)), factor)
    if factor > 1:
        inside = F.avg_pool2d(inside.to(vis.dtype), factor) > 0.999
    content = content_mask(inside.to(vis.dtype))
    band = content_mask(torch.ones_like(content))
    scored = (F.grid_sample(content, truth, align_corners=True) > 0.999).to(vis.dtype)[:, 0] * band[:, 0]
    count = scored.sum().clamp_min(1.0)
    loss = torch.zeros(())
    start = float(((shift + field).norm(dim=-1) * scored).sum() / count)
    n = config.unrolled or stage.descriptor_iterations
    for i, grid in enumerate(descriptor_iterates(learned, start_grid, content, band, iterations=n, cells=cells,
                                                 gain=stage.descriptor_gain, window=stage.window,
                                                 field_window=stage.field_window, rest_prior=stage.rest_prior,
                                                 damping=stage.damping)):
        error = (((grid - truth) / pixel).norm(dim=-1) * scored).sum() / count
        loss = loss + ITERATE_DECAY ** (n - 1 - i) * error
    return loss, start, float(error.detach())


def train_descriptor(pairs: list[LoadedPair], out: Path, *, config: DescriptorConfig = DescriptorConfig(),
                     max_minutes: float | None = None, split_name: str = "train", split_sha256: str = "",
                     finetune: Path | None = None, stage: LucasKanadeConfig | None = None) -> Path:
    """Train on aligned ``pairs`` (CPU, one process) for ``config.steps`` or ``max_minutes``,
    whichever ends first, and save to ``out`` with its metadata. Returns ``out``.

    ``finetune``: start from the towers of that descriptor file (same ``channels`` and ``dims``)
    instead of random weights; the file's name and step are recorded. Why: from scratch the loss
    stays near the uniform guess for thousands of steps (the native-size recipe ~1500-2500, at
    192x256 still 4 % exact-offset hits at step 3000), while the native-size towers already match.

    ``config.objective`` ``"iterations"`` (:func:`iterations_loss`) needs ``finetune`` and ``stage``,
    the Lucas-Kanade stage whose learned-descriptor iterations the towers serve (its settings are
    recorded); its BatchNorm layers keep the statistics the towers came with (the graphs run them
    on whole frames, the fine-tune sees crops) and each step's gradient is clipped to norm 1, as in
    the run that was measured (docs/experiments.md, "Towers fine-tuned on their iterations": a run
    with batch statistics, among other differences, moved the towers away, 2.83 -> 3.99 px).
    """
    iterating = config.objective == "iterations"
    if iterating and (finetune is None or stage is None or not stage.descriptor_iterations):
        raise ValueError("the iterations objective fine-tunes towers that already match (--finetune) on the "
                         "learned-descriptor iterations of a Lucas-Kanade stage that runs them (--stage-of)")
    if iterating and stage is not None and config.unrolled > stage.descriptor_iterations:
        raise ValueError(f"unrolled {config.unrolled}: the stage runs only {stage.descriptor_iterations} "
                         "learned-descriptor iterations")
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    model = CrossModalDescriptor(config)
    origin: dict[str, Any] = {}
    if finetune is not None:
        source, meta = load_descriptor(finetune)
        if (source.config.channels, source.config.dims) != (config.channels, config.dims):
            raise ValueError(f"{finetune}: towers of {source.config.channels} channels and {source.config.dims} "
                             f"dims, not the {config.channels} and {config.dims} asked for")
        model.load_state_dict(source.state_dict())
        origin = {"finetune": {"file": finetune.name, "step": meta["step"], "config": meta["config"]}}
    if iterating:
        assert stage is not None
        model.eval()
        origin["stage"] = stage.model_dump(mode="json", include=ITERATION_FIELDS)
    optimiser = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
    crops = _Crops(pairs, config)
    start, recent = time.monotonic(), []
    bar = tqdm(total=config.steps, desc="descriptor", unit="step", leave=False)
    step = 0
    while step < config.steps and (max_minutes is None or time.monotonic() - start < max_minutes * 60):
        if iterating:
            assert stage is not None
            loss, *measured = iterations_loss(model, stage, *crops(), generator)
        else:
            loss, hit = descriptor_loss(model, *crops(), generator)
            measured = [loss.item(), hit]
        optimiser.zero_grad()
        loss.backward()
        if iterating:
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimiser.step()
        step += 1
        recent = [*recent[-99:], measured]
        bar.update()
        if step % 500 == 0:
            log.info("descriptor step %d: %s", step, _progress(iterating, *np.mean(recent, axis=0)))
    bar.close()
    first, second = np.mean(recent, axis=0) if recent else (float("nan"), float("nan"))
    metrics = ({"start_error": float(first), "last_error": float(second)} if iterating
               else {"loss": float(first), "hits": float(second)})
    save_descriptor(out, model, step=step, split_name=split_name, split_sha256=split_sha256,
                    metrics={**metrics, "minutes": (time.monotonic() - start) / 60}, **origin)
    log.info("saved %s after %d steps (%s)", out, step, _progress(iterating, first, second))
    return out


def _progress(iterating: bool, first: float, second: float) -> str:
    if iterating:
        return f"start error {first:.2f} px, last iterate {second:.2f} px"
    return f"loss {first:.3f}, exact-offset hits {100 * second:.1f} %"


def save_descriptor(path: Path, model: CrossModalDescriptor, *, step: int, split_name: str,
                    split_sha256: str, metrics: dict[str, float], finetune: dict[str, Any] | None = None,
                    stage: dict[str, Any] | None = None) -> None:
    """Write the towers with their config, step, split and metrics (and ``finetune``: the file they
    started from, where they did; ``stage``: the Lucas-Kanade settings of the iterations objective)."""
    payload = {"format": FORMAT, "config": model.config.model_dump(mode="json"), "model": model.state_dict(),
               "step": step, "split": {"name": split_name, "sha256": split_sha256}, "metrics": metrics}
    if finetune is not None:
        payload["finetune"] = finetune
    if stage is not None:
        payload["stage"] = stage
    save_payload(path, payload)


def load_descriptor(path: Path) -> tuple[CrossModalDescriptor, dict[str, Any]]:
    """Read a descriptor file (eval mode) and its metadata; :class:`CheckpointError` names the file
    when it is missing, unreadable, of another format, or its weights do not fit its config."""
    payload = read_payload(path, FORMAT, "descriptor file")
    try:
        model = CrossModalDescriptor(DescriptorConfig.model_validate(payload["config"]))
        model.load_state_dict(payload["model"])
    except (KeyError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: weights do not match the descriptor config ({exc})") from exc
    model.eval()
    return model, {k: v for k, v in payload.items() if k != "model"}
