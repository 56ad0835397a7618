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

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from tqdm import tqdm

from busref.models.checkpoint import CheckpointError, read_payload, save_payload
from busref.models.data import LoadedPair
from busref.models.geometry import invert_affine
from busref.models.networks.layers import correlation

log = logging.getLogger(__name__)

FORMAT = "busref.descriptor/1"
Tensor = torch.Tensor


class DescriptorConfig(BaseModel):
    """Architecture and training of :class:`CrossModalDescriptor`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    channels: int = Field(16, ge=1, description="width of each tower")
    dims: int = Field(8, ge=2, description="length of the per-pixel descriptor")
    crop: int = Field(80, ge=16, description="square training crop, pixels")
    batch: int = Field(8, ge=1)
    radius: int = Field(5, ge=1, description="the softmax window: offsets -radius..radius in x and y")
    temperature: float = Field(0.1, gt=0)
    label_sigma: float = Field(1.0, gt=0, description="Gaussian soft label around the true offset, pixels")
    structure_quantile: float = Field(0.6, ge=0, lt=1,
                                      description="only anchors above this quantile of local visible gradient count")
    max_rotation: float = Field(10.0, ge=0, description="degrees of the random affine the IR crop sees")
    max_log_scale: float = Field(0.1, ge=0)
    max_log_gamma: float = Field(0.4, ge=0, description="random gamma exp(U(-g, g)) per image")
    learning_rate: float = Field(2e-3, gt=0)
    steps: int = Field(8000, ge=1, description="the shipped recipe's length (the loss only starts to fall after ~1500)")
    seed: int = 0


class _Tower(nn.Module):
    def __init__(self, channels: int, dims: int) -> None:
        super().__init__()
        c = channels
        self.body = nn.Sequential(
            nn.Conv2d(1, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU(),
            nn.Conv2d(c, c, 3, padding=2, dilation=2), nn.BatchNorm2d(c), nn.ReLU(),
            nn.Conv2d(c, c, 3, padding=4, dilation=4), nn.BatchNorm2d(c), nn.ReLU(),
            nn.Conv2d(c, c, 3, padding=1), nn.ReLU(),
            nn.Conv2d(c, dims, 1))

    def forward(self, image: Tensor) -> Tensor:
        # The local mean is removed first: the two modalities' absolute levels are unrelated.
        local = image - F.avg_pool2d(image, 15, stride=1, padding=7, count_include_pad=False)
        features = self.body(local)
        # Centring per image keeps the descriptors from sharing one dominant direction (without it
        # every cosine starts near 1 and the softmax does not learn).
        return F.normalize(features - features.mean(dim=(2, 3), keepdim=True), dim=1)


class CrossModalDescriptor(nn.Module):
    """``vis(image)`` / ``ir(image)``: ``(B, 1, H, W)`` float in [0, 1] -> ``(B, dims, H, W)`` unit
    vectors (L2 over the channel axis), at the input's size. Their dot product is high where the
    visible and the IR image show the same point; the receptive field is about 31 pixels."""

    def __init__(self, config: DescriptorConfig = DescriptorConfig()) -> None:
        super().__init__()
        self.config = config
        self.vis = _Tower(config.channels, config.dims)
        self.ir = _Tower(config.channels, config.dims)


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
    """Random aligned crops (same window in both images), joint flips, independent gammas."""

    def __init__(self, pairs: list[LoadedPair], config: DescriptorConfig) -> None:
        uneven = [p.name for p in pairs if p.vis.shape != p.ir.shape]
        if uneven:
            raise ValueError(f"aligned pairs need one size for both images; these differ: {', '.join(uneven[:5])}")
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
            y, x = rng.integers(0, h - size), rng.integers(0, w - size)
            a, b = pair.vis[y:y + size, x:x + size], pair.ir[y:y + size, x:x + size]
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
                     max_minutes: float | None = None, split_name: str = "train", split_sha256: str = "") -> Path:
    """Train on aligned ``pairs`` (CPU, one process) for ``config.steps`` or ``max_minutes``,
    whichever ends first, and save to ``out`` with its metadata. Returns ``out``."""
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    model = CrossModalDescriptor(config)
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
                             "minutes": (time.monotonic() - start) / 60})
    log.info("saved %s after %d steps (loss %.3f, hits %.1f %%)", out, step, mean_loss, 100 * mean_hit)
    return out


def save_descriptor(path: Path, model: CrossModalDescriptor, *, step: int, split_name: str,
                    split_sha256: str, metrics: dict[str, float]) -> None:
    save_payload(path, {"format": FORMAT, "config": model.config.model_dump(mode="json"),
                        "model": model.state_dict(), "step": step,
                        "split": {"name": split_name, "sha256": split_sha256}, "metrics": metrics})


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
