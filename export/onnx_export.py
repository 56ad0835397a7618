"""Checkpoint -> ``register.onnx`` + ``fuse.onnx`` + ``frame.onnx``, verified against PyTorch before they are written.

Per graph: trace with the TorchScript exporter (``dynamo=False``: the dynamo exporter did not
keep the symbolic H/W of an earlier fuse graph through ``pixel_unshuffle``), pin the declared I/O
shapes to the contract (:mod:`busref.runtime.artifact`), full ``onnx.checker``, write the metadata and
graph digest (:mod:`busref.export.onnx_check`), then run the file with the runtime's own ONNX Runtime
backend against PyTorch on sample pairs. Only when every output of both graphs is within
:data:`TOLERANCE` are the files renamed into place, so a failed export never leaves a graph
that the daemon would load.

The ``register`` graph is exported at the checkpoint's registration size (its dynamic
convolution builds per-sample kernels from the batch size, which the tracer cannot keep
symbolic next to a symbolic H/W); the ``fuse`` graph has dynamic H and W (multiples of 8).
The ``frame`` graph (:class:`FrameGraph`: warp + fuse in one call, for GPU backends) has
dynamic H, W for the luminance and the grid and its own dynamic H_ir, W_ir for the IR.
The warps (GridSample; inside the register graph's networks, gathers: ``busref.models.geometry.warp_features``)
and every grid computation stay float32: the whole graph is float32.
"""

from __future__ import annotations

import io
import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch

from busref import __version__
from busref.conventions import GRAPH_IO, file_sha256
from busref.export.onnx_check import OPSET, check_graph_file, check_opset, set_metadata
from busref.export.samples import SamplePair, graph_feed, sample_pairs
from busref.models.checkpoint import load_model
from busref.models.geometry import warp_normalised
from busref.models.networks import BusReF
from busref.models.networks.busref import FuseGraph, RegisterGraph, TrackGraph
from busref.runtime.artifact import REGISTRATION_GRAPHS, ArtifactError, ArtifactMetadata, GraphKind, TensorSpec
from busref.runtime.backends.onnxruntime import OnnxRuntimeBackend

log = logging.getLogger(__name__)

MODEL_NAME = "busref"
#: Largest |ONNX Runtime - PyTorch| accepted per output element (float32 end to end).
TOLERANCE = 1e-4
#: Export order: the quick graphs first, so a failing verification stops before the long trace. The
#: ``track`` graph only for a model with a ``lucas_kanade.track_schedule`` (:func:`graphs_of`).
GRAPHS: tuple[GraphKind, ...] = ("fuse", "frame", "track", "register")
#: Example sizes of the symbolic dimensions when tracing: the IR's differ from the luminance's
#: so that the tracer cannot tie them together.
_TRACE_IR_EXTRA = (8, 16)


