"""Rebuild the shipped weights from scratch: every training stage, the inference stages and the
ONNX export, in order, from one recipe file (default ``configs/recipes/shipped.yaml``).

Each step of the recipe is one ``busref`` command (or a ``python`` script) with placeholders:
``{out}`` (the run's folder), ``{config}`` (the step's training config, written to
``OUT/configs/STEP.yaml`` from the recipe's ``config.base`` file and its ``config.update``) and
one per data folder the recipe names (``{roadscene}``, ``{nirscene}``; defaults in the recipe,
``--data NAME=PATH`` to point elsewhere). Every command is checked before the first one runs: a
missing data folder, an unknown placeholder or an invalid training config stops the run naming
the step and the field.

The run is resumable: ``OUT/rebuild.json`` records each finished step (its command, wall time and
output), and a rerun with the same ``--out`` skips those whose output is still there. A step
that was interrupted starts again from its beginning (each training step is capped by its
``--max-minutes``). A recipe that changed since the folder was started is refused: its steps'
inputs would no longer be what the record says. Each step's output goes to ``OUT/logs/STEP.log``.

The result mirrors the repository's ``weights/`` folder under ``OUT/weights``; compare it
(``busref eval``) before copying it over the shipped files.

usage: python scripts/rebuild_weights.py --out runs/rebuild              # the shipped recipe
       python scripts/rebuild_weights.py --out runs/rebuild --dry-run    # list the commands only
       python scripts/rebuild_weights.py --recipe R.yaml --data roadscene=/data/rs --out runs/r
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shlex
import string
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from tqdm import tqdm

from busref.conventions import file_sha256
from busref.models.config import TrainConfig, load_yaml_model

log = logging.getLogger("rebuild_weights")

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_RECIPE = ROOT / "configs" / "recipes" / "shipped.yaml"
STATE_FILE = "rebuild.json"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class StepConfig(_Strict):
    """A training config for one step: ``base`` (a YAML file, relative to the repository root)
    with ``update`` merged into it key by key."""

    base: str
    update: dict[str, Any] = Field(default_factory=dict)


class Step(_Strict):
    name: str = Field(pattern=r"^[a-z0-9_]+$", description="unique; names the log and the config file")
    run: list[str] = Field(min_length=1, description="argv; 'busref' and 'python' run with this interpreter")
    output: str = Field(description="the file the step makes; the step counts as done while it exists")
    config: StepConfig | None = None


class Recipe(_Strict):
    description: str
    data: dict[str, str] = Field(default_factory=dict, description="placeholder name -> default folder")
    threads: int = Field(1, ge=1, description="OMP_NUM_THREADS of every step (the recorded times are one core)")
    steps: list[Step] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique_names(self) -> Recipe:
        names = [step.name for step in self.steps]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise ValueError(f"step names must be unique: {', '.join(repeated)} repeated")
        return self


class RecipeError(ValueError):
    """A recipe, its data folders or the run's folder cannot be used; the message names which."""


def load_recipe(path: Path) -> Recipe:
    """Read and validate a recipe YAML; errors name the file and the field."""
    try:
        return load_yaml_model(path, Recipe, "recipe")
    except ValueError as exc:
        raise RecipeError(str(exc)) from exc


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in update.items():
        merged[key] = _merge(merged[key], value) if isinstance(value, dict) and isinstance(merged.get(key), dict) \
            else value
    return merged


