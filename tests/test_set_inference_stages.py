"""scripts/set_inference_stages.py on the tiny trained checkpoint: the stages it sets, the sizes
that go with them, the weights it keeps and the combinations it refuses."""

from __future__ import annotations

import importlib.util
import logging
import sys
from pathlib import Path

import torch

from busref.conventions import file_sha256
from busref.models.checkpoint import load_checkpoint
from busref.models.config import (
    LK_BLURRED_MARGIN,
    LK_BLURRED_PREFIX_2X,
    LK_BLURRED_SELECT_AFTER,
    LK_MIND_DIAGONAL,
    LK_MIND_RADIUS,
    LK_MIND_RADIUS_FINE,
    LK_SCHEDULE,
    LK_SCHEDULE_FINE,
    LK_SELECT_AFTER,
    LK_TRACK_2X,
    LK_TRACK_FINE,
    LK_WINDOW,
)

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "set_inference_stages.py"
_spec = importlib.util.spec_from_file_location("set_inference_stages", SCRIPT)
stages = sys.modules["set_inference_stages"] = importlib.util.module_from_spec(_spec)  # a script, not a package
_spec.loader.exec_module(stages)


def test_fine_doubles_the_registration_size_around_the_same_nets_and_standard_undoes_it(
        trained_checkpoint: Path, tmp_path: Path) -> None:
    source = load_checkpoint(trained_checkpoint)
    nets_size = source["config"].model.registration_size
    fine, standard = tmp_path / "fine.pt", tmp_path / "standard.pt"
    assert stages.main(["--checkpoint", str(trained_checkpoint), "--lucas-kanade", "fine", "--both-starts", "on",
                        "--keypoint-start", "on", "--track", "fine", "--out", str(fine)]) == 0
    payload = load_checkpoint(fine)
    model = payload["config"].model
    assert model.net_pool == 2 and model.registration_size == tuple(2 * s for s in nets_size)
    assert model.lucas_kanade.schedule == LK_SCHEDULE_FINE and model.lucas_kanade.pool == 8
    assert model.lucas_kanade.window == LK_WINDOW
    assert (model.lucas_kanade.mind_radius, model.lucas_kanade.mind_diagonal) == (LK_MIND_RADIUS_FINE, LK_MIND_DIAGONAL)
    assert model.lucas_kanade.both_starts and model.lucas_kanade.select_after == 32 and model.keypoint_start
    assert model.lucas_kanade.track_schedule == LK_TRACK_FINE
    assert all(torch.equal(v, source["model"][k]) for k, v in payload["model"].items())
    assert payload["derived_from"] == {"sha256": file_sha256(trained_checkpoint),
                                       "change": "lucas_kanade fine, both_starts on, keypoint_start on, track fine"}

    assert stages.main(["--checkpoint", str(fine), "--lucas-kanade", "standard", "--out", str(standard)]) == 0
    back = load_checkpoint(standard)
    model = back["config"].model
    assert model.net_pool == 1 and model.registration_size == nets_size
    assert model.lucas_kanade.schedule == LK_SCHEDULE and model.lucas_kanade.pool == 4
    assert model.lucas_kanade.window == LK_WINDOW
    assert (model.lucas_kanade.mind_radius, model.lucas_kanade.mind_diagonal) == (LK_MIND_RADIUS, LK_MIND_DIAGONAL)
    assert model.lucas_kanade.select_after == LK_SELECT_AFTER and model.keypoint_start
    assert back["derived_from"]["source_derived_from"] == payload["derived_from"]

    one_start = tmp_path / "one_start.pt"
    assert stages.main(["--checkpoint", str(fine), "--lucas-kanade", "standard", "--both-starts", "off",
                        "--out", str(one_start)]) == 0
    stage = load_checkpoint(one_start)["config"].model.lucas_kanade
    assert stage.schedule == LK_SCHEDULE and not stage.both_starts and stage.select_after is None

    reference = tmp_path / "reference.pt"
    assert stages.main(["--checkpoint", str(one_start), "--track-linearisation", "reference", "--out",
                        str(reference)]) == 0
    stage = load_checkpoint(reference)["config"].model.lucas_kanade
    assert stage.track_linearisation == "reference" and stage.track_schedule == LK_TRACK_FINE
    assert stage.schedule == LK_SCHEDULE and not stage.both_starts  # the rest as it was

    no_track = tmp_path / "no_track.pt"
    assert stages.main(["--checkpoint", str(one_start), "--track", "off", "--out", str(no_track)]) == 0
    assert load_checkpoint(no_track)["config"].model.lucas_kanade.track_schedule == ()

    off = tmp_path / "off.pt"
    assert stages.main(["--checkpoint", str(fine), "--lucas-kanade", "off", "--both-starts", "off",
                        "--out", str(off)]) == 0
    stage = load_checkpoint(off)["config"].model.lucas_kanade
    assert stage.schedule == () and (stage.mind_radius, stage.mind_diagonal) == (2, 0)


