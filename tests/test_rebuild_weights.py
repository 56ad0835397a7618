"""scripts/rebuild_weights.py: the shipped recipe is complete and valid, a small recipe really
trains (two stages in subprocesses) and resumes, and bad recipes fail naming the step or field."""

from __future__ import annotations

import importlib.util
import json
import logging
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "rebuild_weights.py"
_spec = importlib.util.spec_from_file_location("rebuild_weights", SCRIPT)
rebuild = sys.modules["rebuild_weights"] = importlib.util.module_from_spec(_spec)  # a script, not a package
_spec.loader.exec_module(rebuild)


def _fake_data(tmp_path: Path) -> dict[str, str]:
    folders = {name: tmp_path / name for name in ("roadscene", "nirscene")}
    for folder in folders.values():
        folder.mkdir()
    return {name: str(folder) for name, folder in folders.items()}


def test_shipped_recipe_renders_every_step(tmp_path: Path) -> None:
    recipe = rebuild.load_recipe(rebuild.DEFAULT_RECIPE)
    steps = rebuild.plan(recipe, tmp_path / "out", _fake_data(tmp_path))
    names = [step.name for step, *_ in steps]
    assert names[0] == "bus" and names[-1] == "nir_export"
    made = {str(output) for _, _, output, _ in steps}
    # What the recipe makes is the shipped weights folder, file for file.
    weights = tmp_path / "out" / "weights"
    for file in ("busref.pt", "register.onnx", "nir/busref.pt", "nir/register.onnx"):
        assert str(weights / file) in made
    for step, argv, _, config in steps:
        for arg in argv:
            assert "{" not in arg, (step.name, arg)
            if arg.startswith(("configs/", "scripts/")):
                assert (ROOT / arg).is_file(), (step.name, arg)
                if arg.startswith("configs/"):
                    from busref.models.config import DescriptorConfig, load_train_config, load_yaml_model

                    if arg.startswith("configs/descriptor/"):  # a descriptor stage's config
                        load_yaml_model(ROOT / arg, DescriptorConfig, "descriptor config")
                    else:
                        load_train_config(ROOT / arg)
        # Every training step is capped, so the recipe's wall time is bounded by its caps.
        if argv[2:4] == ["busref", "train"]:
            assert "--max-minutes" in argv, step.name
        if config is not None:
            assert step.config is not None and str(tmp_path / "out" / "configs" / f"{step.name}.yaml") in argv


def test_dry_run_prints_the_commands(tmp_path: Path, capsys) -> None:
    data = _fake_data(tmp_path)
    assert rebuild.main(["--out", str(tmp_path / "out"), "--dry-run",
                         *[f"--data={k}={v}" for k, v in data.items()]]) == 0
    printed = capsys.readouterr().out
    assert printed.count("\n# ") + printed.startswith("# ") == len(rebuild.load_recipe(rebuild.DEFAULT_RECIPE).steps)
    assert not (tmp_path / "out").exists()  # a dry run writes nothing


