"""Shared fixtures: the RoadScene folder (skipped when absent) and a briefly trained checkpoint."""

from __future__ import annotations

from pathlib import Path

import pytest

ROADSCENE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "roadscene"


@pytest.fixture(scope="session")
def roadscene() -> Path:
    if not (ROADSCENE / "split.json").is_file():
        pytest.skip(f"RoadScene data not found at {ROADSCENE}")
    return ROADSCENE


@pytest.fixture(scope="session")
def tiny_config():
    from models.config import BusConfig, ModelConfig, StageConfig, TrainConfig

    stage = StageConfig(steps=2, batch_size=2, crop=(32, 32), validate_every=2, checkpoint_every=2)
    return TrainConfig(model=ModelConfig(bus=BusConfig(width=8), registration_size=(64, 80)),
                       bus=stage, fusion=stage, registration=stage.model_copy(update={"crop": (64, 80)}))


@pytest.fixture(scope="session")
def trained_checkpoint(tmp_path_factory, roadscene: Path, tiny_config) -> Path:
    """All three stages, two steps each, on 3 training pairs (1 held out): enough to exercise
    every command's files and conventions, not to register well."""
    from models.data import pair_index, roadscene_pairs
    from models.train import train_stage

    out = tmp_path_factory.mktemp("ckpt")
    all_pairs = roadscene_pairs(roadscene)
    train = roadscene_pairs(roadscene, "train")[:4]
    kwargs = dict(train_pairs=train[:3], val_pairs=train[3:], val_indices=pair_index(train[3:], all_pairs),
                  split_name="train", config=tiny_config, out_dir=out)
    path = None
    for stage in ("bus", "fusion", "registration"):
        path = train_stage(stage, init=path, **kwargs)
    return path
