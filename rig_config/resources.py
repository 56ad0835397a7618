"""Where the shipped files are: the weights (ONNX graphs, checkpoints) and the rig files.

Both are package data (``busref.weights``, ``busref.rig_config``) found with
:mod:`importlib.resources`, so a source checkout (editable install), a wheel install and a
Docker image find them the same way. Two overrides, most specific first:

* a rig file's ``inference.*_model`` / ``*_engine`` paths name single graphs;
* ``BUSREF_WEIGHTS=FOLDER`` replaces the shipped weights folder as a whole (a rig's own export,
  or checkpoints trained elsewhere): every default below then points into it.

Imports nothing but the standard library: the runtime, the training side and the client-only
install all use it.
"""

from __future__ import annotations

import os
from importlib.resources import files
from pathlib import Path
from typing import Literal, get_args

#: Environment variable naming a folder that replaces the shipped weights.
WEIGHTS_ENV = "BUSREF_WEIGHTS"
WEIGHTS_PACKAGE = "busref.weights"
RIG_PACKAGE = "busref.rig_config"
#: The checkpoint in the weights folder (MODEL_CARD.md); the ONNX graphs beside it are
#: ``register.onnx``, ``track.onnx``, ``fuse.onnx`` and ``frame.onnx``.
CHECKPOINT_FILE = "busref.pt"


def _package_folder(package: str) -> Path:
    """The folder of an installed package: its data files are plain files next to its modules."""
    root = files(package)
    if not isinstance(root, Path):  # e.g. a zip import: ONNX Runtime and torch need real files
        raise RuntimeError(f"{package} is not installed as files on disk ({root!r}); install busref from "
                           "a wheel or a source folder")
    return root


def weights_dir() -> Path:
    """The folder of the weights: ``$BUSREF_WEIGHTS`` when set, else the shipped ``busref.weights``."""
    override = os.environ.get(WEIGHTS_ENV)
    if override:
        return Path(override).expanduser()
    return _package_folder(WEIGHTS_PACKAGE)


#: What the IR camera sees: ``thermal`` (emitted long-wave IR) or ``nir`` (reflected near-infrared).
#: The one vocabulary of rig files (``cameras.ir.modality``), graph metadata and the CLIs.
Modality = Literal["thermal", "nir"]
MODALITIES: tuple[str, ...] = get_args(Modality)
#: Where each IR modality's weights are, inside the weights folder: thermal at its top, the
#: near-infrared model (trained on NIR and thermal pairs) in ``nir/``.
MODALITY_FOLDERS: dict[str, str] = {"thermal": "", "nir": "nir"}


def weight_file(filename: str, modality: str = "thermal") -> Path:
    """A file of the weights folder for an IR ``modality``, e.g. ``weight_file("busref.pt", "nir")``."""
    try:
        return weights_dir() / MODALITY_FOLDERS[modality] / filename
    except KeyError:
        raise ValueError(f"unknown IR modality {modality!r}; choose one of {sorted(MODALITY_FOLDERS)}") from None


def default_model_path(name: str, modality: str = "thermal") -> Path:
    """Path of a shipped ONNX graph, e.g. ``default_model_path("register", "nir")``; ``name`` may omit ``.onnx``."""
    return weight_file(name if name.endswith(".onnx") else f"{name}.onnx", modality)


def rig_file(name: str) -> Path:
    """A rig file shipped with busref, e.g. ``rig_file("demo.yaml")``."""
    return _package_folder(RIG_PACKAGE) / name


def recorded_path(path: str | Path) -> str:
    """``path`` as result files record it, without the machine's own folders: relative to the
    working folder when it lies inside it (run from the repository root, ``weights/busref.pt``),
    a shipped file as its place in the package (``busref/weights/busref.pt``), else as given."""
    resolved = Path(path).resolve()
    try:
        return resolved.relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        pass
    for package in (WEIGHTS_PACKAGE, RIG_PACKAGE):
        try:
            inside = resolved.relative_to(_package_folder(package).resolve())
        except ValueError:
            continue
        return "/".join((*package.split("."), *inside.parts))
    return str(path)


#: The built-in default rig: synthetic cameras, runs anywhere.
DEMO_RIG = rig_file("demo.yaml")
