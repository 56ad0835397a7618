"""Write a trained checkpoint's copy with its weightless inference stages set.

Two parts of the register path have no weights, so turning them on or off changes the model
config only and every weight stays bit for bit:

* ``--lucas-kanade``: the Lucas-Kanade stage at the end of the register graph
  (busref.models.networks.lucas_kanade; ``standard`` = models.config.LK_SCHEDULE, 32 iterations);
* ``--both-starts``: the Lucas-Kanade stage also refines from the graph's own start and keeps the
  better-agreeing result (``LucasKanadeConfig.both_starts``);
* ``--keypoint-start``: the SIFT + RANSAC affine tried as a start of the register graph
  (busref.keypoints; by ``busref eval`` and ``busref register``, and by the daemon from the
  exported graphs' metadata).

The copy keeps the source's stage, split and metrics and records the source's SHA-256 and the
change; ``busref export onnx --checkpoint OUT`` then builds graphs (and metadata) that carry it.

usage: python scripts/set_inference_stages.py --checkpoint IN --lucas-kanade standard --both-starts on \
           --keypoint-start on --out OUT
       python scripts/set_inference_stages.py --checkpoint IN --lucas-kanade off --out OUT
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from busref.conventions import file_sha256
from busref.models.checkpoint import CheckpointError, load_checkpoint, save_payload
from busref.models.config import LK_SCHEDULE, LucasKanadeConfig

log = logging.getLogger("set_inference_stages")

SCHEDULES = {"standard": LK_SCHEDULE, "off": ()}
SWITCH = {"on": True, "off": False}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, required=True, help="a trained registration checkpoint")
    parser.add_argument("--lucas-kanade", choices=sorted(SCHEDULES),
                        help="standard: models.config.LK_SCHEDULE (32 iterations); off: no stage (default: as it is)")
    parser.add_argument("--both-starts", choices=sorted(SWITCH),
                        help="on: the Lucas-Kanade stage also refines from the graph's own start "
                        "(default: as it is)")
    parser.add_argument("--keypoint-start", choices=sorted(SWITCH),
                        help="on: also start from the SIFT + RANSAC affine (default: as it is)")
    parser.add_argument("--out", type=Path, required=True, help="where to write the copy (not the source)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.lucas_kanade is None and args.both_starts is None and args.keypoint_start is None:
        log.error("nothing to change: give --lucas-kanade, --both-starts and/or --keypoint-start")
        return 2
    if args.out.resolve() == args.checkpoint.resolve():
        log.error("--out must differ from --checkpoint: the source is kept as it is")
        return 2
    try:
        payload = load_checkpoint(args.checkpoint)
    except CheckpointError as exc:
        log.error("%s", exc)
        return 2
    config = payload["config"]
    update: dict[str, object] = {}
    changes = []
    stage = config.model.lucas_kanade
    if args.lucas_kanade is not None:
        stage = stage.model_copy(update={"schedule": SCHEDULES[args.lucas_kanade]})
        changes.append(f"lucas_kanade {args.lucas_kanade}")
    if args.both_starts is not None:
        stage = stage.model_copy(update={"both_starts": SWITCH[args.both_starts]})
        changes.append(f"both_starts {args.both_starts}")
    if stage != config.model.lucas_kanade:
        update["lucas_kanade"] = LucasKanadeConfig.model_validate(stage.model_dump())
    if args.keypoint_start is not None:
        update["keypoint_start"] = SWITCH[args.keypoint_start]
        changes.append(f"keypoint_start {args.keypoint_start}")
    model = config.model.model_copy(update=update)
    payload["config"] = config.model_copy(update={"model": model}).model_dump(mode="json")
    payload["derived_from"] = {"sha256": file_sha256(args.checkpoint), "change": ", ".join(changes)}
    for key in ("commit", "versions", "created"):  # save_payload records this run's
        payload.pop(key, None)
    save_payload(args.out, payload)
    log.info("wrote %s: %s with %s", args.out, args.checkpoint, ", ".join(changes))
    return 0


if __name__ == "__main__":
    sys.exit(main())
