"""The interface every inference backend implements, and the checks they share.

A backend runs one exported graph (``register``, ``fuse`` or ``frame``, see
:mod:`busref.runtime.artifact`) on named float32 arrays. Implementations: :mod:`busref.runtime.backends.onnxruntime` and
:mod:`busref.runtime.backends.tensorrt` (optional; its engine-mismatch errors subclass
:class:`BackendUnavailable` so that :func:`busref.runtime.backends.select.open_backend` can fall back).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol, runtime_checkable

import numpy as np

from busref.conventions import GRAPH_IO
from busref.runtime.artifact import ArtifactError, ArtifactMetadata, GraphKind


class ModelMissing(ArtifactError):
    """A configured model file does not exist."""


class RunCancelled(RuntimeError):
    """``run`` was ended, or refused, by :meth:`InferenceBackend.cancel`."""


class BackendUnavailable(RuntimeError):
    """This backend cannot run this artifact here (library missing, engine built for another GPU...)."""


@runtime_checkable
class InferenceBackend(Protocol):
    """One loaded graph, ready to run.

    ``run`` takes and returns float32 arrays keyed by the contract's tensor names, e.g. for
    ``fuse``: ``{"vis": (1,1,H,W), "ir": (1,1,H,W)} -> {"fused": (1,1,H,W)}``. It is called from
    one thread at a time per backend instance.

    ``gpu_resident`` is True when the graph computes on a GPU (a TensorRT engine, ONNX Runtime
    with the CUDA provider really active): every ``run`` then pays one upload per input and
    one download per output, which is what the ``frame`` graph exists to minimise.
    """

    name: str
    metadata: ArtifactMetadata
    gpu_resident: bool

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    def hold(self, name: str, array: np.ndarray) -> None:
        """Keep input ``name`` = ``array`` for every later ``run``, which then omits it.

        A GPU backend uploads it here, once, instead of on every ``run`` (the ``frame`` graph's
        grid changes only with the registration). Calling it again replaces the held value.
        """
        ...

    def describe(self) -> dict[str, Any]:
        """JSON-ready facts for logs and the status topic: backend, device/providers, model id, path."""
        ...

    def cancel(self) -> None:
        """End a ``run`` in progress on another thread as soon as the backend can and refuse every
        later one (both raise :class:`RunCancelled`); for shutdown, from any thread.

        Why: a process that exits while a thread is inside ONNX Runtime's ``run`` aborts
        ("terminate called without an active exception"; ``busref bench`` on the NIR demo, whose
        register graph takes ~1.5 s a call on one core, at the end of its run).
        """
        ...


def artifact_facts(backend: InferenceBackend, graph: GraphKind, path: object) -> dict[str, Any]:
    """The part of ``describe()`` every backend shares: which graph, which model, which file."""
    return {"backend": backend.name, "graph": graph, "model_id": backend.metadata.model_id, "path": str(path)}


def check_io(graph: GraphKind, inputs: Iterable[str], outputs: Iterable[str], *, source: str) -> None:
    """Refuse a graph whose input/output names are not the contract's for ``graph``."""
    want_in, want_out = GRAPH_IO[graph]
    got_in, got_out = tuple(inputs), tuple(outputs)
    if set(got_in) != set(want_in) or not set(want_out) <= set(got_out):
        raise ArtifactError(
            f"{source}: a {graph!r} graph needs inputs {list(want_in)} and outputs {list(want_out)}, "
            f"it has inputs {list(got_in)} and outputs {list(got_out)}"
        )


def check_feed(source: str, inputs: Iterable[str], given: Iterable[str], held: Iterable[str]) -> None:
    """Refuse a run whose given inputs and held ones (:meth:`InferenceBackend.hold`) are not
    exactly the graph's ``inputs``, each given once."""
    want, given, held = set(inputs), set(given), set(held)
    problems = [f"{sorted(names)} {what}" for names, what in ((want - given - held, "neither given nor held"),
                                                             (given & held, "both given and held"),
                                                             (given - want, "not inputs of the graph")) if names]
    if problems:
        raise ValueError(f"{source}: inputs {'; '.join(problems)} (the graph's inputs: {sorted(want)})")
