"""Three-stage training: the bus (stage 1), GAF fusion (stage 2), registration (stage 3).

Stage 1 trains the Reconstructor on both modalities (eq. 4). Stage 2 freezes the bus and trains
GAF on aligned pairs (eq. 8). Stage 3 freezes the bus and GAF and trains Affine Net + Deformable
Net on synthetic misalignments (eq. 13) plus a smoothness term and, because the synthetic
truth is known, a masked end-point error (weights in ``LossWeights``).

Single process (CPU, one GPU) or data-parallel with ``torchrun --nproc_per_node N -m busref
train ...`` (DistributedSampler; rank 0 logs, validates and writes checkpoints).
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler
from tqdm import tqdm

from busref.models import losses
from busref.models.augment import photometric_jitter
from busref.models.checkpoint import STAGES, load_checkpoint, load_model, save_checkpoint
from busref.models.config import ModelConfig, StageConfig, TrainConfig
from busref.models.data import CropDataset, LoadedPair, PairPaths, load_pairs, split_sha256
from busref.models.evaluation import evaluate_registration
from busref.models.geometry import pixel_to_normalised, warp_normalised
from busref.models.inference import BusReFRegistration
from busref.models.misalignment import level_by_name, misalign, random_draws
from busref.models.networks import BusReF

log = logging.getLogger(__name__)


def select_device(name: str = "auto") -> torch.device:
    """``auto``: CUDA when present (the local rank's GPU under torchrun), else CPU."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        return torch.device("cpu")
    return torch.device(name)


@dataclass
class Distributed:
    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_distributed(device: torch.device) -> Distributed:
    """Join the torchrun process group when WORLD_SIZE > 1 (NCCL on CUDA, gloo on CPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Distributed()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return Distributed(dist.get_rank(), world)


class BusStep(nn.Module):
    """Stage 1 loss: reconstruct both modalities with the same auto-encoder (eq. 4)."""

    def __init__(self, model: BusReF, cfg: TrainConfig) -> None:
        super().__init__()
        self.model, self.lam = model, cfg.losses.ssim_re

    def forward(self, vis: torch.Tensor, ir: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        images = torch.cat((vis, ir), dim=0)
        loss = losses.reconstruction_loss(images, self.model.bus(images), self.lam)
        return loss, {"re": float(loss.detach())}


class FusionStep(nn.Module):
    """Stage 2 loss: GAF on aligned pairs (eq. 8)."""

    def __init__(self, model: BusReF, cfg: TrainConfig) -> None:
        super().__init__()
        self.model, self.w = model, cfg.losses

    def forward(self, vis: torch.Tensor, ir: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        fused = self.model.fuse(vis, ir)
        return losses.fusion_loss(fused, vis, ir, sigma=self.w.ssim_fuse, grad_weight=self.w.grad_fuse,
                                  gamma=self.w.gamma, max_grad_weight=self.w.max_grad_fuse,
                                  histogram_weight=self.w.hist_fuse, saliency_weight=self.w.salfid_fuse,
                                  distortion_weight=self.w.qcv_fuse)


class RegistrationStep(nn.Module):
    """Stage 3 loss on a batch of aligned pairs misaligned on the fly (eq. 13 + additions)."""

    def __init__(self, model: BusReF, cfg: TrainConfig) -> None:
        super().__init__()
        self.model, self.w = model, cfg.losses
        self.level = level_by_name(cfg.max_level).scaled(cfg.level_margin)
        self.generator = torch.Generator().manual_seed(cfg.seed + 1)
        self.photometric = cfg.photometric

    def forward(self, vis: torch.Tensor, ir: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        b, _, h, w = vis.shape
        with torch.no_grad():
            u, amp = random_draws(b, self.level, generator=self.generator, device=vis.device)
            # A coarse fixed point (1e-3 px) is plenty for a training target and 3x cheaper.
            mis = misalign(ir, u, amp, quantise=False, iterations=20, tolerance=1e-3)
            truth = pixel_to_normalised(mis.inverse, h, w)
            # The networks see re-toned copies; the losses below compare the clean images.
            seen_vis = photometric_jitter(vis, self.photometric, allow_invert=False, generator=self.generator)
            seen_ir = photometric_jitter(mis.moving, self.photometric, allow_invert=True, generator=self.generator)
        reg = self.model.register(seen_vis, seen_ir)
        registered = warp_normalised(mis.moving, reg.grid)
        mask = mis.mask
        l_mncc = losses.mncc_loss(registered, ir, mask)
        l_mg = losses.masked_gradient_loss(self.model.fuse(vis, registered), self.model.fuse(vis, ir).detach(), mask)
        l_smooth = sum(losses.smoothness_loss(d) for d in reg.displacements)
        l_epe = losses.endpoint_loss(reg.grid, truth, mask, (h, w))
        l_coarse = losses.endpoint_loss(reg.coarse_grid, truth, mask, (h, w))
        l_match = losses.match_loss(reg.matches, truth, mask, (h, w))
        total = (self.w.mncc * l_mncc + self.w.mg * l_mg + self.w.smooth * l_smooth
                 + self.w.supervised * l_epe + self.w.affine_supervised * l_coarse + self.w.match * l_match)
        logs = {"mncc": -l_mncc, "mg": l_mg, "epe_px": l_epe, "coarse_epe_px": l_coarse, "match_px": l_match}
        return total, {k: float(v.detach()) for k, v in logs.items()}


def set_learning_rate(optimizer: torch.optim.Optimizer, base: float, step: int, steps: int, elapsed_s: float,
                      max_minutes: float | None) -> None:
    """Warm-up over 100 steps, then cosine decay over the run's progress: the larger of the
    share of steps done and, under ``--max-minutes``, the share of the time used (so a run cut
    by time still ends with a small learning rate)."""
    progress = step / steps
    if max_minutes:
        progress = max(progress, elapsed_s / (60 * max_minutes))
    lr = base * min(1.0, step / 100) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    for group in optimizer.param_groups:
        group["lr"] = lr


def seed_worker(worker_id: int) -> None:
    """Give each DataLoader worker its own crop stream (they inherit the dataset's RNG)."""
    info = torch.utils.data.get_worker_info()
    if info is not None:
        info.dataset.rng.seed(torch.initial_seed() % 2**32)


STEPS: dict[str, type[nn.Module]] = {"bus": BusStep, "fusion": FusionStep, "registration": RegistrationStep}


#: The parts of :class:`BusReF` (attribute names, also those of its ModelConfig) each stage trains.
STAGE_PARTS: dict[str, tuple[str, ...]] = {"bus": ("bus",), "fusion": ("gaf",),
                                           "registration": ("affine", "deformable")}


def trainable_parts(model: BusReF, stage: str) -> list[nn.Module]:
    """The bus is frozen after stage 1; GAF is frozen in stage 3 (paper section 3.2)."""
    return [getattr(model, part) for part in STAGE_PARTS[stage]]


def earlier_parts(stage: str) -> tuple[str, ...]:
    """The parts trained by the stages before ``stage``: what its ``--init`` provides."""
    return tuple(part for earlier in STAGES[: STAGES.index(stage)] for part in STAGE_PARTS[earlier])


#: Every part of :class:`BusReF`, each trained by exactly one stage.
MODEL_PARTS: tuple[str, ...] = tuple(part for parts in STAGE_PARTS.values() for part in parts)


def load_parts(model: BusReF, state: dict[str, torch.Tensor], parts: Sequence[str], source: Path) -> None:
    """Load the weights of ``parts`` from ``state``; the other parts keep theirs. Refuses a source
    whose weights of those parts do not fit the model (missing or unexpected names)."""
    prefixes = tuple(f"{part}." for part in parts)
    result = model.load_state_dict({k: v for k, v in state.items() if k.startswith(prefixes)}, strict=False)
    misfit = [k for k in result.missing_keys if k.startswith(prefixes)] + result.unexpected_keys
    if misfit:
        raise ValueError(f"{source}: its {', '.join(parts)} weights do not fit the model ({len(misfit)} missing or "
                         f"unexpected), e.g. {misfit[0]}")


def load_earlier_stages(model: BusReF, state: dict[str, torch.Tensor], stage: str, source: Path) -> None:
    """Load the parts trained by the stages before ``stage`` (the bus; then GAF) from ``state``;
    the parts this stage trains start fresh, so a changed architecture of those parts does not
    invalidate an earlier stage's checkpoint."""
    load_parts(model, state, earlier_parts(stage), source)


def load_finetune_source(model: BusReF, state: dict[str, torch.Tensor], trained: ModelConfig, stage: str,
                         source: Path, *, fresh_allowed: bool) -> None:
    """Load every part of ``state`` into ``model``. With ``fresh_allowed`` (a fine-tune), a part
    this stage trains whose config differs from the source's starts fresh instead: that is how a
    redesigned Deformable Net trains on top of shipped bus, Affine Net and GAF."""
    requested = model.config
    if trained == requested:
        model.load_state_dict(state)
        return
    differing = [part for part in MODEL_PARTS if getattr(trained, part) != getattr(requested, part)]
    frozen = [part for part in differing if part not in STAGE_PARTS[stage]]
    if not fresh_allowed or frozen or trained.registration_size != requested.registration_size:
        raise ValueError(f"{source}: trained with model config {trained}, not the requested {requested}")
    log.warning("%s: %s config differs from the checkpoint's; starting it fresh", source, ", ".join(differing))
    load_parts(model, state, [part for part in MODEL_PARTS if part not in differing], source)


def freeze_for(model: BusReF, stage: str) -> list[nn.Parameter]:
    model.requires_grad_(False)
    model.eval()
    params: list[nn.Parameter] = []
    for part in trainable_parts(model, stage):
        part.requires_grad_(True)
        part.train()
        params.extend(part.parameters())
    return params


def stage_dataset(stage: str, pairs: list[LoadedPair], sc: StageConfig, cfg: TrainConfig) -> CropDataset:
    if stage == "registration":
        return CropDataset(pairs, cfg.model.registration_size, resize=True, seed=cfg.seed)
    return CropDataset(pairs, sc.crop, resize=False, seed=cfg.seed)


@torch.no_grad()
def validate_registration(model: BusReF, pairs: list[LoadedPair], indices: list[int], level: str,
                          device: torch.device) -> dict[str, float]:
    """Protocol ``irvis-reg-v1`` on held-out pairs (the eval code): mean MNCC and EPE (px, full size)."""
    results = evaluate_registration({"busref": BusReFRegistration(model, device)}, pairs, indices, level,
                                    progress=False)
    model.train()
    mean = results["busref"]["summary"]["mean"]
    return {f"val_{level}_mncc": mean["MNCC"], f"val_{level}_epe": mean["EPE_mean"]}


@torch.no_grad()
def validate_loss(step_module: nn.Module, pairs: list[LoadedPair], sc: StageConfig, cfg: TrainConfig, stage: str,
                  device: torch.device) -> dict[str, float]:
    """Mean stage loss on fixed crops of the held-out pairs."""
    ds = stage_dataset(stage, pairs, sc, cfg)
    ds.rng.seed(1234)
    total = []
    for i in range(min(len(ds), 16)):
        vis, ir = (t[None].to(device) for t in ds[i])
        total.append(float(step_module(vis, ir)[0]))
    return {f"val_{stage}_loss": float(np.mean(total))}


def train_stage(stage: str, *, train_pairs: list[PairPaths], val_pairs: list[PairPaths], val_indices: list[int],
                split_name: str, config: TrainConfig, out_dir: Path, init: Path | None = None,
                resume: Path | None = None, finetune: Path | None = None, device: torch.device | None = None,
                max_minutes: float | None = None) -> Path:
    """Train one stage and return the path of its final checkpoint (``out_dir/STAGE.pt``).

    ``init``: the previous stage's checkpoint (its config's model must equal ``config.model``).
    ``resume``: a checkpoint of this stage to continue (weights, optimizer, step).
    ``finetune``: a checkpoint of this stage or a later one whose every weight is the starting point
    (the whole model config must match), with a fresh optimizer and this config's schedule and losses;
    the result records the later of the two stages.
    ``max_minutes``: stop early (and save) after this wall time.
    """
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; choose one of {STAGES}")
    device = device or select_device()
    ddp = setup_distributed(device)
    torch.manual_seed(config.seed + ddp.rank)
    sc: StageConfig = getattr(config, stage)
    model = BusReF(config.model).to(device)
    start_step, history = 0, []
    optimizer_state = None
    # The stage a checkpoint records is the latest one whose weights it holds trained: fine-tuning
    # GAF in a full registration checkpoint keeps it usable wherever a registration one is needed.
    saved_stage = stage
    if sum(s is not None for s in (init, resume, finetune)) > 1:
        raise ValueError("give at most one of init, resume and finetune")
    source = resume or finetune or init
    if source is not None:
        payload = load_checkpoint(source, map_location=device)
        trained = payload["config"].model
        # Resuming and fine-tuning need the whole model unchanged; an init only the parts it provides
        # (the bus, GAF), so e.g. stage 3 can run at another registration size on the same bus.
        if resume is not None or finetune is not None:
            if resume is not None and payload["stage"] != stage:
                raise ValueError(f"{resume}: is a {payload['stage']!r} checkpoint, cannot resume stage {stage!r}")
            if STAGES.index(payload["stage"]) < STAGES.index(stage):
                raise ValueError(f"{source}: is a {payload['stage']!r} checkpoint, it has no trained {stage!r} "
                                 f"weights to fine-tune; use --init")
            load_finetune_source(model, payload["model"], trained, stage, source, fresh_allowed=finetune is not None)
            saved_stage = max(stage, payload["stage"], key=STAGES.index)
            if resume is not None:
                start_step, history, optimizer_state = payload["step"], payload["history"], payload["optimizer"]
        else:
            for part in earlier_parts(stage):
                if getattr(trained, part) != getattr(config.model, part):
                    raise ValueError(f"{source}: its {part} config {getattr(trained, part)} differs from the "
                                     f"requested {getattr(config.model, part)}")
            load_earlier_stages(model, payload["model"], stage, source)
    elif stage != "bus":
        log.warning("stage %s without --init: the frozen parts are untrained", stage)
    params = freeze_for(model, stage)
    step_module: nn.Module = STEPS[stage](model, config).to(device)
    train_module: nn.Module = step_module
    if ddp.world > 1:
        train_module = nn.parallel.DistributedDataParallel(step_module, device_ids=[device] if device.type == "cuda"
                                                           else None)
    optimizer = torch.optim.AdamW(params, lr=sc.lr, weight_decay=1e-4)
    if optimizer_state is not None:
        optimizer.load_state_dict(optimizer_state)
    train_loaded, val_loaded = load_pairs(train_pairs), load_pairs(val_pairs)
    dataset = stage_dataset(stage, train_loaded, sc, config)
    sampler = (DistributedSampler(dataset, ddp.world, ddp.rank, seed=config.seed) if ddp.world > 1
               else RandomSampler(dataset, generator=torch.Generator().manual_seed(config.seed)))
    loader = DataLoader(dataset, batch_size=sc.batch_size, sampler=sampler, num_workers=config.workers,
                        drop_last=True, persistent_workers=config.workers > 0, worker_init_fn=seed_worker)
    split_hash = split_sha256(train_pairs)

    def checkpoint(path: Path, step: int, metrics: dict[str, float]) -> None:
        save_checkpoint(path, model=model, config=config, stage=saved_stage, step=step, split_name=split_name,
                        split_sha256=split_hash, metrics=metrics, optimizer=optimizer, history=history)

    def validate() -> dict[str, float]:
        model.eval()
        if stage == "registration":
            return validate_registration(model, val_loaded, val_indices, "moderate", device)
        out = validate_loss(step_module, val_loaded, sc, config, stage, device)
        freeze_for(model, stage)
        return out

    out_dir = Path(out_dir)
    started = time.monotonic()
    step, epoch, metrics = start_step, 0, {}
    bar = tqdm(total=sc.steps, initial=start_step, desc=f"train {stage}", disable=not ddp.main, dynamic_ncols=True)
    running: dict[str, float] = {}
    while step < sc.steps:
        if isinstance(sampler, DistributedSampler):
            sampler.set_epoch(epoch)
        for vis, ir in loader:
            vis, ir = vis.to(device, non_blocking=True), ir.to(device, non_blocking=True)
            loss, logs = train_module(vis, ir)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            step += 1
            set_learning_rate(optimizer, sc.lr, step, sc.steps, time.monotonic() - started, max_minutes)
            for k, v in logs.items():
                running[k] = 0.9 * running.get(k, v) + 0.1 * v
            bar.update(1)
            bar.set_postfix({k: f"{v:.4g}" for k, v in running.items()})
            out_of_time = max_minutes is not None and time.monotonic() - started > 60 * max_minutes
            if ddp.main and (step % sc.validate_every == 0 or step == sc.steps or out_of_time):
                metrics = {**{f"train_{k}": v for k, v in running.items()}, **validate()}
                history.append({"step": step, **metrics})
                log.info("stage %s step %d: %s", stage, step, ", ".join(f"{k}={v:.4g}" for k, v in metrics.items()))
            if ddp.main and step % sc.checkpoint_every == 0:
                checkpoint(out_dir / f"{stage}_last.pt", step, metrics)
            if step >= sc.steps or out_of_time:
                break
        epoch += 1
        if max_minutes is not None and time.monotonic() - started > 60 * max_minutes:
            log.warning("stage %s: stopping at step %d after %.1f min (--max-minutes)", stage, step, max_minutes)
            break
    bar.close()
    final = out_dir / f"{stage}.pt"
    if ddp.main:
        checkpoint(final, step, metrics)
        log.info("stage %s done: %d steps in %.1f min -> %s", stage, step, (time.monotonic() - started) / 60, final)
    if ddp.world > 1:
        dist.barrier()
    return final


__all__ = ["load_model", "select_device", "train_stage"]
