"""``busref export onnx`` (checkpoint -> verified graphs) and ``busref export engine`` (graph -> TensorRT).

Only the chosen action's module is imported: ``export engine`` runs on a rig image without torch.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from busref.rig_config.resources import CHECKPOINT_FILE, MODALITIES, WEIGHTS_ENV, weight_file
from busref.runtime import exit_codes

log = logging.getLogger("busref.export")

#: Exit status when a graph or an engine does not verify.
EXIT_VERIFY_FAILED = exit_codes.FAILURE
#: Exit status when the machine cannot do it (no TensorRT, no GPU).
EXIT_UNAVAILABLE = exit_codes.UNAVAILABLE


def add_onnx_arguments(parser: argparse.ArgumentParser) -> None:
    from busref.export.onnx_check import OPSET, SUPPORTED_OPSETS

    parser.add_argument("--checkpoint", type=Path, default=weight_file(CHECKPOINT_FILE),
                        help=f"trained BusReF checkpoint (.pt; default: the shipped {CHECKPOINT_FILE}, "
                             f"or the one in ${WEIGHTS_ENV})")
    parser.add_argument("--out", type=Path, required=True, help="folder for register.onnx, fuse.onnx and frame.onnx")
    parser.add_argument("--opset", type=int, default=OPSET,
                        help=f"ONNX opset, {SUPPORTED_OPSETS.start}..{SUPPORTED_OPSETS.stop - 1} (default {OPSET})")
    parser.add_argument("--verify-data", type=Path, default=None, metavar="DIR",
                        help="pair folder to verify ONNX Runtime against PyTorch on (cropinfrared/ + "
                             "crop_LR_visible/, or ir/ + vis/); default: built-in synthetic pairs")
    parser.add_argument("--verify-pairs", type=int, default=4, metavar="N", help="pairs used from DIR (default 4)")
    parser.add_argument("--modalities", default="thermal", metavar="LIST",
                        help="comma list of the IR modalities the checkpoint was trained on, thermal and/or nir, "
                             "recorded in the graphs (a rig's cameras.ir.modality must be one; default: thermal)")


def run_onnx(args: argparse.Namespace) -> int:
    from busref.export.onnx_export import ExportError, export_checkpoint
    from busref.models.checkpoint import CheckpointError

    modalities = [m.strip() for m in args.modalities.split(",") if m.strip()]
    if not modalities or set(modalities) - set(MODALITIES):
        print(f"busref export onnx: --modalities {args.modalities!r}: give thermal, nir or thermal,nir",
              file=sys.stderr)
        return exit_codes.BAD_CONFIG
    try:
        reports = export_checkpoint(args.checkpoint, args.out, opset=args.opset, verify_data=args.verify_data,
                                    verify_pairs=args.verify_pairs, modalities=modalities)
    except (ExportError, CheckpointError, ValueError) as exc:
        print(f"busref export onnx: {exc}", file=sys.stderr)
        return EXIT_VERIFY_FAILED
    print(f"{'graph':<9} {'output':<7} {'max |ORT - torch|':>18}  sizes (H x W)")
    for r in reports:
        sizes = ", ".join(f"{h}x{w}" for h, w in r.sizes)
        for name, diff in r.max_abs_diff.items():
            print(f"{r.graph:<9} {name:<7} {diff:>18.3e}  {sizes}")
    for r in reports:
        print(f"wrote {r.path}")
    return 0


def add_engine_arguments(parser: argparse.ArgumentParser) -> None:
    target = parser.add_argument_group("what to build (one of)")
    target.add_argument("--onnx", type=Path,
                        help="the graph to build (register.onnx, track.onnx, fuse.onnx or frame.onnx)")
    target.add_argument("--out", type=Path, help="the engine file to write (with --onnx)")
    target.add_argument("--rig", type=Path, help="rig file: build the graphs from inference.*_model into "
                                                 "inference.*_engine, with its fuse and IR sizes as the profile "
                                                 "(the track and frame graphs only where their *_model and "
                                                 "*_engine are set)")
    parser.add_argument("--precision", choices=("fp16", "fp32"), default="fp16",
                        help="fp16 (default; the warp stays fp32) or fp32")
    parser.add_argument("--min", dest="min_hw", metavar="HxW", help="smallest fuse/frame input, e.g. 256x320")
    parser.add_argument("--opt", dest="opt_hw", metavar="HxW",
                        help="size the fuse/frame engine is tuned for, e.g. 512x640")
    parser.add_argument("--max", dest="max_hw", metavar="HxW", help="largest fuse/frame input, e.g. 1080x1920")
    parser.add_argument("--workspace-mb", type=int, default=1024, help="builder workspace limit (default 1024)")
    parser.add_argument("--timing-cache", type=Path, help="timing cache file, loaded if present and saved after")
    parser.add_argument("--dla-core", type=int, default=None, help="build for this DLA core (Jetson; fp16 only)")
    parser.add_argument("--device", type=int, default=0, help="CUDA device (default 0)")
    parser.add_argument("--reuse", action="store_true",
                        help="keep an existing engine built from the same graph for this TensorRT and GPU")
    parser.add_argument("--verify", action="store_true",
                        help="compare the engine with ONNX Runtime on sample pairs (max diff and PSNR per output)")
    parser.add_argument("--verify-data", type=Path, default=None, metavar="DIR",
                        help="pair folder for --verify (default: built-in synthetic pairs)")


def _targets(args: argparse.Namespace) -> tuple[list[tuple[Path, Path]], object | None]:
    """(onnx, engine) pairs to build and the rig (or None), from --onnx/--out or --rig."""
    if args.rig is not None:
        from busref.rig_config import load_rig

        rig = load_rig(args.rig)
        inf = rig.inference
        targets = []
        for graph, model, engine in (("register", inf.register_model, inf.register_engine),
                                     ("fuse", inf.fuse_model, inf.fuse_engine)):
            if engine is None:
                raise ValueError(f"{args.rig}: inference.{graph}_engine is not set: nowhere to write the engine")
            targets.append((model, engine))
        # The track and frame graphs are optional (without the track graph every registration run is a
        # register-graph run; without the frame graph the daemon warps on the CPU).
        for graph, model, engine in (("track", inf.track_model, inf.track_engine),
                                     ("frame", inf.frame_model, inf.frame_engine)):
            if engine is None or not model.is_file():
                log.info("%s: no %s engine built (%s)", args.rig, graph, f"inference.{graph}_engine is not set"
                         if engine is None else f"{model} does not exist")
            else:
                targets.append((model, engine))
        return targets, rig
    if args.onnx is None or args.out is None:
        raise ValueError("give --onnx GRAPH and --out ENGINE, or --rig FILE")
    return [(args.onnx, args.out)], None


def run_engine(args: argparse.Namespace) -> int:
    from busref.conventions import parse_hw
    from busref.export import build_engine as be
    from busref.export.samples import sample_pairs
    from busref.runtime.artifact import ArtifactError

    try:
        targets, rig = _targets(args)
        sizes = {k: parse_hw(v) if v else None for k, v in
                 (("min_hw", args.min_hw), ("opt_hw", args.opt_hw), ("max_hw", args.max_hw))}
        for onnx_path, engine_path in targets:
            request = be.BuildRequest(onnx_path, engine_path, precision=args.precision, rig=rig,
                                      workspace_mb=args.workspace_mb, timing_cache=args.timing_cache,
                                      dla_core=args.dla_core, device=args.device, **sizes)
            header, built = be.build_if_stale(request) if args.reuse else (be.build(request), True)
            inputs = ", ".join(f"{t.name} {t.min}..{t.max}" for t in header.inputs)
            print(f"{'wrote' if built else 'kept'} {engine_path}: {header.metadata.graph}, {header.precision}, "
                  f"TensorRT {header.tensorrt_version} on {header.gpu_name}; {inputs}")
            if args.verify:
                checks = be.verify(engine_path, onnx_path, sample_pairs(args.verify_data), device=args.device)
                for c in checks:
                    print(f"  {c.name:<6} max |engine - ORT| {c.max_abs_diff:.3e} (tolerance {c.tolerance:g}), "
                          f"PSNR {c.psnr_db:.1f} dB  {'OK' if c.ok else 'FAILED'}")
                if not all(c.ok for c in checks):
                    print(f"busref export engine: {engine_path} does not match ONNX Runtime", file=sys.stderr)
                    return EXIT_VERIFY_FAILED
    except be.BuildUnavailable as exc:
        print(exc, file=sys.stderr)
        return EXIT_UNAVAILABLE
    except (be.BuildError, ArtifactError, ValueError) as exc:
        print(f"busref export engine: {exc}", file=sys.stderr)
        return EXIT_VERIFY_FAILED
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = (
        "examples:\n"
        "  busref export onnx --out weights                  # the shipped checkpoint\n"
        "  busref export onnx --checkpoint runs/mine/registration.pt --out runs/mine/onnx\n"
        "  busref export engine --onnx weights/fuse.onnx --out engines/fuse.engine --opt 512x640 --verify\n"
        "  busref export engine --rig /config/rig.yaml --reuse --timing-cache engines/timing.cache"
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    add_onnx_arguments(actions.add_parser("onnx", help="checkpoint -> register.onnx + fuse.onnx + frame.onnx, "
                                                       "verified against PyTorch"))
    add_engine_arguments(actions.add_parser("engine", help="ONNX graph -> TensorRT engine (needs TensorRT and a GPU)"))


def run(args: argparse.Namespace) -> int:
    return run_onnx(args) if args.action == "onnx" else run_engine(args)
