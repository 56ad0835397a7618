"""ONNX graph -> self-describing TensorRT engine (``busref export engine``). No torch.

The decisions are pure functions, testable without TensorRT: the optimisation profile
(:func:`profile_for`, from flags or a rig file; :func:`input_shapes` turns it into each input's
shapes, the ``frame`` graph's IR input getting its own, :func:`ir_profile_for`), the precision
strategy per TensorRT version (:func:`precision_plan`), the layers kept in FP32
(:func:`warp_layers`) and whether an existing engine is still current (:func:`stale_reason`).
:func:`build` applies them through TensorRT's Python API; :func:`verify` compares an engine with
ONNX Runtime on sample pairs.

TensorRT 10 vs 11 (the gate is :data:`STRONG_TYPING_FROM`): TensorRT 10 builds "weakly typed"
networks where ``BuilderFlag.FP16`` lets the builder pick FP16 kernels per layer; layers are
kept in FP32 with per-layer precision plus ``OBEY_PRECISION_CONSTRAINTS``. TensorRT 11 removed
those flags and the INT8 calibrators: networks are strongly typed and precision comes from the
ONNX types. There, FP16 builds use a copy of the graph whose convolutions are FP16 between
explicit casts (:mod:`busref.export.onnx_fp16`). Either way the warps (GridSample, and the networks'
gather-based feature warps, ``busref.models.geometry.warp_features``) and the grid arithmetic feeding
them stay FP32 (in the ``frame`` graph the grid is an FP32 network input read
by GridSample alone). JetPack 6 ships TensorRT 10.3, so both paths are needed.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from busref.conventions import file_sha256
from busref.export.onnx_fp16 import in_fp32_scope
from busref.export.samples import SamplePair, graph_feed
from busref.runtime.artifact import GraphKind, TensorSpec, registration_size_for
from busref.runtime.engine_header import (
    EngineHeader,
    EngineTensor,
    Platform,
    Precision,
    bytes_sha256,
    read_header,
    write_engine,
)

log = logging.getLogger(__name__)

HW = tuple[int, int]

#: First TensorRT major version without weak typing (no FP16 flag, no calibrators).
STRONG_TYPING_FROM = 11
#: Oldest TensorRT this builder targets (named-tensor API, JetPack 6's 10.3).
MIN_TENSORRT = 10
#: Fuse-graph profile without flags or rig: 1/4 VGA up to 1080p, tuned for 640x512.
DEFAULT_FUSE_PROFILE = ((128, 160), (512, 640), (1080, 1920))
#: Profile of the frame graph's IR input (the IR camera's own size) without a rig: thermal
#: cores from 160x120 to 1280x1024, tuned for 640x512.
DEFAULT_IR_PROFILE = ((120, 160), (512, 640), (1024, 1280))
#: Largest |engine - ONNX Runtime| accepted by ``--verify`` per output. FP32 engines differ by
#: kernel summation order only; FP16 convolutions move the fused image by a few 1/255 steps and
#: the grid by a small fraction of a pixel (normalised units: 1e-2 is 1.6 px at 320 wide).
VERIFY_TOLERANCE: dict[str, dict[str, float]] = {
    "fp32": {"theta": 1e-3, "grid": 1e-3, "fused": 1e-3},
    "fp16": {"theta": 1e-2, "grid": 1e-2, "fused": 3e-2},
}
#: TensorRT layer kinds / ONNX op types: samplers are the warp; barriers end the FP32 region
#: (convolutions are where FP16 pays, and their outputs are cast to FP32 where the warp reads them).
SAMPLER_KINDS = frozenset({"GRID_SAMPLE", "GridSample", "GATHER", "GatherElements"})
BARRIER_KINDS = frozenset({"CONVOLUTION", "DECONVOLUTION", "Conv", "ConvTranspose"})
#: Elementwise layers that consume a sampler's output are part of the warp: the networks' feature
#: warp (busref.models.geometry.warp_features) gathers four corners, then weights and sums them.
COMBINER_KINDS = frozenset({"ELEMENTWISE", "Mul", "Add"})


class BuildUnavailable(RuntimeError):
    """TensorRT or a GPU is missing; the message is one sentence saying which."""


class BuildError(RuntimeError):
    """The build or its verification failed; the message names the file and the reason."""


# --------------------------------------------------------------------------- profiles


#: (min, opt, max) shape of one engine input.
Shapes = tuple[list[int], list[int], list[int]]


@dataclass(frozen=True)
class Profile:
    """An optimisation profile over one (H, W): min, opt and max sizes."""

    min: HW
    opt: HW
    max: HW

    def sizes(self) -> list[HW]:
        """The distinct sizes of the profile, smallest first (verification runs at each)."""
        return sorted({self.min, self.opt, self.max})


def _check_profile(profile: Profile, source: str) -> Profile:
    for label, (h, w) in (("min", profile.min), ("opt", profile.opt), ("max", profile.max)):
        if h % 8 or w % 8 or h < 8 or w < 8:
            raise ValueError(f"{source}: {label} size {h}x{w} must be positive multiples of 8")
    if not all(a <= b <= c for a, b, c in zip(profile.min, profile.opt, profile.max, strict=True)):
        raise ValueError(f"{source}: the profile must satisfy min <= opt <= max in H and in W, got "
                         f"min {profile.min}, opt {profile.opt}, max {profile.max}")
    return profile


def profile_for(graph: GraphKind, fixed_hw: HW | None, *, rig: object | None = None, min_hw: HW | None = None,
                opt_hw: HW | None = None, max_hw: HW | None = None) -> Profile:
    """The optimisation profile of ``graph``.

    ``fixed_hw``: the graph's static (H, W) (the register graph), or None when H, W are
    dynamic. A fixed graph gets exactly its size; a rig or flags that ask for another size are
    an error naming both. A dynamic graph starts from the rig (the fuse size the daemon will
    use: ``fusion.size``, else the RGB frame rounded down to /8, as min = opt = max) or from
    :data:`DEFAULT_FUSE_PROFILE`, then each of ``min_hw``/``opt_hw``/``max_hw`` given overrides.
    """
    flags = {"--min": min_hw, "--opt": opt_hw, "--max": max_hw}
    if fixed_hw is not None:
        if rig is not None and graph == "register":
            registration_size_for(rig.registration.size, fixed_hw, source="rig file")
        for flag, hw in flags.items():
            if hw is not None and tuple(hw) != tuple(fixed_hw):
                raise ValueError(f"{flag} {hw[0]}x{hw[1]}: the {graph} graph is fixed at {fixed_hw[0]}x{fixed_hw[1]}")
        return Profile(tuple(fixed_hw), tuple(fixed_hw), tuple(fixed_hw))
    if rig is not None:
        from busref.runtime.pipeline import fuse_size  # the daemon's own rule, so the engine fits its frames

        w, h = fuse_size((rig.cameras.rgb.width, rig.cameras.rgb.height), rig.fusion.size)
        base = Profile((h, w), (h, w), (h, w))
        source = "rig file"
    else:
        base = Profile(*DEFAULT_FUSE_PROFILE)
        source = "profile"
    profile = Profile(min_hw or base.min, opt_hw or base.opt, max_hw or base.max)
    return _check_profile(profile, source if not any(flags.values()) else "--min/--opt/--max")


def ir_profile_for(rig: object | None) -> Profile:
    """The profile of the ``frame`` graph's IR input: the rig's IR camera size (min = opt = max),
    else :data:`DEFAULT_IR_PROFILE`."""
    if rig is None:
        return Profile(*DEFAULT_IR_PROFILE)
    hw = (rig.cameras.ir.height, rig.cameras.ir.width)
    return Profile(hw, hw, hw)


def input_shapes(inputs: Sequence[TensorSpec], profile: Profile,
                 ir_profile: Profile = Profile(*DEFAULT_IR_PROFILE)) -> dict[str, Shapes]:
    """Each input's (min, opt, max) shape: its declared shape (:mod:`busref.runtime.artifact`) with the
    symbolic ``H``, ``W`` taken from ``profile`` and ``H_ir``, ``W_ir`` from ``ir_profile``."""
    symbols = {"H": (profile, 0), "W": (profile, 1), "H_ir": (ir_profile, 0), "W_ir": (ir_profile, 1)}

    def at(spec: TensorSpec, point: int) -> list[int]:
        dims = []
        for dim in spec.shape:
            if isinstance(dim, str):
                if dim not in symbols:
                    raise ValueError(f"input {spec.name}: no profile for its dimension {dim!r}")
                source, axis = symbols[dim]
                dim = (source.min, source.opt, source.max)[point][axis]
            dims.append(dim)
        return dims

    return {spec.name: (at(spec, 0), at(spec, 1), at(spec, 2)) for spec in inputs}


# --------------------------------------------------------------------------- precision


def parse_version(text: str) -> tuple[int, ...]:
    """``"10.3.0.30"`` -> (10, 3, 0, 30); non-numeric tails ("10.13.3.post1") are dropped."""
    parts = []
    for piece in text.split("."):
        digits = "".join(ch for ch in piece if ch.isdigit())
        if not digits or not piece[0].isdigit():
            break
        parts.append(int(digits))
    if not parts:
        raise ValueError(f"cannot read a version from {text!r}")
    return tuple(parts)


@dataclass(frozen=True)
class PrecisionPlan:
    """How one TensorRT version builds one precision."""

    precision: Precision
    strongly_typed: bool
    set_flags: tuple[str, ...] = ()
    clear_flags: tuple[str, ...] = ()
    pin_warp_fp32: bool = False  # TensorRT 10: per-layer FP32 on the warp region
    fp16_graph: bool = False  # TensorRT 11: build from busref.export.onnx_fp16's mixed-precision copy
    notes: tuple[str, ...] = field(default=())


def precision_plan(tensorrt_version: str, precision: Precision, *, dla: bool = False) -> PrecisionPlan:
    """The builder settings for ``precision`` on ``tensorrt_version`` (see the module docstring).

    FP32 clears TF32 so that an FP32 engine computes in FP32 (TensorRT enables TF32 convolutions
    on Ampere and newer by default). DLA runs FP16/INT8 only, with GPU fallback for the layers
    it cannot run (GridSample among them).
    """
    major = parse_version(tensorrt_version)[0]
    if major < MIN_TENSORRT:
        raise BuildUnavailable(f"TensorRT {tensorrt_version} is too old: busref needs TensorRT {MIN_TENSORRT} or newer")
    if precision not in ("fp32", "fp16"):
        raise ValueError(f"precision {precision!r}: busref builds fp32 or fp16 engines (INT8 needs Q/DQ nodes "
                         "in the graph, which the export does not write)")
    if dla and precision != "fp16":
        raise ValueError("DLA runs FP16 or INT8 only: use --precision fp16 with --dla-core")
    extra = ("GPU_FALLBACK",) if dla else ()
    if major >= STRONG_TYPING_FROM:
        return PrecisionPlan(precision, strongly_typed=True, set_flags=extra,
                             clear_flags=("TF32",) if precision == "fp32" else (),
                             fp16_graph=precision == "fp16",
                             notes=(f"TensorRT {major}: strongly typed network, precision from the ONNX types",))
    if precision == "fp16":
        return PrecisionPlan("fp16", strongly_typed=False, set_flags=("FP16", "OBEY_PRECISION_CONSTRAINTS", *extra),
                             pin_warp_fp32=True,
                             notes=(f"TensorRT {major}: FP16 builder flag, warp layers pinned to FP32",))
    return PrecisionPlan("fp32", strongly_typed=False, set_flags=extra, clear_flags=("TF32",))


@dataclass(frozen=True)
class LayerInfo:
    """A layer (TensorRT) or node (ONNX) reduced to what :func:`warp_layers` needs; ``inputs``
    and ``outputs`` list floating-point tensors only."""

    name: str
    kind: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]


def warp_layers(layers: Sequence[LayerInfo], keep_outputs: Iterable[str] = ()) -> set[str]:
    """Names of the layers to keep in FP32: every sampler (GridSample, or a gather with a
    floating-point output), the elementwise layers that combine a sampler's output (transitively,
    :data:`COMBINER_KINDS`), every layer those are computed from and every layer ``keep_outputs``
    are computed from, walking back until a convolution (:data:`BARRIER_KINDS`, not included) or a
    network input; and every layer in :data:`busref.export.onnx_fp16.FP32_SCOPES`."""
    producer = {t: layer for layer in layers for t in layer.outputs}
    consumers: dict[str, list[LayerInfo]] = {}
    for layer in layers:
        for t in layer.inputs:
            consumers.setdefault(t, []).append(layer)
    samplers = [layer for layer in layers if layer.kind in SAMPLER_KINDS and layer.outputs]
    combiners: dict[str, LayerInfo] = {}
    frontier = list(samplers)
    while frontier:
        for t in frontier.pop().outputs:
            for user in consumers.get(t, ()):
                if user.kind in COMBINER_KINDS and user.name not in combiners:
                    combiners[user.name] = user
                    frontier.append(user)
    keep: set[str] = set()
    todo = samplers + list(combiners.values())
    todo += [producer[t] for t in keep_outputs if t in producer]
    while todo:
        layer = todo.pop()
        if layer.name in keep or layer.kind in BARRIER_KINDS:
            continue
        keep.add(layer.name)
        todo.extend(producer[t] for t in layer.inputs if t in producer)
    return keep | {layer.name for layer in layers if in_fp32_scope(layer.name)}


def stale_reason(header: EngineHeader, *, onnx_sha256: str, running: Platform, precision: Precision,
                 profile: Profile | None, ir_profile: Profile = Profile(*DEFAULT_IR_PROFILE)) -> str | None:
    """Why an existing engine must be rebuilt (None: it is current and ``--reuse`` keeps it).
    ``profile``/``ir_profile``: as for :func:`input_shapes`; None skips the profile check."""
    if header.onnx_sha256 != onnx_sha256:
        return "it was built from another version of the ONNX graph"
    built = (header.tensorrt_version, header.compute_capability, header.gpu_name)
    if built != (running.tensorrt_version, running.compute_capability, running.gpu_name):
        return (f"it was built with TensorRT {header.tensorrt_version} for {header.gpu_name}, this is TensorRT "
                f"{running.tensorrt_version} on {running.gpu_name}")
    if header.precision != precision:
        return f"it is {header.precision}, {precision} was asked for"
    if profile is not None:
        wanted = input_shapes(header.metadata.inputs, profile, ir_profile)
        for tensor in header.inputs:
            want = wanted.get(tensor.name)
            if want is None or [tensor.min, tensor.opt, tensor.max] != list(want):
                asked = "no profile" if want is None else f"{want[0]}..{want[2]}"
                return f"its profile for {tensor.name} is {tensor.min}..{tensor.max}, {asked} was asked for"
    return None


# --------------------------------------------------------------------------- TensorRT


def require_tensorrt_and_gpu(device: int = 0) -> tuple[object, Platform]:
    """The ``tensorrt`` module and the GPU description, or :class:`BuildUnavailable` saying which is missing."""
    from busref.runtime.backends.base import BackendUnavailable
    from busref.runtime.backends.tensorrt import gpu_platform, load_cudart, load_tensorrt

    try:
        trt = load_tensorrt()
    except BackendUnavailable as exc:
        raise BuildUnavailable(f"Cannot build a TensorRT engine here: {exc}.") from None
    try:
        platform = gpu_platform(trt.__version__, device, load_cudart())
    except BackendUnavailable as exc:
        raise BuildUnavailable(f"Cannot build a TensorRT engine here: {exc}.") from None
    return trt, platform


def _network_layers(trt: object, network: object) -> list[LayerInfo]:
    floats = {trt.float32, trt.float16}
    layers = []
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        ins = [layer.get_input(j) for j in range(layer.num_inputs)]
        outs = [layer.get_output(j) for j in range(layer.num_outputs)]
        layers.append(LayerInfo(layer.name, layer.type.name,
                                tuple(t.name for t in ins if t is not None and t.dtype in floats),
                                tuple(t.name for t in outs if t is not None and t.dtype in floats)))
    return layers


def _pin_fp32(trt: object, network: object, names: set[str]) -> int:
    pinned = 0
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        if layer.name not in names:
            continue
        layer.precision = trt.float32
        for j in range(layer.num_outputs):
            if layer.get_output(j).dtype in (trt.float32, trt.float16):
                layer.set_output_type(j, trt.float32)
        pinned += 1
    return pinned


def _tensor(trt: object, tensor: object, shapes: Shapes | None) -> EngineTensor:
    shape = [int(d) for d in tensor.shape]
    dtype = np.dtype(trt.nptype(tensor.dtype)).name
    if shapes is None:
        return EngineTensor(name=tensor.name, dtype=dtype, shape=shape)
    low, opt, high = shapes
    return EngineTensor(name=tensor.name, dtype=dtype, shape=shape, min=low, opt=opt, max=high)


@dataclass(frozen=True)
class BuildRequest:
    onnx_path: Path
    engine_path: Path
    precision: Precision = "fp16"
    min_hw: HW | None = None
    opt_hw: HW | None = None
    max_hw: HW | None = None
    rig: object | None = None
    workspace_mb: int = 1024
    timing_cache: Path | None = None
    dla_core: int | None = None
    device: int = 0


def build(request: BuildRequest) -> EngineHeader:
    """Build and write one engine; returns its header. :class:`BuildUnavailable` without
    TensorRT or a GPU, :class:`BuildError` when TensorRT cannot parse or build the graph."""
    from busref.export.onnx_check import check_graph_file

    checked = check_graph_file(request.onnx_path)  # refuse tampered or foreign graphs before TensorRT
    meta = checked.metadata
    trt, platform = require_tensorrt_and_gpu(request.device)
    plan = precision_plan(trt.__version__, request.precision, dla=request.dla_core is not None)
    onnx_bytes = checked.path.read_bytes()
    if plan.fp16_graph:
        from busref.export.onnx_fp16 import convolutions_to_fp16

        onnx_bytes = convolutions_to_fp16(checked.model).SerializeToString()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    strongly_typed = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    if plan.strongly_typed and strongly_typed is not None:
        flags |= 1 << int(strongly_typed)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_bytes):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise BuildError(f"{request.onnx_path}: TensorRT {trt.__version__} cannot parse it: {errors}")
    dynamic = any(-1 in tuple(network.get_input(i).shape) for i in range(network.num_inputs))
    fixed = None if dynamic else tuple(int(d) for d in network.get_input(0).shape)[-2:]
    profile = profile_for(meta.graph, fixed, rig=request.rig, min_hw=request.min_hw, opt_hw=request.opt_hw,
                          max_hw=request.max_hw)
    shapes = input_shapes(meta.inputs, profile, ir_profile_for(request.rig))
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, request.workspace_mb << 20)
    for name in plan.set_flags:
        config.set_flag(getattr(trt.BuilderFlag, name))
    for name in plan.clear_flags:
        if hasattr(trt.BuilderFlag, name):
            config.clear_flag(getattr(trt.BuilderFlag, name))
    if plan.pin_warp_fp32:
        keep = warp_layers(_network_layers(trt, network), keep_outputs=[o.name for o in meta.outputs])
        log.info("%s: %d layers of the warp kept in FP32", meta.graph, _pin_fp32(trt, network, keep))
    if dynamic:
        opt_profile = builder.create_optimization_profile()
        for i in range(network.num_inputs):
            name = network.get_input(i).name
            opt_profile.set_shape(name, *shapes[name])
        config.add_optimization_profile(opt_profile)
    if request.dla_core is not None:
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = request.dla_core
    cache_bytes = b""
    if request.timing_cache is not None and request.timing_cache.is_file():
        cache_bytes = request.timing_cache.read_bytes()
    timing_cache = config.create_timing_cache(cache_bytes)
    config.set_timing_cache(timing_cache, ignore_mismatch=False)
    started = time.monotonic()
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise BuildError(f"{request.onnx_path}: TensorRT {trt.__version__} could not build an engine "
                         "(its log above says why)")
    log.info("%s: built in %.1f s", meta.graph, time.monotonic() - started)
    if request.timing_cache is not None:
        request.timing_cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = request.timing_cache.with_name(f".{request.timing_cache.name}.tmp")
        tmp.write_bytes(bytes(config.get_timing_cache().serialize()))
        tmp.replace(request.timing_cache)
    plan_bytes = bytes(serialized)
    header = EngineHeader(
        tensorrt_version=platform.tensorrt_version, cuda_version=platform.cuda_version,
        gpu_name=platform.gpu_name, compute_capability=platform.compute_capability,
        onnx_sha256=checked.file_sha256, precision=request.precision, strongly_typed=plan.strongly_typed,
        dla_core=request.dla_core,
        inputs=[_tensor(trt, network.get_input(i), shapes[network.get_input(i).name])
                for i in range(network.num_inputs)],
        outputs=[_tensor(trt, network.get_output(i), None) for i in range(network.num_outputs)],
        normalisation=meta.normalisation, metadata=meta,
        plan_size=len(plan_bytes), plan_sha256=bytes_sha256(plan_bytes),
        built=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        built_with={"tensorrt": trt.__version__, "busref": meta.busref_version},
    )
    write_engine(request.engine_path, header, plan_bytes)
    return header


def build_if_stale(request: BuildRequest) -> tuple[EngineHeader, bool]:
    """:func:`build` unless the engine file exists and is current; returns (header, built)."""
    if request.engine_path.is_file():
        from busref.export.onnx_check import check_graph_file
        from busref.runtime.artifact import ArtifactError

        try:
            header = read_header(request.engine_path)
        except ArtifactError as exc:
            log.info("%s: rebuilding: %s", request.engine_path, exc)
        else:
            _, platform = require_tensorrt_and_gpu(request.device)
            checked = check_graph_file(request.onnx_path)
            fixed = checked.metadata.registration_size
            profile = profile_for(checked.metadata.graph, fixed, rig=request.rig, min_hw=request.min_hw,
                                  opt_hw=request.opt_hw, max_hw=request.max_hw)
            reason = stale_reason(header, onnx_sha256=file_sha256(request.onnx_path), running=platform,
                                  precision=request.precision, profile=profile if fixed is None else None,
                                  ir_profile=ir_profile_for(request.rig))
            if reason is None:
                log.info("%s: current, kept", request.engine_path)
                return header, False
            log.info("%s: rebuilding: %s", request.engine_path, reason)
    return build(request), True


# --------------------------------------------------------------------------- verification and timing


def psnr(reference: np.ndarray, test: np.ndarray) -> float:
    """PSNR in dB with the reference's value range as the peak (inf for identical arrays)."""
    mse = float(np.mean((reference.astype(np.float64) - test) ** 2))
    peak = max(float(reference.max() - reference.min()), 1e-12)
    return math.inf if mse == 0 else 10 * math.log10(peak * peak / mse)


