"""``busref calibrate --rig FILE --pairs N --out FILE``: estimate the rig's IR->RGB prior from live pairs.

N pairs (spaced over time so the scene differs) are captured once. Then, pass after pass, the IR
of each pair is warped into the RGB frame with that pass's prior and the correction still needed
is measured on the agreement of the two images' edge orientations
(:mod:`busref.orientation`): the first pass searches the whole range of an
uncalibrated rig (16 degrees, 12 % of scale, 20 % of the width) exhaustively, pooled over the
pairs; then, every pass, each pair's rotation, scale and shift are fitted to the local shifts of
48 tiles; pairs far from the element-wise median are discarded as outliers (moments when the scene
shows little), and the median of the rest updates the prior: ``P_new = C^-1 @ P``. The passes stop when the
correction moves the frame's corners by less than ``--tolerance`` pixels (converged) or after
``--max-passes`` (reported as not converged).

Why a search and not the ``register`` graph: the network's correction is only good near the
misalignments it was trained on, and it undershoots (slope ~0.8); on the synthetic rig rotated by
10 degrees its correction was worse than none, so passes of it did not converge. The search needs
no start and no training, sees only edges (so either polarity, thermal or NIR), and is pooled
over many pairs, which a one-off command can afford (seconds a pair on one core).

The new prior is written into a copy of the rig file that differs from it only in that entry:
comments, layout and relative paths stay as the user wrote them. The copy is validated, and
checked to describe the same rig, before it is written. Beside it, ``OUT.png`` shows the edges of
both images over each other, before (the rig's prior) and after (the calibrated one).
"""

from __future__ import annotations

import argparse
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import cv2
import numpy as np
import yaml

from busref.orientation import search_similarity, tile_similarity
from busref.rig_config import RigConfig, RigConfigError, parse_rig
from busref.rig_config.schema import Matrix3
from busref.runtime import exit_codes
from busref.runtime.capture import CaptureThread
from busref.runtime.cli.run import add_rig_argument, load_or_report
from busref.runtime.daemon import StartupError
from busref.runtime.pairing import Pairer
from busref.runtime.pipeline import split_ycrcb
from busref.runtime.registration.geometry import corner_displacement, rotation_scale
from busref.runtime.thermal import ThermalNormaliser
from busref.visualise import contact_sheet, edge_overlay

log = logging.getLogger("busref.calibrate")

#: An estimate farther than this from the median (RGB pixels at the frame corners) is an outlier,
#: unless the spread of all estimates is larger (then 3 median absolute deviations).
OUTLIER_PX = 3.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_rig_argument(parser)
    parser.add_argument("--pairs", type=int, default=30, help="number of pairs to register")
    parser.add_argument("--interval", type=float, default=0.2, metavar="SECONDS",
                        help="least time between the pairs used, so the scene changes")
    parser.add_argument("--out", type=Path, required=True, help="where to write the calibrated rig file")
    parser.add_argument("--camera-timeout", type=float, default=10.0, metavar="SECONDS",
                        help="give up when no pair arrives for this long")
    parser.add_argument("--max-passes", type=int, default=5,
                        help="most registration passes over the captured pairs (default: 5)")
    parser.add_argument("--tolerance", type=float, default=0.5, metavar="PIXELS",
                        help="converged when a pass moves the RGB frame's corners by less than this (default: 0.5)")


@dataclass(frozen=True)
class Frames:
    """One captured pair: RGB luminance (H, W) uint8 and the normalised IR (H_ir, W_ir) float32 in [0, 1]."""

    vis_y: np.ndarray
    ir: np.ndarray
    t_capture: float


def collect(config: RigConfig, pairs: int, interval: float, timeout: float) -> list[Frames]:
    """``pairs`` live pairs, at least ``interval`` seconds apart."""
    pairer = Pairer(config.pairing.max_skew_ms / 1000.0)
    captures = [CaptureThread(n, getattr(config.cameras, n), pairer.add) for n in ("ir", "rgb")]
    normaliser = ThermalNormaliser(config.cameras.ir.thermal)
    frames: list[Frames] = []
    for c in captures:
        c.start()
    try:
        last = -math.inf
        while len(frames) < pairs:
            pair = pairer.latest_pair(timeout=timeout)
            if pair is None:
                errors = "; ".join(f"{c.camera_name}: {c.stats.last_error or 'no frame'}" for c in captures)
                raise StartupError(f"no pair for {timeout:g} s ({errors})", exit_codes.NO_CAMERA)
            if pair.rgb.t_capture - last < interval:
                continue
            last = pair.rgb.t_capture
            y, _, _ = split_ycrcb(pair.rgb.image)
            frames.append(Frames(y, normaliser(pair.ir.image), pair.rgb.t_capture))
            log.info("pair %d/%d captured", len(frames), pairs)
    finally:
        for c in captures:
            c.stop()
    return frames


