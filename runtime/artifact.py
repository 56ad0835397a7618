"""Metadata that travels with every exported artifact (ONNX graph, TensorRT engine).

The export side (``export/``) writes it; the runtime reads and checks it. It lives here
because the runtime must not import the training code. Schema ``busref.artifact/1``; the
graphs' inputs and outputs (names, shapes, coordinate conventions) are the contract in
:mod:`busref.conventions` (``GRAPH_IO``), which :class:`ArtifactMetadata` records per file.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from busref.rig_config.resources import Modality

SCHEMA = "busref.artifact/1"
#: Key of the ONNX ``metadata_props`` entry (and of the engine header) holding the JSON.
METADATA_KEY = "busref"
PROTOCOL = "irvis-reg-v1"

GraphKind = Literal["register", "track", "fuse", "frame"]
#: The graphs whose inputs are fixed at the registration size (their metadata's ``registration_size``).
REGISTRATION_GRAPHS: tuple[GraphKind, ...] = ("register", "track")


class TensorSpec(BaseModel):
    """One input or output: shape entries are ints or symbolic names ("H", "W")."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str
    shape: list[int | str]
    dtype: Literal["float32", "float16"] = "float32"
    description: str = ""


class Normalisation(BaseModel):
    """How pixels become network inputs: ``x = (pixel / scale - mean) / std``."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    scale: float = 255.0
    mean: float = 0.0
    std: float = 1.0
    colour: str = "visible: Y of OpenCV BGR2YCrCb; ir: gray"


class ArtifactMetadata(BaseModel):
    """Metadata carried by an ONNX graph (``metadata_props[METADATA_KEY]``) or engine header."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    schema_: str = Field(SCHEMA, alias="schema")
    graph: GraphKind
    model_name: str
    model_id: str = Field(description="short id: model name + first 12 hex of the checkpoint sha256")
    checkpoint_sha256: str
    opset: int
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    normalisation: Normalisation = Normalisation()
    registration_size: tuple[int, int] | None = Field(
        None, description="(H, W) of the register and track graphs' fixed inputs; None for fuse and frame"
    )
    modalities: list[Modality] = Field(
        default_factory=lambda: ["thermal"],
        description="the IR modalities the graph was trained for (cameras.ir.modality of a rig file)")
    keypoint_start: bool = Field(
        False, description="register graph: the runtime also starts it from the SIFT + RANSAC affine of "
                           "busref.keypoints where that aligns the pair's edges better (the model's keypoint_start)")
    training_split: str = ""
    training_split_sha256: str = ""
    protocol: str = PROTOCOL
    busref_version: str = ""
    exporter_versions: dict[str, str] = Field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(self.model_dump(by_alias=True, mode="json"), sort_keys=True)

    @classmethod
    def from_json(cls, text: str, *, source: str = "artifact") -> ArtifactMetadata:
        try:
            return cls.model_validate_json(text)
        except ValueError as exc:
            raise ArtifactError(f"{source}: its busref metadata is not valid: {exc}") from exc


class ArtifactError(RuntimeError):
    """An artifact is missing, unreadable, or does not match what the caller needs."""


def check_compatible(meta: ArtifactMetadata, *, graph: GraphKind, source: str) -> None:
    """Refuse an artifact written for another schema or graph, naming the file."""
    if meta.schema_ != SCHEMA:
        raise ArtifactError(f"{source}: metadata schema {meta.schema_!r}, this busref reads {SCHEMA!r}")
    if meta.graph != graph:
        raise ArtifactError(f"{source}: is a {meta.graph!r} graph, expected a {graph!r} graph")


def check_modality(meta: ArtifactMetadata, modality: str, *, source: str) -> None:
    """Refuse a graph not trained for the rig's IR ``modality`` (``cameras.ir.modality``), naming both."""
    if modality not in meta.modalities:
        raise ArtifactError(f"{source}: trained for {' and '.join(meta.modalities)} IR, but the rig's "
                            f"cameras.ir.modality is {modality!r} (use graphs trained for it, or correct the field)")


def registration_size_for(rig_size: Sequence[int] | None, graph_size: Sequence[int] | None, *,
                          source: str) -> tuple[int, int]:
    """The (H, W) a rig registers at: its ``registration.size``, or where that is unset the register
    graph's own (:attr:`ArtifactMetadata.registration_size`).

    The register graph's inputs have a fixed size (export.onnx_export), so a rig size other than
    the graph's, or neither known, is a ValueError naming the field: another size would fail at
    the first call with ONNX Runtime's (or TensorRT's) shape error.
    """
    if rig_size is None and graph_size is None:
        raise ValueError(f"{source}: the register graph does not record its registration size: set "
                         "registration.size in the rig file")
    if graph_size is None:
        return tuple(rig_size)
    h, w = graph_size
    if rig_size is not None and tuple(rig_size) != (h, w):
        raise ValueError(f"{source}: the register graph's inputs are fixed at {h}x{w}, the rig's registration.size "
                         f"is {rig_size[0]}x{rig_size[1]}: set registration.size to [{h}, {w}] or leave it out")
    return h, w
