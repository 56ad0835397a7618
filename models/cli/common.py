"""Arguments and loading shared by the eval / register / fuse commands."""

from __future__ import annotations

import argparse
from pathlib import Path

from busref.models.data import PairPaths, list_pairs, pair_index, roadscene_pairs
from busref.models.descriptor import load_descriptor
from busref.models.networks.matcher import CrossModalDescriptor
from busref.models.refinement import DESCRIPTOR_REFINEMENT, RefinementConfig
from busref.rig_config.resources import CHECKPOINT_FILE, MODALITIES, WEIGHTS_ENV, weight_file


def add_checkpoint_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--modality", choices=MODALITIES, default="thermal",
                        help="the IR camera's modality: picks the shipped weights trained for it (default: thermal)")
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help=f"trained BusReF checkpoint (default: the shipped {CHECKPOINT_FILE} of --modality, "
                             f"or the one in ${WEIGHTS_ENV})")
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda ...")


def checkpoint_path(args: argparse.Namespace) -> Path:
    """``--checkpoint``, else the shipped checkpoint of ``--modality``; also sets ``args.checkpoint``."""
    if args.checkpoint is None:
        args.checkpoint = weight_file(CHECKPOINT_FILE, args.modality)
    return args.checkpoint


def add_descriptor_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--descriptor", type=Path, default=None,
                        help="the refinement also matches this learned cross-modal descriptor ('busref train "
                             "descriptor' makes one) at full size and runs 128 Lucas-Kanade iterations on it "
                             "(default: none; none is shipped, because the one trained on RoadScene matched its "
                             "JPEG files' shared block grid, which live cameras do not have)")


def refinement_with(descriptor: Path | None) -> tuple[RefinementConfig, CrossModalDescriptor | None]:
    """The refinement ``--refine`` and ``busref-refined`` run, from ``--descriptor``: NGF + MIND
    (``RefinementConfig()``) without one; with one, that descriptor (loaded; a missing or foreign file
    raises ``DataError``) and :data:`~busref.models.refinement.DESCRIPTOR_REFINEMENT`."""
    if descriptor is None:
        return RefinementConfig(), None
    return DESCRIPTOR_REFINEMENT, load_descriptor(descriptor)[0]


def add_data_arguments(parser: argparse.ArgumentParser, *, default_split: str = "test") -> None:
    group = parser.add_argument_group("data (a RoadScene-layout folder, or two aligned pair folders)")
    group.add_argument("--data", type=Path, help="folder with cropinfrared/, crop_LR_visible/ and split.json")
    group.add_argument("--split", default=default_split, help=f"split of split.json (default: {default_split})")
    group.add_argument("--split-file", help="read the split from this JSON file instead of DATA/split.json, or from "
                       f"a split the package ships by its name ({', '.join(shipped_splits())}: "
                       "'nirscene' holds out the mountain and urban categories of the NIR pairs)")
    group.add_argument("--ir", type=Path, help="IR folder (paired with --vis by file stem)")
    group.add_argument("--vis", type=Path, help="visible folder")
    group.add_argument("--limit", type=int, help="use only the first N pairs")


SPLITS = Path(__file__).resolve().parent.parent / "splits"


def shipped_splits() -> list[str]:
    """Names of the split files in the package (``models/splits/NAME.json``)."""
    return sorted(p.stem for p in SPLITS.glob("*.json"))


def split_file(value: str | None) -> Path | None:
    """``--split-file``: a shipped split's name, or a path; None for the data folder's own split.json."""
    if value is None:
        return None
    return SPLITS / f"{value}.json" if value in shipped_splits() else Path(value)


def select_pairs(args: argparse.Namespace) -> tuple[list[PairPaths], list[int]]:
    """The pairs the arguments name and their protocol indices (position among all pairs)."""
    if args.data is not None:
        all_pairs = roadscene_pairs(args.data)
        pairs = roadscene_pairs(args.data, args.split, split_file(getattr(args, "split_file", None)))
    elif args.ir is not None and args.vis is not None:
        all_pairs = pairs = list_pairs(args.ir, args.vis)
    else:
        raise ValueError("give --data DIR, or both --ir DIR and --vis DIR")
    if args.limit:
        pairs = pairs[: args.limit]
    return pairs, pair_index(pairs, all_pairs)
