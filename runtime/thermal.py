"""Thermal-IR normalisation: raw sensor counts (uint16 radiometric or uint8) to float32 [0, 1].

Per-frame min-max scaling is deliberately absent: a warm object entering the view rescales
the whole image from one frame to the next, so the stream flickers and the networks see
brightness jumps. A fixed window never moves; a percentile window moves slowly (EMA).
"""

from __future__ import annotations

import cv2
import numpy as np

from busref.rig_config.schema import FixedWindow, PercentileWindow, ThermalConfig

#: Percentiles are estimated on every STRIDE-th pixel in each direction: the window is a
#: scene statistic, and 1/16 of a 640x512 frame estimates it well at a fraction of the cost.
PERCENTILE_STRIDE = 4


def thermal_gray(image: np.ndarray) -> np.ndarray:
    """Single-channel view of an IR frame.

    ``image``: (H, W) uint8/uint16, or (H, W, 3) BGR uint8 from a source that delivers
    converted colour (a UVC thermal camera, a video file). Returns (H, W) of the same dtype.
    """
    if image.ndim == 2:
        return image
    if image.ndim == 3 and image.shape[2] == 1:
        return image[:, :, 0]
    if image.ndim == 3 and image.shape[2] == 3:
        return cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    raise ValueError(f"an IR frame must be (H, W) or (H, W, 1|3), got shape {image.shape}")


def apply_window(raw: np.ndarray, low: float, high: float) -> np.ndarray:
    """Map raw counts linearly so ``low -> 0`` and ``high -> 1``, clipped to [0, 1].

    ``raw``: (H, W) any numeric dtype. Returns (H, W) float32. ``high > low`` is required.
    """
    if not high > low:
        raise ValueError(f"window high ({high}) must be above low ({low})")
    out = raw.astype(np.float32)
    np.subtract(out, np.float32(low), out=out)
    np.multiply(out, np.float32(1.0 / (high - low)), out=out)
    np.clip(out, 0.0, 1.0, out=out)
    return out


def percentile_window(raw: np.ndarray, low_pct: float, high_pct: float) -> tuple[float, float]:
    """``(low, high)`` raw-count percentiles of a frame, estimated on a strided subsample.

    ``raw``: (H, W) numeric. Percentiles in [0, 100]. Returns floats with ``low <= high``.
    """
    sample = raw[::PERCENTILE_STRIDE, ::PERCENTILE_STRIDE]
    low, high = np.percentile(sample, (low_pct, high_pct))
    return float(low), float(high)


def widen_window(low: float, high: float, min_span: float) -> tuple[float, float]:
    """Grow ``[low, high]`` symmetrically to at least ``min_span`` wide (a flat scene stays flat)."""
    span = high - low
    if span >= min_span:
        return low, high
    centre = 0.5 * (low + high)
    return centre - 0.5 * min_span, centre + 0.5 * min_span


class ThermalNormaliser:
    """Stateful normaliser for one IR stream, configured by ``IRCameraConfig.thermal``.

    Call it on each raw frame (see :func:`thermal_gray` for accepted shapes); it returns
    (H, W) float32 in [0, 1]. With a percentile window the window follows the scene as an
    exponential moving average, ``w <- (1 - a) w + a w_frame``, starting at the first frame's.
    """

    def __init__(self, config: ThermalConfig) -> None:
        self.config = config
        self._window: tuple[float, float] | None = None
        self._ema: tuple[float, float] | None = None  # smoothed percentiles, before widening

    @property
    def window(self) -> tuple[float, float] | None:
        """The raw-count window used for the last frame (``None`` before the first)."""
        return self._window

    def reset(self) -> None:
        """Forget the smoothed window (e.g. after the camera reconnects or changes gain)."""
        self._window = None
        self._ema = None

    def __call__(self, image: np.ndarray) -> np.ndarray:
        raw = thermal_gray(image)
        cfg = self.config
        if isinstance(cfg, FixedWindow):
            self._window = (cfg.low, cfg.high)
        else:
            self._window = self._update(raw, cfg)
        return apply_window(raw, *self._window)

    def _update(self, raw: np.ndarray, cfg: PercentileWindow) -> tuple[float, float]:
        low, high = percentile_window(raw, cfg.low_pct, cfg.high_pct)
        if self._ema is not None:
            a = cfg.smoothing
            low = (1.0 - a) * self._ema[0] + a * low
            high = (1.0 - a) * self._ema[1] + a * high
        self._ema = (low, high)
        return widen_window(low, high, cfg.min_span)
