"""``busref eval registration|fusion``: tables against the classical baselines."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import cv2
import numpy as np

from busref.conventions import DataError
from busref.models.baselines.registration import make_method
from busref.models.checkpoint import CheckpointError, load_model
from busref.models.cli.batch import write_png
from busref.models.cli.common import (
    add_checkpoint_argument,
    add_data_arguments,
    add_descriptor_argument,
    checkpoint_path,
    refinement_with,
    select_pairs,
)
from busref.models.data import LoadedPair, load_pairs, split_sha256
from busref.models.evaluation import (
    FuseFn,
    evaluate_fusion,
    evaluate_registration,
    fusion_table,
    registration_table,
    write_report,
)
from busref.models.fusion_baselines import average, laplacian_pyramid_maxabs
from busref.models.inference import BusReFRegistration, fuse_luminance
from busref.models.metrics.registration import warp_numpy
from busref.models.misalignment import LEVELS, protocol_pair
from busref.models.train import select_device
from busref.rig_config.resources import recorded_path
from busref.visualise import contact_sheet, edge_overlay

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
    add_descriptor_argument(parser)
    parser.add_argument("--level", choices=sorted(LEVELS), default="moderate", help="misalignment level")
    parser.add_argument("--methods", help="comma list; registration: busref,busref-refined,identity,sift,ecc,mi,"
                        "ngf-mind (default: all; busref-refined refines busref's grid on each pair, ngf-mind runs "
                        "that refinement from the identity); fusion: gaf,average,laplacian (default: all)")
    parser.add_argument("--out", type=Path, default=Path("results"), help="report folder (default: results)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--contact-sheet", type=int, default=0, metavar="N",
                        help="registration with busref or busref-refined: also write OUT/registration_LEVEL_sheet.png, "
                             "the first N pairs as visible | edges before | edges after (busref's where it ran) | "
                             "fused; fusion with gaf: "
                             "OUT/fusion_sheet.png, the first N pairs as visible | IR | laplacian | gaf and a "
                             "zoomed crop (default: none)")


def run(args: argparse.Namespace) -> int:
    try:
        paths, indices = select_pairs(args)
        pairs = load_pairs(paths)
        device = select_device(args.device)
        descriptor = None  # the refinement's, where busref-refined uses one (recorded in the report)
        if args.task == "registration":
            names = (args.methods or "busref,busref-refined,identity,sift,ecc,mi,ngf-mind").split(",")
            learned = ("busref", "busref-refined")  # one network; the second also refines its grid
            if any(name in learned for name in names):
                model, _ = load_model(checkpoint_path(args), map_location=device, expect_stage="registration")
            refinement, descriptor = refinement_with(args.descriptor if "busref-refined" in names else None)
            methods = {}
            for name in names:
                if name == "busref":
                    methods[name] = BusReFRegistration(model, device)
                elif name == "busref-refined":
                    methods[name] = BusReFRegistration(model, device, refinement, descriptor)
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
                    model, _ = load_model(checkpoint_path(args), map_location=device, expect_stage="fusion")
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
            "checkpoint": recorded_path(checkpoint_path(args)),
            "descriptor": recorded_path(args.descriptor) if descriptor is not None else None}
    write_report(report, results, table, meta)
    print(table)
    log.info("wrote %s.json and %s.md", report, report)
    # The network alone where it ran: what the daemon publishes.
    shown = [name for name in ("busref", "busref-refined") if name in methods]
    n = args.contact_sheet
    if args.task == "registration" and n and shown:
        sheet = registration_sheet(methods[shown[0]], pairs[:n], indices[:n], args.level)
        write_png(report.with_name(report.name + "_sheet.png"), sheet)
        log.info("wrote %s_sheet.png (%s)", report, shown[0])
    if args.task == "fusion" and n and "gaf" in methods:
        write_png(report.with_name(report.name + "_sheet.png"), fusion_sheet(methods["gaf"], pairs[:n]))
        log.info("wrote %s_sheet.png", report)
    return 0


def busiest_window(*images: np.ndarray, fraction: float = 0.2) -> tuple[float, tuple[slice, slice]]:
    """The window of ``fraction`` of each side where the images (H, W) together have the most Sobel
    edge energy (the sources' detail: signs, poles, people, plates), and that energy."""
    h, w = images[0].shape
    wh, ww = max(int(h * fraction), 1), max(int(w * fraction), 1)
    magnitude = np.zeros((h, w), np.float32)
    for image in images:
        gx = cv2.Sobel(image.astype(np.float32), cv2.CV_32F, 1, 0)
        gy = cv2.Sobel(image.astype(np.float32), cv2.CV_32F, 0, 1)
        magnitude += np.hypot(gx, gy)
    energy = cv2.boxFilter(magnitude, -1, (ww, wh), normalize=False, anchor=(0, 0),
                           borderType=cv2.BORDER_CONSTANT)[: h - wh + 1, : w - ww + 1]
    y, x = np.unravel_index(int(np.argmax(energy)), energy.shape)
    return float(energy[y, x]), (slice(y, y + wh), slice(x, x + ww))


def fusion_sheet(fuse: FuseFn, pairs: list[LoadedPair]) -> np.ndarray:
    """Contact sheet of aligned pairs: visible, IR, the Laplacian pyramid, GAF; then a last row of
    the same four zoomed on the window with the most detail in both sources (:func:`busiest_window`)
    among the pairs."""
    rows, labels, windows = [], [], []
    for i, pair in enumerate(pairs):
        rows.append([pair.vis, pair.ir, laplacian_pyramid_maxabs(pair.vis, pair.ir), fuse(pair.vis, pair.ir)])
        labels.append(pair.name)
        windows.append((*busiest_window(pair.vis, pair.ir), i))
    _, window, best = max(windows, key=lambda item: item[0])
    rows.append([image[window] for image in rows[best]])
    labels.append(f"zoom: {labels[best]}")
    return contact_sheet(rows, ("visible", "IR", "Laplacian pyramid", "GAF"), row_labels=labels)


def registration_sheet(method: BusReFRegistration, pairs: list[LoadedPair], indices: list[int],
                       level: str) -> np.ndarray:
    """Contact sheet of protocol pairs: visible, its edges against the moving IR (before) and
    against the registered IR (after: white where both modalities have an edge), fused."""
    rows, labels = [], []
    for pair, index in zip(pairs, indices, strict=True):
        moving = protocol_pair(index, pair.ir.astype(np.float64), level).moving.astype(np.float32)
        registered = warp_numpy(moving, method.register(pair.vis, moving)).astype(np.float32)
        fused = fuse_luminance(method.model, pair.vis, registered, method.device)
        rows.append([pair.vis, edge_overlay(pair.vis, moving), edge_overlay(pair.vis, registered), fused])
        labels.append(pair.name)
    return contact_sheet(rows, ("visible", "edges before", "edges after", "fused (GAF)"), row_labels=labels)