#: Most pairs pooled in the first pass's wide search (each adds ~1.5 s on one core).
POOLED_PAIRS = 12
#: Tiles (rows, cols) whose local shifts each pair's similarity is fitted to.
TILES = (6, 8)


def canvases(frames: list[Frames], prior: np.ndarray, rgb_size: tuple[int, int]
             ) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Each pair's IR warped into the RGB frame by ``prior`` (3x3 IR pixel -> RGB pixel), and where
    that canvas shows IR content (uint8 masks; one array for all: the IR frames share their size)."""
    warped = [cv2.warpPerspective(f.ir, prior, rgb_size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                                  borderValue=0.0) for f in frames]
    valid = cv2.warpPerspective(np.ones(frames[0].ir.shape, np.uint8), prior, rgb_size, flags=cv2.INTER_NEAREST,
                                borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    return warped, [valid] * len(frames)


def corrections(frames: list[Frames], prior: np.ndarray, rgb_size: tuple[int, int], *, wide: bool
                ) -> list[np.ndarray]:
    """The corrections (3x3 RGB pixel -> pre-warped canvas pixel, on top of ``prior``) the pairs ask
    for. With ``wide`` (an uncalibrated start) a search pooled over up to :data:`POOLED_PAIRS` of
    them covers the whole range first (:func:`search_similarity`); then each pair's similarity
    is fitted to the local shifts of :data:`TILES` tiles (:func:`tile_similarity`: each region
    counts the same, so a non-rigid term where edges crowd does not pull the answer)."""
    references = [f.vis_y for f in frames]
    movings, valids = canvases(frames, prior, rgb_size)
    start = np.eye(3)
    if wide:
        pooled = slice(None, None, max(1, len(frames) // POOLED_PAIRS))
        start = search_similarity(references[pooled], movings[pooled], valids[pooled], max_rotation_deg=16.0,
                                  max_scale_change=0.12, max_shift_fraction=0.2).correction
    found = []
    for reference, moving, valid in zip(references, movings, valids, strict=True):
        flags = cv2.WARP_INVERSE_MAP
        near = cv2.warpAffine(moving, start[:2], rgb_size, flags=cv2.INTER_LINEAR | flags)
        inside = cv2.warpAffine(valid, start[:2], rgb_size, flags=cv2.INTER_NEAREST | flags)
        fit = tile_similarity(reference, near, inside, tiles=TILES)
        if fit is not None and np.all(np.isfinite(fit)):
            found.append(start @ fit)
    return found


@dataclass
class Calibration:
    """The result of :func:`iterate`: the prior, whether the last pass's correction was within the
    tolerance, and each pass's report (:func:`robust_median`)."""

    prior: np.ndarray
    converged: bool
    passes: list[dict[str, Any]]


def iterate(estimate: Callable[[np.ndarray], list[np.ndarray]], prior: np.ndarray, size: tuple[int, int], *,
            max_passes: int, tolerance: float) -> Calibration:
    """Update ``prior`` (3x3 IR pixel -> RGB pixel) pass by pass until a pass's median correction
    moves the corners of the RGB frame of ``size`` (width, height) by less than ``tolerance`` px.

    ``estimate(prior)`` returns the corrections the pairs ask for on top of ``prior`` (3x3 RGB pixel
    -> pre-warped canvas pixel); a pass without any usable estimate ends the loop unconverged.
    """
    passes: list[dict[str, Any]] = []
    for _ in range(max_passes):
        found = estimate(prior)
        if not found:
            return Calibration(prior, False, passes)
        median, report = robust_median(found, size)
        prior = np.linalg.inv(median) @ prior
        passes.append(report)
        moved = report["correction"]["corner_displacement_px"]
        log.info("pass %d: correction %.2f px (%d/%d pairs agree, spread median %.2f px)", len(passes), moved,
                 report["inliers"], report["pairs"], report["spread_px"]["median"])
        if moved < tolerance:
            return Calibration(prior, True, passes)
    return Calibration(prior, False, passes)


def before_after_sheet(frames: list[Frames], before: np.ndarray, after: np.ndarray, rgb_size: tuple[int, int]
                       ) -> np.ndarray:
    """Edges of the visible image (green) and of the IR warped into it (magenta; white where both
    coincide), with the prior ``before`` and ``after`` calibration, for up to 4 of ``frames``."""
    rows = []
    for f in frames[:4]:
        rows.append([edge_overlay(f.vis_y, cv2.warpPerspective(f.ir, prior, rgb_size, flags=cv2.INTER_LINEAR))
                     for prior in (before, after)])
    return contact_sheet(rows, ["before (rig file's prior)", "after (calibrated prior)"], tile_width=384)


