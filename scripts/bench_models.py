"""Speed of the BusReF networks under ONNX Runtime on the CPU, against the speed targets.

Exports, to a temporary folder, ONNX graphs of a checkpoint's model with the repository's own
tracer and opset (busref.export.onnx_export), then runs each in an ONNX Runtime CPU session set up
like the runtime's (sequential, --threads intra-op threads, one inter-op thread) and measures
every call: CPU time of the whole process (time.process_time, which other load on the machine
barely moves) and wall time. Reported: median and p90 over --repeats calls after --warmup calls.

Graphs (targets are CPU ms per call, default config, one thread):
  fuse               the fusion net (GAF) at --size                          <= 30 ms
  encoder            the bus encoder, one image, at --size                   <= 15 ms
  encoder            the same at the nets' size (the registration size over the model's net_pool;
                     register() runs it 2 + refinements times)
  affine+deformable  Affine Net + Deformable Net(s) on precomputed bus features, at the
                     nets' size, without the encoder calls and warps          <= 10 ms
  register           the whole register graph (encoders, nets, warps, Lucas-Kanade stage) at the
                     registration size: the daemon's first run and every register_every-th  <= 40 ms
  track              the track graph (the Lucas-Kanade stage's track schedule from a given grid) at
                     the registration size: the daemon's runs between, where the checkpoint has one
                                                                              <= 40 ms

The registration size is the checkpoint's (model.config.registration_size): the runtime
registers at that size and upsamples the field. Prints a markdown table, writes --json (with
the machine, ONNX Runtime version, threads and commit) and exits 0 whether or not the targets
are met: it is a report, not a test.

usage: python scripts/bench_models.py [--checkpoint weights/busref.pt] [--size 512x640]
                                      [--repeats 30] [--warmup 5] [--threads 1]
                                      [--json results/speed.json]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from busref.conventions import affine_grid, file_sha256, parse_hw
from busref.export.onnx_check import OPSET
from busref.export.onnx_export import build_metadata, graphs_of, trace_graph, trace_module
from busref.export.samples import SAMPLE_THETA, SamplePair, synthetic_pairs
from busref.models.checkpoint import CheckpointError, git_commit, load_model
from busref.models.networks import BusReF
from busref.models.networks.reconstructor import Features
from busref.rig_config.resources import CHECKPOINT_FILE, recorded_path, weight_file
from busref.runtime.backends.onnxruntime import CPU, session_options

log = logging.getLogger("bench_models")

HW = tuple[int, int]
FEATURES = ("f1", "f2", "f3", "f4")
#: The speed targets, CPU ms per call (default config, 640x512, one thread): what a 30 fps rig
#: leaves the networks on one core of a small CPU.
TARGET_FUSE_MS = 30.0
TARGET_ENCODER_MS = 15.0
TARGET_AFFINE_DEFORMABLE_MS = 10.0
#: One registration call in the daemon (ONNX Runtime, one thread, the registration size).
TARGET_REGISTRATION_CALL_MS = 40.0


class EncoderGraph(nn.Module):
    """One image (1, 1, H, W) -> the bus features F1..F4."""

    def __init__(self, model: BusReF) -> None:
        super().__init__()
        self.bus = model.bus

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(self.bus.encode(image))


class AffineDeformableGraph(nn.Module):
    """The register graph's nets without its encoder calls: ``theta = A(F(vis), F(ir))``, then one
    Deformable Net pass per refinement on given features of the warped IR.

    Inputs: the visible, IR and per-pass warped-IR features, F1..F4 each. Each pass has its own
    inputs so that ONNX Runtime cannot merge passes whose inputs are identical. The warps and
    grid composition between the nets are left out (they are in the register graph).
    """

    def __init__(self, model: BusReF) -> None:
        super().__init__()
        self.affine = model.affine
        self.deformable = model.deformable
        self.size = nets_size(model)
        self.passes = model.config.deformable.refinements

    def forward(self, *features: torch.Tensor) -> tuple[torch.Tensor, ...]:
        sets = [Features(*features[i:i + len(FEATURES)]) for i in range(0, len(features), len(FEATURES))]
        fx, fy, warped = sets[0], sets[1], sets[2:]
        theta = self.affine(fx, fy)[0]
        return (theta, *(self.deformable(fx, fw, self.size)[0] for fw in warped))


@dataclass
class Timing:
    """One graph's measurements (ms per call) and its target (None: reported, not judged)."""

    graph: str
    label: str
    input_size: HW
    target_ms: float | None
    cpu_ms: dict[str, float]
    wall_ms: dict[str, float]

    @property
    def verdict(self) -> str:
        if self.target_ms is None:
            return "—"
        return "pass" if self.cpu_ms["median"] <= self.target_ms else "fail"


