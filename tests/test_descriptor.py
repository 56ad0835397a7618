"""The refinement's learned cross-modal descriptor (models/descriptor.py): the window softmax, the
training loop, its file and metadata, and its use in refine_grid."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
import torch
from test_refinement import FAST, H, W, _epe, _texture

from busref.models.checkpoint import CheckpointError
from busref.models.config import DescriptorConfig, LucasKanadeConfig
from busref.models.data import LoadedPair
from busref.models.descriptor import (
    FORMAT,
    iterations_loss,
    load_descriptor,
    save_descriptor,
    train_descriptor,
    window_log_likelihood,
)
from busref.models.geometry import identity_grid, pixel_to_normalised
from busref.models.networks.matcher import CrossModalDescriptor
from busref.models.refinement import RefinementConfig, refine_grid

TINY = DescriptorConfig(channels=4, dims=4, crop=32, batch=4, radius=3, learning_rate=1e-2, steps=300)


def _pairs(n: int = 2) -> list[LoadedPair]:
    """Aligned synthetic pairs whose 'IR' is the inverted visible image (contrast differs, structure agrees)."""
    rng = np.random.default_rng(0)
    pairs = []
    for k in range(n):
        vis = cv2.GaussianBlur(rng.random((48, 56)).astype(np.float32), (0, 0), 1.5)
        vis = (vis - vis.min()) / (vis.max() - vis.min())
        pairs.append(LoadedPair(name=f"p{k}", vis=vis, ir=(1 - vis).astype(np.float32)))
    return pairs


def test_the_window_softmax_peaks_at_the_offset_that_matches():
    vis = torch.nn.functional.normalize(torch.randn(1, 4, 20, 24), dim=1)
    logp = window_log_likelihood(vis, vis, radius=3, temperature=0.1)
    assert logp.shape == (1, 49, 20, 24)
    assert torch.allclose(logp.exp().sum(1), torch.ones(1, 20, 24), atol=1e-5)
    assert bool((logp.argmax(1) == 24).all()), "identical descriptors must match at offset (0, 0)"
    # IR content two pixels to the right: visible pixel p matches IR pixel p + (2, 0).
    shifted = torch.roll(vis, shifts=2, dims=-1)
    best = window_log_likelihood(vis, shifted, 3, 0.1).argmax(1)[0, :, 5:-5]
    assert bool((best == 3 * 7 + 3 + 2).all())


@pytest.mark.slow
def test_training_learns_and_the_file_carries_its_metadata(tmp_path):
    out = train_descriptor(_pairs(), tmp_path / "d.pt", config=TINY, split_name="train", split_sha256="abc")
    model, meta = load_descriptor(out)
    assert meta["format"] == FORMAT and meta["step"] == 300 and meta["split"] == {"name": "train", "sha256": "abc"}
    assert DescriptorConfig.model_validate(meta["config"]) == TINY and "torch" in meta["versions"]
    # Against the uniform guess (cross-entropy log 49 with a normalised soft label) it has learned.
    assert meta["metrics"]["loss"] < math.log(49) - 0.2, meta["metrics"]
    assert not model.training
    image = torch.rand(1, 1, 40, 40)
    out_vis = model.vis(image)
    assert out_vis.shape == (1, 4, 40, 40)
    assert torch.allclose(out_vis.norm(dim=1), torch.ones(1, 40, 40), atol=1e-4)


def test_pairs_that_cannot_be_cropped_are_named(tmp_path):
    small = LoadedPair(name="tiny_one", vis=np.zeros((32, 40), np.float32), ir=np.zeros((32, 40), np.float32))
    with pytest.raises(ValueError, match="not larger than the 32-pixel crop: tiny_one"):
        train_descriptor([small], tmp_path / "d.pt", config=TINY)
    uneven = LoadedPair(name="odd_one", vis=np.zeros((48, 56), np.float32), ir=np.zeros((24, 28), np.float32))
    with pytest.raises(ValueError, match="these differ: odd_one"):
        train_descriptor([uneven], tmp_path / "d.pt", config=TINY)
    # With a training size the pairs are checked as given, then resized: a mismatch is still named,
    # and a size below the crop is refused as the pair it makes.
    with pytest.raises(ValueError, match="these differ: odd_one"):
        train_descriptor([uneven], tmp_path / "d.pt", config=TINY.model_copy(update={"size": (40, 48)}))
    with pytest.raises(ValueError, match="not larger than the 32-pixel crop: p0"):
        train_descriptor(_pairs(1), tmp_path / "d.pt", config=TINY.model_copy(update={"size": (24, 40)}))


def test_a_training_size_and_the_towers_started_from_are_recorded_in_the_file(tmp_path):
    config = TINY.model_copy(update={"size": (40, 48), "steps": 2})
    first = train_descriptor(_pairs(), tmp_path / "d.pt", config=config)
    _, meta = load_descriptor(first)
    assert DescriptorConfig.model_validate(meta["config"]).size == (40, 48) and "finetune" not in meta
    _, meta = load_descriptor(train_descriptor(_pairs(), tmp_path / "e.pt", config=TINY.model_copy(update={"steps": 1}),
                                               finetune=first))
    assert meta["finetune"]["file"] == "d.pt" and meta["finetune"]["step"] == 2
    with pytest.raises(ValueError, match=r"d\.pt: towers of 4 channels and 4 dims, not the 8 and 4 asked for"):
        train_descriptor(_pairs(), tmp_path / "f.pt", config=TINY.model_copy(update={"channels": 8}), finetune=first)


def test_flat_crops_train_without_nan(tmp_path):
    flat = LoadedPair(name="flat", vis=np.full((48, 56), 0.5, np.float32), ir=np.full((48, 56), 0.2, np.float32))
    model, meta = load_descriptor(train_descriptor([flat], tmp_path / "d.pt",
                                                   config=TINY.model_copy(update={"steps": 5})))
    assert np.isfinite(meta["metrics"]["loss"])
    assert all(torch.isfinite(p).all() for p in model.parameters())


#: A stage whose learned-descriptor iterations fit TINY's crops (the shipped one runs at half size).
STAGE = LucasKanadeConfig(descriptor_iterations=4, descriptor_factor=1, descriptor_pool=2, window=2.0)
ITERATING = TINY.model_copy(update={"objective": "iterations", "start_error": 3.0, "crop": 40, "steps": 2,
                                    "max_rotation": 5.0, "max_log_scale": 0.05})


def test_training_on_the_iterations_lowers_their_error():
    torch.manual_seed(0)
    model = _shared_towers()
    vis = torch.nn.functional.avg_pool2d(torch.rand(4, 1, 44, 44), 5, stride=1)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    measured = []
    for _ in range(15):  # the same batch and starts each time: what it measures must fall
        loss, start, last = iterations_loss(model, STAGE, vis, 1 - vis, torch.Generator().manual_seed(1))
        measured.append((start, last))
        optimiser.zero_grad()
        loss.backward()
        assert all(p.grad is not None for p in (*model.vis.parameters(), *model.ir.parameters()))
        optimiser.step()
    start = measured[0][0]
    assert 0 < start < ITERATING.start_error * 1.5 and all(s == start for s, _ in measured)
    assert measured[-1][1] < measured[0][1], measured


def test_the_iterations_objective_needs_matching_towers_and_a_stage(tmp_path):
    with pytest.raises(ValueError, match=r"--finetune.*--stage-of"):
        train_descriptor(_pairs(), tmp_path / "d.pt", config=ITERATING, stage=STAGE)
    first = train_descriptor(_pairs(), tmp_path / "d.pt", config=TINY.model_copy(update={"steps": 1}))
    with pytest.raises(ValueError, match="--stage-of"):
        train_descriptor(_pairs(), tmp_path / "e.pt", config=ITERATING, finetune=first,
                         stage=STAGE.model_copy(update={"descriptor_iterations": 0}))
    _, meta = load_descriptor(train_descriptor(_pairs(), tmp_path / "e.pt", config=ITERATING, finetune=first,
                                               stage=STAGE))
    assert meta["stage"]["descriptor_iterations"] == 4 and meta["stage"]["descriptor_factor"] == 1
    assert set(meta["metrics"]) == {"start_error", "last_error", "minutes"} and meta["metrics"]["start_error"] > 0
    assert DescriptorConfig.model_validate(meta["config"]).objective == "iterations"
    with pytest.raises(ValueError, match="unrolled 5: the stage runs only 4"):
        train_descriptor(_pairs(), tmp_path / "f.pt", config=ITERATING.model_copy(update={"unrolled": 5}),
                         finetune=first, stage=STAGE)


def test_bad_descriptor_files_are_refused_with_their_name(tmp_path):
    with pytest.raises(CheckpointError, match=r"nope.pt: no such descriptor file"):
        load_descriptor(tmp_path / "nope.pt")
    (tmp_path / "junk.pt").write_bytes(b"not torch")
    with pytest.raises(CheckpointError, match=r"junk.pt: not a readable descriptor file"):
        load_descriptor(tmp_path / "junk.pt")
    torch.save({"format": "busref.checkpoint/1"}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match=r"other.pt: format 'busref.checkpoint/1'"):
        load_descriptor(tmp_path / "other.pt")
    save_descriptor(tmp_path / "d.pt", CrossModalDescriptor(TINY), step=0, split_name="x", split_sha256="",
                    metrics={})
    payload = torch.load(tmp_path / "d.pt", weights_only=True)
    payload["config"]["dims"] = 6
    torch.save(payload, tmp_path / "edited.pt")
    with pytest.raises(CheckpointError, match=r"edited.pt: weights do not match the descriptor config"):
        load_descriptor(tmp_path / "edited.pt")


def _shared_towers() -> CrossModalDescriptor:
    """A descriptor whose two towers are one function, so the same image content matches exactly."""
    torch.manual_seed(0)
    model = CrossModalDescriptor(TINY)
    model.ir.load_state_dict(model.vis.state_dict())
    return model.eval()


def test_refine_grid_uses_the_descriptor_at_full_size_only():
    shift = (2.5, -1.5)
    reference, moving = _texture(), _texture(shift)
    start = pixel_to_normalised(identity_grid(H, W), H, W)
    config = FAST.model_copy(update={"mind_weight": 0.0, "descriptor_weight": 5.0})
    plain = refine_grid(reference, moving, start, config)
    learned = refine_grid(reference, moving, start, config, _shared_towers())
    assert float((learned - plain).abs().max()) > 1e-3
    assert _epe(start, shift) > 2.5 and _epe(learned, shift) < 1.0, _epe(learned, shift)
    # Weight 0, or no full-size scale and no iterations on the descriptor (which run at full size):
    # the same computation as without a descriptor.
    for update in ({"descriptor_weight": 0.0}, {"scales": (2,), "iterations": (40,), "descriptor_iterations": 0}):
        changed = config.model_copy(update=update)
        assert torch.equal(refine_grid(reference, moving, start, changed, _shared_towers()),
                           refine_grid(reference, moving, start, changed))


def test_the_refinement_config_refuses_a_negative_descriptor_weight():
    with pytest.raises(ValueError, match="descriptor_weight"):
        RefinementConfig(descriptor_weight=-1)


def test_unrolled_runs_the_first_iterations_of_a_longer_stage():
    towers = _shared_towers().state_dict()
    vis = torch.nn.functional.avg_pool2d(torch.rand(2, 1, 44, 44), 5, stride=1)

    def loss(config: DescriptorConfig, stage: LucasKanadeConfig) -> tuple[torch.Tensor, float, float]:
        model = CrossModalDescriptor(config)
        model.load_state_dict(towers)
        return iterations_loss(model.eval(), stage, vis, 1 - vis, torch.Generator().manual_seed(3))

    short = loss(ITERATING, STAGE.model_copy(update={"descriptor_iterations": 2}))
    unrolled = loss(ITERATING.model_copy(update={"unrolled": 2}), STAGE)
    full = loss(ITERATING, STAGE)
    assert unrolled[0].item() == pytest.approx(short[0].item()) and unrolled[2] == pytest.approx(short[2])
    assert full[0].item() != pytest.approx(unrolled[0].item())
