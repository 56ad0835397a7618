"""``busref eval registration|fusion``: tables against the classical baselines."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from models.baselines.registration import make_method
from models.checkpoint import CheckpointError, load_model
from models.cli.common import add_checkpoint_argument, add_data_arguments, select_pairs
from models.data import DataError, load_pairs, split_sha256
from models.evaluation import (
    evaluate_fusion,
    evaluate_registration,
    fusion_table,
    registration_table,
    write_report,
)
from models.fusion_baselines import average, laplacian_pyramid_maxabs
from models.inference import BusReFRegistration, fuse_luminance
from models.misalignment import LEVELS
from models.train import select_device

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.description = (
        "Evaluate registration on the irvis-reg-v1 protocol, or fusion on aligned pairs, for BusReF\n"
        "and the classical baselines. Prints a markdown table and writes OUT/NAME.json and .md.\n\n"
        "examples:\n"
        "  busref eval registration --data ../shared/data/roadscene --split test --level moderate\n"
        "  busref eval fusion --data ../shared/data/roadscene --split test"
    )
    parser.add_argument("task", choices=("registration", "fusion"))
    add_data_arguments(parser)
    add_checkpoint_argument(parser)
    parser.add_argument("--level", choices=sorted(LEVELS), default="moderate", help="misalignment level")
    parser.add_argument("--methods", help="comma list; registration: busref,identity,sift,ecc,mi (default: all); "
                        "fusion: gaf,average,laplacian (default: all)")
    parser.add_argument("--out", type=Path, default=Path("results"), help="report folder (default: results)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    try:
        paths, indices = select_pairs(args)
        pairs = load_pairs(paths)
        device = select_device(args.device)
        if args.task == "registration":
            names = (args.methods or "busref,identity,sift,ecc,mi").split(",")
            methods = {}
            for name in names:
                if name == "busref":
                    model, _ = load_model(args.checkpoint, map_location=device, expect_stage="registration")
                    methods[name] = BusReFRegistration(model, device)
                else:
                    methods[name] = make_method(name)
            results = evaluate_registration(methods, pairs, indices, args.level, progress=not args.no_progress)
            table = registration_table(results)
            report = args.out / f"registration_{args.level}"
        else:
            names = (args.methods or "gaf,average,laplacian").split(",")
            fusers = {"average": average, "laplacian": laplacian_pyramid_maxabs}
            methods = {}
            for name in names:
                if name == "gaf":
                    model, _ = load_model(args.checkpoint, map_location=device, expect_stage="fusion")
                    methods[name] = lambda v, i, m=model: fuse_luminance(m, v, i, device)
                elif name in fusers:
                    methods[name] = fusers[name]
                else:
                    raise ValueError(f"unknown fusion method {name!r}; valid: gaf, {', '.join(fusers)}")
            results = evaluate_fusion(methods, pairs, progress=not args.no_progress)
            table = fusion_table(results)
            report = args.out / "fusion"
    except (DataError, CheckpointError, ValueError) as exc:
        log.error("%s", exc)
        return 2
    meta = {"task": args.task, "level": args.level if args.task == "registration" else None,
            "split": args.split if args.data else "all", "split_sha256": split_sha256(paths), "n_pairs": len(pairs),
            "checkpoint": str(args.checkpoint)}
    write_report(report, results, table, meta)
    print(table)
    log.info("wrote %s.json and %s.md", report, report)
    return 0
