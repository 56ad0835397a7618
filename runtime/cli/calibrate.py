"""``busref calibrate --rig FILE --pairs N --out FILE``: estimate the rig's IR->RGB prior from live pairs.

Each of N pairs (spaced over time so the scene differs) is registered with the rig's current
prior; the coarse affine corrections are combined by an element-wise median, estimates far from
it are discarded as outliers (robust to moments where the scene gives the network little to
work with), and the median of the rest updates the prior: ``P_new = A^-1 @ P`` (``P`` the rig's
prior in force: its ``registration.prior_homography``, or the same-field-of-view default).

The new prior is written into a copy of the rig file that differs from it only in that entry:
comments, layout and relative paths stay as the user wrote them. The copy is validated, and
checked to describe the same rig, before it is written.
"""

from __future__ import annotations

import argparse
import logging
import math
import time
from pathlib import Path
from typing import Any, cast

import numpy as np
import yaml

from busref.rig_config import RigConfig, RigConfigError, parse_rig
from busref.rig_config.schema import Matrix3
from busref.runtime import exit_codes
from busref.runtime.capture import CaptureThread
from busref.runtime.cli.run import add_rig_argument, load_or_report
from busref.runtime.daemon import StartupError, open_graph
from busref.runtime.pairing import Pairer
from busref.runtime.pipeline import fuse_size, split_ycrcb
from busref.runtime.registration.geometry import (
    RegistrationGeometry,
    corner_displacement,
    rotation_scale,
    run_register,
)
from busref.runtime.thermal import ThermalNormaliser

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


def collect(config: RigConfig, geometry: RegistrationGeometry, pairs: int, interval: float,
            timeout: float) -> list[np.ndarray]:
    """Coarse corrections (3x3 RGB pixel maps on top of the current prior) from ``pairs`` live pairs."""
    backend = open_graph(config, "register")
    pairer = Pairer(config.pairing.max_skew_ms / 1000.0)
    captures = [CaptureThread(n, getattr(config.cameras, n), pairer.add) for n in ("ir", "rgb")]
    normaliser = ThermalNormaliser(config.cameras.ir.thermal)
    corrections: list[np.ndarray] = []
    for c in captures:
        c.start()
    try:
        last = -math.inf
        while len(corrections) < pairs:
            pair = pairer.latest_pair(timeout=timeout)
            if pair is None:
                errors = "; ".join(f"{c.camera_name}: {c.stats.last_error or 'no frame'}" for c in captures)
                raise StartupError(f"no pair for {timeout:g} s ({errors})", exit_codes.NO_CAMERA)
            if pair.rgb.t_capture - last < interval:
                continue
            last = pair.rgb.t_capture
            y, _, _ = split_ycrcb(pair.rgb.image)
            estimate = run_register(backend, geometry, y, normaliser(pair.ir.image), pair.rgb.t_capture)
            if np.all(np.isfinite(estimate.theta)):
                corrections.append(geometry.theta_pixels(estimate.theta))
            log.info("pair %d/%d registered", len(corrections), pairs)
    finally:
        for c in captures:
            c.stop()
    return corrections


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
    if args.pairs < 1:
        log.error("--pairs must be at least 1")
        return exit_codes.BAD_CONFIG
    rgb_size = (config.cameras.rgb.width, config.cameras.rgb.height)
    geometry = RegistrationGeometry.from_config(config, out_size=fuse_size(rgb_size, config.fusion.size))
    try:
        corrections = collect(config, geometry, args.pairs, args.interval, args.camera_timeout)
    except StartupError as exc:
        log.error("%s (exit code %d)", exc, exc.exit_code)
        return exc.exit_code
    if not corrections:
        log.error("no usable estimate in %d pairs", args.pairs)
        return exit_codes.NO_DATA
    median, report = robust_median(corrections, rgb_size)
    prior = np.linalg.inv(median) @ geometry.prior
    try:
        write_rig(config, prior, args.rig, args.out)
    except RigConfigError as exc:
        log.error("the calibrated rig file was not written: %s", exc)
        return exit_codes.FAILURE
    c = report["correction"]
    print(f"{report['inliers']}/{report['pairs']} pairs agree (spread: median {report['spread_px']['median']:.2f} px, "
          f"max {report['spread_px']['max']:.2f} px; outliers beyond {report['outlier_limit_px']:.1f} px)")
    print(f"correction of the prior: rotation {c['rotation_deg']:+.2f} deg, scale {c['scale']:.4f}, "
          f"shift ({c['shift_px'][0]:+.1f}, {c['shift_px'][1]:+.1f}) px, corners move up to "
          f"{c['corner_displacement_px']:.1f} px")
    print(f"prior_homography (IR pixel -> RGB pixel):\n{np.array2string(prior / prior[2, 2], precision=6)}")
    print(f"written to {args.out}")
    return exit_codes.OK
