"""Registration metrics of the ``irvis-reg-v1`` protocol, and a numpy bilinear warp (no torch).

Conventions (docs/evaluation-protocol.md):

* Images are 2-D float arrays ``(H, W)``, values in [0, 1]; pixel ``(x, y)`` has its centre at
  integer coordinates and ``x`` is the column.
* A sampling grid ``G`` has shape ``(H, W, 2)`` with ``G[y, x] = (x', y')`` in pixels of the
  moving image: output pixel ``(x, y)`` takes the moving value at ``(x', y')``.
* A mask is a boolean ``(H, W)`` array over reference pixels (the protocol's reconstructible
  mask ``M``); masked metrics use only the pixels where it is True.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

# Per-pair keys that summarise() treats specially rather than averaging.
_SECONDS = "seconds"
_FAILED = "failed"


def _as_image(name: str, image: np.ndarray) -> np.ndarray:
    array = np.asarray(image, dtype=np.float64)
    if array.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (H, W) image, got shape {array.shape}")
    return array


def _as_grid(name: str, grid: np.ndarray) -> np.ndarray:
    array = np.asarray(grid, dtype=np.float64)
    if array.ndim != 3 or array.shape[-1] != 2:
        raise ValueError(f"{name} must be an (H, W, 2) pixel grid, got shape {array.shape}")
    return array


def _select(mask: np.ndarray | None, shape: tuple[int, ...]) -> np.ndarray:
    """Boolean (H, W) selection: all pixels when ``mask`` is None; refuses an empty mask."""
    if mask is None:
        return np.ones(shape, dtype=bool)
    selection = np.asarray(mask)
    if selection.shape != shape:
        raise ValueError(f"mask shape {selection.shape} does not match image shape {shape}")
    selection = selection.astype(bool)
    if not selection.any():
        raise ValueError("mask selects no pixels; the metric is undefined on an empty region")
    return selection


def _pair(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    a64, b64 = _as_image("a", a), _as_image("b", b)
    if a64.shape != b64.shape:
        raise ValueError(f"image shapes differ: a {a64.shape}, b {b64.shape}")
    selection = _select(mask, a64.shape)
    return a64[selection], b64[selection]


def ncc(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Normalised cross-correlation (Pearson correlation of pixel values) of two ``(H, W)`` images.

    Computed in float64 over all pixels, or over ``mask`` (bool ``(H, W)``) when given. Range
    [-1, 1]; returns 0.0 when either image is constant over the region, where the correlation is
    undefined (a method whose output is blank has no correlation with the target).
    """
    va, vb = _pair(a, b, mask)
    # Tested on the range, not the variance: a constant minus its float mean need not be 0.
    if np.ptp(va) == 0.0 or np.ptp(vb) == 0.0:
        return 0.0
    da, db = va - va.mean(), vb - vb.mean()
    return float(np.sum(da * db) / np.sqrt(np.sum(da * da) * np.sum(db * db)))


