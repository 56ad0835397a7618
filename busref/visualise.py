"""Pictures for people: edge overlays and contact sheets (uint8 BGR images; OpenCV and NumPy only,
so the training side and the torch-free runtime draw them the same way)."""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np


def to_bgr8(image: np.ndarray) -> np.ndarray:
    """(H, W) float in [0, 1] or uint8, or (H, W, 3) uint8 BGR -> (H, W, 3) uint8 BGR."""
    if image.dtype != np.uint8:
        image = np.clip(np.round(image * 255.0), 0, 255).astype(np.uint8)
    return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR) if image.ndim == 2 else image


def edge_overlay(vis: np.ndarray, ir: np.ndarray) -> np.ndarray:
    """Visible edges in green, IR edges in magenta, overlaps white, over a dimmed visible image:
    well-registered pairs show white where both modalities have an edge."""
    v8, i8 = to_bgr8(vis)[:, :, 1], to_bgr8(ir)[:, :, 1]
    ev = cv2.Canny(cv2.GaussianBlur(v8, (3, 3), 0), 60, 150) > 0
    ei = cv2.Canny(cv2.GaussianBlur(i8, (3, 3), 0), 60, 150) > 0
    out = (to_bgr8(vis).astype(np.float32) * 0.35).astype(np.uint8)
    out[ev] = (0, 255, 0)
    out[ei] = (255, 0, 255)
    out[ev & ei] = (255, 255, 255)
    return out


def contact_sheet(rows: Sequence[Sequence[np.ndarray]], titles: Sequence[str], *, tile_width: int = 256,
                  row_labels: Sequence[str] | None = None) -> np.ndarray:
    """Grid of images: each row a sequence of images (any size, gray float or BGR uint8), each
    tile scaled to ``tile_width``; column titles on top, optional row labels on the first tile."""
    if not rows:
        raise ValueError("contact_sheet needs at least one row")
    tiles = []
    for r, row in enumerate(rows):
        if len(row) != len(titles):
            raise ValueError(f"row {r} has {len(row)} images for {len(titles)} titles")
        scaled = []
        for image in row:
            bgr = to_bgr8(image)
            h = round(bgr.shape[0] * tile_width / bgr.shape[1])
            scaled.append(cv2.resize(bgr, (tile_width, h), interpolation=cv2.INTER_AREA))
        height = max(t.shape[0] for t in scaled)
        scaled = [cv2.copyMakeBorder(t, 0, height - t.shape[0], 0, 2, cv2.BORDER_CONSTANT, value=(32, 32, 32))
                  for t in scaled]
        line = np.hstack(scaled)
        if row_labels is not None:
            cv2.putText(line, row_labels[r], (4, height - 6), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 255, 255), 1,
                        cv2.LINE_AA)
        tiles.append(cv2.copyMakeBorder(line, 0, 2, 0, 0, cv2.BORDER_CONSTANT, value=(32, 32, 32)))
    sheet = np.vstack(tiles)
    header = np.full((22, sheet.shape[1], 3), 32, np.uint8)
    for c, title in enumerate(titles):
        cv2.putText(header, title, (c * (tile_width + 2) + 4, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1,
                    cv2.LINE_AA)
    return np.vstack((header, sheet))
