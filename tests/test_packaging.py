"""One installable package: the namespace, the package data, what each part loads, and the light
subscriber in an environment that has nothing but pyzmq and numpy."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
from importlib.metadata import version
from pathlib import Path

import pytest
import yaml

import busref
from busref.client.wire import REGISTRATION_SOURCES
from busref.rig_config import DEMO_RIG, weights_dir

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

REPO = Path(__file__).resolve().parent.parent
SETUPTOOLS = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]


def run_python(code: str, *, python: str = sys.executable, env: dict[str, str] | None = None,
               timeout: float = 120) -> subprocess.CompletedProcess:
    """``code`` in a fresh interpreter, from a folder outside the checkout."""
    return subprocess.run([python, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=timeout,
                          cwd=Path(os.sep), env=env)


def test_every_package_folder_is_installed_under_busref() -> None:
    listed = set(SETUPTOOLS["packages"])
    found = set()
    for name, folder in SETUPTOOLS["package-dir"].items():
        for init in (REPO / folder).rglob("__init__.py"):
            if "__pycache__" not in init.parts:
                relative = init.parent.relative_to(REPO / folder).parts
                found.add(".".join((name, *relative)))
    assert found == listed, f"pyproject.toml packages: missing {sorted(found - listed)}, extra {sorted(listed - found)}"


def test_the_version_is_defined_once() -> None:
    assert SETUPTOOLS["dynamic"]["version"] == {"attr": "busref.__version__"}
    assert version("busref") == busref.__version__


def test_shipped_files_are_package_data() -> None:
    data = SETUPTOOLS["package-data"]
    graphs = {"busref.pt", "register.onnx", "track.onnx", "fuse.onnx", "frame.onnx"}
    assert {p.name for p in weights_dir().iterdir() if p.suffix in (".onnx", ".pt")} == graphs
    assert {p.name for p in (weights_dir() / "nir").iterdir() if p.suffix in (".onnx", ".pt")} == graphs
    assert sorted(data["busref.weights"]) == ["*.onnx", "*.pt", "nir/*.onnx", "nir/*.pt"]
    assert data["busref.rig_config"] == ["*.yaml"]
    assert DEMO_RIG.is_file() and DEMO_RIG.parent.name == "rig_config"


def test_the_short_folder_names_are_not_top_level_packages() -> None:
    result = run_python("""
        import importlib.util
        print([n for n in ("models", "runtime", "export", "rig_config") if importlib.util.find_spec(n)])
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_the_daemon_loads_neither_torch_nor_the_training_code() -> None:
    result = run_python("""
        import sys
        import busref.runtime.cli.run, busref.runtime.daemon, busref.runtime.cli.watch, busref.runtime.cli.bench
        from busref.cli import build_parser
        build_parser(["run"])
        print(sorted(m for m in sys.modules if m.split(".")[0] == "torch" or m.startswith(("busref.models",
                                                                                          "busref.export"))))
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_the_client_loads_neither_the_daemon_nor_its_dependencies() -> None:
    result = run_python("""
        import sys
        import busref.client
        heavy = ("cv2", "pydantic", "yaml", "onnxruntime", "torch", "busref.runtime", "busref.rig_config",
                 "busref.models", "busref.export")
        print(sorted(m for m in sys.modules if m.startswith(heavy)))
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


@pytest.fixture(scope="module")
def client_only_python(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict[str, str]]:
    """A fresh venv with only pyzmq and numpy from the package index, and busref.client copied
    beside it (busref/__init__.py + busref/client/): (python, environment)."""
    root = tmp_path_factory.mktemp("client_only")
    subprocess.run([sys.executable, "-m", "venv", str(root / "venv")], check=True, timeout=120)
    python = str(root / "venv" / "bin" / "python")
    install = subprocess.run([python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                              "pyzmq", "numpy"], capture_output=True, text=True, timeout=600)
    if install.returncode != 0:
        pytest.skip(f"cannot install pyzmq and numpy from a package index: {install.stderr.strip()[-300:]}")
    site = root / "site" / "busref"
    site.mkdir(parents=True)
    shutil.copy(REPO / "busref" / "__init__.py", site)
    shutil.copytree(REPO / "busref" / "client", site / "client", ignore=shutil.ignore_patterns("__pycache__"))
    env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(root / "site"), "PYTHONNOUSERSITE": "1"}
    return python, env


@pytest.mark.slow
def test_the_client_receives_frames_with_only_pyzmq_and_numpy(client_only_python: tuple[str, dict[str, str]],
                                                              tmp_path: Path) -> None:
    python, env = client_only_python
    missing = run_python("""
        import importlib.util
        print([n for n in ("cv2", "pydantic", "yaml", "onnxruntime", "torch") if importlib.util.find_spec(n)])
    """, python=python, env=env)
    assert missing.stdout.strip() == "[]", missing.stdout + missing.stderr
    rig = yaml.safe_load(DEMO_RIG.read_text())
    rig["publisher"]["encoding"] = "raw"  # bgr8: decoding needs no OpenCV
    (tmp_path / "rig.yaml").write_text(yaml.safe_dump(rig))
    endpoint = f"ipc://{tmp_path}/busref.sock"
    daemon = subprocess.Popen([sys.executable, "-m", "busref", "run", "--rig", str(tmp_path / "rig.yaml"),
                               "--endpoint", endpoint], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        received = run_python(f"""
            import sys
            from busref.client import Subscriber
            with Subscriber({endpoint!r}, silence_timeout_s=60) as sub:
                for n, (header, image) in enumerate(sub, 1):
                    assert image.shape == (header.height, header.width, 3) and header.encoding == "bgr8"
                    if n == 5:
                        break
            print(n, header.seq, header.registration.source, sorted(m for m in ("cv2", "pydantic")
                                                                    if m in sys.modules))
        """, python=python, env=env, timeout=120)
        assert received.returncode == 0, received.stderr
        count, _, source, loaded = received.stdout.split(maxsplit=3)
        assert count == "5" and source in REGISTRATION_SOURCES and loaded.strip() == "[]"
    finally:
        daemon.send_signal(signal.SIGTERM)
        try:
            output, _ = daemon.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            daemon.kill()
            output, _ = daemon.communicate()
    assert daemon.returncode == 0, output


def test_help_lists_every_subcommand_and_the_training_stages(capsys: pytest.CaptureFixture[str]) -> None:
    from busref.cli import SUBCOMMANDS, main

    assert main([]) == 0
    text = capsys.readouterr().out
    assert all(name in text for name in SUBCOMMANDS)
    assert all(f"busref train {stage}" in text for stage in ("bus", "fusion", "registration", "descriptor"))


def test_export_onnx_defaults_to_the_shipped_checkpoint() -> None:
    from busref.cli import build_parser

    argv = ["export", "onnx", "--out", "graphs"]
    assert build_parser(argv).parse_args(argv).checkpoint == weights_dir() / "busref.pt"
