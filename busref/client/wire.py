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

This module is the one definition of the format: the daemon's encoder
(:mod:`busref.runtime.wire`) builds these headers, and a client reads them with nothing but
numpy (OpenCV is imported only when a JPEG payload has to be decoded). Headers are frozen
dataclasses checked on construction; :meth:`FrameHeader.to_dict` is the JSON document.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import MISSING, dataclass, field, fields
from typing import Any, ClassVar, Literal

import numpy as np

FRAME_SCHEMA = "busref.frame/1"
STATUS_SCHEMA = "busref.status/1"

TOPICS: tuple[str, ...] = ("fused", "registered_ir", "status")
IMAGE_TOPICS: tuple[str, ...] = ("fused", "registered_ir")
Encoding = Literal["bgr8", "mono8", "jpeg"]
ENCODINGS: tuple[str, ...] = ("bgr8", "mono8", "jpeg")
RegistrationSource = Literal["fine", "coarse", "held", "prior"]
REGISTRATION_SOURCES: tuple[str, ...] = ("fine", "coarse", "held", "prior")
DaemonState = Literal["starting", "running", "degraded", "stopping"]
DAEMON_STATES: tuple[str, ...] = ("starting", "running", "degraded", "stopping")


class WireError(ValueError):
    """A received message does not follow ``busref.frame/1`` (the message says what is wrong)."""


# --------------------------------------------------------------------------- field checks
# Each returns the normalised value, or the value unchanged after appending a problem.


def _integer(problems: list[str], name: str, value: Any, *, minimum: int | None = None) -> Any:
    if isinstance(value, bool) or not isinstance(value, int):
        problems.append(f"{name}: must be an integer, got {value!r}")
    elif minimum is not None and value < minimum:
        problems.append(f"{name}: must be >= {minimum}, got {value}")
    return value


def _number(problems: list[str], name: str, value: Any, *, low: float | None = None,
            high: float | None = None) -> Any:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        problems.append(f"{name}: must be a number, got {value!r}")
        return value
    value = float(value)
    if not math.isfinite(value):
        problems.append(f"{name}: must be finite, got {value}")
    elif (low is not None and value < low) or (high is not None and value > high):
        problems.append(f"{name}: must be in [{low}, {high}], got {value}")
    return value


def _text(problems: list[str], name: str, value: Any) -> Any:
    if not isinstance(value, str):
        problems.append(f"{name}: must be a string, got {value!r}")
    return value


def _choice(problems: list[str], name: str, value: Any, choices: tuple[str, ...]) -> Any:
    if value not in choices:
        problems.append(f"{name}: must be one of {', '.join(map(repr, choices))}, got {value!r}")
    return value


def _matrix(problems: list[str], name: str, value: Any, rows: int) -> Any:
    if value is None:
        return None
    try:
        shape = [len(row) for row in value]
        numbers = [[float(x) for x in row] for row in value]
    except (TypeError, ValueError):
        problems.append(f"{name}: must be a {rows}x3 list of numbers")
        return value
    if len(shape) != rows or any(n != 3 for n in shape):
        problems.append(f"{name} must be {rows}x3, got {shape}")
    elif not all(math.isfinite(x) for row in numbers for x in row):
        problems.append(f"{name} has non-finite entries")
    return numbers


def _mapping(problems: list[str], name: str, value: Any, check: Any) -> Any:
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        problems.append(f"{name}: must be an object with string keys")
        return value
    return {k: check(problems, f"{name}.{k}", v) for k, v in value.items()}


