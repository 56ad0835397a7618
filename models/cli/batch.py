"""The pair loop shared by ``busref register`` and ``busref fuse``: inputs, outputs, errors."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from busref.conventions import DataError, read_bgr
from busref.models.data import PairPaths, list_pairs

log = logging.getLogger(__name__)


def add_pair_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--vis", type=Path, required=True, help="visible image folder (or one image file)")
    parser.add_argument("--ir", type=Path, required=True, help="IR image folder (or one image file), paired by stem")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--skip-unpaired", action="store_true",
                        help="skip images without a partner instead of stopping")


def pairs_from_args(args: argparse.Namespace) -> list[PairPaths]:
    if args.vis.is_file() and args.ir.is_file():
        return [PairPaths(args.vis.stem, args.ir, args.vis)]
    if args.vis.is_file() or args.ir.is_file():
        raise DataError("--vis and --ir must both be folders or both be files")
    return list_pairs(args.ir, args.vis, allow_unpaired=args.skip_unpaired)


def split_luminance(bgr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """BGR uint8 -> (Y float32 (H, W) in [0, 1], YCrCb uint8 image to put a new Y into)."""
    ycc = cv2.cvtColor(bgr, cv2.COLOR_BGR2YCrCb)
    return ycc[:, :, 0].astype(np.float32) / 255.0, ycc


def merge_luminance(y: np.ndarray, ycc: np.ndarray) -> np.ndarray:
    """Fused Y in [0, 1] + the visible Cr/Cb -> BGR uint8 (the usual IVIF colour habit)."""
    out = ycc.copy()
    out[:, :, 0] = np.clip(np.round(y * 255.0), 0, 255).astype(np.uint8)
    return cv2.cvtColor(out, cv2.COLOR_YCrCb2BGR)


def write_png(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if image.dtype != np.uint8:
        image = np.clip(np.round(image * 255.0), 0, 255).astype(np.uint8)
    if not cv2.imwrite(str(path), image):
        raise DataError(f"{path}: cannot write this file")


def run_pairs(pairs: list[PairPaths], work: Callable[[PairPaths, np.ndarray], None], desc: str) -> int:
    """Call ``work(pair, visible_bgr)`` for each pair; a pair that fails is logged with its file
    names and the rest go on. Returns the exit code: 0, or 1 when any pair failed."""
    failed = []
    for pair in tqdm(pairs, desc=desc, dynamic_ncols=True):
        try:
            work(pair, read_bgr(pair.vis))
        except DataError as exc:
            log.error("pair %s: %s", pair.name, exc)
            failed.append(pair.name)
    if failed:
        log.error("%d of %d pairs failed: %s", len(failed), len(pairs), ", ".join(failed[:10]))
        return 1
    return 0
