"""``busref train bus|fusion|registration|descriptor``: one training stage."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from busref.conventions import DataError, parse_hw
from busref.models.checkpoint import STAGES, CheckpointError, load_checkpoint
from busref.models.cli.common import add_data_arguments, select_pairs
from busref.models.config import DescriptorConfig, load_train_config, load_yaml_model
from busref.models.data import category_pairs, load_pairs, split_sha256
from busref.models.descriptor import train_descriptor
from busref.models.refinement import DESCRIPTOR_REFINEMENT, refinement_stage
from busref.models.train import select_device, train_stage

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.description = (
        "Train one BusReF stage. Order: bus (auto-encoder), then fusion (GAF, bus frozen), then\n"
        "registration (Affine + Deformable nets; bus and GAF frozen). Each stage writes\n"
        "OUT/STAGE.pt (and OUT/STAGE_last.pt periodically); pass it to the next with --init.\n"
        "'descriptor' trains, on its own, a cross-modal descriptor that `--refine` and the\n"
        "busref-refined evaluation can use with --descriptor (OUT/descriptor.pt; none is shipped: the one\n"
        "trained on RoadScene matched its JPEG block grid; --config is a descriptor config YAML,\n"
        "--init and --resume do not apply, --finetune starts from another descriptor file's towers),\n"
        "and optional towers for the register graph's Lucas-Kanade stage (configs/descriptor/towers.yaml,\n"
        "then scripts/set_inference_stages.py --descriptor; the shipped graphs have none: on RoadScene\n"
        "their gain was its JPEG files' shared block grid, docs/experiments.md), which\n"
        "configs/descriptor/towers_iterations.yaml fine-tunes on the iterations of the stage that\n"
        "--stage-of's checkpoint runs; with --stage-of\n"
        "refinement, configs/descriptor/refinement_iterations.yaml fine-tunes the refinement's descriptor\n"
        "on the refinement's own iterations.\n\n"
        "example:\n"
        "  busref train bus --data ../shared/data/roadscene --out runs/demo\n"
        "  busref train fusion --data ../shared/data/roadscene --init runs/demo/bus.pt --out runs/demo\n"
        "  busref train registration --data ../shared/data/roadscene --init runs/demo/fusion.pt --out runs/demo\n"
        "  busref train descriptor --data ../shared/data/roadscene --out runs/demo --steps 8000\n"
        "  busref train descriptor --data ../shared/data/roadscene --config configs/descriptor/towers.yaml \\\n"
        "      --finetune runs/demo/descriptor.pt --out runs/towers\n"
        "  busref train descriptor --data ../shared/data/roadscene \\\n"
        "      --config configs/descriptor/towers_iterations.yaml --finetune runs/towers/descriptor.pt \\\n"
        "      --stage-of runs/with_towers.pt --out runs/towers_iterations\n"
        "  busref train descriptor --data ../shared/data/roadscene \\\n"
        "      --config configs/descriptor/refinement_iterations.yaml --finetune runs/demo/descriptor.pt \\\n"
        "      --stage-of refinement --out runs/refinement_iterations"
    )
    parser.add_argument("stage", choices=(*STAGES, "descriptor"), help="which stage to train")
    add_data_arguments(parser, default_split="train")
    parser.add_argument("--val-pairs", type=int, default=8,
                        help="hold out the last N training pairs for validation (default: 8)")
    parser.add_argument("--extra-data", type=Path,
                        help="another RoadScene-layout folder whose --split pairs are added to the training pairs, "
                             "never to the validation ones (e.g. ../shared/data/nirscene)")
    parser.add_argument("--extra-categories",
                        help="comma list: of --extra-data, only the pairs named CATEGORY_* (e.g. field,indoor)")
    parser.add_argument("--config", type=Path, help="training config YAML (default: built-in defaults); for the "
                        "descriptor stage a descriptor config (models.config.DescriptorConfig's fields)")
    parser.add_argument("--out", type=Path, default=Path("runs/default"), help="output folder (default: runs/default)")
    parser.add_argument("--init", type=Path, help="checkpoint of the previous stage")
    parser.add_argument("--resume", type=Path, help="checkpoint of this stage to continue")
    parser.add_argument("--finetune", type=Path,
                        help="start from every weight of this checkpoint (this stage or a later one, same model "
                             "config) with a fresh optimizer and the config's schedule and losses; for the "
                             "descriptor stage, a descriptor file whose towers to start from")
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:1 ...")
    parser.add_argument("--steps", type=int, help="override the stage's number of steps")
    parser.add_argument("--max-minutes", type=float, help="stop (and save) after this many minutes")
    parser.add_argument("--stage-of", metavar="CHECKPOINT|refinement",
                        help="descriptor stage, iterations objective: the checkpoint whose Lucas-Kanade stage runs "
                             "the towers' iterations (their settings are its), or 'refinement': the offline "
                             "refinement's iterations on its descriptor (models.refinement.refinement_stage)")
    parser.add_argument("--size", type=parse_hw,
                        help="descriptor stage only: resize every pair (area) to HxW first, e.g. 192x256 (the thermal "
                             "register graph's size; recorded in the file)")


def run(args: argparse.Namespace) -> int:
    try:
        if args.stage == "descriptor":
            ignored = [f"--{name}" for name in ("init", "resume") if getattr(args, name)]
            if ignored:
                verb = "does" if len(ignored) == 1 else "do"
                raise ValueError(f"{', '.join(ignored)} {verb} not apply to the descriptor stage (it trains alone)")
            descriptor_config = DescriptorConfig() if args.config is None else \
                load_yaml_model(args.config, DescriptorConfig, "descriptor config")
            descriptor_config = descriptor_config.model_copy(
                update={**({"steps": args.steps} if args.steps else {}), **({"size": args.size} if args.size else {})})
            stage = None
            if args.stage_of == "refinement":  # the refinement that runs the descriptor's iterations
                stage = refinement_stage(DESCRIPTOR_REFINEMENT)
            elif args.stage_of is not None:
                stage = load_checkpoint(Path(args.stage_of))["config"].model.lucas_kanade
        elif args.size or args.stage_of:
            raise ValueError(f"{'--size' if args.size else '--stage-of'} applies to the descriptor stage only")
        config = load_train_config(args.config if args.stage != "descriptor" else None)
        if args.steps and args.stage != "descriptor":
            stage_cfg = getattr(config, args.stage).model_copy(update={"steps": args.steps})
            config = config.model_copy(update={args.stage: stage_cfg})
        pairs, indices = select_pairs(args)
        if len(pairs) <= args.val_pairs:
            log.error("only %d pairs: too few to hold out %d for validation (--val-pairs)", len(pairs), args.val_pairs)
            return 2
        train, val = pairs[: len(pairs) - args.val_pairs], pairs[len(pairs) - args.val_pairs :]
        val_indices = indices[len(train):]
        log.info("%d training pairs, %d validation pairs (held out from %r)", len(train), len(val), args.split)
        if args.extra_data is not None:
            categories = args.extra_categories.split(",") if args.extra_categories else None
            extra = category_pairs(args.extra_data, args.split, categories)
            log.info("%d more training pairs from %s", len(extra), args.extra_data)
            train = train + extra
        elif args.extra_categories:
            raise ValueError("--extra-categories needs --extra-data")
        split_name = args.split if args.data is not None else "all"
        if args.stage == "descriptor":
            train_descriptor(load_pairs(train), args.out / "descriptor.pt", config=descriptor_config,
                             max_minutes=args.max_minutes, split_name=split_name, split_sha256=split_sha256(train),
                             finetune=args.finetune, stage=stage)
            return 0
        train_stage(args.stage, train_pairs=train, val_pairs=val, val_indices=val_indices,
                    split_name=split_name, config=config, out_dir=args.out,
                    init=args.init, resume=args.resume, finetune=args.finetune, device=select_device(args.device),
                    max_minutes=args.max_minutes)
    except (DataError, CheckpointError, ValueError) as exc:
        log.error("%s", exc)
        return 2
    return 0