class FrameGraph(torch.nn.Module):
    """Export wrapper of the ``frame`` graph (runtime/artifact.py): (vis, ir, grid) -> fused.

    ``vis`` (1, 1, H, W), ``ir`` (1, 1, H_ir, W_ir) unregistered, ``grid`` (1, H, W, 2)
    normalised to the IR frame; the IR is warped like the CPU path's ``cv2.remap`` (bilinear,
    zero outside, ``align_corners=True``) and fused by the model's GAF. All float32.
    """

    def __init__(self, model: BusReF) -> None:
        super().__init__()
        self.gaf = model.gaf

    def forward(self, vis: torch.Tensor, ir: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
        return self.gaf(vis, warp_normalised(ir, grid))


def graph_module(model: BusReF, graph: GraphKind) -> torch.nn.Module:
    """The export wrapper of ``graph`` around ``model``, in eval mode."""
    wrappers: dict[str, type[torch.nn.Module]] = {"register": RegisterGraph, "track": TrackGraph, "fuse": FuseGraph,
                                                  "frame": FrameGraph}
    return wrappers[graph](model).eval()


def graphs_of(model: BusReF) -> tuple[GraphKind, ...]:
    """The graphs :func:`export_checkpoint` writes for ``model``: :data:`GRAPHS`, less ``track`` where the
    model has no track schedule."""
    return tuple(g for g in GRAPHS if g != "track" or model.config.lucas_kanade.track_schedule)


class ExportError(RuntimeError):
    """An export failed or did not verify; the message names the graph and the numbers."""


@dataclass
class GraphReport:
    """What was exported and how closely ONNX Runtime matched PyTorch (max |diff| per output)."""

    graph: GraphKind
    path: Path
    max_abs_diff: dict[str, float] = field(default_factory=dict)
    sizes: list[tuple[int, int]] = field(default_factory=list)
    pairs: int = 0

    @property
    def worst(self) -> float:
        return max(self.max_abs_diff.values(), default=0.0)


def tensor_specs(graph: GraphKind, registration_size: tuple[int, int]) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """The contract's inputs and outputs of ``graph`` with their declared shapes."""
    if graph in REGISTRATION_GRAPHS:
        h, w = registration_size
        image = [1, 1, h, w]
        grid = TensorSpec(name="grid", shape=[1, h, w, 2],
                          description="sampling grid reference -> IR, normalised, x first")
        if graph == "track":
            return (
                [TensorSpec(name="vis", shape=image, description="visible luminance (Y) in [0, 1]"),
                 TensorSpec(name="ir", shape=image, description="thermal or NIR IR in [0, 1], not pre-warped"),
                 TensorSpec(name="start", shape=[1, h, w, 2],
                            description="the registration in force, the convention of grid")],
                [grid],
            )
        return (
            [TensorSpec(name="vis", shape=image, description="visible luminance (Y) in [0, 1]"),
             TensorSpec(name="ir", shape=image, description="moving thermal IR in [0, 1]")],
            [TensorSpec(name="theta", shape=[1, 2, 3], description="coarse affine, normalised, align_corners=True"),
             grid],
        )
    image = [1, 1, "H", "W"]
    vis = TensorSpec(name="vis", shape=image, description="visible luminance (Y) in [0, 1], H, W multiples of 8")
    fused = TensorSpec(name="fused", shape=image, description="fused luminance in [0, 1]")
    if graph == "frame":
        return (
            [vis,
             TensorSpec(name="ir", shape=[1, 1, "H_ir", "W_ir"],
                        description="normalised thermal IR in [0, 1] at its own size, not registered"),
             TensorSpec(name="grid", shape=[1, "H", "W", 2],
                        description="sampling grid output pixel -> IR location, normalised to the IR frame "
                                    "(align_corners=True), x first")],
            [fused],
        )
    return [vis, TensorSpec(name="ir", shape=image, description="registered IR in [0, 1]")], [fused]


def build_metadata(graph: GraphKind, payload: dict[str, Any], checkpoint_sha256: str, opset: int,
                   registration_size: tuple[int, int], modalities: Sequence[str] = ("thermal",), *,
                   keypoint_start: bool = False) -> ArtifactMetadata:
    inputs, outputs = tensor_specs(graph, registration_size)
    split = payload.get("split") or {}
    return ArtifactMetadata(
        graph=graph,
        model_name=MODEL_NAME,
        model_id=f"{MODEL_NAME}-{checkpoint_sha256[:12]}",
        checkpoint_sha256=checkpoint_sha256,
        opset=opset,
        inputs=inputs,
        outputs=outputs,
        registration_size=registration_size if graph in REGISTRATION_GRAPHS else None,
        modalities=list(modalities),
        keypoint_start=keypoint_start if graph == "register" else False,
        training_split=str(split.get("name", "")),
        training_split_sha256=str(split.get("sha256", "")),
        busref_version=__version__,
        exporter_versions={"torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": ort.__version__},
    )


def _pin_shapes(model: onnx.ModelProto, metadata: ArtifactMetadata) -> None:
    """Declare the contract's shapes on the graph I/O (the tracer names some dims itself, e.g.
    the fuse output's batch, which is 1 by construction)."""
    declared = {s.name: s.shape for s in [*metadata.inputs, *metadata.outputs]}
    for value in [*model.graph.input, *model.graph.output]:
        shape = value.type.tensor_type.shape
        del shape.dim[:]
        for size in declared[value.name]:
            dim = shape.dim.add()
            if isinstance(size, str):
                dim.dim_param = size
            else:
                dim.dim_value = size


def trace_module(module: torch.nn.Module, example: tuple[torch.Tensor, ...], input_names: list[str],
                 output_names: list[str], *, opset: int = OPSET,
                 dynamic_axes: dict[str, dict[int, str]] | None = None) -> onnx.ModelProto:
    """Trace ``module`` (eval mode) on ``example`` to an ONNX model the way every busref graph is
    traced; no metadata, no checks (:func:`trace_graph` adds them for the contract's graphs)."""
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        # The models' Python-level shape checks become constants in the trace (expected), the
        # TorchScript exporter announces its deprecation, and strided slices are left unfolded;
        # none of it is actionable here (the callers' checker and ORT comparison are the test).
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", message="Constant folding", category=UserWarning)
        torch.onnx.export(module.eval(), example, buffer, input_names=input_names, output_names=output_names,
                          opset_version=opset, dynamic_axes=dynamic_axes, do_constant_folding=True, dynamo=False)
    return onnx.load_model_from_string(buffer.getvalue())


def trace_graph(model: BusReF, graph: GraphKind, metadata: ArtifactMetadata) -> onnx.ModelProto:
    """The ONNX model of ``graph`` (metadata and digest written, fully checked); the symbolic
    dimensions of the metadata's tensor shapes become the graph's dynamic axes."""
    h, w = model.config.registration_size
    sizes = {"H": h, "W": w, "H_ir": h + _TRACE_IR_EXTRA[0], "W_ir": w + _TRACE_IR_EXTRA[1]}
    example = tuple(torch.rand([sizes.get(d, d) for d in spec.shape]) for spec in metadata.inputs)
    inputs, outputs = GRAPH_IO[graph]
    dynamic = {spec.name: {i: d for i, d in enumerate(spec.shape) if isinstance(d, str)}
               for spec in [*metadata.inputs, *metadata.outputs] if any(isinstance(d, str) for d in spec.shape)}
    proto = trace_module(graph_module(model, graph), example, list(inputs), list(outputs), opset=metadata.opset,
                         dynamic_axes=dynamic or None)
    _pin_shapes(proto, metadata)
    proto.producer_name, proto.producer_version = "busref", __version__
    onnx.checker.check_model(proto, full_check=True)
    set_metadata(proto, metadata)
    return proto


def graph_feeds(graph: GraphKind, pairs: list[SamplePair], registration_size: tuple[int, int]
                ) -> list[dict[str, np.ndarray]]:
    """Inputs to verify ``graph`` on (:func:`busref.export.samples.graph_feed`): ``register`` at its
    size; ``fuse`` at each pair's own size rounded down to multiples of 8 and at the registration
    size, so its dynamic H/W is exercised; ``frame`` at the same two sizes, with the IR at the
    pair's own size (another size than the luminance at least once) and a non-trivial grid."""
    def sizes(p: SamplePair) -> tuple[tuple[int, int], ...]:
        return (registration_size,) if graph in REGISTRATION_GRAPHS else (p.cropped8().vis.shape, registration_size)

    return [graph_feed(graph, p, hw) for p in pairs for hw in sizes(p)]


@torch.no_grad()
def compare_with_torch(model: BusReF, graph: GraphKind, onnx_path: Path,
                       feeds: list[dict[str, np.ndarray]]) -> dict[str, float]:
    """Max |ONNX Runtime - PyTorch| per output over ``feeds`` (ORT as the daemon runs it)."""
    backend = OnnxRuntimeBackend(onnx_path, graph=graph)
    module = graph_module(model, graph)
    inputs, names = GRAPH_IO[graph]
    worst = dict.fromkeys(names, 0.0)
    for f in feeds:
        got = backend.run(f)
        want = module(*(torch.from_numpy(f[name]) for name in inputs))
        want = want if isinstance(want, tuple) else (want,)
        for name, ref in zip(names, want, strict=True):
            if got[name].shape != tuple(ref.shape):
                raise ExportError(f"{graph}: output {name} has shape {got[name].shape} in ONNX Runtime, "
                                  f"{tuple(ref.shape)} in PyTorch")
            worst[name] = max(worst[name], float(np.abs(got[name] - ref.numpy()).max()))
    return worst


def export_checkpoint(checkpoint: str | Path, out_dir: str | Path, *, opset: int = OPSET,
                      verify_data: str | Path | None = None, verify_pairs: int = 4,
                      tolerance: float = TOLERANCE, modalities: Sequence[str] = ("thermal",)) -> list[GraphReport]:
    """Write ``out_dir/{register,fuse,frame}.onnx`` from ``checkpoint``, verified, and ``track.onnx`` for a
    model with a track schedule (:func:`graphs_of`; a stale one is removed); ``modalities``, the
    IR modalities its networks were trained on, go into every graph's metadata.

    ``verify_data``: a pair folder (see :mod:`busref.export.samples`) whose first ``verify_pairs`` pairs
    are run through ONNX Runtime and PyTorch; None = the built-in synthetic pairs. Raises
    :class:`ExportError` (nothing written) when an output differs by more than ``tolerance``.
    """
    check_opset(opset)
    checkpoint, out_dir = Path(checkpoint), Path(out_dir)
    model, payload = load_model(checkpoint)
    sha = file_sha256(checkpoint)
    reg_hw = tuple(model.config.registration_size)
    pairs = sample_pairs(verify_data, verify_pairs)
    out_dir.mkdir(parents=True, exist_ok=True)
    reports: list[GraphReport] = []
    staged: list[tuple[Path, Path]] = []
    try:
        graphs = graphs_of(model)
        for graph in graphs:
            meta = build_metadata(graph, payload, sha, opset, reg_hw, modalities,
                                  keypoint_start=model.config.keypoint_start)
            final = out_dir / f"{graph}.onnx"
            tmp = out_dir / f".{graph}.onnx.tmp"
            staged.append((tmp, final))
            onnx.save_model(trace_graph(model, graph, meta), str(tmp))
            check_graph_file(tmp, graph=graph, checkpoint_sha256=sha)
            feeds = graph_feeds(graph, pairs, reg_hw)
            report = GraphReport(graph, final, compare_with_torch(model, graph, tmp, feeds),
                                 sorted({f["vis"].shape[2:] for f in feeds}), len(pairs))
            log.info("%s: ONNX Runtime vs PyTorch on %d inputs: %s", graph, len(feeds),
                     ", ".join(f"{k} {v:.2e}" for k, v in report.max_abs_diff.items()))
            if report.worst > tolerance:
                raise ExportError(f"{graph}: ONNX Runtime differs from PyTorch by up to {report.worst:.3g} "
                                  f"(tolerance {tolerance:g}) per output {report.max_abs_diff}; nothing written")
            reports.append(report)
        for tmp, final in staged:
            tmp.replace(final)
        stale = out_dir / "track.onnx"
        if "track" not in graphs and stale.is_file():
            # Another checkpoint's track graph beside these would be refused by the daemon anyway.
            stale.unlink()
            log.info("removed %s: %s has no track schedule", stale, checkpoint)
    except ArtifactError as exc:
        raise ExportError(f"the exported graph does not pass its own checks: {exc}") from exc
    finally:
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)
    return reports
