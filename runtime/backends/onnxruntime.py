"""ONNX Runtime backend: one session per graph, checked against the artifact contract at load.

ONNX Runtime silently runs on CPU when a requested CUDA provider cannot load (missing CUDA or
cuDNN libraries), so the providers the session *really* uses are logged and reported, and
``gpu_resident`` follows them.

Held inputs (:meth:`OnnxRuntimeBackend.hold`, the ``frame`` graph's grid) live in an
``OrtValue`` on the session's device, bound once through ONNX Runtime's IO binding; the other
inputs are bound from host memory on each run (ORT copies them to the device) and the outputs
are bound to host memory (one copy back). Without held inputs ``run`` is a plain session run.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from busref.conventions import GRAPH_IO
from busref.runtime.artifact import METADATA_KEY, ArtifactError, ArtifactMetadata, GraphKind, check_compatible
from busref.runtime.backends.base import ModelMissing, RunCancelled, artifact_facts, check_feed, check_io

log = logging.getLogger(__name__)

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"


#: Graph optimisation per graph: ONNX Runtime's full level adds the CPU's blocked-layout (NCHWc)
#: rewrite, which pays for the register graph's convolution stacks (40.4 ms against 62.9 without
#: it, one thread, 192x256) but not for the pyramid GAF, whose many element-wise ops and resizes
#: between small convolutions then spend their time reordering layouts (fuse 34.5 against 25.3 ms
#: at 512x640; the same CPU, back to back).
OPTIMISATION = {"fuse": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
                "frame": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED}


def session_options(threads: int, *, spin: bool = False, graph: str | None = None) -> ort.SessionOptions:
    """Sequential execution with ``threads`` intra-op threads (0 = ORT's default, one per core), at
    the graph's optimisation level (:data:`OPTIMISATION`; full for any other).

    Spinning is off by default: the register and fuse sessions run on separate threads next to
    the capture threads, and on a small CPU a spinning idle pool steals the cores they need.
    """
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = OPTIMISATION.get(graph or "", ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    return options


class OnnxRuntimeBackend:
    """An :class:`~busref.runtime.backends.base.InferenceBackend` over an ``onnxruntime.InferenceSession``.

    Raises :class:`ModelMissing` when ``path`` does not exist and
    :class:`~busref.runtime.artifact.ArtifactError` when it is not a readable busref graph of kind ``graph``.
    """

    name = "onnxruntime"

    def __init__(
        self,
        path: str | Path,
        *,
        graph: GraphKind,
        threads: int = 0,
        providers: Sequence[str] = (CPU,),
        spin: bool = False,
        gpu_resident: bool | None = None,
    ) -> None:
        """``gpu_resident``: None = True exactly when the CUDA provider is really active; True or
        False forces the flag (to run the GPU per-frame path on the CPU in tests and benches)."""
        self.path = Path(path)
        self.graph = graph
        self.threads = threads
        if not self.path.is_file():
            raise ModelMissing(f"{self.path}: the {graph} model does not exist")
        try:
            self._session = ort.InferenceSession(
                str(self.path), sess_options=session_options(threads, spin=spin, graph=graph), providers=list(providers)
            )
        # ORT's load errors (InvalidProtobuf, InvalidGraph, Fail...) derive from Exception only.
        except Exception as exc:
            raise ArtifactError(f"{self.path}: ONNX Runtime cannot load it: {exc}") from None
        raw = self._session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
        if raw is None:
            raise ArtifactError(
                f"{self.path}: no '{METADATA_KEY}' metadata: not a busref export (use 'busref export')"
            )
        self.metadata: ArtifactMetadata = ArtifactMetadata.from_json(raw, source=str(self.path))
        check_compatible(self.metadata, graph=graph, source=str(self.path))
        check_io(
            graph,
            [i.name for i in self._session.get_inputs()],
            [o.name for o in self._session.get_outputs()],
            source=str(self.path),
        )
        self._inputs = list(GRAPH_IO[graph][0])
        self._outputs = list(GRAPH_IO[graph][1])
        self._held: dict[str, ort.OrtValue] = {}
        self._binding: ort.IOBinding | None = None
        # Its terminate flag ends a run in progress between two nodes (cancel).
        self._run_options = ort.RunOptions()
        self._cancelled = False
        self.providers: list[str] = self._session.get_providers()
        if providers and providers[0] not in self.providers:
            log.warning("%s: ONNX Runtime could not use %s and runs on %s", self.path.name, providers[0],
                        ", ".join(self.providers))
        log.info("%s graph %s (%s): ONNX Runtime %s, providers %s, intra-op threads %s", graph,
                 self.path, self.metadata.model_id, ort.__version__, ", ".join(self.providers),
                 threads or "default")
        self.gpu_resident = self.device == "cuda" if gpu_resident is None else gpu_resident

    @property
    def device(self) -> str:
        return "cuda" if self.providers[0] == CUDA else "cpu"

    def hold(self, name: str, array: np.ndarray) -> None:
        if name not in self._inputs:
            raise ValueError(f"{self.path}: the {self.graph} graph has no input {name!r} (inputs {self._inputs})")
        value = ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(array, dtype=np.float32), self.device, 0)
        if self._binding is None:
            self._binding = self._session.io_binding()
        self._binding.bind_ortvalue_input(name, value)
        self._held[name] = value  # the binding refers to the OrtValue without owning it

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self._cancelled:
            raise RunCancelled(f"{self.path}: cancelled")
        try:
            return self._run(inputs)
        # ORT reports the terminate flag as a plain RuntimeException (its Fail status).
        except Exception:
            if self._cancelled:
                raise RunCancelled(f"{self.path}: cancelled during a run") from None
            raise

    def _run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self._binding is None:
            results = self._session.run(self._outputs, inputs, self._run_options)
            return dict(zip(self._outputs, results, strict=True))
        check_feed(str(self.path), self._inputs, inputs, self._held)
        # The binding reads the host arrays during the run: keep them referenced until it ends.
        staged = {name: np.ascontiguousarray(array, dtype=np.float32) for name, array in inputs.items()}
        for name, array in staged.items():
            self._binding.bind_cpu_input(name, array)
        for name in self._outputs:
            self._binding.bind_output(name, "cpu")
        self._session.run_with_iobinding(self._binding, self._run_options)
        return dict(zip(self._outputs, self._binding.copy_outputs_to_cpu(), strict=True))

    def cancel(self) -> None:
        self._cancelled = True
        self._run_options.terminate = True

    def describe(self) -> dict[str, Any]:
        return {
            **artifact_facts(self, self.graph, self.path),
            "providers": self.providers,
            "device": self.device,
            "gpu_resident": self.gpu_resident,
            "threads": self.threads,
            "version": ort.__version__,
        }