def test_standard_2x_runs_the_standard_iterations_at_the_nets_size_of_a_doubled_registration_size(
        trained_checkpoint: Path, tmp_path: Path) -> None:
    nets_size = load_checkpoint(trained_checkpoint)["config"].model.registration_size
    out = tmp_path / "2x.pt"
    assert stages.main(["--checkpoint", str(trained_checkpoint), "--lucas-kanade", "standard-2x", "--both-starts",
                        "on", "--track", "standard-2x", "--out", str(out)]) == 0
    model = load_checkpoint(out)["config"].model
    stage = model.lucas_kanade
    assert model.net_pool == 2 and model.registration_size == tuple(2 * s for s in nets_size)
    assert [f for f, _ in stage.schedule] == [2 * f for f, _ in LK_SCHEDULE]
    assert [s for _, s in stage.schedule] == [s for _, s in LK_SCHEDULE]
    assert stage.pool == 8 and stage.select_after == LK_SELECT_AFTER and stage.select_factor == 2
    assert stage.descriptor_factor == 2
    assert stage.track_schedule == LK_TRACK_2X
    assert stage.blurred_prefix == ()


def test_the_blurred_variant_is_switched_on_and_off_and_a_preset_leaves_it_out(
        trained_checkpoint: Path, tmp_path: Path) -> None:
    base = tmp_path / "2x.pt"
    assert stages.main(["--checkpoint", str(trained_checkpoint), "--lucas-kanade", "standard-2x", "--both-starts",
                        "on", "--out", str(base)]) == 0
    on = tmp_path / "on.pt"
    assert stages.main(["--checkpoint", str(base), "--blurred-variant", "on", "--out", str(on)]) == 0
    payload = load_checkpoint(on)
    stage = payload["config"].model.lucas_kanade
    assert stage.blurred_prefix == LK_BLURRED_PREFIX_2X and stage.blurred_margin == LK_BLURRED_MARGIN
    assert stage.blurred_select_after == LK_BLURRED_SELECT_AFTER
    assert stage.schedule == load_checkpoint(base)["config"].model.lucas_kanade.schedule  # nothing else moves
    assert payload["derived_from"]["change"] == "blurred_variant on"
    for argv in (["--blurred-variant", "off"], ["--lucas-kanade", "standard-2x"]):
        out = tmp_path / "out.pt"
        assert stages.main(["--checkpoint", str(on), *argv, "--out", str(out)]) == 0
        stage = load_checkpoint(out)["config"].model.lucas_kanade
        assert (stage.blurred_prefix, stage.blurred_select_after) == ((), None), argv


def test_the_blurred_variant_without_a_stage_long_enough_is_refused(trained_checkpoint: Path, tmp_path: Path,
                                                                    caplog) -> None:
    out = tmp_path / "out.pt"
    assert stages.main(["--checkpoint", str(trained_checkpoint), "--lucas-kanade", "off", "--blurred-variant", "on",
                        "--out", str(out)]) == 2
    assert not out.exists() and "do not fit together" in caplog.text


def test_fine_without_both_starts_is_refused_and_nothing_written(trained_checkpoint: Path, tmp_path: Path,
                                                                 caplog) -> None:
    out = tmp_path / "fine.pt"
    with caplog.at_level(logging.ERROR):
        assert stages.main(["--checkpoint", str(trained_checkpoint), "--lucas-kanade", "fine", "--both-starts",
                            "off", "--out", str(out)]) == 2
    assert "do not fit together" in caplog.text and "select_after 32 needs both_starts" in caplog.text
    assert not out.exists()