class _Invalid(ValueError):
    """The problems of one header object; ``str()`` lists them all."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("; ".join(problems))


def _raise(problems: list[str]) -> None:
    if problems:
        raise _Invalid(problems)


def _set(obj: object, **values: Any) -> None:
    for name, value in values.items():
        object.__setattr__(obj, name, value)


def _from_dict(cls: Any, data: Any, where: str, nested: Mapping[str, Any] | None = None) -> Any:
    """``cls(**data)`` for a decoded JSON object, naming every missing, unknown or invalid field
    (prefixed with ``where``, the object's path in the header)."""
    prefix = f"{where}." if where else ""
    if not isinstance(data, Mapping):
        raise _Invalid([f"{where or 'header'}: must be a JSON object"])
    declared = fields(cls)
    problems = [f"{prefix}{f.name}: field required" for f in declared
                if f.default is MISSING and f.default_factory is MISSING and f.name not in data]
    problems += [f"{prefix}{name}: unknown field" for name in data if name not in {f.name for f in declared}]
    values = dict(data)
    for name, model in (nested or {}).items():
        if name in values:
            try:
                values[name] = model.from_dict(values[name], where=f"{prefix}{name}")
            except _Invalid as exc:
                problems += exc.problems
    if not problems:
        try:
            return cls(**values)
        except _Invalid as exc:
            problems += [f"{prefix}{problem}" for problem in exc.problems]
    raise _Invalid(problems)


# --------------------------------------------------------------------------- headers


def _doc(meaning: str, **schema: Any) -> dict[str, Any]:
    """A header field's ``metadata``: its meaning and the JSON Schema constraints the checks
    above enforce (``ge``, ``le``, ``json_schema_extra``), from which
    ``busref.runtime.header_schema`` writes the published schema and docs/runtime.md's tables."""
    return {"description": meaning, **schema}


def _rows(n: int) -> dict[str, Any]:
    """JSON Schema of an ``n`` x 3 matrix given as a list of rows."""
    row = {"type": "array", "items": {"type": "number"}, "minItems": 3, "maxItems": 3}
    return {"json_schema_extra": {"type": "array", "items": row, "minItems": n, "maxItems": n}}


@dataclass(frozen=True)
class Registration:
    """The IR->frame mapping used for this frame.

    ``affine`` (2x3) or ``homography`` (3x3), exactly one of them: maps a pixel ``(x, y)`` of the
    published frame to the IR-camera pixel it was sampled from (the coarse part; the fine
    deformable correction, when ``source`` is ``fine``, is applied on top and not sent).
    ``source``: ``fine`` (deformable grid), ``coarse`` (affine only), ``held`` (the newest
    estimate was rejected as implausible and the last good one is still in use), ``prior`` (no
    estimate has yet aligned the pairs better than the rig's prior, which is in use).
    ``age_s``: how much older the pair the estimate came from is than this frame's pair.
    ``confidence``: 0 (no trust) .. 1. On the wire the matrix not in use is absent (not ``null``).
    """

    #: Exactly one of these fields is given (and sent).
    ONE_OF: ClassVar[tuple[str, ...]] = ("affine", "homography")

    source: RegistrationSource = field(metadata=_doc(
        "`fine`: the deformable correction of the registration in force was applied on top of the matrix; "
        "`coarse`: the matrix alone (`registration.deformable: false`); `held`: the newest estimate was "
        "rejected as implausible and the last accepted one is still in use; `prior`: no estimate has yet aligned "
        "the pairs better than the rig's prior (`registration.prior_homography`), which is in use, confidence 0"))
    age_s: float = field(metadata=_doc(
        "seconds by which the pair the registration was estimated on is older than this frame's pair", ge=0))
    confidence: float = field(metadata=_doc("trust in the registration: 0 (none) to 1", ge=0, le=1))
    affine: list[list[float]] | None = field(default=None, metadata=_doc(
        "2x3 matrix as a list of rows, `A`: maps a pixel `(x, y)` of this frame to the IR-camera pixel it was "
        "sampled from, `(x_ir, y_ir) = A (x, y, 1)`; sent when the mapping is affine", **_rows(2)))
    homography: list[list[float]] | None = field(default=None, metadata=_doc(
        "3x3 matrix as a list of rows, `H`, the same mapping when it is projective: "
        "`(u, v, w) = H (x, y, 1)`, `(x_ir, y_ir) = (u / w, v / w)`; sent instead of `affine`", **_rows(3)))

    def __post_init__(self) -> None:
        p: list[str] = []
        _set(self, affine=_matrix(p, "affine", self.affine, 2),
             homography=_matrix(p, "homography", self.homography, 3),
             source=_choice(p, "source", self.source, REGISTRATION_SOURCES),
             age_s=_number(p, "age_s", self.age_s, low=0.0),
             confidence=_number(p, "confidence", self.confidence, low=0.0, high=1.0))
        if sum(getattr(self, name) is not None for name in self.ONE_OF) != 1:
            p.append("exactly one of 'affine' and 'homography' must be given")
        _raise(p)

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

    @classmethod
    def from_dict(cls, data: Any, *, where: str = "registration") -> Registration:
        return _from_dict(cls, data, where)

    def matrix(self) -> np.ndarray:
        """The mapping as a 3x3 float64 matrix (frame pixel -> IR pixel)."""
        if self.homography is not None:
            return np.asarray(self.homography, dtype=np.float64)
        return np.vstack([np.asarray(self.affine, dtype=np.float64), [0.0, 0.0, 1.0]])

    def to_dict(self) -> dict[str, Any]:
        """The JSON object: the matrix in use, never the other one as ``null`` (a client may test
        which key is present)."""
        matrix = {"affine": self.affine} if self.affine is not None else {"homography": self.homography}
        return {**matrix, "source": self.source, "age_s": self.age_s, "confidence": self.confidence}


@dataclass(frozen=True)
class FrameHeader:
    """Header of an image message (topics ``fused`` and ``registered_ir``).

    ``seq``: the pair's number, from 0 at each daemon start (a gap means frames were dropped; the
    ``fused`` and ``registered_ir`` images of one pair carry the same ``seq``); ``t_capture_ir``,
    ``t_capture_rgb``, ``t_publish``: Unix epoch seconds; ``skew_ms``: ``t_capture_ir -
    t_capture_rgb`` in milliseconds; ``model_id``: ``'<register model_id>+<fuse model_id>'`` of
    the graphs that made the frame. Each field's meaning is in its ``metadata``, from which the JSON
    Schema and the tables of docs/runtime.md are generated.
    """

    seq: int = field(metadata=_doc(
        "number of the pair this image was made from: 0 for the first pair after the daemon started, +1 per "
        "pair; the `fused` and `registered_ir` images of one pair carry the same `seq`. A gap means images "
        "were dropped; a smaller `seq` means the daemon restarted (its status `uptime_s` fell too)", ge=0))
    rig_id: str = field(metadata=_doc("the rig's `rig_id` (rig file)"))
    t_capture_ir: float = field(metadata=_doc("capture time of the pair's IR frame, Unix epoch seconds"))
    t_capture_rgb: float = field(metadata=_doc("capture time of the pair's RGB frame, Unix epoch seconds"))
    t_publish: float = field(metadata=_doc("when the image was handed to ZeroMQ, Unix epoch seconds"))
    skew_ms: float = field(metadata=_doc(
        "`t_capture_ir - t_capture_rgb` in milliseconds, within +-`pairing.max_skew_ms`"))
    width: int = field(metadata=_doc("image width in pixels (the RGB camera's width)", ge=1))
    height: int = field(metadata=_doc("image height in pixels (the RGB camera's height)", ge=1))
    encoding: Encoding = field(metadata=_doc(
        "the payload: `bgr8` = `height*width*3` bytes, rows top to bottom, B, G, R per pixel; `mono8` = "
        "`height*width` bytes; `jpeg` = a baseline JPEG of `width` x `height` with 3 components (colour "
        "`fused`, `fusion.output: colour`) or 1 (grey `fused`, and `registered_ir`)"))
    registration: Registration = field(metadata=_doc(
        "the IR-to-frame mapping this image was made with (the table of `registration` below)"))
    model_id: str = field(metadata=_doc("`<register graph model_id>+<fuse graph model_id>`"))
    schema: str = field(default=FRAME_SCHEMA, metadata=_doc(
        f"`{FRAME_SCHEMA}`; a client refuses other values"))

    def __post_init__(self) -> None:
        p: list[str] = []
        _set(self, seq=_integer(p, "seq", self.seq, minimum=0), rig_id=_text(p, "rig_id", self.rig_id),
             **{name: _number(p, name, getattr(self, name))
                for name in ("t_capture_ir", "t_capture_rgb", "t_publish", "skew_ms")},
             width=_integer(p, "width", self.width, minimum=1),
             height=_integer(p, "height", self.height, minimum=1),
             encoding=_choice(p, "encoding", self.encoding, ENCODINGS),
             model_id=_text(p, "model_id", self.model_id),
             schema=_choice(p, "schema", self.schema, (FRAME_SCHEMA,)))
        if not isinstance(self.registration, Registration):
            p.append("registration: must be a Registration")
        _raise(p)

    @property
    def channels(self) -> int:
        return 1 if self.encoding == "mono8" else 3

    @classmethod
    def from_dict(cls, data: Any, *, where: str = "") -> FrameHeader:
        return _from_dict(cls, data, where, {"registration": Registration})

    def to_dict(self) -> dict[str, Any]:
        return {"schema": self.schema, "seq": self.seq, "rig_id": self.rig_id, "t_capture_ir": self.t_capture_ir,
                "t_capture_rgb": self.t_capture_rgb, "t_publish": self.t_publish, "skew_ms": self.skew_ms,
                "width": self.width, "height": self.height, "encoding": self.encoding,
                "registration": self.registration.to_dict(), "model_id": self.model_id}


@dataclass(frozen=True)
class StatusHeader:
    """Header of a ``status`` message (published once a second, also with no frames flowing).

    ``counters`` are monotonically increasing totals since start (frames, drops, reconnects...);
    ``gauges`` are current values (fps, skew, registration age...); ``backends`` describe the
    inference backends in use (name, providers, model id) by graph, and under ``per_frame`` the
    per-frame path (``device``: the frame graph on a GPU; ``cpu``: cv2.remap + the fuse graph).
    """

    rig_id: str = field(metadata=_doc("the rig's `rig_id` (rig file)"))
    t_publish: float = field(metadata=_doc("when the status was sent, Unix epoch seconds"))
    uptime_s: float = field(metadata=_doc(
        "seconds since this daemon process started; smaller than in the status before means the daemon "
        "restarted (and image `seq` began again at 0)", ge=0))
    state: DaemonState = field(metadata=_doc(
        "`starting`: nothing published yet; `running`; `degraded`: a camera is not delivering or no fused "
        "frame was published in the last 2 s (`message` says why); `stopping`: the last status before the "
        "daemon exits"))
    counters: dict[str, int] = field(default_factory=dict, metadata=_doc(
        "totals since this daemon started, by name (the counters table below)",
        json_schema_extra={"additionalProperties": {"type": "integer", "minimum": 0}}))
    gauges: dict[str, float] = field(default_factory=dict, metadata=_doc(
        "current values, by name (the gauges table below)"))
    backends: dict[str, dict[str, object]] = field(default_factory=dict, metadata=_doc(
        "by graph (`register`, `fuse`, and `frame` when used): its backend's facts (`backend`, `graph`, "
        "`model_id`, `path`, and per backend e.g. `providers`, `device`, `threads`); under `per_frame`, the "
        "per-frame path (`path`: `cpu` or `device`, `graph`, `warp`, `reason`)"))
    message: str = field(default="", metadata=_doc(
        "the current faults, `; `-separated, e.g. `ir camera: video file /data/ir.avi was removed`; "
        "empty when there is none"))
    schema: str = field(default=STATUS_SCHEMA, metadata=_doc(f"`{STATUS_SCHEMA}`; a client refuses other values"))

    def __post_init__(self) -> None:
        p: list[str] = []
        _set(self, rig_id=_text(p, "rig_id", self.rig_id), t_publish=_number(p, "t_publish", self.t_publish),
             uptime_s=_number(p, "uptime_s", self.uptime_s, low=0.0),
             state=_choice(p, "state", self.state, DAEMON_STATES),
             counters=_mapping(p, "counters", self.counters, lambda p, n, v: _integer(p, n, v, minimum=0)),
             gauges=_mapping(p, "gauges", self.gauges, _number),
             backends=_mapping(p, "backends", self.backends, lambda p, n, v: _mapping(p, n, v, lambda *a: a[2])),
             message=_text(p, "message", self.message),
             schema=_choice(p, "schema", self.schema, (STATUS_SCHEMA,)))
        _raise(p)

    @classmethod
    def from_dict(cls, data: Any, *, where: str = "") -> StatusHeader:
        return _from_dict(cls, data, where)

    def to_dict(self) -> dict[str, Any]:
        return {"schema": self.schema, "rig_id": self.rig_id, "t_publish": self.t_publish,
                "uptime_s": self.uptime_s, "state": self.state, "counters": self.counters, "gauges": self.gauges,
                "backends": self.backends, "message": self.message}


def header_bytes(header: FrameHeader | StatusHeader) -> bytes:
    """The header frame of a message: compact UTF-8 JSON."""
    return json.dumps(header.to_dict(), separators=(",", ":"), default=str).encode()


# --------------------------------------------------------------------------- decoding


def decode_image(header: FrameHeader, payload: bytes | memoryview, *, topic: str = "fused") -> np.ndarray:
    """The image of a message: uint8 HxWx3 (bgr8, jpeg) or HxW (mono8), checked against the header.

    A ``jpeg`` payload needs OpenCV (``pip install opencv-python-headless``), imported here only.
    """
    data = np.frombuffer(payload, dtype=np.uint8)
    if header.encoding == "jpeg":
        try:
            import cv2  # only JPEG payloads need it: a raw-encoding client runs on numpy alone
        except ModuleNotFoundError:
            raise ModuleNotFoundError(
                "decoding a jpeg payload needs OpenCV: pip install opencv-python-headless "
                "(or have the publisher send raw frames: publisher.encoding: raw)", name="cv2") from None
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
    try:
        doc = json.loads(bytes(parts[1]))
        schema = doc.get("schema")
    except (ValueError, AttributeError):
        raise WireError(f"{topic} message: header is not a JSON object") from None
    expected, model = (STATUS_SCHEMA, StatusHeader) if topic == "status" else (FRAME_SCHEMA, FrameHeader)
    if schema != expected:
        raise WireError(f"{topic} message: schema {schema!r}, this client reads {expected!r}")
    try:
        return topic, model.from_dict(doc)
    except ValueError as exc:
        raise WireError(f"{topic} message: invalid header ({exc})") from None


def decode_message(
    parts: Sequence[bytes | memoryview],
) -> tuple[str, FrameHeader, np.ndarray] | tuple[str, StatusHeader, None]:
    """Parse a received multipart message; raises :class:`WireError` naming what is wrong."""
    topic, header = decode_header(parts)
    if isinstance(header, StatusHeader):
        return topic, header, None
    return topic, header, decode_image(header, parts[2], topic=topic)
