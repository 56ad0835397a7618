"""Checkpoints that carry their metadata: stage, config, data split, commit, metrics, versions."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any

import torch
from torch.torch_version import TorchVersion

from busref.models.config import TrainConfig
from busref.models.networks import BusReF

FORMAT = "busref.checkpoint/1"
STAGES = ("bus", "fusion", "registration")


class CheckpointError(RuntimeError):
    """A checkpoint is unreadable or does not match what the caller needs; names the file."""


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def save_checkpoint(path: Path, *, model: BusReF, config: TrainConfig, stage: str, step: int,
                    split_name: str, split_sha256: str, metrics: dict[str, float],
                    optimizer: torch.optim.Optimizer | None = None, history: list[dict] | None = None) -> None:
    """Write a checkpoint with its metadata (:func:`save_payload`)."""
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}")
    payload: dict[str, Any] = {
        "format": FORMAT,
        "stage": stage,
        "step": step,
        "config": config.model_dump(mode="json"),
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "split": {"name": split_name, "sha256": split_sha256},
        "metrics": metrics,
        "history": history or [],
    }
    save_payload(path, payload)


def save_payload(path: Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` plus its provenance (commit, versions, time) atomically (temp file +
    rename) so an interrupted run never leaves a torn file."""
    payload = {**payload, "commit": git_commit(), "versions": {"torch": str(torch.__version__)},
               "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)


def read_payload(path: Path, expected_format: str, kind: str, *,
                 map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a file written by :func:`save_payload` and check its format; :class:`CheckpointError`
    names the file (``kind`` says what it should have been) when it is missing, unreadable or of
    another format."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such {kind}")
    try:
        # Tensors and plain data only: a checkpoint cannot run code when it is read. TorchVersion
        # (a str) is allowed because files written before save_payload stored str() of it hold one.
        with torch.serialization.safe_globals([TorchVersion]):
            payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises many types for a corrupt file
        raise CheckpointError(f"{path}: not a readable {kind} ({exc})") from exc
    if not isinstance(payload, dict) or payload.get("format") != expected_format:
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise CheckpointError(f"{path}: format {found!r}, expected {expected_format!r}")
    return payload


def load_checkpoint(path: Path, *, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read and check a checkpoint's envelope; returns the payload (with a validated config)."""
    payload = read_payload(path, FORMAT, "checkpoint", map_location=map_location)
    try:
        payload["config"] = TrainConfig.model_validate(payload["config"])
    except ValueError as exc:
        raise CheckpointError(f"{path}: its config does not validate: {exc}") from exc
    return payload


def load_model(path: Path, *, map_location: str | torch.device = "cpu",
               expect_stage: str | None = None) -> tuple[BusReF, dict[str, Any]]:
    """Build the model of a checkpoint's config and load its weights (eval mode)."""
    payload = load_checkpoint(path, map_location=map_location)
    if expect_stage is not None and STAGES.index(payload["stage"]) < STAGES.index(expect_stage):
        raise CheckpointError(f"{path}: is a {payload['stage']!r} checkpoint; a {expect_stage!r} one is needed")
    model = BusReF(payload["config"].model)
    try:
        result = model.load_state_dict(payload["model"], strict=False)
    except RuntimeError as exc:  # a tensor of another shape
        raise CheckpointError(f"{path}: weights do not match its config: {exc}") from exc
    missing, unexpected = result.missing_keys, result.unexpected_keys
    if missing or unexpected:
        # Summarised: a checkpoint of an earlier network design (another Deformable Net) lists
        # ~100 names, which would bury the point of the message.
        raise CheckpointError(f"{path}: weights do not match its config (a checkpoint of an earlier network "
                              f"design?): {len(missing)} missing, e.g. {missing[:1]}; {len(unexpected)} "
                              f"unexpected, e.g. {unexpected[:1]}")
    return model.eval(), payload