def robust_median(corrections: list[np.ndarray], size: tuple[int, int]) -> tuple[np.ndarray, dict[str, Any]]:
    """Element-wise median of the corrections after dropping outliers, and a quality report."""
    stack = np.stack(corrections)
    first = np.median(stack, axis=0)
    dist = np.array([corner_displacement(c, first, size) for c in stack])
    mad = float(np.median(np.abs(dist - np.median(dist))))
    limit = max(OUTLIER_PX, float(np.median(dist)) + 3.0 * 1.4826 * mad)
    inliers = stack[dist <= limit]
    median = np.median(inliers, axis=0)
    spread = np.array([corner_displacement(c, median, size) for c in inliers])
    rotation, scale = rotation_scale(median)
    report = {
        "pairs": len(stack),
        "inliers": len(inliers),
        "outlier_limit_px": limit,
        "spread_px": {"median": float(np.median(spread)), "max": float(spread.max())},
        "correction": {"rotation_deg": rotation, "scale": scale,
                       "shift_px": [float(median[0, 2]), float(median[1, 2])],
                       "corner_displacement_px": corner_displacement(median, np.eye(3), size)},
    }
    return median, report


#: First line of a calibrated copy; a later calibration of that copy replaces it.
PROVENANCE = "# prior_homography calibrated by 'busref calibrate'"


def _yaml_number(value: float) -> str:
    """``value`` as text PyYAML reads back as the same float (it wants a '.' before an exponent)."""
    text = repr(value)
    return text.replace("e", ".0e") if "e" in text and "." not in text else text


def _last_line_end(text: str, node: yaml.Node) -> int:
    """Index just past the line on which ``node`` ends (its trailing comment included)."""
    # A block collection's end mark lies after the comments that follow it: use its last leaf.
    while isinstance(node, yaml.CollectionNode) and not node.flow_style and node.value:
        last = node.value[-1]
        node = last[1] if isinstance(node, yaml.MappingNode) else last
    end = node.end_mark.index
    if end > 0 and text[end - 1] == "\n":  # block scalars (|, >) end after their line break
        return end
    newline = text.find("\n", end)
    return len(text) if newline < 0 else newline + 1


def _add_entry(text: str, mapping: yaml.MappingNode, entry: str) -> str:
    """``text`` with the one-line ``entry`` ("key: value") appended to ``mapping``."""
    if mapping.flow_style:
        close = mapping.end_mark.index - 1  # the closing brace
        return text[:close] + (", " if mapping.value else "") + entry + text[close:]
    at = _last_line_end(text, mapping.value[-1][1])
    indent = " " * mapping.value[0][0].start_mark.column
    return text[:at] + ("" if text[:at].endswith("\n") else "\n") + indent + entry + "\n" + text[at:]


def set_prior_homography(text: str, prior: Matrix3) -> str:
    """Rig file ``text`` with ``registration.prior_homography`` set to ``prior``, nothing else changed.

    An existing 3x3 keeps its layout (each number is replaced where it stands); a missing entry
    is added as the last line of the ``registration`` block (or a new block at the end).
    """
    root = yaml.compose(text, Loader=yaml.SafeLoader)
    flow = "[" + ", ".join("[" + ", ".join(_yaml_number(v) for v in row) + "]" for row in prior) + "]"
    registration = next((v for k, v in root.value if k.value == "registration"), None)
    if not isinstance(registration, yaml.MappingNode):
        return _add_entry(text, root, f"registration: {{prior_homography: {flow}}}")
    current = next((v for k, v in registration.value if k.value == "prior_homography"), None)
    if current is None:
        return _add_entry(text, registration, f"prior_homography: {flow}")
    if isinstance(current, yaml.SequenceNode):
        # From the end backwards, so the earlier indices stay valid.
        leaves = [(leaf, value) for row, values in zip(current.value, prior, strict=True)
                  for leaf, value in zip(row.value, values, strict=True)]
        for leaf, value in reversed(leaves):
            text = text[:leaf.start_mark.index] + _yaml_number(value) + text[leaf.end_mark.index:]
        return text
    # An explicit null ("prior_homography:" or "prior_homography: null") becomes the matrix.
    start, end = current.start_mark.index, current.end_mark.index
    return text[:start] + (flow if end > start else f" {flow}") + text[end:]


