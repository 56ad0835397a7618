"""The busref TensorRT engine file: a self-describing header, then the serialized plan.

Layout (all integers little-endian)::

    MAGIC (8 bytes) | header length N (uint32) | header: N bytes of UTF-8 JSON | plan bytes

The header (:class:`EngineHeader`) records what the plan was built from and for: TensorRT and
CUDA versions, GPU name and compute capability, the ONNX file's sha256, the precision, the I/O
tensors with their optimisation-profile shapes, the normalisation and the graph's
:class:`~busref.runtime.artifact.ArtifactMetadata`, plus the plan's size and sha256 so that a truncated
or corrupted file is refused before TensorRT sees it. TensorRT plans only run on the TensorRT
version and GPU architecture they were built with; :func:`platform_mismatches` compares the
header against the running platform as a pure function, so the check is testable without
TensorRT.

This module is read by the runtime: it imports neither torch nor tensorrt.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from busref.runtime.artifact import ArtifactError, ArtifactMetadata, Normalisation

MAGIC = b"BUSRFTRT"
FORMAT = "busref.engine/1"
_LENGTH = struct.Struct("<I")
#: A header is a few kB; a larger length field means the file is not one of ours or is corrupt.
MAX_HEADER_BYTES = 1 << 20

Precision = Literal["fp32", "fp16"]


class EngineTensor(BaseModel):
    """One I/O tensor of the engine. Inputs carry the optimisation profile (min/opt/max);
    ``shape`` is the engine's declared shape (-1 where dynamic)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str
    dtype: str = "float32"
    shape: list[int]
    min: list[int] | None = None
    opt: list[int] | None = None
    max: list[int] | None = None


