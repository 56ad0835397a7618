"""Sample image pairs for verifying exported graphs and engines. No torch.

Either real pairs from a folder (the RoadScene layout ``cropinfrared/`` + ``crop_LR_visible/``,
or ``ir/`` + ``vis/``; paired by file stem) or, when none is given, frames of the built-in
synthetic street (:mod:`busref.runtime.synthetic`) rendered the way the daemon sees a rig: visible
luminance = Y of OpenCV's BGR2YCrCb, IR = raw counts through the percentile window.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from busref.conventions import IMAGE_SUFFIXES, affine_grid, read_gray
from busref.rig_config.schema import Misalignment, PercentileWindow
from busref.runtime.artifact import GraphKind
from busref.runtime.synthetic import IRRenderer, RGBRenderer, Scene
from busref.runtime.thermal import ThermalNormaliser

#: The warp the ``frame`` graph (and the ``track`` graph's start) is verified with (a normalised affine,
#: ``F.affine_grid``'s convention): 2 degrees of rotation, 3 % zoom and a shift, so that the grid is no identity.
SAMPLE_THETA = np.array([[1.03 * np.cos(np.radians(2.0)), -np.sin(np.radians(2.0)), 0.04],
                         [np.sin(np.radians(2.0)), 1.03 * np.cos(np.radians(2.0)), -0.03]])
#: Folder pairs (ir, vis) a sample folder may use, first match wins.
LAYOUTS = (("cropinfrared", "crop_LR_visible"), ("ir", "vis"))


@dataclass(frozen=True)
class SamplePair:
    """``vis`` and ``ir``: (H, W) float32 in [0, 1], the same size."""

    name: str
    vis: np.ndarray
    ir: np.ndarray

    def resized(self, hw: tuple[int, int]) -> SamplePair:
        """Both images at (H, W), area-resampled (how the daemon shrinks frames for registration)."""
        size = (hw[1], hw[0])
        return SamplePair(self.name, cv2.resize(self.vis, size, interpolation=cv2.INTER_AREA),
                          cv2.resize(self.ir, size, interpolation=cv2.INTER_AREA))

    def cropped8(self) -> SamplePair:
        """Top-left crop to multiples of 8 (the fuse graph's granularity)."""
        h, w = self.vis.shape
        h, w = h - h % 8, w - w % 8
        return SamplePair(self.name, self.vis[:h, :w].copy(), self.ir[:h, :w].copy())


def graph_feed(graph: GraphKind, pair: SamplePair, hw: tuple[int, int],
               ir_hw: tuple[int, int] | None = None) -> dict[str, np.ndarray]:
    """The inputs of ``graph`` (:mod:`busref.runtime.artifact`) made from ``pair``, images at (H, W) ``hw``.

    ``register`` / ``fuse``: ``vis`` and ``ir`` (1, 1, H, W); ``track`` with them the ``start`` grid
    (1, H, W, 2) of :data:`SAMPLE_THETA`. ``frame``: ``vis`` (1, 1, H, W), the
    unregistered ``ir`` at ``ir_hw`` (default: the pair's own size) and the ``grid`` (1, H, W, 2)
    of :data:`SAMPLE_THETA`. All float32.
    """
    p = pair.resized(hw)
    feed = {"vis": p.vis[None, None], "ir": p.ir[None, None]}
    if graph == "frame":
        ir = pair.ir if ir_hw is None else pair.resized(ir_hw).ir
        feed["ir"] = ir[None, None]
        feed["grid"] = affine_grid(SAMPLE_THETA, *hw, coordinates="normalised")[None]
    elif graph == "track":
        feed["start"] = affine_grid(SAMPLE_THETA, *hw, coordinates="normalised")[None]
    return feed


def synthetic_pairs(count: int = 2, hw: tuple[int, int] = (512, 640)) -> list[SamplePair]:
    """``count`` frames of the synthetic street at (H, W), one second apart."""
    h, w = hw
    scene = Scene(seed=0)
    rgb = RGBRenderer(scene, w, h)
    ir = IRRenderer(scene, w, h, Misalignment())
    normalise = ThermalNormaliser(PercentileWindow(mode="percentile"))
    pairs = []
    for i in range(count):
        y = cv2.cvtColor(rgb.render(float(i), i), cv2.COLOR_BGR2YCrCb)[:, :, 0]
        pairs.append(SamplePair(f"synthetic-{i}", y.astype(np.float32) / 255.0, normalise(ir.render(float(i), i))))
    return pairs


def folder_pairs(folder: str | Path, limit: int = 4) -> list[SamplePair]:
    """The first ``limit`` pairs (sorted by name) of a pair folder; ValueError naming it otherwise."""
    folder = Path(folder)
    for ir_name, vis_name in LAYOUTS:
        ir_dir, vis_dir = folder / ir_name, folder / vis_name
        if ir_dir.is_dir() and vis_dir.is_dir():
            break
    else:
        layouts = " or ".join(f"{a}/ + {b}/" for a, b in LAYOUTS)
        raise ValueError(f"{folder}: not a pair folder (expected {layouts})")
    vis_by_stem = {p.stem: p for p in vis_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES}
    pairs = []
    for ir_path in sorted(p for p in ir_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
        if len(pairs) == limit:
            break
        if ir_path.stem not in vis_by_stem:
            continue
        vis, ir = read_gray(vis_by_stem[ir_path.stem]), read_gray(ir_path)
        if vis.shape != ir.shape:
            raise ValueError(f"{ir_path} and {vis_by_stem[ir_path.stem]} differ in size: aligned pairs needed")
        pairs.append(SamplePair(ir_path.stem, vis, ir))
    if not pairs:
        raise ValueError(f"{folder}: no IR/visible pairs with matching names in {ir_dir.name}/ and {vis_dir.name}/")
    return pairs


def sample_pairs(folder: str | Path | None, limit: int = 4) -> list[SamplePair]:
    """Pairs from ``folder`` when given, else two synthetic frames."""
    return folder_pairs(folder, limit) if folder is not None else synthetic_pairs()
