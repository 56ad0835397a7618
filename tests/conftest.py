"""Shared fixtures: synthetic aligned pairs in the RoadScene layout, a checkpoint briefly trained
on them, and the real RoadScene folder for the tests that measure the shipped weights (skipped
when it is absent)."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

ROADSCENE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "roadscene"
#: Synthetic pair folder: names per split, and an (H, W) that is no multiple of 8, like RoadScene's.
SYNTHETIC_SPLIT = {"train": [f"pair_{i:02d}" for i in range(6)], "test": [f"pair_{i:02d}" for i in range(6, 10)]}
SYNTHETIC_HW = (110, 150)


@pytest.fixture(scope="session")
def roadscene() -> Path:
    if not (ROADSCENE / "split.json").is_file():
        pytest.skip(f"RoadScene data not found at {ROADSCENE}")
    return ROADSCENE


def synthetic_pair(rng: np.random.Generator, hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """An aligned (visible BGR uint8, IR gray uint8) pair of one random scene of smooth shapes.

    The visible image has the scene's reflectance plus fine texture; the IR is the same layout with
    its intensities remapped (inverted, non-linearly) and warm shapes of their own brightness, so
    the two share edges but not intensities, as real cross-modal pairs do.
    """
    h, w = hw
    background = cv2.resize(rng.random((h // 16 + 2, w // 16 + 2)), (w, h), interpolation=cv2.INTER_CUBIC)
    shapes, heat = np.zeros((h, w)), np.zeros((h, w))
    for _ in range(7):
        centre = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        axes = (int(rng.integers(6, w // 4)), int(rng.integers(6, h // 4)))
        angle = float(rng.uniform(0, 180))
        cv2.ellipse(shapes, centre, axes, angle, 0, 360, float(rng.uniform(-0.4, 0.4)), -1)
        cv2.ellipse(heat, centre, axes, angle, 0, 360, float(rng.uniform(0.0, 1.0)), -1)
    luminance = np.clip(0.3 + 0.4 * background + shapes + rng.normal(0.0, 0.03, (h, w)), 0.0, 1.0)
    vis = np.stack([0.9 * luminance, luminance, np.clip(1.1 * luminance, 0, 1)], axis=-1)
    ir = cv2.GaussianBlur(0.5 * heat + 0.5 * (1.0 - luminance) ** 2, (0, 0), 1.0)
    return (vis * 255).astype(np.uint8), (np.clip(ir, 0.0, 1.0) * 255).astype(np.uint8)


def write_synthetic_pairs(root: Path, split: dict[str, list[str]] = SYNTHETIC_SPLIT,
                          hw: tuple[int, int] = SYNTHETIC_HW, seed: int = 0) -> Path:
    """A pair folder in the RoadScene layout (cropinfrared/, crop_LR_visible/, split.json)."""
    from busref.models.data import ROADSCENE_IR, ROADSCENE_VIS

    rng = np.random.default_rng(seed)
    (root / ROADSCENE_IR).mkdir(parents=True)
    (root / ROADSCENE_VIS).mkdir()
    for name in sorted(n for names in split.values() for n in names):
        vis, ir = synthetic_pair(rng, hw)
        cv2.imwrite(str(root / ROADSCENE_VIS / f"{name}.jpg"), vis, [cv2.IMWRITE_JPEG_QUALITY, 95])
        cv2.imwrite(str(root / ROADSCENE_IR / f"{name}.jpg"), ir, [cv2.IMWRITE_JPEG_QUALITY, 95])
    (root / "split.json").write_text(json.dumps(split, indent=1))
    return root


@pytest.fixture(scope="session")
def pair_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Ten synthetic aligned pairs in the RoadScene layout (6 train, 4 test)."""
    return write_synthetic_pairs(tmp_path_factory.mktemp("pairs"))


@pytest.fixture(scope="session")
def tiny_config():
    from busref.models.config import BusConfig, ModelConfig, StageConfig, TrainConfig

    stage = StageConfig(steps=2, batch_size=2, crop=(32, 32), validate_every=2, checkpoint_every=2)
    return TrainConfig(model=ModelConfig(bus=BusConfig(width=8), registration_size=(64, 80)),
                       bus=stage, fusion=stage, registration=stage.model_copy(update={"crop": (64, 80)}))


@pytest.fixture(scope="session")
def trained_checkpoint(tmp_path_factory, pair_data: Path, tiny_config) -> Path:
    """All three stages, two steps each, on 3 synthetic training pairs (1 held out): enough to
    exercise every command's files and conventions, not to register well."""
    from busref.models.data import pair_index, roadscene_pairs
    from busref.models.train import train_stage

    out = tmp_path_factory.mktemp("ckpt")
    all_pairs = roadscene_pairs(pair_data)
    train = roadscene_pairs(pair_data, "train")[:4]
    kwargs = dict(train_pairs=train[:3], val_pairs=train[3:], val_indices=pair_index(train[3:], all_pairs),
                  split_name="train", config=tiny_config, out_dir=out)
    path = None
    for stage in ("bus", "fusion", "registration"):
        path = train_stage(stage, init=path, **kwargs)
    return path