class EngineHeader(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    format: Literal["busref.engine/1"] = FORMAT
    tensorrt_version: str
    cuda_version: str = Field(description="CUDA runtime version of the build, e.g. '12.6'")
    gpu_name: str
    compute_capability: str = Field(description="'major.minor', e.g. '8.7' (Orin), '9.0' (H100)")
    onnx_sha256: str
    precision: Precision
    strongly_typed: bool = False
    dla_core: int | None = None
    inputs: list[EngineTensor]
    outputs: list[EngineTensor]
    normalisation: Normalisation = Normalisation()
    metadata: ArtifactMetadata
    plan_size: int = Field(ge=1)
    plan_sha256: str
    built: str = Field("", description="UTC time of the build, ISO 8601")
    built_with: dict[str, str] = Field(default_factory=dict, description="builder package versions")

    def to_json(self) -> str:
        return json.dumps(self.model_dump(by_alias=True, mode="json"), sort_keys=True)


def bytes_sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def encode_engine(header: EngineHeader, plan: bytes) -> bytes:
    """The file's bytes. ``header.plan_size`` / ``plan_sha256`` must describe ``plan``."""
    if header.plan_size != len(plan) or header.plan_sha256 != bytes_sha256(plan):
        raise ValueError("the header's plan_size/plan_sha256 do not describe this plan")
    text = header.to_json().encode("utf-8")
    return MAGIC + _LENGTH.pack(len(text)) + text + plan


def write_engine(path: str | Path, header: EngineHeader, plan: bytes) -> None:
    """Write atomically (temp file + rename): a daemon starting meanwhile never reads half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(encode_engine(header, plan))
    tmp.replace(path)


def decode_engine(data: bytes, *, source: str = "engine") -> tuple[EngineHeader, bytes]:
    """Split a file's bytes into header and plan; :class:`ArtifactError` naming ``source`` for a
    file that is not a busref engine, is truncated, or whose plan does not match its header."""
    prefix = len(MAGIC) + _LENGTH.size
    if data[: len(MAGIC)] != MAGIC:
        raise ArtifactError(f"{source}: not a busref TensorRT engine (no {MAGIC.decode()} header; a bare "
                            "TensorRT plan or another file?); build one with 'busref export engine'")
    if len(data) < prefix:
        raise ArtifactError(f"{source}: truncated inside the engine header ({len(data)} bytes)")
    (length,) = _LENGTH.unpack_from(data, len(MAGIC))
    if length > MAX_HEADER_BYTES:
        raise ArtifactError(f"{source}: header length {length} is implausible: the file is corrupt")
    if len(data) < prefix + length:
        raise ArtifactError(f"{source}: truncated: the header needs {length} bytes, "
                            f"the file has {len(data) - prefix} after the magic")
    try:
        header = EngineHeader.model_validate_json(data[prefix: prefix + length])
    except ValidationError as exc:
        raise ArtifactError(f"{source}: the engine header is not valid: {exc}") from None
    plan = data[prefix + length:]
    if len(plan) != header.plan_size:
        raise ArtifactError(f"{source}: truncated or padded: the header announces a {header.plan_size}-byte "
                            f"plan, the file holds {len(plan)} bytes")
    if bytes_sha256(plan) != header.plan_sha256:
        raise ArtifactError(f"{source}: the plan is corrupt (its sha256 differs from the header's)")
    return header, plan


def read_artifact_bytes(path: Path, what: str) -> bytes:
    """The bytes of an artifact file; :class:`ArtifactError` naming it (``what``: "engine", "ONNX file")."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise ArtifactError(f"{path}: no such {what}") from None
    except OSError as exc:
        raise ArtifactError(f"{path}: cannot read the {what}: {exc}") from None


def read_engine(path: str | Path) -> tuple[EngineHeader, bytes]:
    """Read and check an engine file (see :func:`decode_engine`)."""
    path = Path(path)
    return decode_engine(read_artifact_bytes(path, "engine file"), source=str(path))


def read_header(path: str | Path) -> EngineHeader:
    """The header alone (the plan is still checked: a stale or broken file must not pass)."""
    return read_engine(path)[0]


@dataclass(frozen=True)
class Platform:
    """What a plan runs on: TensorRT version, CUDA runtime version, GPU name and compute capability."""

    tensorrt_version: str
    cuda_version: str
    gpu_name: str
    compute_capability: str

    def describe(self) -> str:
        return (f"TensorRT {self.tensorrt_version} / CUDA {self.cuda_version} on {self.gpu_name} "
                f"(compute capability {self.compute_capability})")


def header_platform(header: EngineHeader) -> Platform:
    return Platform(header.tensorrt_version, header.cuda_version, header.gpu_name, header.compute_capability)


def _major(version: str) -> str:
    return version.split(".", 1)[0]


def platform_mismatches(built: Platform, running: Platform) -> tuple[list[str], list[str]]:
    """Why a plan built on ``built`` cannot (errors) or may not run well (warnings) on ``running``.

    Errors: another TensorRT version (plans are tied to the exact TensorRT build that made them)
    or another compute capability (kernels are compiled per GPU architecture; busref does not
    build hardware-compatible plans). Warnings: another GPU model of the same architecture (the
    plan runs, tuned for the other chip) or another CUDA major version.
    """
    errors: list[str] = []
    warnings: list[str] = []
    if built.tensorrt_version != running.tensorrt_version:
        errors.append(f"TensorRT {built.tensorrt_version} built it, this machine runs TensorRT "
                      f"{running.tensorrt_version}")
    if built.compute_capability != running.compute_capability:
        errors.append(f"it was built for compute capability {built.compute_capability} ({built.gpu_name}), "
                      f"this GPU is {running.gpu_name} with compute capability {running.compute_capability}")
    elif built.gpu_name != running.gpu_name:
        warnings.append(f"built on {built.gpu_name}, running on {running.gpu_name} (same architecture: it "
                        "runs, with tactics tuned for the other GPU; rebuild for best speed)")
    if _major(built.cuda_version) != _major(running.cuda_version):
        warnings.append(f"built with CUDA {built.cuda_version}, running with CUDA {running.cuda_version}")
    return errors, warnings


def mismatch_message(source: str, built: Platform, running: Platform, errors: list[str]) -> str:
    """One message naming both platforms and the fix."""
    return (f"{source}: this engine cannot run here: {'; '.join(errors)}. Built for {built.describe()}; "
            f"running {running.describe()}. Rebuild it on this machine with 'busref export engine'.")