def _size(text: str) -> HW:
    try:
        h, w = parse_hw(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if h % 8 or w % 8 or h < 8 or w < 8:
        raise argparse.ArgumentTypeError(f"{text}: H and W must be positive multiples of 8 (the bus downsamples 8x)")
    return h, w


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text}: must be at least 1")
    return value


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench_models.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, default=weight_file(CHECKPOINT_FILE),
                        help=f"model checkpoint (default: the shipped {CHECKPOINT_FILE})")
    parser.add_argument("--size", type=_size, default=(512, 640), metavar="HxW",
                        help="fusion and encoder input size, height x width (default: 512x640, i.e. 640x512 "
                             "frames); registration runs at the checkpoint's registration_size")
    parser.add_argument("--repeats", type=_positive, default=30, help="timed calls per graph (default: %(default)s)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed calls first (default: %(default)s)")
    parser.add_argument("--threads", type=_positive, default=1,
                        help="ONNX Runtime intra-op threads (default: %(default)s, the targets' setting)")
    parser.add_argument("--json", type=Path, default=Path("results/speed.json"),
                        help="where to write the results (default: %(default)s)")
    return parser.parse_args(argv)


def feature_names(passes: int) -> list[str]:
    """Input names of the affine + deformable graph: visible, IR, then each pass's warped IR."""
    return [f"{prefix}_{f}" for prefix in ("vis", "ir", *(f"warped{k}" for k in range(passes))) for f in FEATURES]


def nets_size(model: BusReF) -> HW:
    """(H, W) the learned nets run at: the registration size pooled by the model's ``net_pool``."""
    h, w = model.config.registration_size
    return h // model.config.net_pool, w // model.config.net_pool


def export_graphs(model: BusReF, payload: dict, checkpoint_sha256: str, size: HW, out: Path) -> dict[str, Path]:
    """Write every benchmarked graph to ``out``; returns graph name -> file."""
    reg = tuple(model.config.registration_size)
    nets = nets_size(model)
    passes = model.config.deformable.refinements

    def image(hw: HW) -> torch.Tensor:
        return torch.rand(1, 1, *hw)

    paths: dict[str, Path] = {}
    for graph in (g for g in graphs_of(model) if g != "frame"):  # the track graph where the model has one
        proto = trace_graph(model, graph, build_metadata(graph, payload, checkpoint_sha256, OPSET, reg))
        paths[graph] = out / f"{graph}.onnx"
        onnx.save_model(proto, str(paths[graph]))
    encoder = EncoderGraph(model)
    for name, hw in (("encoder", size), ("encoder_registration", nets)):
        paths[name] = out / f"{name}.onnx"
        onnx.save_model(trace_module(encoder, (image(hw),), ["image"], list(FEATURES)), str(paths[name]))
    with torch.no_grad():
        feats = encoder(image(nets))
    outputs = ["theta", *(f"displacement{k}" for k in range(passes))]
    paths["affine_deformable"] = out / "affine_deformable.onnx"
    onnx.save_model(trace_module(AffineDeformableGraph(model), feats * (2 + passes), feature_names(passes), outputs),
                    str(paths["affine_deformable"]))
    return paths


def measure(run: Callable[[], object], repeats: int, warmup: int) -> tuple[dict[str, float], dict[str, float]]:
    """(CPU ms, wall ms) statistics of ``run`` over ``repeats`` calls after ``warmup`` calls."""
    for _ in range(warmup):
        run()
    cpu, wall = [], []
    for _ in range(repeats):
        c0, w0 = time.process_time(), time.perf_counter()
        run()
        w1, c1 = time.perf_counter(), time.process_time()
        cpu.append((c1 - c0) * 1e3)
        wall.append((w1 - w0) * 1e3)

    def stats(ms: list[float]) -> dict[str, float]:
        return {"median": float(np.median(ms)), "p90": float(np.percentile(ms, 90)), "min": min(ms)}

    return stats(cpu), stats(wall)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass  # not Linux: platform's answer below
    return platform.processor() or platform.machine()


