"""``busref calibrate --rig FILE --pairs N --out FILE``: estimate the rig's IR->RGB prior from live pairs.

Each of N pairs (spaced over time so the scene differs) is registered with the rig's current
prior; the coarse affine corrections are combined by an element-wise median, estimates far from
it are discarded as outliers (robust to moments where the scene gives the network little to
work with), and the median of the rest updates the prior: ``P_new = A^-1 @ P``. The new prior
is written into a copy of the rig file, which is validated before it is kept.
"""

from __future__ import annotations

import argparse
import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from rig_config import RigConfig, RigConfigError, load_rig
from runtime import exit_codes
from runtime.capture import CaptureThread
from runtime.cli.run import add_rig_argument, load_or_report
from runtime.daemon import StartupError, open_graph
from runtime.pairing import Pairer
from runtime.pipeline import fuse_size, split_ycrcb
from runtime.registration import RegistrationGeometry, corner_displacement, rotation_scale, run_register
from runtime.thermal import ThermalNormaliser

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


def write_rig(config: RigConfig, prior: np.ndarray, source: Path, out: Path) -> None:
    """Write ``config`` with ``prior`` as a rig file; it keeps what the original set (paths made absolute)."""
    data = config.model_dump(mode="json", by_alias=True, exclude_unset=True)
    registration = data.setdefault("registration", {})
    registration["prior_homography"] = [[round(float(v), 9) for v in row] for row in prior / prior[2, 2]]
    header = (f"# Calibrated by 'busref calibrate' from {source} on {time.strftime('%Y-%m-%d %H:%M:%S')}.\n"
              "# Relative paths of the original are absolute here; comments were not carried over.\n")
    out.write_text(header + yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    load_rig(out)  # a calibrated rig that does not load is worse than none


def run(args: argparse.Namespace) -> int:
    config = load_or_report(args.rig)
    if config is None:
        return exit_codes.BAD_CONFIG
    if args.pairs < 1:
        log.error("--pairs must be at least 1")
        return exit_codes.BAD_CONFIG
    cams = config.cameras
    rgb_size = (cams.rgb.width, cams.rgb.height)
    geometry = RegistrationGeometry.from_config(
        config.registration, rgb_size=rgb_size, ir_size=(cams.ir.width, cams.ir.height),
        out_size=fuse_size(rgb_size, config.fusion.size),
    )
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
        log.error("the calibrated rig does not validate: %s", exc)
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
