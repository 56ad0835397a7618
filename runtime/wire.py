"""The ``busref.frame/1`` message format: what the daemon publishes and any-language clients read.

Every message is a ZeroMQ multipart message of three frames::

    [topic, header, payload]

``topic``   ASCII bytes: ``fused`` | ``registered_ir`` | ``status`` (subscribe by prefix).
``header``  UTF-8 JSON object (schema ``busref.frame/1`` for images, ``busref.status/1`` for status).
``payload`` the image: ``bgr8`` = height*width*3 bytes, row-major, B G R interleaved;
            ``mono8`` = height*width bytes; ``jpeg`` = a baseline JPEG file of width x height.
            Empty for ``status``.

Timestamps are wall-clock seconds since the Unix epoch (float): compare them with the
subscriber's own clock for latency (across hosts, only as good as their clock sync).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Literal, TypeVar

import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

FRAME_SCHEMA = "busref.frame/1"
STATUS_SCHEMA = "busref.status/1"

Topic = Literal["fused", "registered_ir", "status"]
TOPICS: tuple[str, ...] = ("fused", "registered_ir", "status")
IMAGE_TOPICS: tuple[str, ...] = ("fused", "registered_ir")
Encoding = Literal["bgr8", "mono8", "jpeg"]
RegistrationSource = Literal["fine", "coarse", "held"]


_Header = TypeVar("_Header", bound=BaseModel)


class WireError(ValueError):
    """A received message does not follow ``busref.frame/1`` (the message says what is wrong)."""


def _matrix(value: list[list[float]] | None, rows: int, name: str) -> list[list[float]] | None:
    if value is None:
        return None
    if len(value) != rows or any(len(row) != 3 for row in value):
        raise ValueError(f"{name} must be {rows}x3, got {[len(r) for r in value]}")
    if not all(math.isfinite(x) for row in value for x in row):
        raise ValueError(f"{name} has non-finite entries")
    return value


class Registration(BaseModel):
    """The IR->frame mapping used for this frame.

    ``affine`` (2x3) or ``homography`` (3x3), exactly one of them: maps a pixel ``(x, y)`` of the
    published frame to the IR-camera pixel it was sampled from (the coarse part; the fine
    deformable correction, when ``source`` is ``fine``, is applied on top and not sent).
    ``source``: ``fine`` (deformable grid), ``coarse`` (affine only), ``held`` (the newest
    estimate was rejected as implausible and the last good one is still in use).
    ``age_s``: how much older the pair the estimate came from is than this frame's pair.
    ``confidence``: 0 (no trust) .. 1.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    affine: list[list[float]] | None = None
    homography: list[list[float]] | None = None
    source: RegistrationSource
    age_s: float = Field(ge=0.0)
    confidence: float = Field(ge=0.0, le=1.0)

    @field_validator("affine")
    @classmethod
    def _affine_shape(cls, v: list[list[float]] | None) -> list[list[float]] | None:
        return _matrix(v, 2, "affine")

    @field_validator("homography")
    @classmethod
    def _homography_shape(cls, v: list[list[float]] | None) -> list[list[float]] | None:
        return _matrix(v, 3, "homography")

    @model_validator(mode="after")
    def _exactly_one(self) -> Registration:
        if (self.affine is None) == (self.homography is None):
            raise ValueError("exactly one of 'affine' and 'homography' must be given")
        return self

    @classmethod
    def from_matrix(
        cls, matrix: np.ndarray, *, source: RegistrationSource, age_s: float, confidence: float
    ) -> Registration:
        """Build from a 3x3 pixel transform: sent as ``affine`` when its last row is (0, 0, 1)."""
        m = np.asarray(matrix, dtype=np.float64)
        m = m / m[2, 2]
        rounded = [[round(float(x), 9) for x in row] for row in m]
        common = {"source": source, "age_s": max(0.0, age_s), "confidence": min(1.0, max(0.0, confidence))}
        if np.allclose(m[2], (0.0, 0.0, 1.0), atol=1e-12):
            return cls(affine=rounded[:2], **common)
        return cls(homography=rounded, **common)

    def matrix(self) -> np.ndarray:
        """The mapping as a 3x3 float64 matrix (frame pixel -> IR pixel)."""
        if self.homography is not None:
            return np.asarray(self.homography, dtype=np.float64)
        return np.vstack([np.asarray(self.affine, dtype=np.float64), [0.0, 0.0, 1.0]])


class FrameHeader(BaseModel):
    """Header of an image message (topics ``fused`` and ``registered_ir``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    schema_: Literal["busref.frame/1"] = Field(FRAME_SCHEMA, alias="schema")
    seq: int = Field(ge=0, description="per-topic sequence number; a gap means frames were dropped")
    rig_id: str
    t_capture_ir: float = Field(description="IR frame capture time, Unix epoch seconds")
    t_capture_rgb: float = Field(description="RGB frame capture time, Unix epoch seconds")
    t_publish: float = Field(description="publish time, Unix epoch seconds")
    skew_ms: float = Field(description="t_capture_ir - t_capture_rgb in milliseconds")
    width: int = Field(gt=0)
    height: int = Field(gt=0)
    encoding: Encoding
    registration: Registration
    model_id: str = Field(description="'<register model_id>+<fuse model_id>' of the graphs that made it")

    @property
    def channels(self) -> int:
        return 1 if self.encoding == "mono8" else 3


class StatusHeader(BaseModel):
    """Header of a ``status`` message (published once a second, also with no frames flowing).

    ``counters`` are monotonically increasing totals since start (frames, drops, reconnects...);
    ``gauges`` are current values (fps, skew, registration age...); ``backends`` describe the
    inference backends in use (name, providers, model id) by graph, and under ``per_frame`` the
    per-frame path (``device``: the frame graph on a GPU; ``cpu``: cv2.remap + the fuse graph).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    schema_: Literal["busref.status/1"] = Field(STATUS_SCHEMA, alias="schema")
    rig_id: str
    t_publish: float
    uptime_s: float = Field(ge=0.0)
    state: Literal["starting", "running", "degraded", "stopping"]
    counters: dict[str, int] = Field(default_factory=dict)
    gauges: dict[str, float] = Field(default_factory=dict)
    backends: dict[str, dict[str, object]] = Field(default_factory=dict)
    message: str = ""