@dataclass
class OutputCheck:
    name: str
    max_abs_diff: float
    psnr_db: float
    tolerance: float

    @property
    def ok(self) -> bool:
        return self.max_abs_diff <= self.tolerance


def engine_feeds(header: EngineHeader, pairs: Sequence[SamplePair]) -> list[dict[str, np.ndarray]]:
    """Sample inputs (:func:`busref.export.samples.graph_feed`) at each distinct point (min, opt, max) of
    the engine's profile; the ``frame`` graph's IR at the same point of its own profile."""
    def points(tensor: EngineTensor) -> list[HW]:
        shapes = [s for s in (tensor.min, tensor.opt, tensor.max) if s] or [tensor.shape]
        return [(s[-2], s[-1]) for s in shapes]

    tensors = {t.name: t for t in header.inputs}
    sizes = sorted(set(zip(points(tensors["vis"]), points(tensors["ir"]), strict=True)))
    return [graph_feed(header.metadata.graph, pair, hw, ir_hw) for hw, ir_hw in sizes for pair in pairs]


def verify(engine_path: Path, onnx_path: Path, pairs: Sequence[SamplePair], device: int = 0) -> list[OutputCheck]:
    """Run the engine and ONNX Runtime (CPU) on ``pairs`` at each profile size; max |diff| and PSNR per output."""
    from busref.runtime.backends.onnxruntime import CPU, OnnxRuntimeBackend
    from busref.runtime.backends.tensorrt import TensorRTBackend

    header = read_header(engine_path)
    graph = header.metadata.graph
    engine = TensorRTBackend(engine_path, graph=graph, onnx_path=onnx_path, device=device)
    reference = OnnxRuntimeBackend(onnx_path, graph=graph, providers=(CPU,))
    tolerance = VERIFY_TOLERANCE[header.precision]
    worst: dict[str, tuple[float, float]] = {}
    try:
        for feed in engine_feeds(header, pairs):
            got, want = engine.run(feed), reference.run(feed)
            for name, ref in want.items():
                diff = float(np.abs(got[name] - ref).max())
                old = worst.get(name, (0.0, math.inf))
                worst[name] = (max(old[0], diff), min(old[1], psnr(ref, got[name])))
    finally:
        engine.close()
    return [OutputCheck(n, d, p, tolerance[n]) for n, (d, p) in worst.items()]


@dataclass
class Timing:
    size: HW
    iterations: int
    fps: float
    p50_ms: float
    p99_ms: float


def time_backend(backend: object, feed: dict[str, np.ndarray], iterations: int = 200, warmup: int = 20) -> Timing:
    """Per-call latency of ``backend.run`` (uploads and downloads included, as the daemon pays them)."""
    for _ in range(warmup):
        backend.run(feed)
    times = np.empty(iterations)
    for i in range(iterations):
        t0 = time.perf_counter()
        backend.run(feed)
        times[i] = time.perf_counter() - t0
    h, w = feed["vis"].shape[-2:]
    return Timing((h, w), iterations, float(1.0 / times.mean()), float(np.percentile(times, 50) * 1e3),
                  float(np.percentile(times, 99) * 1e3))