def _tiny_recipe(tmp_path: Path, pair_data: Path, tiny_config) -> Path:
    base = tmp_path / "tiny.yaml"
    base.write_text(yaml.safe_dump(json.loads(tiny_config.model_dump_json())))
    common = ["--data", "{pairs}", "--val-pairs", "1", "--device", "cpu"]
    recipe = {
        "description": "two tiny stages",
        "data": {"pairs": str(pair_data)},
        "steps": [
            {"name": "bus", "config": {"base": str(base), "update": {"seed": 3}},
             "run": ["busref", "train", "bus", *common, "--config", "{config}", "--out", "{out}/bus",
                     "--max-minutes", "1"],
             "output": "{out}/bus/bus.pt"},
            {"name": "gaf", "run": ["busref", "train", "fusion", *common, "--config", str(base),
                                    "--init", "{out}/bus/bus.pt", "--out", "{out}/gaf", "--max-minutes", "1"],
             "output": "{out}/gaf/fusion.pt"},
        ],
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


@pytest.mark.slow
def test_tiny_recipe_trains_then_resumes(tmp_path: Path, pair_data: Path, tiny_config, caplog) -> None:
    recipe = _tiny_recipe(tmp_path, pair_data, tiny_config)
    out = tmp_path / "run"
    assert rebuild.run_recipe(recipe, out, {}) == 0
    state = json.loads((out / "rebuild.json").read_text())
    assert list(state["steps"]) == ["bus", "gaf"]
    assert all(entry["seconds"] > 0 for entry in state["steps"].values())
    assert yaml.safe_load((out / "configs" / "bus.yaml").read_text())["seed"] == 3  # the update was applied
    from busref.models.checkpoint import load_checkpoint

    assert load_checkpoint(out / "gaf" / "fusion.pt")["stage"] == "fusion"
    stamp = (out / "gaf" / "fusion.pt").stat().st_mtime_ns
    caplog.set_level(logging.INFO, logger="rebuild_weights")
    assert rebuild.run_recipe(recipe, out, {}) == 0  # resumed: both steps done, nothing retrained
    assert (out / "gaf" / "fusion.pt").stat().st_mtime_ns == stamp
    assert sum("skipped" in record.message for record in caplog.records) == 2
    # Resuming under a changed recipe is refused: the record would no longer describe the files.
    recipe.write_text(recipe.read_text().replace("two tiny stages", "changed"))
    with pytest.raises(rebuild.RecipeError, match="another recipe"):
        rebuild.run_recipe(recipe, out, {})


@pytest.mark.slow
def test_failing_step_names_itself_and_its_log(tmp_path: Path, pair_data: Path, caplog) -> None:
    recipe = {"description": "fails", "data": {"pairs": str(pair_data)},
              "steps": [{"name": "bus", "run": ["busref", "train", "bus", "--data", "{pairs}", "--val-pairs", "99",
                                                "--out", "{out}/bus"], "output": "{out}/bus/bus.pt"}]}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    caplog.set_level(logging.ERROR, logger="rebuild_weights")
    assert rebuild.run_recipe(path, tmp_path / "run", {}) == 1
    message = caplog.records[-1].getMessage()
    assert "step 'bus' exited with 2" in message and "logs/bus.log" in message and "--val-pairs" in message
    assert not (tmp_path / "run" / "rebuild.json").exists()  # nothing is recorded as done


@pytest.mark.parametrize(("change", "match"), [
    (lambda r: r["steps"][0].update(output="{nowhere}/x.pt"), r"step 'a': output uses \{nowhere\}"),
    (lambda r: r["steps"].append(dict(r["steps"][0])), "step names must be unique: a repeated"),
    (lambda r: r["steps"][0].update(extra=1), "steps.0.extra"),
    (lambda r: r["data"].update(pairs="/no/such/folder"), "data folder 'pairs' not found"),
    (lambda r: r["steps"][0].update(config={"base": "configs/gpu.yaml", "update": {"losses": {"mgg": 1.0}}}),
     "step 'a': config.base configs/gpu.yaml with config.update is not a valid training config"),
])
def test_bad_recipes_name_the_step_or_field(tmp_path: Path, change, match) -> None:
    recipe = {"description": "d", "data": {"pairs": str(tmp_path)},
              "steps": [{"name": "a", "run": ["python", "-c", "pass"], "output": "{out}/a"}]}
    change(recipe)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    with pytest.raises(rebuild.RecipeError, match=match):
        rebuild.run_recipe(path, tmp_path / "run", {}, dry_run=True)


def test_data_option_must_name_a_recipe_folder(tmp_path: Path, capsys) -> None:
    assert rebuild.main(["--out", str(tmp_path / "o"), "--dry-run", "--data", "thermal=/x"]) == 2
    assert rebuild.main(["--out", str(tmp_path / "o"), "--dry-run", "--data", "roadscene"]) == 2
