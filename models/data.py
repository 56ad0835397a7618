"""Data: IR/visible pair folders, the RoadScene split, random crops.

Images are read with :func:`busref.conventions.read_gray`: luminance (the Y channel the runtime
fuses), float32 in [0, 1].
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from busref.conventions import IMAGE_SUFFIXES, DataError, read_gray

log = logging.getLogger(__name__)

ROADSCENE_IR = "cropinfrared"
ROADSCENE_VIS = "crop_LR_visible"


@dataclass(frozen=True)
class PairPaths:
    name: str
    ir: Path
    vis: Path


def _images_by_stem(folder: Path) -> dict[str, Path]:
    if not folder.is_dir():
        raise DataError(f"{folder}: not a folder")
    found: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        if p.suffix.lower() in IMAGE_SUFFIXES:
            if p.stem in found:
                raise DataError(f"{p}: two images share the name {p.stem!r} ({found[p.stem].name})")
            found[p.stem] = p
    return found


def list_pairs(ir_dir: Path, vis_dir: Path, *, allow_unpaired: bool = False) -> list[PairPaths]:
    """Pair the images of two folders by file stem, sorted by name (the protocol's pair index).

    A stem present in one folder only is an error naming the file, unless ``allow_unpaired``
    (then it is skipped with a warning).
    """
    ir, vis = _images_by_stem(Path(ir_dir)), _images_by_stem(Path(vis_dir))
    lonely = sorted(set(ir) ^ set(vis))
    if lonely:
        where = [(ir.get(n) or vis[n]) for n in lonely]
        msg = ", ".join(f"{p} (no partner in {vis_dir if p.parent == Path(ir_dir) else ir_dir})"
                        for p in where[:5])
        if not allow_unpaired:
            raise DataError(f"unpaired images: {msg}{' ...' if len(where) > 5 else ''}")
        log.warning("skipping unpaired images: %s", msg)
    names = sorted(set(ir) & set(vis))
    if not names:
        raise DataError(f"no image pairs found in {ir_dir} and {vis_dir}")
    return [PairPaths(n, ir[n], vis[n]) for n in names]


def roadscene_pairs(data_dir: Path, split: str | None = None, split_file: Path | None = None) -> list[PairPaths]:
    """Pairs of a RoadScene-layout folder (``cropinfrared/``, ``crop_LR_visible/``,
    ``split.json``), restricted to ``split`` ("train" or "test") when given; the split file
    (``split_file``, default the folder's ``split.json``) may name a pair by its stem or by its file
    name."""
    data_dir = Path(data_dir)
    pairs = list_pairs(data_dir / ROADSCENE_IR, data_dir / ROADSCENE_VIS)
    if split is None or split == "all":
        return pairs
    split_file = Path(split_file) if split_file is not None else data_dir / "split.json"
    try:
        splits = json.loads(split_file.read_text())
        wanted = set(splits[split])
    except (OSError, ValueError) as exc:
        raise DataError(f"{split_file}: cannot read the split file: {exc}") from exc
    except KeyError:
        raise DataError(f"{split_file}: has no split {split!r} (it has {sorted(splits)})") from None
    # A split may list file names instead of stems (the NIR folder's does).
    return [p for p in pairs if wanted & {p.name, p.ir.name, p.vis.name}]


def category_pairs(data_dir: Path, split: str, categories: Sequence[str] | None = None) -> list[PairPaths]:
    """The ``split`` pairs of a RoadScene-layout folder; with ``categories`` only those named
    ``CATEGORY_*`` (the NIR scenes' names, e.g. ``field_0001``). An empty selection is an error."""
    pairs = roadscene_pairs(data_dir, split)
    if categories:
        prefixes = tuple(f"{c.strip()}_" for c in categories if c.strip())
        pairs = [p for p in pairs if p.name.startswith(prefixes)]
    if not pairs:
        raise DataError(f"{data_dir}: no {split!r} pairs" + (f" of the categories {', '.join(categories)}"
                                                             if categories else ""))
    return pairs


def pair_index(pairs: list[PairPaths], all_pairs: list[PairPaths]) -> list[int]:
    """Protocol pair index of each pair: its position among all names sorted."""
    position = {p.name: i for i, p in enumerate(all_pairs)}
    return [position[p.name] for p in pairs]


def split_sha256(pairs: list[PairPaths]) -> str:
    """Hash of the sorted pair names: identifies the data a checkpoint was trained on."""
    return hashlib.sha256("\n".join(sorted(p.name for p in pairs)).encode()).hexdigest()


@dataclass
class LoadedPair:
    name: str
    vis: np.ndarray  # (H, W) float32 luminance
    ir: np.ndarray  # (H, W) float32


def load_pairs(pairs: list[PairPaths]) -> list[LoadedPair]:
    """Read every pair into memory; a size mismatch names both files."""
    out = []
    for p in pairs:
        vis, ir = read_gray(p.vis), read_gray(p.ir)
        if vis.shape != ir.shape:
            raise DataError(f"{p.ir} is {ir.shape[1]}x{ir.shape[0]} but {p.vis} is {vis.shape[1]}x{vis.shape[0]}: "
                            "aligned pairs must have the same size")
        out.append(LoadedPair(p.name, vis, ir))
    return out


class CropDataset(Dataset):
    """Random crops of aligned pairs, as (vis, ir) float32 tensors (1, H, W).

    ``resize=False``: crops of exactly ``size`` at native resolution (fusion, bus).
    ``resize=True``: a crop covering ``scale_range`` of each side, resized (area) to ``size``,
    the way the registration network sees whole frames squeezed to its resolution.
    Random horizontal flips. ``repeats`` crops per pair make one epoch.
    """

    def __init__(self, pairs: list[LoadedPair], size: tuple[int, int], *, resize: bool,
                 scale_range: tuple[float, float] = (0.7, 1.0), repeats: int = 8, seed: int = 0) -> None:
        if not pairs:
            raise DataError("CropDataset needs at least one pair")
        self.pairs, self.size, self.resize = pairs, size, resize
        self.scale_range, self.repeats = scale_range, repeats
        self.rng = random.Random(seed)

    def __len__(self) -> int:
        return len(self.pairs) * self.repeats

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        pair = self.pairs[index % len(self.pairs)]
        h, w = pair.vis.shape
        th, tw = self.size
        if self.resize:
            s = self.rng.uniform(*self.scale_range)
            ch, cw = max(int(h * s), 16), max(int(w * s), 16)
        else:
            ch, cw = th, tw
        if ch > h or cw > w:  # small image: scale it up so the crop fits
            f = max(ch / h, cw / w)
            vis = cv2.resize(pair.vis, (int(np.ceil(w * f)), int(np.ceil(h * f))), interpolation=cv2.INTER_LINEAR)
            ir = cv2.resize(pair.ir, vis.shape[::-1], interpolation=cv2.INTER_LINEAR)
            h, w = vis.shape
        else:
            vis, ir = pair.vis, pair.ir
        y, x = self.rng.randint(0, h - ch), self.rng.randint(0, w - cw)
        vis, ir = vis[y:y + ch, x:x + cw], ir[y:y + ch, x:x + cw]
        if self.resize and (ch, cw) != (th, tw):
            vis = cv2.resize(vis, (tw, th), interpolation=cv2.INTER_AREA)
            ir = cv2.resize(ir, (tw, th), interpolation=cv2.INTER_AREA)
        if self.rng.random() < 0.5:
            vis, ir = vis[:, ::-1], ir[:, ::-1]
        return (torch.from_numpy(np.ascontiguousarray(vis))[None], torch.from_numpy(np.ascontiguousarray(ir))[None])
