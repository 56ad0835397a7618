"""Write a trained checkpoint's copy with its weightless inference stages set.

Two parts of the register path have no weights, so turning them on or off changes the model
config only and every weight stays bit for bit:

* ``--lucas-kanade``: the Lucas-Kanade stage at the end of the register graph
  (busref.models.networks.lucas_kanade): ``standard`` = models.config.LK_SCHEDULE, 48 iterations
  at the nets' registration size (with ``--both-starts on``, the start is chosen after
  models.config.LK_SELECT_AFTER of them); ``fine`` = models.config.LK_SCHEDULE_FINE, 32 there
  and 48 more at twice that size (the model's ``net_pool`` 2: the nets keep their size, the registration
  size doubles; needs ``--both-starts on``, the start is chosen before the 48); both with
  models.config.LK_WINDOW and MIND descriptors of eight neighbours, 1 px apart at the nets' size
  (models.config.LK_MIND_RADIUS, LK_MIND_RADIUS_FINE, LK_MIND_DIAGONAL); ``off``: none; every
  preset leaves the blurred second variant out;
* ``--both-starts``: the Lucas-Kanade stage also refines from the graph's own start and keeps the
  better-agreeing result (``LucasKanadeConfig.both_starts``);
* ``--blurred-variant``: ``on`` adds the thermal stage's blurred second variant for rigs that may
  be far off (models.config.LK_BLURRED_PREFIX_2X, LK_BLURRED_MARGIN, LK_BLURRED_SELECT_AFTER; for
  the ``standard-2x`` stage; the thermal weights'): 8 held-out RoadScene train pairs, network alone,
  hard 9.57 -> 8.23 px, at ~1.4x the register call's time (README.md);
* ``--keypoint-start``: the SIFT + RANSAC affine tried as a start of the register graph
  (busref.keypoints; by ``busref eval`` and ``busref register``, and by the daemon from the
  exported graphs' metadata);
* ``--track``: the track graph's iterations (``LucasKanadeConfig.track_schedule``), the stage
  alone from the registration in force, which the daemon runs between register-graph runs:
  ``standard`` = models.config.LK_TRACK, ``fine`` = models.config.LK_TRACK_FINE (for a model
  whose stage is ``fine``), ``off``: no track graph;
* ``--descriptor``, ``--descriptor-iterations``, ``--descriptor-min-detail``: learned towers and
  their iterations after the MIND ones, kept only where the IR's share of fine detail
  (``lucas_kanade.fine_detail``) is at least the floor (models.config.LK_DESCRIPTOR_MIN_DETAIL). The
  shipped weights run none (``--descriptor-iterations 0``, which also takes the towers out): on
  RoadScene their gain came from its JPEG files' shared block grid (docs/experiments.md);
* ``--net-ir-tone-mean``: the nets see the IR re-toned by a per-image gamma to this mean
  (``ModelConfig.net_ir_tone_mean``, models.networks.tone; the thermal weights':
  models.config.NET_IR_TONE_MEAN): an IR darker than the one the nets learned (``x ** 2``: 5.27 ->
  2.69 px on the held-out RoadScene train pairs); 0 puts it off;
* ``--track-linearisation``: what the track graph's iterations linearise on
  (``LucasKanadeConfig.track_linearisation``): ``reference``, the visible image's descriptor
  gradients computed once a call, is the shipped weights' (models.config.LK_TRACK_LINEARISATION).

The copy keeps the source's stage, split and metrics and records the source's SHA-256 and the
change; ``busref export onnx --checkpoint OUT`` then builds graphs (and metadata) that carry it.

usage: python scripts/set_inference_stages.py --checkpoint IN --lucas-kanade standard-2x --both-starts on \
           --track standard-2x --track-linearisation reference \
           --blurred-variant on --net-ir-tone-mean 0.6 --keypoint-start on --out OUT   # the thermal weights' stages
       python scripts/set_inference_stages.py --checkpoint IN --lucas-kanade fine --both-starts on \
           --keypoint-start on --track fine --track-linearisation reference --out OUT   # the NIR weights'
       python scripts/set_inference_stages.py --checkpoint weights/busref.pt --blurred-variant off \
           --out OUT                              # the thermal weights ~1.4x faster, for a calibrated rig
       python scripts/set_inference_stages.py --checkpoint IN --lucas-kanade off --out OUT
       python scripts/set_inference_stages.py --checkpoint IN --descriptor runs/desc/descriptor.pt \
           --descriptor-iterations 16 --descriptor-track-iterations 4 --out OUT
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from pydantic import ValidationError

from busref.conventions import file_sha256
from busref.models.checkpoint import CheckpointError, load_checkpoint, save_payload
from busref.models.config import (
    LK_BLURRED_MARGIN,
    LK_BLURRED_PREFIX_2X,
    LK_BLURRED_SELECT_AFTER,
    LK_DESCRIPTOR_FACTOR,
    LK_DESCRIPTOR_GUARD,
    LK_DESCRIPTOR_POOL,
    LK_MIND_DIAGONAL,
    LK_MIND_RADIUS,
    LK_MIND_RADIUS_FINE,
    LK_SCHEDULE,
    LK_SCHEDULE_2X,
    LK_SCHEDULE_FINE,
    LK_SELECT_AFTER,
    LK_TRACK,
    LK_TRACK_2X,
    LK_TRACK_FINE,
    LK_WINDOW,
    DescriptorConfig,
    LucasKanadeConfig,
    ModelConfig,
)
from busref.models.descriptor import load_descriptor

log = logging.getLogger("set_inference_stages")

#: Per ``--lucas-kanade`` choice: the stage's fields, and the registration size over the nets' size
#: (the model's ``net_pool``). ``pool`` 8 at twice the size keeps the cells 8 px of the nets' size
#: wide, as ``pool`` 4 at their size does (docs/experiments.md: pool 4 at twice the size, 4.20 px
#: against 2.59 on the held-out NIR pairs). Both stages sum their normal equations over
#: models.config.LK_WINDOW cells; ``off`` puts back the field's default.
#: The blurred second variant's fields, off (every preset) and on (``--blurred-variant on``).
NO_VARIANT: dict[str, object] = {"blurred_prefix": (), "blurred_select_after": None,
                                 "blurred_margin": LucasKanadeConfig.model_fields["blurred_margin"].default}
STAGES: dict[str, tuple[dict[str, object], int]] = {
    "off": ({"schedule": (), "pool": 4, "select_after": None,
             **{name: LucasKanadeConfig.model_fields[name].default
                for name in ("window", "mind_radius", "mind_diagonal", "select_factor", "descriptor_factor")},
             **NO_VARIANT}, 1),
    "standard": ({"schedule": LK_SCHEDULE, "pool": 4, "window": LK_WINDOW, "select_after": LK_SELECT_AFTER,
                  "mind_radius": LK_MIND_RADIUS, "mind_diagonal": LK_MIND_DIAGONAL, "select_factor": 1,
                  "descriptor_factor": 1, **NO_VARIANT}, 1),
    "fine": ({"schedule": LK_SCHEDULE_FINE, "pool": 8, "window": LK_WINDOW, "select_after": 32,
              "mind_radius": LK_MIND_RADIUS_FINE, "mind_diagonal": LK_MIND_DIAGONAL, "select_factor": 1,
              "descriptor_factor": 1, **NO_VARIANT}, 2),
    "standard-2x": ({"schedule": LK_SCHEDULE_2X, "pool": 8, "window": LK_WINDOW, "select_after": LK_SELECT_AFTER,
                     "mind_radius": LK_MIND_RADIUS, "mind_diagonal": LK_MIND_DIAGONAL,
                     "select_factor": 2, "descriptor_factor": LK_DESCRIPTOR_FACTOR,
                     "descriptor_pool": LK_DESCRIPTOR_POOL, "descriptor_guard": LK_DESCRIPTOR_GUARD,
                     **NO_VARIANT}, 2),
}
VARIANT = {"blurred_prefix": LK_BLURRED_PREFIX_2X, "blurred_margin": LK_BLURRED_MARGIN,
           "blurred_select_after": LK_BLURRED_SELECT_AFTER}
SWITCH = {"on": True, "off": False}
#: The arguments that change the copy, as they are recorded in its ``derived_from``.
CHANGES = ("lucas_kanade", "both_starts", "blurred_variant", "keypoint_start", "track", "track_linearisation",
           "descriptor", "descriptor_iterations", "descriptor_track_iterations", "descriptor_min_detail",
           "net_ir_tone_mean")
#: Where the stage's towers sit in the model's state dict.
MATCHER = "lucas_kanade.matcher."
TRACKS = {"standard": LK_TRACK, "fine": LK_TRACK_FINE, "standard-2x": LK_TRACK_2X, "off": ()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, required=True, help="a trained registration checkpoint")
    parser.add_argument("--lucas-kanade", choices=sorted(STAGES),
                        help="standard: models.config.LK_SCHEDULE (48 iterations); fine: LK_SCHEDULE_FINE (80, the "
                        "last 48 at twice the nets' size); standard-2x: LK_SCHEDULE_2X, the thermal weights' (each "
                        "without the blurred variant); off: no stage (default: as it is)")
    parser.add_argument("--both-starts", choices=sorted(SWITCH),
                        help="on: the Lucas-Kanade stage also refines from the graph's own start "
                        "(default: as it is)")
    parser.add_argument("--blurred-variant", choices=sorted(SWITCH),
                        help="on: a second variant of the stage, first blurred by 2 px at a quarter size, kept per "
                        "pair where the edges agree 7 %% better: for rigs that may be far off (8 held-out "
                        "RoadScene train pairs, hard 9.57 -> 8.23 px) at ~1.4x the register call's time; the "
                        "thermal weights' (default: as it is)")
    parser.add_argument("--keypoint-start", choices=sorted(SWITCH),
                        help="on: also start from the SIFT + RANSAC affine (default: as it is)")
    parser.add_argument("--track", choices=sorted(TRACKS),
                        help="the track graph's iterations: standard: models.config.LK_TRACK; fine: LK_TRACK_FINE; "
                        "off: no track graph (default: as it is)")
    parser.add_argument("--track-linearisation", choices=("reference", "warped"),
                        help="what the track graph's iterations linearise on: reference: the visible image's "
                        "descriptor gradients, computed once a call (the shipped weights'); warped: the warped IR's, "
                        "every iteration (default: as it is)")
    parser.add_argument("--descriptor", type=Path,
                        help="a descriptor file whose towers the learned-descriptor iterations use")
    parser.add_argument("--descriptor-iterations", type=int,
                        help="the register graph's learned-descriptor iterations (0: none; default: as it is)")
    parser.add_argument("--descriptor-track-iterations", type=int,
                        help="the track graph's learned-descriptor iterations (0: none; default: as it is)")
    parser.add_argument("--descriptor-min-detail", type=float,
                        help="leave the learned-descriptor iterations' result out where the IR's share of fine "
                        "detail (lucas_kanade.fine_detail) is below this: a blurrier or lower-resolution IR than the "
                        "towers learned (0: never; with towers, models.config.LK_DESCRIPTOR_MIN_DETAIL; "
                        "default: as it is)")
    parser.add_argument("--net-ir-tone-mean", type=float,
                        help="the nets see the IR re-toned by a per-image gamma to this mean, the Lucas-Kanade "
                        "stage as it is: an IR darker than the nets learned (0: off; the thermal weights': "
                        "models.config.NET_IR_TONE_MEAN; default: as it is)")
    parser.add_argument("--out", type=Path, required=True, help="where to write the copy (not the source)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if all(getattr(args, name) is None for name in CHANGES):
        log.error("nothing to change: give --lucas-kanade, --both-starts, --blurred-variant, --keypoint-start, "
                  "--track, --track-linearisation, --descriptor-iterations / --descriptor-track-iterations, "
                  "--descriptor-min-detail and/or --net-ir-tone-mean")
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
    try:
        towers, towers_config = _towers(args, config.model)
        model = changed_model(config.model, args, towers_config)
    except ValidationError as exc:  # a ValueError too: first
        log.error("%s: the stages asked for do not fit together: %s", args.checkpoint, exc)
        return 2
    except (CheckpointError, ValueError) as exc:
        log.error("%s", exc)
        return 2
    learned = model.lucas_kanade.uses_towers
    if towers is not None or not learned:  # new towers, or none needed: the source's go
        payload["model"] = {k: v for k, v in payload["model"].items() if not k.startswith(MATCHER)}
    if towers is not None and learned:
        payload["model"].update({MATCHER + k: v for k, v in towers.items()})
    changes = [f"{name} {value}" for name in CHANGES if (value := getattr(args, name)) is not None]
    payload["config"] = config.model_copy(update={"model": model}).model_dump(mode="json")
    derived = {"sha256": file_sha256(args.checkpoint), "change": ", ".join(changes)}
    if "derived_from" in payload:  # the source was itself such a copy: keep the chain back to training
        derived["source_derived_from"] = payload["derived_from"]
    payload["derived_from"] = derived
    for key in ("commit", "versions", "created"):  # save_payload records this run's
        payload.pop(key, None)
    save_payload(args.out, payload)
    log.info("wrote %s: %s with %s", args.out, args.checkpoint, ", ".join(changes))
    return 0


def _towers(args: argparse.Namespace, model: ModelConfig) -> tuple[dict[str, object] | None, DescriptorConfig | None]:
    """The towers' weights and config to put in the copy: those of ``--descriptor``, else the
    source's own (None, None where it has none); ValueError where iterations are asked for without
    towers, CheckpointError for an unreadable descriptor file."""
    wants = any((getattr(args, name) or 0) > 0 for name in ("descriptor_iterations", "descriptor_track_iterations"))
    if args.descriptor is not None:
        towers, meta = load_descriptor(args.descriptor)
        return towers.state_dict(), DescriptorConfig.model_validate(meta["config"])
    if wants and not model.lucas_kanade.uses_towers:  # where the source has towers, they stay
        raise ValueError("learned-descriptor iterations need towers: give --descriptor FILE")
    return None, None


def changed_model(model: ModelConfig, args: argparse.Namespace,
                  towers: DescriptorConfig | None = None) -> ModelConfig:
    """``model`` with the stages the arguments name (``towers``: the config of the towers that
    ``--descriptor`` brings); ValidationError where they do not fit together."""
    stage = model.lucas_kanade.model_dump()
    update: dict[str, object] = {}
    if args.lucas_kanade is not None:
        fields, net_pool = STAGES[args.lucas_kanade]
        stage.update(fields)
        nets_size = [s // model.net_pool for s in model.registration_size]
        update.update(net_pool=net_pool, registration_size=tuple(s * net_pool for s in nets_size))
    if args.both_starts is not None:
        stage["both_starts"] = SWITCH[args.both_starts]
    if args.lucas_kanade in ("standard", "standard-2x") and not stage["both_starts"]:
        stage["select_after"] = None  # the point where one of two starts is chosen: none with one start
    if args.blurred_variant is not None:
        stage.update(VARIANT if SWITCH[args.blurred_variant] else NO_VARIANT)
    if args.keypoint_start is not None:
        update["keypoint_start"] = SWITCH[args.keypoint_start]
    if args.track is not None:
        stage["track_schedule"] = TRACKS[args.track]
    if args.track_linearisation is not None:
        stage["track_linearisation"] = args.track_linearisation
    for name in ("descriptor_iterations", "descriptor_track_iterations", "descriptor_min_detail"):
        if getattr(args, name) is not None:
            stage[name] = getattr(args, name)
    if args.net_ir_tone_mean is not None:
        update["net_ir_tone_mean"] = args.net_ir_tone_mean or None
    if towers is not None:
        stage["descriptor"] = towers.model_dump()
    update["lucas_kanade"] = stage
    changed = ModelConfig.model_validate({**model.model_dump(), **update})
    if changed.lucas_kanade.uses_towers:
        return changed
    # No towers in the copy (main drops their weights): their config goes too.
    return changed.model_copy(update={"lucas_kanade": changed.lucas_kanade.model_copy(
        update={"descriptor": DescriptorConfig()})})


if __name__ == "__main__":
    sys.exit(main())
