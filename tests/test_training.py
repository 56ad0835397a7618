from __future__ import annotations

from pathlib import Path

import pytest
import torch

from busref.models.checkpoint import CheckpointError, load_checkpoint, load_model, save_checkpoint
from busref.models.config import ModelConfig, load_train_config
from busref.models.networks import BusReF
from busref.models.train import STEPS, freeze_for, load_finetune_source


def _fit(stage: str, tiny_config, size: tuple[int, int], steps: int = 25) -> tuple[float, float]:
    torch.manual_seed(0)
    model = BusReF(tiny_config.model)
    params = freeze_for(model, stage)
    step = STEPS[stage](model, tiny_config)
    g = torch.Generator().manual_seed(1)
    base = torch.nn.functional.interpolate(torch.rand(2, 1, size[0] // 8, size[1] // 8, generator=g), size=size,
                                           mode="bilinear", align_corners=False)
    vis, ir = base, (1 - base) * 0.8 + 0.1
    opt = torch.optim.Adam(params, lr=3e-3)
    reseed = getattr(step, "generator", None)  # registration draws misalignments: keep them fixed
    if reseed is not None:
        reseed.manual_seed(5)
    first = float(step(vis, ir)[0].detach())
    for _ in range(steps):
        if reseed is not None:
            reseed.manual_seed(5)
        loss, _ = step(vis, ir)
        opt.zero_grad()
        loss.backward()
        opt.step()
    if reseed is not None:
        reseed.manual_seed(5)
    return first, float(step(vis, ir)[0].detach())


@pytest.mark.parametrize("stage", ["bus", "fusion"])
def test_a_few_steps_lower_the_loss(stage, tiny_config):
    first, last = _fit(stage, tiny_config, (32, 32))
    assert last < first


def test_a_few_registration_steps_lower_the_loss(tiny_config):
    first, last = _fit("registration", tiny_config, (64, 80), steps=15)
    assert last < first


def test_freeze_leaves_only_the_stage_trainable(tiny_config):
    model = BusReF(tiny_config.model)
    freeze_for(model, "registration")
    assert not any(p.requires_grad for p in model.bus.parameters())
    assert not any(p.requires_grad for p in model.gaf.parameters())
    assert all(p.requires_grad for p in model.affine.parameters())


def test_checkpoint_carries_metadata_and_refuses_bad_files(tmp_path, tiny_config):
    model = BusReF(tiny_config.model)
    path = tmp_path / "c.pt"
    save_checkpoint(path, model=model, config=tiny_config, stage="fusion", step=3, split_name="train",
                    split_sha256="ab" * 32, metrics={"val": 1.0})
    payload = load_checkpoint(path)
    assert payload["stage"] == "fusion" and payload["split"]["sha256"] == "ab" * 32
    assert payload["config"] == tiny_config and payload["commit"]
    with pytest.raises(CheckpointError, match="a 'registration' one is needed"):
        load_model(path, expect_stage="registration")
    stale = torch.load(path, weights_only=True)
    stale["model"]["deformable.branches.0.weight"] = stale["model"].pop("deformable.coarse.sharpness")
    torch.save(stale, tmp_path / "stale.pt")
    with pytest.raises(CheckpointError, match=r"stale\.pt: weights do not match its config .*1 missing, e\.g\. "
                       r"\['deformable\.coarse\.sharpness'\]; 1 unexpected"):
        load_model(tmp_path / "stale.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=r"junk\.pt: not a readable checkpoint"):
        load_checkpoint(tmp_path / "junk.pt")
    torch.save({**stale, "extra": Path("objects are not weights")}, tmp_path / "code.pt")
    with pytest.raises(CheckpointError, match=r"code\.pt: not a readable checkpoint .*Weights only load failed"):
        load_checkpoint(tmp_path / "code.pt")  # weights_only: a pickled object is never constructed
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_checkpoint(tmp_path / "missing.pt")


def test_finetune_starts_a_redesigned_part_fresh_and_keeps_the_rest(tmp_path, tiny_config):
    """A fine-tune may change the config of a part its stage trains (that part starts fresh, the
    others keep the source's weights); never a frozen part's, and never when resuming."""
    from busref.models.config import BusConfig, DeformableConfig

    torch.manual_seed(0)
    source = BusReF(tiny_config.model)
    state, trained = source.state_dict(), tiny_config.model
    wider = trained.model_copy(update={"deformable": DeformableConfig(width=8)})
    torch.manual_seed(1)
    model = BusReF(wider)
    fresh = {k: v.clone() for k, v in model.deformable.state_dict().items()}
    load_finetune_source(model, state, trained, "registration", tmp_path / "src.pt", fresh_allowed=True)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items() if not k.startswith("deformable."))
    assert all(torch.equal(model.deformable.state_dict()[k], v) for k, v in fresh.items())
    with pytest.raises(ValueError, match=r"src\.pt: trained with model config"):
        load_finetune_source(BusReF(wider), state, trained, "fusion", tmp_path / "src.pt", fresh_allowed=True)
    with pytest.raises(ValueError, match=r"src\.pt: trained with model config"):
        load_finetune_source(BusReF(wider), state, trained, "registration", tmp_path / "src.pt", fresh_allowed=False)
    other_bus = trained.model_copy(update={"bus": BusConfig(width=4)})
    with pytest.raises(ValueError, match="trained with model config"):
        load_finetune_source(BusReF(other_bus), state, trained, "registration", tmp_path / "src.pt",
                             fresh_allowed=True)


@pytest.mark.slow
def test_three_stages_and_resume(trained_checkpoint, tiny_config, pair_data):
    from busref.models.data import roadscene_pairs
    from busref.models.train import train_stage

    payload = load_checkpoint(trained_checkpoint)
    assert payload["stage"] == "registration" and payload["step"] == 2
    assert "val_moderate_mncc" in payload["metrics"]
    more = tiny_config.model_copy(update={"registration": tiny_config.registration.model_copy(update={"steps": 3})})
    pairs = roadscene_pairs(pair_data, "train")[:4]
    out = train_stage("registration", train_pairs=pairs[:3], val_pairs=pairs[3:], val_indices=[3],
                      split_name="train", config=more, out_dir=trained_checkpoint.parent / "resumed",
                      resume=trained_checkpoint)
    assert load_checkpoint(out)["step"] == 3


@pytest.mark.slow
def test_init_takes_the_earlier_parts_at_another_registration_size(trained_checkpoint, tiny_config, pair_data):
    from busref.models.config import BusConfig
    from busref.models.data import roadscene_pairs
    from busref.models.train import train_stage

    pairs = roadscene_pairs(pair_data, "train")[:4]
    kwargs = dict(train_pairs=pairs[:3], val_pairs=pairs[3:], val_indices=[3], split_name="train",
                  out_dir=trained_checkpoint.parent / "reinit", init=trained_checkpoint)
    smaller = tiny_config.model_copy(update={
        "model": tiny_config.model.model_copy(update={"registration_size": (48, 64)}),
        "registration": tiny_config.registration.model_copy(update={"steps": 1, "crop": (48, 64)})})
    payload = load_checkpoint(train_stage("registration", config=smaller, **kwargs))
    assert payload["config"].model.registration_size == (48, 64)
    bus = {k: v for k, v in load_checkpoint(trained_checkpoint)["model"].items() if k.startswith("bus.")}
    assert all(torch.equal(payload["model"][k], v) for k, v in bus.items())
    wider = tiny_config.model_copy(update={"model": tiny_config.model.model_copy(update={"bus": BusConfig(width=16)})})
    with pytest.raises(ValueError, match="its bus config"):
        train_stage("registration", config=wider, **kwargs)


@pytest.mark.slow
def test_finetune_starts_from_every_weight_and_refuses_an_earlier_stage(trained_checkpoint, tiny_config, pair_data):
    from busref.models.data import roadscene_pairs
    from busref.models.train import train_stage

    pairs = roadscene_pairs(pair_data, "train")[:4]
    kwargs = dict(train_pairs=pairs[:3], val_pairs=pairs[3:], val_indices=[3], split_name="train",
                  out_dir=trained_checkpoint.parent / "finetuned")
    # A vanishing learning rate: the fine-tuned GAF must still be the source's, not a fresh one.
    still = tiny_config.model_copy(update={"fusion": tiny_config.fusion.model_copy(update={"steps": 1, "lr": 1e-12})})
    source = load_checkpoint(trained_checkpoint)["model"]
    tuned = load_checkpoint(train_stage("fusion", config=still, finetune=trained_checkpoint, **kwargs))
    assert tuned["stage"] == "registration" and tuned["step"] == 1  # still holds trained registration nets
    assert all(torch.allclose(tuned["model"][k], v, atol=1e-6) for k, v in source.items())
    with pytest.raises(ValueError, match="'bus' checkpoint, it has no trained 'fusion' weights"):
        train_stage("fusion", config=still, finetune=trained_checkpoint.parent / "bus.pt", **kwargs)
    with pytest.raises(ValueError, match="at most one of"):
        train_stage("fusion", config=still, finetune=trained_checkpoint, init=trained_checkpoint, **kwargs)


@pytest.mark.parametrize("path", sorted((Path(__file__).parents[1] / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_training_config_validates_and_trains_the_shipped_architecture(path):
    # --finetune and --resume refuse a model config that differs from the checkpoint's, so a recipe
    # whose architecture drifted from weights/busref.pt would otherwise fail only when someone runs it.
    # The shipped weights are the default ModelConfig (tests/test_shipped_weights.py checks that),
    # so each config is compared with it instead of loading the checkpoint once per file.
    assert load_train_config(path).model == ModelConfig()


def test_a_bad_training_config_names_the_file_and_the_field(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("registration: {steps: 10, batch: 4}\n")
    with pytest.raises(ValueError, match=r"bad\.yaml: invalid training config(.|\n)*registration\.batch"):
        load_train_config(path)
    path.write_text("registration: [unclosed\n")
    with pytest.raises(ValueError, match=r"bad\.yaml: cannot read training config"):
        load_train_config(path)
