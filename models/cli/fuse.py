"""``busref fuse``: fusion only, for pairs that are already aligned."""

from __future__ import annotations

import argparse
import logging

import numpy as np

from busref.conventions import DataError, read_gray
from busref.models.checkpoint import CheckpointError, load_model
from busref.models.cli.batch import (
    add_pair_arguments,
    merge_luminance,
    pairs_from_args,
    run_pairs,
    split_luminance,
    write_png,
)
from busref.models.cli.common import add_checkpoint_argument, checkpoint_path
from busref.models.data import PairPaths
from busref.models.inference import fuse_luminance
from busref.models.train import select_device

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = ("Fuse aligned IR/visible pairs (paired by file stem) with GAF; writes the colour fused "
                          "image OUT/NAME.png (fused luminance + the visible image's chroma).")
    add_pair_arguments(parser)
    add_checkpoint_argument(parser)


def run(args: argparse.Namespace) -> int:
    try:
        pairs = pairs_from_args(args)
        device = select_device(args.device)
        model, _ = load_model(checkpoint_path(args), map_location=device, expect_stage="fusion")
    except (DataError, CheckpointError) as exc:
        log.error("%s", exc)
        return 2

    def work(pair: PairPaths, vis_bgr: np.ndarray) -> None:
        vis_y, ycc = split_luminance(vis_bgr)
        ir = read_gray(pair.ir)
        if ir.shape != vis_y.shape:
            raise DataError(f"{pair.ir} is {ir.shape[1]}x{ir.shape[0]} but {pair.vis} is "
                            f"{vis_y.shape[1]}x{vis_y.shape[0]}: fuse needs aligned pairs (use busref register)")
        write_png(args.out / f"{pair.name}.png", merge_luminance(fuse_luminance(model, vis_y, ir, device), ycc))

    code = run_pairs(pairs, work, "fuse")
    log.info("wrote %d fused images to %s", len(pairs), args.out)
    return code