def _differences(a: Any, b: Any, where: str = "") -> list[tuple[str, Any, Any]]:
    """``(field.path, a_value, b_value)`` for every leaf where the nested dicts ``a`` and ``b`` differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for key in sorted(a.keys() | b.keys())
                for d in _differences(a.get(key), b.get(key), f"{where}.{key}" if where else key)]
    return [] if a == b else [(where, a, b)]


def write_rig(config: RigConfig, prior: np.ndarray, source: Path, out: Path) -> None:
    """Write the rig file ``source`` (loaded as ``config``) to ``out`` with ``prior`` as its prior.

    Raises :class:`RigConfigError` (and writes nothing) if the copy does not validate or would
    describe another rig than ``config`` apart from the prior, e.g. a relative path that
    resolves elsewhere from ``out``'s folder.
    """
    matrix = cast(Matrix3, tuple(map(tuple, (prior / prior[2, 2]).round(9).tolist())))
    text = source.read_text(encoding="utf-8")
    if text.startswith(PROVENANCE):
        text = text.partition("\n")[2]
    text = (f"{PROVENANCE} on {time.strftime('%Y-%m-%d %H:%M:%S')} from {source}\n"
            + set_prior_homography(text, matrix))
    written = parse_rig(text, out.resolve())
    expected = config.model_copy(update={
        "registration": config.registration.model_copy(update={"prior_homography": matrix})})
    changed = _differences(expected.model_dump(mode="json"), written.model_dump(mode="json"))
    if changed:
        raise RigConfigError(out, [
            f"{field}: {new!r} when read from {out.parent}, {old!r} in {source} (relative paths resolve "
            "against the rig file's folder: write --out beside it, or make the path absolute)"
            for field, old, new in changed])
    out.write_text(text, encoding="utf-8")


def run(args: argparse.Namespace) -> int:
    config = load_or_report(args.rig)
    if config is None:
        return exit_codes.BAD_CONFIG
    for name, value in (("--pairs", args.pairs), ("--max-passes", args.max_passes)):
        if value < 1:
            log.error("%s must be at least 1", name)
            return exit_codes.BAD_CONFIG
    rgb_size = (config.cameras.rgb.width, config.cameras.rgb.height)
    start = np.asarray(config.prior_homography, dtype=np.float64)
    try:
        frames = collect(config, args.pairs, args.interval, args.camera_timeout)
    except StartupError as exc:
        log.error("%s (exit code %d)", exc, exc.exit_code)
        return exc.exit_code
    passes = 0

    def estimate(prior: np.ndarray) -> list[np.ndarray]:
        nonlocal passes
        passes += 1
        return corrections(frames, prior, rgb_size, wide=passes == 1)

    result = iterate(estimate, start, rgb_size, max_passes=args.max_passes, tolerance=args.tolerance)
    if not result.passes:
        log.error("no usable estimate in %d pairs", args.pairs)
        return exit_codes.NO_DATA
    try:
        write_rig(config, result.prior, args.rig, args.out)
    except RigConfigError as exc:
        log.error("the calibrated rig file was not written: %s", exc)
        return exit_codes.FAILURE
    sheet = args.out.with_suffix(".png")
    cv2.imwrite(str(sheet), before_after_sheet(frames, start, result.prior, rgb_size))
    last = result.passes[-1]
    # The whole correction A of all passes (new prior = A^-1 @ old), as one pass reports its own.
    total = start @ np.linalg.inv(result.prior)
    rotation, scale = rotation_scale(total)
    state = (f"converged after {len(result.passes)} passes" if result.converged else
             f"NOT converged after {len(result.passes)} passes (the last still moved the corners "
             f"{last['correction']['corner_displacement_px']:.2f} px; tolerance {args.tolerance:g})")
    print(f"{state}; in the last pass {last['inliers']}/{last['pairs']} pairs agree (spread of their "
          f"corrections: median {last['spread_px']['median']:.2f} px, max {last['spread_px']['max']:.2f} px)")
    print(f"residual: the pairs still ask for {last['correction']['corner_displacement_px']:.2f} px at the corners")
    print(f"change of the prior: rotation {rotation:+.2f} deg, scale {scale:.4f}, corners move up to "
          f"{corner_displacement(total, np.eye(3), rgb_size):.1f} px")
    prior = np.array2string(result.prior / result.prior[2, 2], precision=6)
    print(f"prior_homography (IR pixel -> RGB pixel):\n{prior}")
    print(f"written to {args.out}; edges before/after: {sheet}")
    if not result.converged:
        log.warning("calibration did not converge: check %s, and calibrate again on a scene with more structure "
                    "(edges at several depths and across the frame)", sheet)
    return exit_codes.OK
