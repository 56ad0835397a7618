"""Pydantic v2 models of a camera rig: what ``busref run`` reads from a rig YAML file.

Every model forbids unknown keys (a typo is an error, not a silently ignored option) and is
frozen: the daemon receives a validated, immutable description of the rig.

Conventions
    * Sizes are given as ``width``/``height`` for cameras (what the camera delivers) and as
      ``(H, W)`` for network resolutions (the tensor layout).
    * Times in the file are milliseconds (``*_ms``) or Hertz (``*_hz``).
    * Relative paths resolve against the folder of the rig file when it is loaded with
      :func:`busref.rig_config.load_rig` (validation context ``{"base_dir": folder}``).
    * ``registration.prior_homography`` maps IR pixel coordinates to RGB pixel coordinates
      (``x_rgb ~ H @ [x_ir, y_ir, 1]``), at the cameras' configured sizes. Unset, it is the
      same-field-of-view map :func:`same_view_homography` (:attr:`RigConfig.prior_homography`).
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from busref.rig_config.resources import MODALITIES, Modality, default_model_path

#: Registration cadence used when a rig file sets neither ``every_n_pairs`` nor ``rate_hz``.
DEFAULT_REGISTRATION_RATE_HZ = 6.0

def _resolve_path(value: Path, info: ValidationInfo) -> Path:
    """Expand ``~`` and anchor a relative path at the rig file's folder (when known)."""
    value = value.expanduser()
    base_dir = (info.context or {}).get("base_dir")
    if not value.is_absolute() and base_dir is not None:
        value = Path(os.path.normpath(Path(base_dir) / value))
    return value


