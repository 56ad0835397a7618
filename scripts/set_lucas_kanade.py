"""Write a trained checkpoint's copy whose register graph ends with the Lucas-Kanade stage.

The stage (busref.models.networks.lucas_kanade) has no weights: what it does is the model
config's ``lucas_kanade`` block, so turning it on changes the config only, and every weight stays
bit for bit. The copy keeps the source's stage, split and metrics and records the source's
SHA-256; ``busref export onnx --checkpoint OUT`` then builds graphs that run it, and ``busref
eval`` scores it.

usage: python scripts/set_lucas_kanade.py --checkpoint weights/nir/busref.pt --schedule nir --out OUT
       python scripts/set_lucas_kanade.py --checkpoint IN --schedule off --out OUT
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from busref.conventions import file_sha256
from busref.models.checkpoint import CheckpointError, load_checkpoint, save_payload
from busref.models.config import NIR_SCHEDULE, LucasKanadeConfig

log = logging.getLogger("set_lucas_kanade")

SCHEDULES = {"nir": NIR_SCHEDULE, "off": ()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, required=True, help="a trained registration checkpoint")
    parser.add_argument("--schedule", choices=sorted(SCHEDULES), required=True,
                        help="nir: models.config.NIR_SCHEDULE (20 iterations); off: no stage")
    parser.add_argument("--out", type=Path, required=True, help="where to write the copy (not the source)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.out.resolve() == args.checkpoint.resolve():
        log.error("--out must differ from --checkpoint: the source is kept as it is")
        return 2
    try:
        payload = load_checkpoint(args.checkpoint)
    except CheckpointError as exc:
        log.error("%s", exc)
        return 2
    config = payload["config"]
    model = config.model.model_copy(update={"lucas_kanade": LucasKanadeConfig(schedule=SCHEDULES[args.schedule])})
    payload["config"] = config.model_copy(update={"model": model}).model_dump(mode="json")
    payload["derived_from"] = {"sha256": file_sha256(args.checkpoint), "change": f"lucas_kanade {args.schedule}"}
    for key in ("commit", "versions", "created"):  # save_payload records this run's
        payload.pop(key, None)
    save_payload(args.out, payload)
    log.info("wrote %s: %s with the Lucas-Kanade stage %s (%d iterations)", args.out, args.checkpoint,
             args.schedule, len(SCHEDULES[args.schedule]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
