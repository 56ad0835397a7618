"""Pick and open the backend for one graph: TensorRT engine -> ONNX Runtime CUDA -> ONNX Runtime CPU.

``busref.runtime.backends.tensorrt`` is imported only when an engine is configured (``importlib``), so
installs without TensorRT never touch it. That module provides ``TensorRTBackend(engine_path,
*, graph, onnx_path)`` (``onnx_path`` lets it refuse an engine built from another version of the
graph); its load failures (``EngineMismatch`` and the like) are expected to subclass
:class:`~busref.runtime.backends.base.BackendUnavailable` or :class:`~busref.runtime.artifact.ArtifactError`.
"""

from __future__ import annotations

import importlib
import logging
from pathlib import Path
from typing import Literal

import onnxruntime as ort

from busref.runtime.artifact import ArtifactError, GraphKind
from busref.runtime.backends.base import BackendUnavailable, InferenceBackend
from busref.runtime.backends.onnxruntime import CPU, CUDA, OnnxRuntimeBackend

log = logging.getLogger(__name__)

BackendChoice = Literal["auto", "onnxruntime", "tensorrt"]


def _open_tensorrt(engine_path: Path, graph: GraphKind, onnx_path: Path) -> InferenceBackend:
    """The TensorRT backend for ``engine_path``, or :class:`BackendUnavailable` saying why not."""
    try:
        module = importlib.import_module("busref.runtime.backends.tensorrt")
    except ImportError as exc:
        raise BackendUnavailable(f"the TensorRT backend cannot be imported ({exc})") from exc
    mismatch = getattr(module, "EngineMismatch", BackendUnavailable)
    try:
        return module.TensorRTBackend(engine_path, graph=graph, onnx_path=onnx_path)
    except (BackendUnavailable, ArtifactError, ImportError, mismatch) as exc:
        raise BackendUnavailable(f"{engine_path}: {exc}") from exc


def open_backend(
    graph: GraphKind,
    onnx_path: str | Path,
    engine_path: str | Path | None = None,
    choice: BackendChoice = "auto",
    threads: int = 0,
    allow_fallback: bool = True,
) -> InferenceBackend:
    """Open ``graph`` on the best backend ``choice`` allows.

    ``auto``: the TensorRT engine when one is configured and loads, else ONNX Runtime on CUDA
    when ORT has the CUDA provider, else ONNX Runtime on CPU. ``tensorrt``: the engine, else
    (with ``allow_fallback``) ONNX Runtime. ``onnxruntime``: ORT, CUDA first when available.
    Every fallback is logged with its reason; with ``allow_fallback=False`` it raises
    :class:`BackendUnavailable` instead. A missing or foreign ONNX file raises
    :class:`~busref.runtime.artifact.ArtifactError` (``ModelMissing`` when absent).
    """
    if choice in ("auto", "tensorrt"):
        if engine_path is not None:
            try:
                backend = _open_tensorrt(Path(engine_path), graph, Path(onnx_path))
            except BackendUnavailable as exc:
                if not allow_fallback:
                    raise
                log.warning("%s: TensorRT engine not loadable, falling back to ONNX Runtime: %s", graph, exc)
            else:
                log.info("%s graph on TensorRT: %s", graph, backend.describe())
                return backend
        elif choice == "tensorrt":
            reason = f"backend 'tensorrt' chosen but no {graph} engine is configured"
            if not allow_fallback:
                raise BackendUnavailable(reason)
            log.warning("%s, falling back to ONNX Runtime", reason)
    if CUDA in ort.get_available_providers():
        backend = OnnxRuntimeBackend(onnx_path, graph=graph, threads=threads, providers=(CUDA, CPU))
        if backend.device != "cuda" and not allow_fallback:
            raise BackendUnavailable(f"{graph}: ONNX Runtime lists CUDA but the session runs on "
                                     f"{backend.providers} (CUDA/cuDNN libraries missing?)")
        return backend
    return OnnxRuntimeBackend(onnx_path, graph=graph, threads=threads, providers=(CPU,))
