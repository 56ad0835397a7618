"""Conventions shared by the training side, the export and the runtime, defined once. No torch.

Sampling grids (NumPy)
    A grid ``G`` of shape (H, W, 2) says, for each reference (visible) pixel ``(x, y)``, where in
    the moving (IR) image it samples: ``G[y, x] = (x', y')``, x first. Two coordinate systems:

    ``pixel``       pixel centres at integer coordinates, ``x`` the column (the ``irvis-reg-v1``
                    protocol's grids, the classical baselines, ``busref register``'s grid files);
    ``normalised``  ``align_corners=True``: ``u = 2 x / (W - 1) - 1``, so the corner pixels'
                    centres are at -1 and 1 (``F.affine_grid`` / ``F.grid_sample``, the graphs'
                    ``theta`` and ``grid``).

    An affine ``M`` (2x3) maps a reference location to a moving one in the same system:
    ``G(p) = M[:, :2] p + M[:, 2]`` (:func:`affine_grid`).

Graph contract (:data:`GRAPH_IO`)
    The tensor names of the exported graphs. Their shapes, ranges and meaning:

    ``register``  inputs ``vis`` float32 (1, 1, H, W) visible luminance in [0, 1] and ``ir``
                  float32 (1, 1, H, W) moving thermal IR in [0, 1] (H, W = the registration
                  resolution, multiples of 8); outputs ``theta`` float32 (1, 2, 3), the coarse
                  affine, normalised, and ``grid`` float32 (1, H, W, 2), the full sampling grid
                  (affine then deformable), normalised: reference pixel -> moving IR location.
    ``track``     optional (without it every run is a ``register`` run): inputs ``vis`` and ``ir`` as
                  ``register``'s (the IR not pre-warped) and ``start`` float32 (1, H, W, 2), the
                  registration in force in ``grid``'s convention; output ``grid`` float32
                  (1, H, W, 2), ``start`` refined on this pair. No coarse search: for a rig whose
                  registration is known and still, between ``register`` runs.
    ``fuse``      inputs ``vis`` (Y of YCrCb) and ``ir`` (registered) float32 (1, 1, H, W) in
                  [0, 1] (H, W multiples of 8); output ``fused`` float32 (1, 1, H, W) in [0, 1].
    ``frame``     the per-frame path in one call, for GPU backends (optional: without it the
                  runtime warps with ``cv2.remap`` and runs ``fuse``). Inputs ``vis`` float32
                  (1, 1, H, W) at the output size; ``ir`` float32 (1, 1, H_ir, W_ir) normalised
                  thermal IR at the IR camera's own size, not registered; ``grid`` float32
                  (1, H, W, 2) normalised to the IR frame (output pixel -> IR location, the
                  ``cv2.remap`` maps of the CPU path). Output ``fused`` float32 (1, 1, H, W):
                  ``fuse(vis, grid_sample(ir, grid))``, bilinear, zeros padding, the warp in float32.

Images
    :func:`read_gray` is how every tool reads a pair: colour images become luminance with
    ``COLOR_BGR2GRAY`` (the weights of the Y of ``BGR2YCrCb``, the channel the runtime fuses),
    8- and 16-bit images are scaled to float32 [0, 1].
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Literal

import cv2
import numpy as np

Coordinates = Literal["pixel", "normalised"]

#: Input and output tensor names of each exported graph (see the module docstring).
GRAPH_IO: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "register": (("vis", "ir"), ("theta", "grid")),
    "track": (("vis", "ir", "start"), ("grid",)),
    "fuse": (("vis", "ir"), ("fused",)),
    "frame": (("vis", "ir", "grid"), ("fused",)),
}

#: Suffixes of the image files a pair folder is read from.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


# --------------------------------------------------------------------------- grids


def _axis(n: int, coordinates: Coordinates) -> np.ndarray:
    if coordinates == "pixel":
        return np.arange(n, dtype=np.float64)
    if coordinates == "normalised":
        return np.linspace(-1.0, 1.0, n)
    raise ValueError(f"coordinates must be 'pixel' or 'normalised', got {coordinates!r}")


def affine_grid(matrix: np.ndarray, height: int, width: int, *, coordinates: Coordinates) -> np.ndarray:
    """(H, W, 2) float32 grid of the 2x3 affine ``matrix``: ``G(p) = M[:, :2] p + M[:, 2]``.

    With ``coordinates="normalised"`` it equals ``F.affine_grid(theta, align_corners=True)``.
    """
    m = np.asarray(matrix, dtype=np.float64)
    if m.shape != (2, 3):
        raise ValueError(f"affine matrix must be 2x3, got shape {m.shape}")
    gx, gy = np.meshgrid(_axis(width, coordinates), _axis(height, coordinates))
    u = m[0, 0] * gx + m[0, 1] * gy + m[0, 2]
    v = m[1, 0] * gx + m[1, 1] * gy + m[1, 2]
    return np.stack([u, v], axis=-1).astype(np.float32)


def identity_grid(height: int, width: int, *, coordinates: Coordinates) -> np.ndarray:
    """(H, W, 2) float32 grid that samples every pixel where it is (no registration)."""
    return affine_grid(np.eye(2, 3), height, width, coordinates=coordinates)


# --------------------------------------------------------------------------- files


def file_sha256(path: str | Path) -> str:
    """sha256 of a file, read in chunks (checkpoints, graphs and engines are recorded by it)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class DataError(ValueError):
    """A data folder or image cannot be used; the message names the file."""


def read_bgr(path: str | Path) -> np.ndarray:
    """Read an 8-bit colour (or gray, promoted) image as BGR uint8 (H, W, 3)."""
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise DataError(f"{path}: cannot read this image (missing, unreadable or not an image)")
    return image


def read_gray(path: str | Path) -> np.ndarray:
    """Read an image as luminance float32 (H, W) in [0, 1] (colour images via BGR2GRAY)."""
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise DataError(f"{path}: cannot read this image (missing, unreadable or not an image)")
    if image.ndim == 3:
        image = cv2.cvtColor(image[:, :, :3], cv2.COLOR_BGR2GRAY)
    if image.dtype == np.uint16:
        return image.astype(np.float32) / 65535.0
    if image.dtype != np.uint8:
        raise DataError(f"{path}: unsupported pixel type {image.dtype} (8- or 16-bit images only)")
    return image.astype(np.float32) / 255.0


def parse_hw(text: str) -> tuple[int, int]:
    """``"512x640"`` (H x W) -> (512, 640)."""
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"{text!r} is not a size: write HEIGHTxWIDTH, e.g. 512x640") from None
    return h, w
