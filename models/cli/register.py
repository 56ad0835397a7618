"""``busref register``: register every IR image onto its visible partner (and fuse)."""

from __future__ import annotations

import argparse
import json
import logging

import cv2
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
from busref.models.cli.common import (
    add_checkpoint_argument,
    add_descriptor_argument,
    checkpoint_path,
    refinement_with,
)
from busref.models.data import PairPaths
from busref.models.geometry import theta_to_pixel_affine
from busref.models.inference import BusReFRegistration, fuse_luminance
from busref.models.metrics.registration import warp_numpy
from busref.models.train import select_device
from busref.visualise import contact_sheet, edge_overlay

log = logging.getLogger(__name__)

SHEET_TITLES = ("visible", "moving IR", "registered IR", "edges vis/IR", "fused")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.description = (
        "Register IR images onto their visible partners (paired by file stem) and fuse them.\n"
        "Writes OUT/registered/NAME.png (8-bit IR in the visible frame), OUT/fused/NAME.png (colour),\n"
        "OUT/grid/NAME.npy (float32 H x W x 2: for each visible pixel (x, y), the IR pixel (x', y') it\n"
        "samples; irvis-reg-v1 convention) and OUT/theta/NAME.json (the coarse affine).\n\n"
        "examples:\n"
        "  busref register --vis vis/ --ir ir/ --out out/ --contact-sheet\n"
        "  busref register --vis frame_rgb.png --ir frame_ir.png --out out/"
    )
    add_pair_arguments(parser)
    add_checkpoint_argument(parser)
    add_descriptor_argument(parser)
    parser.add_argument("--contact-sheet", action="store_true",
                        help="also write OUT/contact_sheet.png (visible | moving IR | registered | edges | fused)")
    parser.add_argument("--sheet-rows", type=int, default=8, help="pairs on the contact sheet (default: 8)")
    parser.add_argument("--refine", action="store_true",
                        help="refine each grid on its pair (instance optimisation of edges and MIND, and of "
                             "--descriptor if given; a few s a pair on a CPU core; 'busref-refined' in the README "
                             "tables); theta stays the network's")


def run(args: argparse.Namespace) -> int:
    try:
        if args.descriptor and not args.refine:
            raise DataError("--descriptor is the refinement's: it needs --refine")
        pairs = pairs_from_args(args)
        device = select_device(args.device)
        model, _ = load_model(checkpoint_path(args), map_location=device, expect_stage="registration")
        refinement, descriptor = refinement_with(args.descriptor) if args.refine else (None, None)
    except (DataError, CheckpointError) as exc:
        log.error("%s", exc)
        return 2
    method = BusReFRegistration(model, device, refinement, descriptor)
    rows: list[list[np.ndarray]] = []
    labels: list[str] = []

    def work(pair: PairPaths, vis_bgr: np.ndarray) -> None:
        vis_y, ycc = split_luminance(vis_bgr)
        ir = read_gray(pair.ir)
        result = method.estimate(vis_y, ir)
        registered = warp_numpy(ir.astype(np.float64), result.grid.astype(np.float64)).astype(np.float32)
        fused = merge_luminance(fuse_luminance(model, vis_y, registered, device), ycc)
        write_png(args.out / "registered" / f"{pair.name}.png", registered)
        write_png(args.out / "fused" / f"{pair.name}.png", fused)
        (args.out / "grid").mkdir(parents=True, exist_ok=True)
        np.save(args.out / "grid" / f"{pair.name}.npy", result.grid.astype(np.float32))
        import torch  # local: only this conversion needs tensors here

        pixel = theta_to_pixel_affine(torch.from_numpy(result.theta).double()[None], vis_y.shape, ir.shape)[0]
        (args.out / "theta").mkdir(parents=True, exist_ok=True)
        (args.out / "theta" / f"{pair.name}.json").write_text(json.dumps({
            "theta_normalised": result.theta.tolist(),
            "affine_pixels": pixel.tolist(),
            "convention": "maps a visible pixel (x, y, 1) to the IR location it samples (coarse stage only); "
                          "normalised: align_corners=True, F.affine_grid",
            "visible_size": list(vis_y.shape[::-1]), "ir_size": list(ir.shape[::-1]),
        }, indent=1))
        if args.contact_sheet and len(rows) < args.sheet_rows:
            moving = cv2.resize(ir, vis_y.shape[::-1], interpolation=cv2.INTER_AREA)
            rows.append([vis_bgr, moving, registered, edge_overlay(vis_y, registered), fused])
            labels.append(pair.name)

    code = run_pairs(pairs, work, "register")
    if rows:
        write_png(args.out / "contact_sheet.png", contact_sheet(rows, SHEET_TITLES, row_labels=labels))
        log.info("contact sheet: %s", args.out / "contact_sheet.png")
    log.info("wrote %d pairs to %s", len(pairs), args.out)
    return code
