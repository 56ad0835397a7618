"""Sampling grids and warps: pure tensor functions.

Conventions (those of the ``irvis-reg-v1`` protocol):

* Pixel ``(x, y)`` has its centre at integer coordinates; ``x`` is the column.
* A *pixel grid* ``G`` has shape ``(B, H, W, 2)`` (or ``(H, W, 2)``), ``G[b, y, x] = (x', y')``:
  output pixel ``(x, y)`` takes the source value at ``(x', y')`` ("backward" mapping,
  reference -> moving). Coordinates are in the *source* image's pixels.
* A *normalised grid* uses ``u = 2 x / (W_src - 1) - 1`` (``align_corners=True``), the
  convention of :func:`torch.nn.functional.grid_sample` and ``affine_grid``.
* Warping is bilinear with zero padding, identical to ``grid_sample(mode="bilinear",
  padding_mode="zeros", align_corners=True)``.
* An affine ``A`` given as a ``(B, 2, 3)`` matrix maps an output location ``p`` to the source
  location ``A[:, :, :2] @ p + A[:, :, 2]`` (in pixels or in normalised units, as named).

Everything here is differentiable and works for any float dtype; the protocol uses float64.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

Tensor = torch.Tensor


def identity_grid(height: int, width: int, *, batch: int = 1, dtype: torch.dtype = torch.float32,
                  device: torch.device | str | None = None) -> Tensor:
    """Pixel grid of the identity map, ``(batch, H, W, 2)`` with ``G[y, x] = (x, y)``."""
    if height < 2 or width < 2:
        raise ValueError(f"identity_grid needs H, W >= 2, got {height}x{width}")
    ys = torch.arange(height, dtype=dtype, device=device)
    xs = torch.arange(width, dtype=dtype, device=device)
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack((gx, gy), dim=-1).expand(batch, height, width, 2).contiguous()


def _scale(height: int, width: int, like: Tensor) -> Tensor:
    return torch.tensor([2.0 / (width - 1), 2.0 / (height - 1)], dtype=like.dtype, device=like.device)


def pixel_to_normalised(grid: Tensor, height: int, width: int) -> Tensor:
    """Pixel coordinates of an ``height x width`` source image -> ``align_corners=True`` units."""
    return grid * _scale(height, width, grid) - 1.0


def normalised_to_pixel(grid: Tensor, height: int, width: int) -> Tensor:
    """Inverse of :func:`pixel_to_normalised`."""
    return (grid + 1.0) / _scale(height, width, grid)


def _check_image_grid(image: Tensor, grid: Tensor) -> None:
    if image.dim() != 4:
        raise ValueError(f"image must be (B, C, H, W), got shape {tuple(image.shape)}")
    if grid.dim() != 4 or grid.shape[-1] != 2:
        raise ValueError(f"grid must be (B, H, W, 2), got shape {tuple(grid.shape)}")
    if grid.shape[0] != image.shape[0]:
        raise ValueError(f"batch mismatch: image {image.shape[0]}, grid {grid.shape[0]}")


def warp_normalised(image: Tensor, grid: Tensor, padding_mode: str = "zeros") -> Tensor:
    """Bilinear warp by a normalised grid: ``(B, C, Hs, Ws)``, ``(B, H, W, 2)`` -> ``(B, C, H, W)``."""
    _check_image_grid(image, grid)
    return F.grid_sample(image, grid.to(image.dtype), mode="bilinear", padding_mode=padding_mode,
                         align_corners=True)


def warp_features(image: Tensor, grid: Tensor, padding_mode: str = "zeros") -> Tensor:
    """:func:`warp_normalised` (bilinear, ``align_corners=True``, ``"zeros"`` or ``"border"``
    padding, same shapes and result to float rounding) written as four ``GatherElements``.

    The networks warp their feature maps with this one. Why: ONNX Runtime's CPU GridSample
    cost ~1 ms per feature warp at the registration size; with gathers (and the cost-volume
    changes in ``busref.models.networks.layers``) affine + deformable went from 14.4-14.6 to 8.6-9.0 ms
    in back-to-back runs (the target is 10 ms). Corner indices are cast to int64 while they are
    still small exact integers, so an FP16 TensorRT build cannot round them; the sampled values
    are weighted and summed before any reshape, so ``busref.export.build_engine.warp_layers`` keeps that
    part in FP32 too.
    Gradients: with respect to ``image`` and (through the bilinear weights) ``grid``, as
    ``grid_sample``'s.
    """
    _check_image_grid(image, grid)
    if padding_mode not in ("zeros", "border"):
        raise ValueError(f"padding_mode must be 'zeros' or 'border', got {padding_mode!r}")
    b, c, hs, ws = image.shape
    h, w = grid.shape[1], grid.shape[2]
    grid = grid.to(image.dtype)
    x = (grid[..., 0] + 1) * ((ws - 1) / 2)
    y = (grid[..., 1] + 1) * ((hs - 1) / 2)
    if padding_mode == "border" and hs > 1 and ws > 1:
        return _warp_border(image, x, y)
    if padding_mode == "border":
        x, y = x.clamp(0, ws - 1), y.clamp(0, hs - 1)
    x0, y0 = torch.floor(x), torch.floor(y)
    fx, fy = (x - x0).reshape(b, 1, h * w), (y - y0).reshape(b, 1, h * w)
    flat = image.reshape(b, c, hs * ws)
    out = image.new_zeros(())
    for dy, wy in ((0, 1 - fy), (1, fy)):
        for dx, wx in ((0, 1 - fx), (1, fx)):
            xi, yi = (x0 + dx).reshape(b, 1, h * w), (y0 + dy).reshape(b, 1, h * w)
            weight = wx * wy
            if padding_mode == "zeros":
                weight = weight * ((xi >= 0) & (xi <= ws - 1) & (yi >= 0) & (yi <= hs - 1)).to(weight.dtype)
            index = yi.clamp(0, hs - 1).long() * ws + xi.clamp(0, ws - 1).long()
            out = out + flat.gather(2, index.expand(b, c, h * w)) * weight
    return out.reshape(b, c, h, w)


def _warp_border(image: Tensor, x: Tensor, y: Tensor) -> Tensor:
    """:func:`warp_features` with border padding, at pixel coordinates ``x``, ``y`` ``(B, H, W)`` of
    ``image`` ``(B, C, Hs, Ws)`` (``Hs, Ws >= 2``) -> ``(B, C, H, W)``.

    The top-left corner is clamped to ``[0, Ws - 2] x [0, Hs - 2]`` so that all four corners are
    inside the image (at the last column ``fx`` is 1: the same value), and one flat index serves all
    four: ``i``, ``i + 1``, ``i + Ws``, ``i + Ws + 1``. Why: the register graph's Lucas-Kanade
    stage warps ~100 times a call with border padding, and one index instead of four per warp took
    the thermal register graph from 199 to 183 ms (one thread, back to back, same output).
    """
    b, c, hs, ws = image.shape
    h, w = x.shape[1], x.shape[2]
    x, y = x.clamp(0, ws - 1), y.clamp(0, hs - 1)
    x0, y0 = torch.floor(x).clamp(max=ws - 2), torch.floor(y).clamp(max=hs - 2)
    fx, fy = (x - x0).reshape(b, 1, h * w), (y - y0).reshape(b, 1, h * w)
    gx, gy = 1 - fx, 1 - fy
    index = (y0 * ws + x0).long().reshape(b, 1, h * w).expand(b, c, h * w)
    flat = image.reshape(b, c, hs * ws)
    out = flat.gather(2, index) * (gx * gy) + flat.gather(2, index + 1) * (fx * gy) \
        + flat.gather(2, index + ws) * (gx * fy) + flat.gather(2, index + (ws + 1)) * (fx * fy)
    return out.reshape(b, c, h, w)


def warp(image: Tensor, grid: Tensor, padding_mode: str = "zeros") -> Tensor:
    """Bilinear warp by a *pixel* grid (source pixels of ``image``); zero padding by default.

    ``image`` (B, C, Hs, Ws), ``grid`` (B, H, W, 2) -> (B, C, H, W).
    """
    _check_image_grid(image, grid)
    hs, ws = image.shape[-2:]
    return warp_normalised(image, pixel_to_normalised(grid, hs, ws), padding_mode)


def affine_to_grid(matrix: Tensor, height: int, width: int) -> Tensor:
    """Pixel affine ``(B, 2, 3)`` -> pixel grid ``(B, H, W, 2)``: ``G(p) = M[:, :2] p + M[:, 2]``."""
    if matrix.dim() != 3 or matrix.shape[1:] != (2, 3):
        raise ValueError(f"matrix must be (B, 2, 3), got shape {tuple(matrix.shape)}")
    base = identity_grid(height, width, batch=matrix.shape[0], dtype=matrix.dtype, device=matrix.device)
    return apply_affine(matrix, base)


def apply_affine(matrix: Tensor, points: Tensor) -> Tensor:
    """Apply ``(B, 2, 3)`` affines to points ``(B, ..., 2)`` (same units as the matrix)."""
    b = matrix.shape[0]
    flat = points.reshape(b, -1, 2)
    out = flat @ matrix[:, :, :2].transpose(1, 2) + matrix[:, None, :, 2]
    return out.reshape(points.shape)


def _normalisation_matrix(height: int, width: int, like: Tensor) -> Tensor:
    """3x3 matrix taking pixel coordinates to ``align_corners=True`` normalised ones."""
    n = torch.zeros(3, 3, dtype=like.dtype, device=like.device)
    n[0, 0] = 2.0 / (width - 1)
    n[1, 1] = 2.0 / (height - 1)
    n[0, 2] = -1.0
    n[1, 2] = -1.0
    n[2, 2] = 1.0
    return n


def _homogeneous(matrix: Tensor) -> Tensor:
    bottom = torch.zeros(matrix.shape[0], 1, 3, dtype=matrix.dtype, device=matrix.device)
    bottom[:, 0, 2] = 1.0
    return torch.cat((matrix, bottom), dim=1)


def theta_to_pixel_affine(theta: Tensor, out_size: tuple[int, int], src_size: tuple[int, int]) -> Tensor:
    """Normalised ``theta`` (``affine_grid`` convention, align_corners=True) -> pixel affine.

    ``out_size`` and ``src_size`` are ``(H, W)`` of the output (reference) and source (moving)
    images; the result maps output pixels to source pixels.
    """
    n_out = _normalisation_matrix(*out_size, theta)
    n_src_inv = torch.linalg.inv(_normalisation_matrix(*src_size, theta))
    return (n_src_inv @ _homogeneous(theta) @ n_out)[:, :2]


def pixel_affine_to_theta(matrix: Tensor, out_size: tuple[int, int], src_size: tuple[int, int]) -> Tensor:
    """Inverse of :func:`theta_to_pixel_affine`."""
    n_out_inv = torch.linalg.inv(_normalisation_matrix(*out_size, matrix))
    n_src = _normalisation_matrix(*src_size, matrix)
    return (n_src @ _homogeneous(matrix) @ n_out_inv)[:, :2]


def invert_affine(matrix: Tensor) -> Tensor:
    """Inverse of ``(B, 2, 3)`` affines (same units)."""
    return torch.linalg.inv(_homogeneous(matrix))[:, :2]


def compose_affine(outer: Tensor, inner: Tensor) -> Tensor:
    """``(B, 2, 3)`` affine of "``inner``, then ``outer``": ``p -> outer(inner(p))`` (same units)."""
    return (_homogeneous(outer) @ _homogeneous(inner))[:, :2]


def compose(outer: Tensor, inner: Tensor) -> Tensor:
    """Pixel grid of "warp by ``outer``, then warp the result by ``inner``".

    ``warp(warp(I, outer), inner) == warp(I, compose(outer, inner))`` up to interpolation:
    ``compose(outer, inner)(p) = outer(inner(p))``, with ``outer`` sampled bilinearly (border
    padding) at the pixel locations ``inner`` gives. Shapes ``(B, Ho, Wo, 2)``, ``(B, H, W, 2)``
    -> ``(B, H, W, 2)``; ``inner`` is in ``outer``'s output pixel coordinates.
    """
    sampled = warp(outer.permute(0, 3, 1, 2), inner, padding_mode="border")
    return sampled.permute(0, 2, 3, 1)


def invert_field(affine: Tensor, displacement: Tensor, height: int, width: int, *,
                 iterations: int = 50, tolerance: float = 1e-9) -> Tensor:
    """Inverse of ``T(p) = A(p + phi(p))`` as a pixel grid ``(B, H, W, 2)``.

    ``affine`` is a pixel affine ``(B, 2, 3)``; ``displacement`` ``phi`` is ``(B, 2, H, W)`` in pixels
    (channel 0 = dx). For each output location ``q``: ``x = A^-1 q``, then the fixed point
    ``p <- x - phi(p)`` with ``phi`` sampled bilinearly off-grid (border padding), at most
    ``iterations`` times or until the largest update is below ``tolerance`` pixels. This is exact
    for smooth fields whose Jacobian has norm < 1 (method-notes: better than ``phi^-1 = -phi``).
    """
    q = identity_grid(height, width, batch=affine.shape[0], dtype=affine.dtype, device=affine.device)
    x = apply_affine(invert_affine(affine), q)
    p = x
    for _ in range(iterations):
        phi_at_p = warp(displacement, p, padding_mode="border").permute(0, 2, 3, 1)
        p_next = x - phi_at_p
        step = (p_next - p).abs().max()
        p = p_next
        if step < tolerance:
            break
    return p


def displacement_grid(affine: Tensor, displacement: Tensor) -> Tensor:
    """Pixel grid of ``T(p) = A(p + phi(p))``: ``affine`` (B, 2, 3), ``phi`` (B, 2, H, W)."""
    b, _, h, w = displacement.shape
    base = identity_grid(h, w, batch=b, dtype=displacement.dtype, device=displacement.device)
    return apply_affine(affine, base + displacement.permute(0, 2, 3, 1))


def reconstructible_mask(forward: Tensor, backward: Tensor, source_size: tuple[int, int]) -> Tensor:
    """Reference pixels whose content exists in the moving image (paper eq. 3, as corrected).

    ``forward`` ``T`` (B, Hm, Wm, 2) makes the moving image from the reference; ``backward``
    ``T^-1`` (B, H, W, 2) registers it back. The mask is ``warp(warp(ones, T), T^-1) > 0``,
    shape (B, 1, H, W), dtype bool.
    """
    ones = torch.ones(forward.shape[0], 1, *source_size, dtype=forward.dtype, device=forward.device)
    return warp(warp(ones, forward), backward) > 0
