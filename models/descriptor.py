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
from busref.models.config import DescriptorConfig
from busref.models.data import LoadedPair
from busref.models.geometry import invert_affine
from busref.models.networks.layers import correlation
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


def train_descriptor(pairs: list[LoadedPair], out: Path, *, config: DescriptorConfig = DescriptorConfig(),
                     max_minutes: float | None = None, split_name: str = "train", split_sha256: str = "",
                     finetune: Path | None = None) -> Path:
    """Train on aligned ``pairs`` (CPU, one process) for ``config.steps`` or ``max_minutes``,
    whichever ends first, and save to ``out`` with its metadata. Returns ``out``.

    ``finetune``: start from the towers of that descriptor file (same ``channels`` and ``dims``)
    instead of random weights; the file's name and step are recorded. Why: from scratch the loss
    stays near the uniform guess for thousands of steps (the native-size recipe ~1500-2500, at
    192x256 still 4 % exact-offset hits at step 3000), while the native-size towers already match.
    """
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
    optimiser = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
    crops = _Crops(pairs, config)
    start, recent = time.monotonic(), []
    bar = tqdm(total=config.steps, desc="descriptor", unit="step", leave=False)
    step = 0
    while step < config.steps and (max_minutes is None or time.monotonic() - start < max_minutes * 60):
        loss, hit = descriptor_loss(model, *crops(), generator)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        step += 1
        recent = [*recent[-99:], (loss.item(), hit)]
        bar.update()
        if step % 500 == 0:
            mean_loss, mean_hit = np.mean(recent, axis=0)
            log.info("descriptor step %d: loss %.3f, exact-offset hits %.1f %%", step, mean_loss, 100 * mean_hit)
    bar.close()
    mean_loss, mean_hit = np.mean(recent, axis=0) if recent else (float("nan"), float("nan"))
    save_descriptor(out, model, step=step, split_name=split_name, split_sha256=split_sha256,
                    metrics={"loss": float(mean_loss), "hits": float(mean_hit),
                             "minutes": (time.monotonic() - start) / 60}, **origin)
    log.info("saved %s after %d steps (loss %.3f, hits %.1f %%)", out, step, mean_loss, 100 * mean_hit)
    return out


def save_descriptor(path: Path, model: CrossModalDescriptor, *, step: int, split_name: str,
                    split_sha256: str, metrics: dict[str, float], finetune: dict[str, Any] | None = None) -> None:
    """Write the towers with their config, step, split and metrics (and ``finetune``: the file they
    started from, where they did)."""
    payload = {"format": FORMAT, "config": model.config.model_dump(mode="json"), "model": model.state_dict(),
               "step": step, "split": {"name": split_name, "sha256": split_sha256}, "metrics": metrics}
    if finetune is not None:
        payload["finetune"] = finetune
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
