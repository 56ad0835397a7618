"""The checks every consumer of an exported graph runs, and the opset pin. No torch.

A busref graph carries two ``metadata_props`` entries: ``busref`` (the
:class:`~busref.runtime.artifact.ArtifactMetadata` JSON) and ``busref.graph_sha256`` (the sha256 of the
serialized ``GraphProto``: nodes, weights and I/O). :func:`check_graph_file` refuses a file whose
graph was edited after export, whose I/O is not the contract's or not the one its metadata
declares, whose opset is outside the supported window, or that was exported from another
checkpoint than the one expected.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import onnx

from busref.runtime.artifact import METADATA_KEY, ArtifactError, ArtifactMetadata, GraphKind, check_compatible
from busref.runtime.backends.base import check_io
from busref.runtime.engine_header import read_artifact_bytes

#: The ONNX opset of every exported graph: the one place it is pinned.
OPSET = 17
#: Opsets an export may be asked for. 17 is the first with every op the graphs use at the
#: versions ONNX Runtime and TensorRT 10 implement best. It stops at 19: opset 20 renamed
#: GridSample's modes ("bilinear" -> "linear") and TensorRT's ONNX parser then silently runs
#: GridSample with *nearest* interpolation (NVIDIA/TensorRT#4646, onnx/onnx-tensorrt#1060),
#: which would wreck the registration warp on an engine while ONNX Runtime stays correct.
SUPPORTED_OPSETS = range(OPSET, 20)
#: ``metadata_props`` key of the graph digest (the metadata JSON itself is under METADATA_KEY).
DIGEST_KEY = f"{METADATA_KEY}.graph_sha256"


def check_opset(opset: int) -> int:
    """Return ``opset`` if busref supports it, else raise ValueError saying why not."""
    if opset not in SUPPORTED_OPSETS:
        raise ValueError(
            f"ONNX opset {opset} is not supported: use {SUPPORTED_OPSETS.start}..{SUPPORTED_OPSETS.stop - 1} "
            f"(default {OPSET}); at opset >= 20 TensorRT runs GridSample with nearest interpolation "
            "(NVIDIA/TensorRT#4646)"
        )
    return opset


def graph_digest(model: onnx.ModelProto) -> str:
    """sha256 of the graph alone (metadata_props live outside it, so writing them keeps it)."""
    return hashlib.sha256(model.graph.SerializeToString(deterministic=True)).hexdigest()


def model_opset(model: onnx.ModelProto) -> int:
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return int(entry.version)
    raise ArtifactError("the model imports no default-domain ONNX opset")


def value_shape(value: onnx.ValueInfoProto) -> list[int | str]:
    """Declared shape of a graph input/output: ints, or the symbolic names of dynamic dims."""
    return [d.dim_param if d.HasField("dim_param") else int(d.dim_value) for d in value.type.tensor_type.shape.dim]


def set_metadata(model: onnx.ModelProto, metadata: ArtifactMetadata) -> None:
    """Write (or replace) the metadata and the graph digest; call after the graph is final."""
    entries = {METADATA_KEY: metadata.to_json(), DIGEST_KEY: graph_digest(model)}
    kept = [(p.key, p.value) for p in model.metadata_props if p.key not in entries]
    del model.metadata_props[:]
    for key, value in [*kept, *entries.items()]:
        prop = model.metadata_props.add()
        prop.key, prop.value = key, value


@dataclass(frozen=True)
class CheckedGraph:
    path: Path
    model: onnx.ModelProto
    metadata: ArtifactMetadata
    file_sha256: str


def check_graph(model: onnx.ModelProto, *, graph: GraphKind | None, source: str,
                checkpoint_sha256: str | None = None) -> ArtifactMetadata:
    """Check a loaded busref graph (see the module docstring); returns its metadata."""
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        raise ArtifactError(f"{source}: not a valid ONNX model: {exc}") from None
    props = {p.key: p.value for p in model.metadata_props}
    if METADATA_KEY not in props:
        raise ArtifactError(f"{source}: no '{METADATA_KEY}' metadata: not a busref export (use 'busref export onnx')")
    meta = ArtifactMetadata.from_json(props[METADATA_KEY], source=source)
    check_compatible(meta, graph=graph or meta.graph, source=source)
    if props.get(DIGEST_KEY) != graph_digest(model):
        raise ArtifactError(f"{source}: the graph was modified after export (its sha256 differs from the one "
                            "recorded at export); export it again from the checkpoint")
    opset = model_opset(model)
    if opset != meta.opset:
        raise ArtifactError(f"{source}: imports opset {opset} but its metadata says {meta.opset}")
    try:
        check_opset(opset)
    except ValueError as exc:
        raise ArtifactError(f"{source}: {exc}") from None
    inputs, outputs = list(model.graph.input), list(model.graph.output)
    check_io(meta.graph, [v.name for v in inputs], [v.name for v in outputs], source=source)
    declared = {s.name: s.shape for s in [*meta.inputs, *meta.outputs]}
    for value in [*inputs, *outputs]:
        if value.type.tensor_type.elem_type != onnx.TensorProto.FLOAT:
            raise ArtifactError(f"{source}: tensor {value.name!r} is not float32")
        if declared.get(value.name) != value_shape(value):
            raise ArtifactError(f"{source}: tensor {value.name!r} has shape {value_shape(value)}, its metadata "
                                f"declares {declared.get(value.name)}")
    if checkpoint_sha256 is not None and meta.checkpoint_sha256 != checkpoint_sha256:
        raise ArtifactError(f"{source}: exported from checkpoint {meta.checkpoint_sha256[:12]}, "
                            f"expected {checkpoint_sha256[:12]}")
    return meta


def check_graph_file(path: str | Path, *, graph: GraphKind | None = None,
                     checkpoint_sha256: str | None = None) -> CheckedGraph:
    """Load ``path`` and :func:`check_graph` it; :class:`ArtifactError` naming the file otherwise."""
    path = Path(path)
    data = read_artifact_bytes(path, "ONNX file")
    try:
        model = onnx.load_model_from_string(data)
    except Exception as exc:  # protobuf raises DecodeError and friends
        raise ArtifactError(f"{path}: not an ONNX file ({exc})") from None
    meta = check_graph(model, graph=graph, source=str(path), checkpoint_sha256=checkpoint_sha256)
    return CheckedGraph(path, model, meta, hashlib.sha256(data).hexdigest())