def markdown_table(timings: list[Timing]) -> str:
    rows = ["| graph | input size (HxW) | CPU ms median | wall ms median | target ms | pass/fail |",
            "|---|---|---:|---:|---:|---|"]
    for t in timings:
        target = "—" if t.target_ms is None else f"≤ {t.target_ms:g}"
        rows.append(f"| {t.label} | {t.input_size[0]}x{t.input_size[1]} | {t.cpu_ms['median']:.2f} | "
                    f"{t.wall_ms['median']:.2f} | {target} | {t.verdict} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        model, payload = load_model(args.checkpoint)
    except CheckpointError as exc:
        log.error("%s", exc)
        return 2
    # One torch thread: torch's idle OpenMP workers would otherwise spin after the export and be
    # counted in the process CPU time of the first timed calls.
    torch.set_num_threads(1)
    checkpoint_sha256 = file_sha256(args.checkpoint)
    reg = tuple(model.config.registration_size)
    passes = model.config.deformable.refinements
    pair = synthetic_pairs(1, args.size)[0]
    small = pair.resized(reg)
    nets = pair.resized(nets_size(model))

    def images(p: SamplePair) -> dict[str, np.ndarray]:
        return {"vis": p.vis[None, None].astype(np.float32), "ir": p.ir[None, None].astype(np.float32)}

    with tempfile.TemporaryDirectory(prefix="bench_models-") as tmp:
        log.info("exporting graphs of %s (registration size %dx%d) to %s", args.checkpoint, *reg, tmp)
        paths = export_graphs(model, payload, checkpoint_sha256, args.size, Path(tmp))
        sessions = {name: ort.InferenceSession(str(path), sess_options=session_options(args.threads, graph=name),
                                               providers=[CPU]) for name, path in paths.items()}
    vis_f = sessions["encoder_registration"].run(None, {"image": images(nets)["vis"]})
    ir_f = sessions["encoder_registration"].run(None, {"image": images(nets)["ir"]})
    # The IR's features stand in for the warped IR's: the nets' cost does not depend on the values.
    # The exporter drops the inputs no net reads (the Affine Net uses F3, F4 only).
    features = dict(zip(feature_names(passes), [*vis_f, *ir_f, *ir_f * passes], strict=True))
    feature_feed = {i.name: features[i.name] for i in sessions["affine_deformable"].get_inputs()}
    plan = [
        ("fuse", "fusion net (fuse graph)", args.size, TARGET_FUSE_MS, images(pair)),
        ("encoder", "encoder (1 image)", args.size, TARGET_ENCODER_MS, {"image": images(pair)["vis"]}),
        ("encoder_registration", "encoder (1 image)", nets.vis.shape, None, {"image": images(nets)["vis"]}),
        ("affine_deformable", "affine + deformable (features given)", nets.vis.shape, TARGET_AFFINE_DEFORMABLE_MS,
         feature_feed),
        ("register", f"register graph ({2 + passes} encoder calls + nets + warps + stage)", reg,
         TARGET_REGISTRATION_CALL_MS, images(small)),
    ]
    if "track" in sessions:
        start = affine_grid(SAMPLE_THETA, *reg, coordinates="normalised")[None].astype(np.float32)
        iterations = len(model.config.lucas_kanade.track_schedule)
        plan.append(("track", f"track graph ({iterations} Lucas-Kanade iterations)", reg, TARGET_REGISTRATION_CALL_MS,
                     {**images(small), "start": start}))
    timings = []
    for name, label, hw, target, feed in plan:
        session = sessions[name]
        cpu, wall = measure(lambda s=session, f=feed: s.run(None, f), args.repeats, args.warmup)
        timings.append(Timing(name, label, hw, target, cpu, wall))
        log.info("%s %dx%d: CPU %.2f ms median, %.2f ms p90; wall %.2f ms median", name, *hw, cpu["median"],
                 cpu["p90"], wall["median"])
    print(markdown_table(timings))
    report = {
        "checkpoint": recorded_path(args.checkpoint),
        "checkpoint_sha256": checkpoint_sha256,
        "size": list(args.size),
        "registration_size": list(reg),
        "refinements": passes,
        "threads": args.threads,
        "repeats": args.repeats,
        "warmup": args.warmup,
        "opset": OPSET,
        "machine": {"cpu": cpu_model(), "logical_cpus": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version()},
        "onnxruntime": ort.__version__,
        "torch": torch.__version__,
        "commit": git_commit(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "graphs": [{**asdict(t), "input_size": list(t.input_size),
                    "pass": None if t.target_ms is None else t.verdict == "pass"} for t in timings],
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    log.info("wrote %s", args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