#: A filesystem path; relative paths are resolved against the rig file's folder.
RigPath = Annotated[Path, AfterValidator(_resolve_path)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _multiple_of_8(size: tuple[int, int]) -> tuple[int, int]:
    if any(s % 8 for s in size):
        raise ValueError(f"both entries of (H, W) must be multiples of 8, got {list(size)}")
    return size


#: A network resolution ``(H, W)``, both positive multiples of 8 (the networks downsample by 8).
NetSize = Annotated[tuple[Annotated[int, Field(ge=8)], Annotated[int, Field(ge=8)]],
                    AfterValidator(_multiple_of_8)]


# --------------------------------------------------------------------------- sources


def _fourcc(value: str) -> str:
    """Pad a FOURCC to 4 characters ("Y16" -> "Y16 ", as V4L2 spells it)."""
    if not 1 <= len(value) <= 4 or not value.isascii():
        raise ValueError(f"a FOURCC is 1 to 4 ASCII characters, got {value!r}")
    return value.ljust(4)


class V4L2Source(_Model):
    """A Video4Linux2 device opened through OpenCV (``cv2.CAP_V4L2``)."""

    kind: Literal["v4l2"]
    device: Annotated[int, Field(ge=0)] | str = Field(
        description="device path such as /dev/video0 or /dev/v4l/by-id/..., or an index")
    fourcc: Annotated[str, AfterValidator(_fourcc)] | None = Field(
        None, description="pixel format to request, e.g. MJPG, YUYV, or Y16 for 16-bit radiometric "
                          "thermal (then delivered unconverted as uint16); None keeps the driver's default")


class GStreamerSource(_Model):
    """A GStreamer pipeline ending in ``appsink``, opened with ``cv2.CAP_GSTREAMER``."""

    kind: Literal["gstreamer"]
    pipeline: str = Field(description="gst-launch syntax ending in an appsink, e.g. "
                                      "'nvarguscamerasrc ! ... ! videoconvert ! appsink drop=true'")

    @field_validator("pipeline")
    @classmethod
    def _ends_in_appsink(cls, value: str) -> str:
        if "appsink" not in value:
            raise ValueError("the pipeline must end in an appsink element for OpenCV to read it")
        return value


class VideoSource(_Model):
    """A video file replayed at the camera's fps (frames are not read faster than real time)."""

    kind: Literal["video"]
    path: RigPath
    loop: bool = Field(True, description="restart at the end; otherwise the source ends and is retried")


class FolderSource(_Model):
    """A folder of images replayed in sorted name order at the camera's fps.

    Two folder sources with the same fps show image ``i`` at the same instant (they share a
    playback clock), so an image-pair folder such as ``ir/NAME.png`` + ``rgb/NAME.png`` pairs up.
    """

    kind: Literal["folder"]
    path: RigPath
    pattern: str = Field("*.png", description="glob pattern of the images inside the folder")
    loop: bool = True


class Misalignment(_Model):
    """The synthetic rig's IR misalignment relative to RGB (IR pixels, about the image centre)."""

    rotation_deg: float = Field(2.0, ge=-20, le=20)
    scale: float = Field(1.03, gt=0.7, lt=1.4, description="IR scale relative to RGB")
    shift_px: tuple[float, float] = Field((12.0, -8.0), description="(x, y) shift in IR pixels")
    elastic_px: float = Field(2.0, ge=0, le=20, description="amplitude of a smooth non-rigid term")


class SyntheticSource(_Model):
    """A rendered scene: warm objects bright in IR, texture visible in RGB, moving over time.

    When both cameras are synthetic they render the same scene, so ``seed``, ``objects`` and
    ``speed_px_s`` must agree; only the IR camera applies ``misalignment``.
    """

    kind: Literal["synthetic"]
    seed: int = 0
    objects: int = Field(5, ge=0, le=32, description="number of warm moving objects")
    speed_px_s: float = Field(40.0, ge=0, le=1000, description="typical object speed (pixels/s)")
    misalignment: Misalignment = Misalignment()


Source = Annotated[
    V4L2Source | GStreamerSource | VideoSource | FolderSource | SyntheticSource,
    Field(discriminator="kind"),
]

# --------------------------------------------------------------------------- thermal


class FixedWindow(_Model):
    """Map raw counts ``[low, high]`` linearly to ``[0, 1]`` (clipped)."""

    mode: Literal["fixed"]
    low: float = Field(ge=0)
    high: float

    @model_validator(mode="after")
    def _ordered(self) -> FixedWindow:
        if self.high <= self.low:
            raise ValueError(f"high ({self.high}) must be above low ({self.low})")
        return self


class PercentileWindow(_Model):
    """Window from per-frame percentiles, smoothed over time so the image does not flicker."""

    mode: Literal["percentile"]
    low_pct: float = Field(1.0, ge=0, lt=100)
    high_pct: float = Field(99.0, gt=0, le=100)
    smoothing: float = Field(0.1, gt=0, le=1,
                             description="EMA weight of the newest frame's window (1 = no smoothing)")
    min_span: float = Field(32.0, gt=0, description="smallest window width in raw counts, so a "
                                                    "uniform scene does not amplify noise")

    @model_validator(mode="after")
    def _ordered(self) -> PercentileWindow:
        if self.high_pct <= self.low_pct:
            raise ValueError(f"high_pct ({self.high_pct}) must be above low_pct ({self.low_pct})")
        return self


ThermalConfig = Annotated[FixedWindow | PercentileWindow, Field(discriminator="mode")]

# --------------------------------------------------------------------------- cameras


class CameraConfig(_Model):
    """One camera: where frames come from and what they look like."""

    source: Source
    width: int = Field(gt=0, le=8192, description="frame width delivered downstream (frames of another "
                                                  "size are resized)")
    height: int = Field(gt=0, le=8192)
    fps: float = Field(gt=0, le=1000, description="frame rate requested from a live source, "
                                                  "or the replay rate of files and synthetic scenes")
    latency_offset_ms: float = Field(0.0, ge=0, le=1000,
                                     description="constant sensor-to-grab delay subtracted from the "
                                                 "grab timestamp")
    buffer_frames: int = Field(2, ge=1, le=64, description="bounded queue between the capture thread "
                                                           "and its consumer; the oldest frame is dropped")


class IRCameraConfig(CameraConfig):
    """The IR camera: a camera, what it sees (``modality``) and its normalisation from raw counts to [0, 1]."""

    modality: Modality = Field(
        "thermal", description="thermal (long-wave IR: warm objects bright) or nir (near-infrared: reflected "
                               "light, vegetation bright); the graphs must have been trained for it")
    thermal: ThermalConfig = PercentileWindow(mode="percentile")


class CamerasConfig(_Model):
    ir: IRCameraConfig
    rgb: CameraConfig

    @model_validator(mode="after")
    def _same_synthetic_scene(self) -> CamerasConfig:
        ir, rgb = self.ir.source, self.rgb.source
        if isinstance(ir, SyntheticSource) and isinstance(rgb, SyntheticSource):
            for name in ("seed", "objects", "speed_px_s"):
                if getattr(ir, name) != getattr(rgb, name):
                    raise ValueError(f"both synthetic cameras render one scene: source.{name} differs "
                                     f"(ir {getattr(ir, name)}, rgb {getattr(rgb, name)})")
        if isinstance(rgb, SyntheticSource) and "misalignment" in rgb.model_fields_set:
            raise ValueError("rgb.source.misalignment: only the IR camera is misaligned "
                             "(RGB is the reference)")
        return self


# --------------------------------------------------------------------------- processing


class PairingConfig(_Model):
    max_skew_ms: float = Field(20.0, gt=0, le=1000,
                               description="largest IR/RGB capture-time difference accepted for a pair")


class Plausibility(_Model):
    """Limits beyond which a new registration is rejected (and the last good one held)."""

    max_jump_px: float = Field(40.0, gt=0, description="largest corner displacement (RGB pixels) "
                                                       "between consecutive accepted estimates")
    max_rotation_deg: float = Field(15.0, gt=0, le=180, description="largest rotation relative to the prior")
    max_scale_change: float = Field(0.25, gt=0, lt=1,
                                    description="largest |scale - 1| relative to the prior")
    min_confidence: float = Field(0.2, ge=0, le=1, description="estimates below this confidence are rejected")
    must_agree: bool = Field(True, description="keep a new estimate only if the registered IR's edges agree with "
                                               "the visible image's better than with the registration in force "
                                               "(by agree_gain; before any, at least as well as with the prior) "
                                               "on the same pair")
    # 0.01: on a still rig (scripts/eval_still_rig.py, 8 held-out RoadScene train pairs, 12 runs,
    # the register graph with its 4-cell Lucas-Kanade window) the mean error falls 4.79 -> 4.40 px
    # by the 5th run and stays there (gain 0: 4.34, 0.005: 4.35, 0.02: 4.40), while at 0.03 no
    # later estimate was taken (4.79 throughout). Above 0, a live pair's noise alone does not swap
    # the registration in force.
    agree_gain: float = Field(0.01, ge=0, le=1, description="with must_agree, a new estimate replaces the "
                              "registration in force only if its edges agree better by at least this fraction")


Matrix3 = tuple[tuple[float, float, float], tuple[float, float, float], tuple[float, float, float]]


def same_view_homography(ir_size: tuple[int, int], rgb_size: tuple[int, int]) -> Matrix3:
    """IR->RGB pixel homography of two cameras with the same field of view (sizes as (width, height)).

    The IR image rectangle is stretched onto the RGB one, per axis, with pixel centres at integer
    coordinates (the edges at -0.5 and W - 0.5, as ``cv2.resize`` has them):
    ``x_rgb = (x_ir + 0.5) * W_rgb / W_ir - 0.5``. Equal sizes give the identity.
    """
    sx, sy = rgb_size[0] / ir_size[0], rgb_size[1] / ir_size[1]
    return ((sx, 0.0, 0.5 * sx - 0.5), (0.0, sy, 0.5 * sy - 0.5), (0.0, 0.0, 1.0))


class RegistrationConfig(_Model):
    """When and how the IR->RGB registration is (re-)estimated.

    Exactly one of ``every_n_pairs`` and ``rate_hz`` is set after validation; when a file sets
    neither, ``rate_hz`` is :data:`DEFAULT_REGISTRATION_RATE_HZ`.
    """

    size: NetSize | None = Field(None, description="(H, W) the register network runs at; unset: the register "
                                 "graph's own (its metadata's registration_size: 384x512 for both shipped "
                                 "graphs)")
    every_n_pairs: int | None = Field(None, ge=1, description="register every N-th pair")
    rate_hz: float | None = Field(None, gt=0, le=1000, description="register at this rate")
    smoothing: float = Field(0.5, gt=0, le=1,
                             description="EMA weight of a new accepted estimate (1 = no smoothing); with a "
                             "track graph, of the track graph's estimates: a register-graph estimate is taken whole")
    deformable: bool = Field(True, description="use the fine (deformable) grid; False = affine only")
    prior_homography: Matrix3 | None = Field(
        None, description="IR->RGB pixel homography from calibration (busref calibrate); unset = the "
                          "cameras see the same field of view (the IR image stretched onto the RGB image)")
    hold_last_good: bool = Field(True, description="keep the last accepted estimate when a new one "
                                                   "is implausible")
    warm_start: bool = Field(True, description="each estimate starts from the registration in force (the IR is "
                                               "pre-warped by it), so a still rig's registration is refined "
                                               "over frames instead of recomputed from scratch")
    register_every: int = Field(
        10, ge=1, description="with a track graph (inference.track_model) and warm_start: every register_every-th "
        "run is the whole register graph, the runs between refine the registration in force with the track graph "
        "(a few Lucas-Kanade iterations, no coarse search; 7x faster for the thermal graphs); 1 = every run the "
        "register graph")
    plausibility: Plausibility = Plausibility()

    @model_validator(mode="before")
    @classmethod
    def _default_cadence(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("every_n_pairs") is None and data.get("rate_hz") is None:
            data = {**data, "rate_hz": DEFAULT_REGISTRATION_RATE_HZ}
        return data

    @model_validator(mode="after")
    def _check(self) -> RegistrationConfig:
        if self.every_n_pairs is not None and self.rate_hz is not None:
            raise ValueError("set either every_n_pairs or rate_hz, not both")
        h = self.prior_homography
        if h is None:  # the same-view default is finite and invertible by construction
            return self
        if not all(math.isfinite(v) for row in h for v in row):
            raise ValueError("prior_homography has a non-finite entry")
        det = (h[0][0] * (h[1][1] * h[2][2] - h[1][2] * h[2][1])
               - h[0][1] * (h[1][0] * h[2][2] - h[1][2] * h[2][0])
               + h[0][2] * (h[1][0] * h[2][1] - h[1][1] * h[2][0]))
        if abs(det) < 1e-9:
            raise ValueError("prior_homography is singular (determinant ~ 0)")
        return self


class FusionConfig(_Model):
    output: Literal["colour", "gray"] = Field(
        "colour", description="colour: fused luminance with the RGB chroma (bgr8); gray: mono8")
    size: NetSize | None = Field(None, description="(H, W) the fuse network runs at; None = the RGB "
                                                   "frame size rounded down to multiples of 8")


class InferenceConfig(_Model):
    backend: Literal["auto", "onnxruntime", "tensorrt"] = Field(
        "auto", description="auto = TensorRT when its engines load, else ONNX Runtime")
    register_model: RigPath = Field(default_factory=lambda: default_model_path("register"))
    fuse_model: RigPath = Field(default_factory=lambda: default_model_path("fuse"))
    frame_model: RigPath = Field(default_factory=lambda: default_model_path("frame"),
                                 description="the frame graph (warp + fusion in one call), used on GPU "
                                             "backends; optional: without the file the IR is warped on the CPU")
    track_model: RigPath = Field(default_factory=lambda: default_model_path("track"),
                                 description="the track graph (the registration in force refined on a new pair, "
                                             "registration.register_every); optional: without the file every "
                                             "run is a register-graph run")
    register_engine: RigPath | None = Field(None, description="TensorRT engine for the register graph")
    track_engine: RigPath | None = None
    fuse_engine: RigPath | None = None
    frame_engine: RigPath | None = None
    threads: int = Field(0, ge=0, le=256, description="intra-op threads; 0 = the backend's default")


# --------------------------------------------------------------------------- publishing

_ENDPOINT = re.compile(r"^(tcp://(\*|[A-Za-z0-9.\-]+|\[[0-9A-Fa-f:]+\]):(?P<port>\d{1,5})|ipc://.+)$")


def check_endpoints(value: list[str]) -> list[str]:
    """``value`` if every entry is a ``tcp://HOST:PORT`` (port 0..65535) or ``ipc://PATH`` endpoint
    and none is listed twice; else ValueError naming the bad ones (``--endpoint`` is checked so too)."""
    matches = [(e, _ENDPOINT.match(e)) for e in value]
    bad = [e for e, m in matches if m is None or (m["port"] is not None and int(m["port"]) > 65535)]
    if bad:
        raise ValueError(f"not a tcp://HOST:PORT or ipc://PATH endpoint: {', '.join(bad)}")
    if len(set(value)) != len(value):
        raise ValueError("an endpoint is listed twice")
    return value


class CurveConfig(_Model):
    """ZeroMQ CURVE encryption + client allow-list (keys made by ``busref keys generate``)."""

    enabled: bool = False
    server_secret_key_file: RigPath | None = Field(None, description="the publisher's .key_secret file")
    allowed_clients_dir: RigPath | None = Field(None, description="folder of allowed clients' .key files")

    @model_validator(mode="after")
    def _keys_when_enabled(self) -> CurveConfig:
        if self.enabled and (self.server_secret_key_file is None or self.allowed_clients_dir is None):
            raise ValueError("curve.enabled needs server_secret_key_file and allowed_clients_dir")
        return self


class PublisherConfig(_Model):
    endpoints: list[str] = Field(["tcp://127.0.0.1:5555"], min_length=1,
                                 description="ZeroMQ bind endpoints: tcp://HOST:PORT or ipc://PATH")
    encoding: Literal["raw", "jpeg"] = "jpeg"
    jpeg_quality: int = Field(85, ge=1, le=100)
    hwm: int = Field(2, ge=1, le=1000, description="send queue per subscriber, in pairs' worth of messages "
                                                   "(beyond it that subscriber's messages are dropped)")
    publish_registered_ir: bool = Field(False, description="also publish the registered IR on its own topic")
    curve: CurveConfig = CurveConfig()

    @field_validator("endpoints")
    @classmethod
    def _endpoints(cls, value: list[str]) -> list[str]:
        return check_endpoints(value)


class MetricsConfig(_Model):
    port: int = Field(0, ge=0, le=65535, description="Prometheus HTTP port; 0 = metrics off")
    host: str = "127.0.0.1"


class LoggingConfig(_Model):
    # ``json`` would shadow a BaseModel method; the alias keeps the file key short.
    model_config = ConfigDict(extra="forbid", frozen=True, serialize_by_alias=True, validate_by_name=True)

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    json_: bool = Field(False, alias="json", description="one JSON object per log line")

    @field_validator("level", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value


class RigConfig(_Model):
    """A whole rig: two cameras and how their frames become a published fused stream."""

    rig_id: str = Field(pattern=r"^[A-Za-z0-9_.\-]+$", max_length=64,
                        description="name carried in every published header")
    cameras: CamerasConfig
    pairing: PairingConfig = PairingConfig()
    registration: RegistrationConfig = RegistrationConfig()
    fusion: FusionConfig = FusionConfig()
    inference: InferenceConfig = InferenceConfig()
    publisher: PublisherConfig = PublisherConfig()
    metrics: MetricsConfig = MetricsConfig()
    logging: LoggingConfig = LoggingConfig()

    @model_validator(mode="before")
    @classmethod
    def _modality_weights(cls, data: Any) -> Any:
        """Graphs the file does not name are the shipped ones of the IR camera's modality."""
        try:
            modality = data["cameras"]["ir"].get("modality", "thermal")
        except (TypeError, KeyError, AttributeError):
            return data
        if modality not in MODALITIES or modality == "thermal":
            return data
        inference = data.get("inference") or {}
        if not isinstance(inference, dict):
            return data
        defaults = {f"{g}_model": str(default_model_path(g, modality)) for g in ("register", "track", "fuse", "frame")}
        return {**data, "inference": {**defaults, **inference}}

    @property
    def prior_homography(self) -> Matrix3:
        """The IR->RGB prior in force: ``registration.prior_homography`` when the file sets it,
        else the same-field-of-view map between the two cameras' configured sizes."""
        explicit = self.registration.prior_homography
        if explicit is not None:
            return explicit
        cams = self.cameras
        return same_view_homography((cams.ir.width, cams.ir.height), (cams.rgb.width, cams.rgb.height))
