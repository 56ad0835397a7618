"""Check the layering contracts of pyproject.toml ([tool.importlinter]) with import-linter.

usage: python scripts/lint_imports.py [lint-imports options]

The source folders models/, export/, runtime/, rig_config/ and weights/ are installed as
busref.models, busref.export, ... (``package-dir`` in pyproject.toml). An editable install
resolves those names with an import hook, but import-linter (grimp) finds a package's modules by
walking its folder, where it would see busref/ alone. So this builds the installed layout out of
symbolic links in a temporary folder, one link per mapped folder, and runs ``lint-imports``
from there (it puts its working folder first on the import path).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]


def link_tree(root: Path, target: Path) -> None:
    """``target/busref/...`` laid out as installed, every entry a link into ``root``."""
    package_dir: dict[str, str] = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-dir"]
    top = target / "busref"
    top.mkdir(parents=True)
    for entry in (root / package_dir["busref"]).iterdir():
        if entry.name != "__pycache__":
            (top / entry.name).symlink_to(entry)
    for name, folder in package_dir.items():
        parent, _, leaf = name.rpartition(".")
        if parent == "busref":
            (top / leaf).symlink_to(root / folder, target_is_directory=True)
        elif name != "busref":
            raise SystemExit(f"pyproject.toml: package-dir {name!r}: only busref.NAME mappings are supported")


def main(argv: list[str]) -> int:
    lint_imports = shutil.which("lint-imports", path=os.pathsep.join([str(Path(sys.executable).parent),
                                                                        os.environ.get("PATH", "")]))
    if lint_imports is None:
        print("lint-imports is not installed: pip install -e '.[dev]'", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="busref-lint-imports-") as tmp:
        link_tree(ROOT, Path(tmp))
        return subprocess.run([lint_imports, "--no-cache", str(ROOT / "pyproject.toml"), *argv], cwd=tmp).returncode


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
