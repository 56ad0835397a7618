"""Exit codes: one table, distinct numbers, the same in docs/runtime.md and ``busref run --help``."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from busref import cli
from busref.runtime import exit_codes

REPO = Path(__file__).resolve().parent.parent


def constants() -> dict[str, int]:
    return {name: value for name, value in vars(exit_codes).items() if name.isupper() and isinstance(value, int)}


def test_codes_are_distinct_and_all_described() -> None:
    codes = constants()
    assert len(set(codes.values())) == len(codes), codes
    assert set(codes.values()) == set(exit_codes.DESCRIPTIONS) == set(exit_codes.RESTART_HELPS)


def test_the_documented_table_matches_the_module() -> None:
    text = (REPO / "docs" / "runtime.md").read_text(encoding="utf-8")
    section = text.split("## Exit codes", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| (\d+) \| (.*?) \| ?(.*?) ?\|$", section, flags=re.MULTILINE)
    # The docs put commands and options in backticks; the module's text is plain.
    documented = {int(code): (meaning.replace("`", ""), restart) for code, meaning, restart in rows}
    expected = {code: (exit_codes.DESCRIPTIONS[code], exit_codes.RESTART_HELPS[code])
                for code in exit_codes.DESCRIPTIONS}
    assert documented == expected


def test_run_help_lists_every_code() -> None:
    proc = subprocess.run([sys.executable, "-m", "busref", "run", "--help"], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    # RawDescriptionHelpFormatter keeps the epilog as written, so the table appears verbatim.
    assert exit_codes.help_table() in proc.stdout


def test_a_missing_dependency_has_its_own_code(monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(cli.SUBCOMMANDS, "ghost", cli.Subcommand("busref_no_such_module", "a test command", "train"))
    with pytest.raises(SystemExit) as info:
        cli.main(["ghost"])
    assert info.value.code == exit_codes.MISSING_DEPENDENCY
    assert "pip install 'busref[train]'" in capsys.readouterr().err