def _header_bytes(header: BaseModel) -> bytes:
    return json.dumps(header.model_dump(by_alias=True, mode="json"), separators=(",", ":")).encode()


def encode_image(image: np.ndarray, encoding: Encoding, *, jpeg_quality: int = 85) -> bytes | memoryview:
    """Payload bytes for ``image`` (uint8 HxWx3 BGR or HxW gray); raw encodings are not copied."""
    if image.dtype != np.uint8:
        raise ValueError(f"image must be uint8, got {image.dtype}")
    expect_channels = 1 if encoding == "mono8" else 3
    channels = 1 if image.ndim == 2 else image.shape[2]
    if encoding != "jpeg" and channels != expect_channels:
        raise ValueError(f"encoding {encoding} needs {expect_channels} channel(s), image has {channels}")
    if encoding == "jpeg":
        ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality)])
        if not ok:
            raise ValueError("JPEG encoding failed")
        return buf.tobytes()
    return memoryview(np.ascontiguousarray(image)).cast("B")


def encode_frame(
    topic: str, header: FrameHeader, image: np.ndarray, *, jpeg_quality: int = 85
) -> list[bytes | memoryview]:
    """The three message parts for an image; ``header.width/height/encoding`` must describe ``image``."""
    if topic not in IMAGE_TOPICS:
        raise ValueError(f"topic {topic!r} is not an image topic {IMAGE_TOPICS}")
    if image.shape[:2] != (header.height, header.width):
        raise ValueError(
            f"image is {image.shape[1]}x{image.shape[0]}, header says {header.width}x{header.height}"
        )
    payload = encode_image(image, header.encoding, jpeg_quality=jpeg_quality)
    return [topic.encode(), _header_bytes(header), payload]


def encode_status(header: StatusHeader) -> list[bytes]:
    return [b"status", _header_bytes(header), b""]


def _parse_header(model: type[_Header], topic: str, raw: bytes) -> _Header:
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '<header>'}: {err['msg']}" for err in exc.errors()
        )
        raise WireError(f"{topic} message: invalid header ({problems})") from None


def decode_image(header: FrameHeader, payload: bytes | memoryview, *, topic: str = "fused") -> np.ndarray:
    """The image of a message: uint8 HxWx3 (bgr8, jpeg) or HxW (mono8), checked against the header."""
    data = np.frombuffer(payload, dtype=np.uint8)
    if header.encoding == "jpeg":
        image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
        if image is None:
            raise WireError(f"{topic} seq {header.seq}: payload is not a decodable JPEG ({data.size} bytes)")
        if image.shape[:2] != (header.height, header.width):
            raise WireError(
                f"{topic} seq {header.seq}: JPEG is {image.shape[1]}x{image.shape[0]}, "
                f"header says {header.width}x{header.height}"
            )
        return image
    expected = header.width * header.height * header.channels
    if data.size != expected:
        raise WireError(
            f"{topic} seq {header.seq}: {header.encoding} payload has {data.size} bytes, "
            f"expected {expected} for {header.width}x{header.height}"
        )
    shape = (header.height, header.width) if header.channels == 1 else (header.height, header.width, 3)
    return data.reshape(shape)


def decode_header(parts: Sequence[bytes | memoryview]) -> tuple[str, FrameHeader | StatusHeader]:
    """Check the shape of a received message and parse its topic and header (the payload is left)."""
    if len(parts) != 3:
        raise WireError(f"message has {len(parts)} part(s), busref.frame/1 has 3 [topic, header, payload]")
    try:
        topic = bytes(parts[0]).decode("ascii")
    except UnicodeDecodeError:
        raise WireError("topic is not ASCII") from None
    if topic not in TOPICS:
        raise WireError(f"unknown topic {topic!r}, expected one of {TOPICS}")
    raw = bytes(parts[1])
    try:
        schema = json.loads(raw).get("schema")
    except (ValueError, AttributeError):
        raise WireError(f"{topic} message: header is not a JSON object") from None
    expected, model = (STATUS_SCHEMA, StatusHeader) if topic == "status" else (FRAME_SCHEMA, FrameHeader)
    if schema != expected:
        raise WireError(f"{topic} message: schema {schema!r}, this client reads {expected!r}")
    return topic, _parse_header(model, topic, raw)


def decode_message(
    parts: Sequence[bytes | memoryview],
) -> tuple[str, FrameHeader, np.ndarray] | tuple[str, StatusHeader, None]:
    """Parse a received multipart message; raises :class:`WireError` naming what is wrong."""
    topic, header = decode_header(parts)
    if isinstance(header, StatusHeader):
        return topic, header, None
    return topic, header, decode_image(header, parts[2], topic=topic)