def mse(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Mean squared difference of two ``(H, W)`` images (float64), over ``mask`` when given."""
    va, vb = _pair(a, b, mask)
    return float(np.mean((va - vb) ** 2))


def endpoint_error(grid_est: np.ndarray, grid_true: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    """End-point error ``|| G_est(q) - G_true(q) ||_2`` in pixels over the reference pixels in ``mask``.

    ``grid_est`` and ``grid_true`` are ``(H, W, 2)`` pixel grids (reference -> moving); ``mask``
    is bool ``(H, W)``. Returns ``{"mean", "median", "p90"}`` (90th percentile, linear
    interpolation). Raises ValueError on shape mismatch, an empty mask, or a non-finite
    estimate inside the mask.
    """
    est, true = _as_grid("grid_est", grid_est), _as_grid("grid_true", grid_true)
    if est.shape != true.shape:
        raise ValueError(f"grid shapes differ: grid_est {est.shape}, grid_true {true.shape}")
    selection = _select(mask, est.shape[:2])
    diff = est[selection] - true[selection]
    if not np.isfinite(diff).all():
        raise ValueError("grid_est or grid_true holds non-finite coordinates inside the mask")
    errors = np.hypot(diff[:, 0], diff[:, 1])
    return {
        "mean": float(errors.mean()),
        "median": float(np.median(errors)),
        "p90": float(np.percentile(errors, 90)),
    }


def registration_metrics(registered: np.ndarray, target: np.ndarray, mask: np.ndarray,
                         grid_est: np.ndarray, grid_true: np.ndarray) -> dict[str, float]:
    """All per-pair metrics of the protocol for one registered pair.

    ``registered`` is the moving image warped by ``grid_est`` and ``target`` the original aligned
    IR image, both ``(H, W)`` in [0, 1]; ``mask`` the bool reconstructible mask ``(H, W)``;
    ``grid_est`` / ``grid_true`` ``(H, W, 2)`` pixel grids. Keys: NCC, MSE (whole image), MNCC,
    MMSE (over ``mask``), EPE_mean, EPE_median, EPE_p90 (pixels, over ``mask``).
    """
    epe = endpoint_error(grid_est, grid_true, mask)
    return {
        "NCC": ncc(registered, target),
        "MSE": mse(registered, target),
        "MNCC": ncc(registered, target, mask),
        "MMSE": mse(registered, target, mask),
        "EPE_mean": epe["mean"],
        "EPE_median": epe["median"],
        "EPE_p90": epe["p90"],
    }


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


def _column(per_pair: Sequence[Mapping[str, object]], key: str) -> np.ndarray:
    values = []
    for index, pair in enumerate(per_pair):
        value = pair.get(key)
        if not _is_number(value):
            raise ValueError(f"pair {index}: key {key!r} is missing or not a number (got {value!r})")
        values.append(float(value))  # type: ignore[arg-type]
    return np.asarray(values)


def summarise(per_pair: Sequence[Mapping[str, object]]) -> dict[str, object]:
    """Aggregate per-pair metric dicts into the protocol's report.

    Every numeric key of the first pair (other than ``seconds``) must be numeric in every pair;
    non-numeric entries such as a pair name are ignored. Returns::

        {"n": int,
         "mean": {key: float}, "std": {key: float},     # std over pairs, ddof=0
         "success_2px": float, "success_5px": float,    # only if EPE_mean is present
         "failures": int,                               # only if a "failed" key is present
         "median_seconds": float}                       # only if a "seconds" key is present

    ``success_*`` is the share of pairs with ``EPE_mean`` below 2 / 5 pixels; ``failures`` counts
    pairs whose ``failed`` entry is true (the evaluator has already scored them as identity).
    """
    if len(per_pair) == 0:
        raise ValueError("summarise needs at least one pair")
    keys = [k for k, v in per_pair[0].items() if k != _SECONDS and _is_number(v)]
    columns = {k: _column(per_pair, k) for k in keys}

    summary: dict[str, object] = {
        "n": len(per_pair),
        "mean": {k: float(columns[k].mean()) for k in keys},
        "std": {k: float(columns[k].std()) for k in keys},
    }
    if "EPE_mean" in columns:
        summary["success_2px"] = float(np.mean(columns["EPE_mean"] < 2.0))
        summary["success_5px"] = float(np.mean(columns["EPE_mean"] < 5.0))
    if any(_FAILED in pair for pair in per_pair):
        summary["failures"] = int(sum(bool(pair.get(_FAILED, False)) for pair in per_pair))
    if _SECONDS in per_pair[0]:
        summary["median_seconds"] = float(np.median(_column(per_pair, _SECONDS)))
    return summary


def warp_numpy(image: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """Bilinear warp with zero padding: ``out[y, x] = image(grid[y, x])``, exact in float64.

    ``image`` is ``(Hs, Ws)`` (any real dtype), ``grid`` ``(H, W, 2)`` in pixel coordinates of
    ``image``; returns float64 ``(H, W)``. Identical to ``grid_sample(mode="bilinear",
    padding_mode="zeros", align_corners=True)``: each of the four neighbours outside the image
    contributes 0, so a sample half a pixel outside the border gets half the edge value;
    non-finite coordinates give 0.

    Why numpy and not ``cv2.remap``: measured on 240x320 random images with random sub-pixel
    offsets, OpenCV 5.0's float32 ``remap`` agrees with ``grid_sample`` to 1.4e-5 (float32
    coordinates), whereas OpenCV 4.x (allowed by the project's dependency range; not installed
    here) remaps with 5-bit fixed-point weights, i.e. positions rounded to 1/32 pixel (errors up
    to ~1.6e-2 across a unit step). This version agrees with ``grid_sample`` whatever OpenCV is
    installed, so protocol inputs regenerate bit for bit; it costs about 10 ms per 240x320 image.
    """
    source = _as_image("image", image)
    coords = _as_grid("grid", grid)
    height, width = source.shape
    # Anything beyond one pixel outside the image samples only zeros, so clipping there (and
    # sending NaN/inf out of range) keeps the integer conversion safe without changing results.
    x = np.clip(np.nan_to_num(coords[..., 0], nan=-2.0), -2.0, width + 1.0)
    y = np.clip(np.nan_to_num(coords[..., 1], nan=-2.0), -2.0, height + 1.0)
    x0, y0 = np.floor(x), np.floor(y)
    fx, fy = x - x0, y - y0
    ix, iy = x0.astype(np.int64), y0.astype(np.int64)
    out = np.zeros(x.shape, dtype=np.float64)
    for dy, wy in ((0, 1.0 - fy), (1, fy)):
        for dx, wx in ((0, 1.0 - fx), (1, fx)):
            cx, cy = ix + dx, iy + dy
            inside = (cx >= 0) & (cx < width) & (cy >= 0) & (cy < height)
            out[inside] += (wx * wy)[inside] * source[cy[inside], cx[inside]]
    return out