def test_descriptor_iterations_copy_the_towers_and_zero_takes_them_out(trained_checkpoint: Path, tmp_path: Path
                                                                      ) -> None:
    from busref.models.checkpoint import load_model
    from busref.models.config import DescriptorConfig
    from busref.models.descriptor import save_descriptor
    from busref.models.networks.matcher import CrossModalDescriptor

    towers = CrossModalDescriptor(DescriptorConfig(channels=4, dims=4))
    descriptor = tmp_path / "descriptor.pt"
    save_descriptor(descriptor, towers, step=1, split_name="train", split_sha256="", metrics={})
    learned, back = tmp_path / "learned.pt", tmp_path / "back.pt"
    assert stages.main(["--checkpoint", str(trained_checkpoint), "--lucas-kanade", "standard", "--descriptor",
                        str(descriptor), "--descriptor-iterations", "2", "--descriptor-track-iterations", "1",
                        "--out", str(learned)]) == 0
    model, _ = load_model(learned)  # refuses weights that do not fit the config
    stage = model.lucas_kanade.config
    assert (stage.descriptor_iterations, stage.descriptor_track_iterations) == (2, 1)
    assert stage.descriptor.channels == 4
    assert all(torch.equal(v, model.lucas_kanade.matcher.state_dict()[k]) for k, v in towers.state_dict().items())
    source = load_checkpoint(trained_checkpoint)["model"]
    assert all(torch.equal(v, source[k]) for k, v in load_checkpoint(learned)["model"].items()
               if not k.startswith(stages.MATCHER))

    # Another change keeps the towers (a detail floor too, recorded); zero iterations take them out.
    again, floored = tmp_path / "again.pt", tmp_path / "floored.pt"
    assert stages.main(["--checkpoint", str(learned), "--track", "off", "--out", str(again)]) == 0
    assert load_model(again)[0].lucas_kanade.matcher is not None
    assert stages.main(["--checkpoint", str(learned), "--descriptor-min-detail", "0.1", "--out", str(floored)]) == 0
    model, _ = load_model(floored)
    assert model.lucas_kanade.matcher is not None and model.lucas_kanade.config.descriptor_min_detail == 0.1
    assert model.lucas_kanade.config.descriptor_iterations == 2
    assert stages.main(["--checkpoint", str(learned), "--descriptor-iterations", "0", "--descriptor-track-iterations",
                        "0", "--out", str(back)]) == 0
    model, _ = load_model(back)
    assert model.lucas_kanade.matcher is None
    assert not any(k.startswith(stages.MATCHER) for k in load_checkpoint(back)["model"])
    assert model.lucas_kanade.config.descriptor == DescriptorConfig(), "no towers, no towers' config"


def test_descriptor_iterations_without_towers_are_refused_and_nothing_written(
        trained_checkpoint: Path, tmp_path: Path, caplog) -> None:
    out = tmp_path / "learned.pt"
    with caplog.at_level(logging.ERROR):
        assert stages.main(["--checkpoint", str(trained_checkpoint), "--descriptor-iterations", "4",
                            "--out", str(out)]) == 2
    assert "need towers: give --descriptor FILE" in caplog.text
    assert not out.exists()


def test_the_nets_ir_tone_target_is_set_recorded_and_put_off_with_every_weight_kept(
        trained_checkpoint: Path, tmp_path: Path) -> None:
    toned, off = tmp_path / "toned.pt", tmp_path / "off.pt"
    assert stages.main(["--checkpoint", str(trained_checkpoint), "--net-ir-tone-mean", "0.6", "--out", str(toned)]) == 0
    payload = load_checkpoint(toned)
    assert payload["config"].model.net_ir_tone_mean == 0.6
    assert payload["derived_from"]["change"] == "net_ir_tone_mean 0.6"
    source = load_checkpoint(trained_checkpoint)["model"]
    assert payload["model"].keys() == source.keys()
    assert all(torch.equal(v, source[k]) for k, v in payload["model"].items())
    assert stages.main(["--checkpoint", str(toned), "--net-ir-tone-mean", "0", "--out", str(off)]) == 0
    assert load_checkpoint(off)["config"].model.net_ir_tone_mean is None


def test_a_tone_target_outside_0_1_is_refused_naming_the_field(trained_checkpoint: Path, tmp_path: Path,
                                                                caplog) -> None:
    out = tmp_path / "toned.pt"
    with caplog.at_level(logging.ERROR):
        assert stages.main(["--checkpoint", str(trained_checkpoint), "--net-ir-tone-mean", "1.5",
                            "--out", str(out)]) == 2
    assert "net_ir_tone_mean" in caplog.text and not out.exists()
