"""The interface every inference backend implements, and the checks they share.

A backend runs one exported graph (``register`` or ``fuse``, see :mod:`runtime.artifact`) on
named float32 NCHW arrays. Implementations: :mod:`runtime.backends.onnxruntime` and
:mod:`runtime.backends.tensorrt` (optional; its engine-mismatch errors subclass
:class:`BackendUnavailable` so that :func:`runtime.backends.select.open_backend` can fall back).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol, runtime_checkable

import numpy as np

from runtime.artifact import ArtifactError, ArtifactMetadata, GraphKind

#: The tensor names of each graph (the artifact contract).
GRAPH_IO: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "register": (("vis", "ir"), ("theta", "grid")),
    "fuse": (("vis", "ir"), ("fused",)),
}


class ModelMissing(ArtifactError):
    """A configured model file does not exist."""


class BackendUnavailable(RuntimeError):
    """This backend cannot run this artifact here (library missing, engine built for another GPU...)."""


@runtime_checkable
class InferenceBackend(Protocol):
    """One loaded graph, ready to run.

    ``run`` takes and returns float32 arrays keyed by the contract's tensor names, e.g. for
    ``fuse``: ``{"vis": (1,1,H,W), "ir": (1,1,H,W)} -> {"fused": (1,1,H,W)}``. It is called from
    one thread at a time per backend instance.
    """

    name: str
    metadata: ArtifactMetadata

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    def describe(self) -> dict[str, Any]:
        """JSON-ready facts for logs and the status topic: backend, device/providers, model id, path."""
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
