"""What the daemon's registration reaches on a still rig: the ``register`` graph run K times on one
misaligned pair through the daemon's own scheduler, pair after pair of a RoadScene-layout split.

Each pair is misaligned by the ``irvis-reg-v1`` draws of its index at ``--level``; the rig's
prior is the identity (an uncalibrated rig whose cameras see the same field). Three ways of
running the registration are compared, each from a fresh scheduler:

  one-shot    every run from scratch, the newest estimate taken as is (what ``busref eval``'s
              ``busref`` method measures, through the exported graph and the daemon's resizing)
  warm        each run starts from the registration in force, every estimate taken
  warm+check  each run starts from the registration in force, an estimate is taken only if it
              aligns its pair clearly better (``plausibility.agree_gain``)
  track       warm+check with the ``track`` graph (the daemon's defaults): every
              ``registration.register_every``-th run the register graph, the others the track graph
              from the registration in force

Reported per run index: the mean end-point error (pixels of the full-size image) over the pairs,
inside the protocol's reconstructible mask. Prints a table, writes --json. Select on held-out
*train* pairs (the default, the last 8 of train: the registration recipe's validation pairs).

usage: python scripts/eval_still_rig.py [--graph weights/register.onnx] [--track weights/track.onnx]
                                        [--data ../shared/data/roadscene]
                                        [--split train --last 8] [--level moderate] [--runs 12]
                                        [--size HxW] [--agree-gain 0.01]
                                        [--json results/still_rig.json]
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np
from pydantic import ValidationError
from tqdm import tqdm

from busref.conventions import parse_hw
from busref.models.cli.common import split_file
from busref.models.data import load_pairs, roadscene_pairs
from busref.models.misalignment import LEVELS, protocol_pair
from busref.rig_config import default_model_path
from busref.rig_config.resources import recorded_path
from busref.rig_config.schema import Plausibility, RegistrationConfig
from busref.runtime.artifact import registration_size_for
from busref.runtime.backends.onnxruntime import OnnxRuntimeBackend
from busref.runtime.registration.geometry import RegistrationGeometry, ir_pixels
from busref.runtime.registration.scheduler import RegistrationScheduler

VARIANTS = ("one-shot", "warm", "warm+check", "track")


def variant_config(name: str, agree_gain: float) -> dict[str, object]:
    """The :class:`RegistrationConfig` fields of one variant; ``agree_gain`` where an estimate must agree."""
    checked = Plausibility(must_agree=True, agree_gain=agree_gain)
    return {"one-shot": {"warm_start": False, "plausibility": Plausibility(must_agree=False), "smoothing": 1.0},
            "warm": {"warm_start": True, "plausibility": Plausibility(must_agree=False), "smoothing": 0.5},
            "warm+check": {"warm_start": True, "plausibility": checked, "smoothing": 0.5, "register_every": 1},
            "track": {"warm_start": True, "plausibility": checked, "smoothing": 0.5}}[name]


def gain_fraction(text: str) -> float:
    """``--agree-gain``: judged by the rig files' own field (``Plausibility.agree_gain``), refused here
    with the value named."""
    try:
        return Plausibility(agree_gain=float(text)).agree_gain
    except ValidationError as exc:
        raise argparse.ArgumentTypeError(f"must be a fraction (0.01 = 1 %): {exc.errors()[0]['msg']}, "
                                         f"got {text}") from None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--graph", type=Path, default=default_model_path("register"))
    parser.add_argument("--track", type=Path, default=default_model_path("track"),
                        help="the track graph of the same checkpoint (the 'track' variant)")
    parser.add_argument("--data", type=Path, default=Path("../shared/data/roadscene"))
    parser.add_argument("--split", default="train")
    parser.add_argument("--split-file", default=None,
                        help="a split JSON file, or a split the package ships by its name (nirscene)")
    parser.add_argument("--last", type=int, default=8, help="the last N pairs of the split (0: all)")
    parser.add_argument("--level", choices=sorted(LEVELS), default="moderate")
    parser.add_argument("--runs", type=int, default=12, help="registration runs per pair")
    parser.add_argument("--size", type=parse_hw, default=None,
                        help="registration size HxW (the daemon's; default: the register graph's own)")
    parser.add_argument("--agree-gain", type=gain_fraction, default=Plausibility().agree_gain,
                        help="registration.plausibility.agree_gain of the checked variants (default: the rig "
                             "files' default)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    listed = roadscene_pairs(args.data, args.split, split_file(args.split_file))
    pairs = load_pairs(listed[-args.last:] if args.last else listed)
    backend = OnnxRuntimeBackend(args.graph, graph="register", threads=1)
    reg_hw = registration_size_for(args.size, backend.metadata.registration_size, source=str(args.graph))
    track = OnnxRuntimeBackend(args.track, graph="track", threads=1)
    errors = {name: np.zeros((len(pairs), args.runs)) for name in VARIANTS}
    identity = []
    for i, pair in enumerate(tqdm(pairs, desc="pairs")):
        truth = protocol_pair(i, pair.ir, args.level)
        h, w = pair.vis.shape
        vis = np.clip(np.rint(pair.vis * 255), 0, 255).astype(np.uint8)
        geometry = RegistrationGeometry(rgb_size=(w, h), ir_size=(w, h), reg_hw=reg_hw, out_size=(w, h),
                                        prior=np.eye(3))
        ys, xs = np.mgrid[0:h, 0:w]
        identity.append(float(np.hypot(xs - truth.inverse[..., 0], ys - truth.inverse[..., 1])[truth.mask].mean()))
        for name in VARIANTS:
            config = RegistrationConfig(size=reg_hw, every_n_pairs=1, **variant_config(name, args.agree_gain))
            scheduler = RegistrationScheduler(backend, config, geometry, track=track if name == "track" else None)
            for k in range(args.runs):
                state = scheduler.register_now(vis, truth.moving.astype(np.float32), float(k))
                x, y = ir_pixels(state.grid, geometry.norm_to_ir, (w, h))
                errors[name][i, k] = np.hypot(x - truth.inverse[..., 0], y - truth.inverse[..., 1])[truth.mask].mean()
    print(f"mean EPE (px) after each run, {len(pairs)} pairs, level {args.level}; no registration: "
          f"{np.mean(identity):.2f}")
    print("| run | " + " | ".join(VARIANTS) + " |\n|---|" + "---|" * len(VARIANTS))
    for k in range(args.runs):
        print(f"| {k + 1} | " + " | ".join(f"{errors[n][:, k].mean():.2f}" for n in VARIANTS) + " |")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "graph": recorded_path(args.graph), "track": recorded_path(args.track), "level": args.level,
            "agree_gain": args.agree_gain,
            "pairs": [p.name for p in pairs],
            "runs": args.runs,
            "registration_size": reg_hw, "identity_epe_px": float(np.mean(identity)),
            "epe_px_by_run": {n: errors[n].mean(axis=0).round(4).tolist() for n in VARIANTS}}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