def step_config(step: Step, root: Path) -> dict[str, Any]:
    """The step's training config as a mapping, validated as a ``TrainConfig``."""
    assert step.config is not None
    base_path = root / step.config.base
    try:
        base = yaml.safe_load(base_path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise RecipeError(f"step {step.name!r}: cannot read config.base {step.config.base}: {exc}") from exc
    merged = _merge(base, step.config.update)
    try:
        TrainConfig.model_validate(merged)
    except ValidationError as exc:
        raise RecipeError(f"step {step.name!r}: config.base {step.config.base} with config.update is not a valid "
                          f"training config:\n{exc}") from exc
    return merged


def config_path(out: Path | str, step: Step) -> Path:
    """Where a step's training config is written (``OUT/configs/STEP.yaml``), its ``{config}``."""
    return Path(out) / "configs" / f"{step.name}.yaml"


def render(step: Step, values: dict[str, str]) -> tuple[list[str], Path]:
    """The step's argv (interpreter resolved) and its output path, placeholders filled in."""
    known = dict(values)
    if step.config is not None:
        known["config"] = str(config_path(values["out"], step))

    def fill(text: str, field: str) -> str:
        for _, name, _, _ in string.Formatter().parse(text):
            if name is not None and name not in known:
                raise RecipeError(f"step {step.name!r}: {field} uses {{{name}}}, which is not one of "
                                  f"{', '.join('{' + k + '}' for k in sorted(known))}")
        return text.format(**known)

    argv = [fill(arg, "run") for arg in step.run]
    head = {"busref": [sys.executable, "-m", "busref"], "python": [sys.executable]}.get(argv[0], argv[:1])
    return head + argv[1:], Path(fill(step.output, "output"))


def _max_minutes(argv: list[str]) -> float | None:
    return float(argv[argv.index("--max-minutes") + 1]) if "--max-minutes" in argv[:-1] else None


def plan(recipe: Recipe, out: Path, data: dict[str, str], root: Path = ROOT
         ) -> list[tuple[Step, list[str], Path, dict[str, Any] | None]]:
    """Every step rendered and checked before anything runs: (step, argv, output, config)."""
    folders = {**recipe.data, **data}
    unknown = sorted(set(data) - set(recipe.data))
    if unknown:
        raise RecipeError(f"--data {', '.join(unknown)}: the recipe names no such data folder "
                          f"(it has {', '.join(sorted(recipe.data)) or 'none'})")
    for name, folder in folders.items():
        if not (root / folder).is_dir():
            raise RecipeError(f"data folder {name!r} not found: {root / folder} (point to it with --data {name}=PATH)")
    values = {"out": str(out), **{name: str((root / folder).resolve()) for name, folder in folders.items()}}
    steps = []
    for step in recipe.steps:
        argv, output = render(step, values)
        steps.append((step, argv, output, step_config(step, root) if step.config is not None else None))
    return steps


def _read_state(path: Path, recipe_sha: str) -> dict[str, Any]:
    if not path.is_file():
        return {"recipe_sha256": recipe_sha, "steps": {}}
    state = json.loads(path.read_text())
    if state.get("recipe_sha256") != recipe_sha:
        raise RecipeError(f"{path} was made by another recipe (SHA-256 {state.get('recipe_sha256', '?')[:12]}, this "
                          f"one {recipe_sha[:12]}): start a new --out, or remove the folder to start again")
    return state


def _tail(path: Path, lines: int = 15) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def run_recipe(recipe_path: Path, out: Path, data: dict[str, str], *, dry_run: bool = False,
               root: Path = ROOT) -> int:
    """Run (or with ``dry_run`` list) the recipe's steps into ``out``; 0 when every step is done."""
    recipe = load_recipe(recipe_path)
    steps = plan(recipe, out.resolve(), data, root)
    caps = [_max_minutes(argv) for _, argv, _, _ in steps]
    log.info("%s: %d steps, at most %.0f minutes of training (the sum of their --max-minutes)", recipe_path.name,
             len(steps), sum(c for c in caps if c))
    if dry_run:
        for step, argv, output, _ in steps:
            print(f"# {step.name} -> {output}\n{shlex.join(argv)}")
        return 0
    out.mkdir(parents=True, exist_ok=True)
    state_path = out / STATE_FILE
    state = _read_state(state_path, file_sha256(recipe_path))
    env = {**os.environ, "OMP_NUM_THREADS": str(recipe.threads), "PYTHONUNBUFFERED": "1"}
    bar = tqdm(steps, desc="rebuild", unit="step", dynamic_ncols=True)
    for step, argv, output, config in bar:
        bar.set_postfix_str(step.name)
        if step.name in state["steps"] and output.is_file():
            log.info("%s: done before (%s), skipped", step.name, output)
            continue
        if config is not None:
            written = config_path(out.resolve(), step)
            written.parent.mkdir(parents=True, exist_ok=True)
            written.write_text(yaml.safe_dump(config, sort_keys=False))
        log_path = out / "logs" / f"{step.name}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log.info("%s: %s (log: %s)", step.name, shlex.join(argv), log_path)
        start = time.perf_counter()
        with log_path.open("w") as sink:
            rc = subprocess.call(argv, cwd=root, env=env, stdout=sink, stderr=subprocess.STDOUT)
        seconds = time.perf_counter() - start
        if rc != 0 or not output.is_file():
            why = f"exited with {rc}" if rc != 0 else f"exited with 0 but did not write {output}"
            log.error("step %r %s after %.0f s; the last lines of %s:\n%s", step.name, why, seconds, log_path,
                      _tail(log_path))
            return 1
        state["steps"][step.name] = {"command": argv, "output": str(output), "seconds": round(seconds, 1),
                                     "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        state_path.write_text(json.dumps(state, indent=1))
        log.info("%s: done in %.1f min", step.name, seconds / 60)
    total = sum(entry["seconds"] for entry in state["steps"].values())
    log.info("all %d steps done; recorded wall time %.1f min (%s)", len(steps), total / 60, state_path)
    return 0


def _data_pairs(values: list[str]) -> dict[str, str]:
    pairs = {}
    for value in values:
        name, sep, folder = value.partition("=")
        if not sep or not re.fullmatch(r"[a-z0-9_]+", name) or not folder:
            raise RecipeError(f"--data {value!r}: expected NAME=PATH, e.g. roadscene=../shared/data/roadscene")
        pairs[name] = str(Path(folder).resolve())  # relative to where the command runs
    return pairs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", type=Path, default=DEFAULT_RECIPE,
                        help="recipe YAML (default: configs/recipes/shipped.yaml)")
    parser.add_argument("--out", type=Path, required=True, help="the run's folder (rerun with it to resume)")
    parser.add_argument("--data", action="append", default=[], metavar="NAME=PATH",
                        help="a data folder other than the recipe's default, e.g. roadscene=/data/roadscene")
    parser.add_argument("--dry-run", action="store_true", help="check the recipe and print its commands")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return run_recipe(args.recipe, args.out, _data_pairs(args.data), dry_run=args.dry_run)
    except RecipeError as exc:
        log.error("%s", exc)
        return 2


if __name__ == "__main__":
    sys.exit(main())
