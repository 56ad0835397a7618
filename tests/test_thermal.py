"""Thermal normalisation: fixed and smoothed-percentile windows, no per-frame flicker."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from busref.rig_config.schema import FixedWindow, PercentileWindow
from busref.runtime.thermal import (
    ThermalNormaliser,
    apply_window,
    percentile_window,
    thermal_gray,
    widen_window,
)


def test_apply_window_maps_and_clips() -> None:
    raw = np.array([[6000, 7000, 8000, 9000, 10000]], np.uint16)
    out = apply_window(raw, 7000, 9000)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [[0, 0, 0.5, 1, 1]])
    with pytest.raises(ValueError, match="must be above"):
        apply_window(raw, 5, 5)


def test_percentile_window_ignores_outliers() -> None:
    rng = np.random.default_rng(0)
    raw = rng.integers(7000, 8000, (128, 160)).astype(np.uint16)
    raw[10:12, 10:12] = 16000  # a few hot pixels must not stretch the window
    low, high = percentile_window(raw, 1, 99)
    assert 7000 <= low < 7050 and 7950 < high <= 8000


def test_widen_window_keeps_flat_scenes_flat() -> None:
    assert widen_window(100, 110, 32) == (89.0, 121.0)
    assert widen_window(100, 200, 32) == (100, 200)
    flat = np.full((32, 32), 7500, np.uint16) + np.random.default_rng(1).integers(0, 4, (32, 32)).astype(np.uint16)
    out = ThermalNormaliser(PercentileWindow(mode="percentile", min_span=32))(flat)
    assert float(out.max() - out.min()) < 0.15  # noise of 4 counts is not stretched to full range


def test_fixed_window_for_uint8_and_bgr_sources() -> None:
    norm = ThermalNormaliser(FixedWindow(mode="fixed", low=0, high=255))
    gray = np.arange(256, dtype=np.uint8).reshape(16, 16)
    np.testing.assert_allclose(norm(gray), gray / 255.0, atol=1e-6)
    bgr = cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR)
    np.testing.assert_allclose(norm(bgr), gray / 255.0, atol=1e-6)
    assert norm.window == (0, 255)
    with pytest.raises(ValueError, match="IR frame must be"):
        thermal_gray(np.zeros((4, 4, 2), np.uint8))


def _scene(hot: bool) -> np.ndarray:
    """A street at ~7500 counts; optionally a hot object (16000 counts) covering 10% of the view."""
    rng = np.random.default_rng(3)
    frame = (7000 + 1000 * np.linspace(0, 1, 160)[None, :] + rng.normal(0, 5, (128, 160))).astype(np.uint16)
    if hot:
        frame[20:60, 20:72] = 16000
    return frame


def _background_levels(norm: ThermalNormaliser, hot: list[bool]) -> np.ndarray:
    """Mean normalised brightness of an object-free background region, frame by frame."""
    return np.array([float(norm(_scene(h))[100:128, 100:160].mean()) for h in hot])


def test_percentile_window_is_smoothed_over_time_not_per_frame() -> None:
    """A hot object blinking in and out must not make the background flicker (min-max does)."""
    smooth = ThermalNormaliser(PercentileWindow(mode="percentile", smoothing=0.05))
    instant = ThermalNormaliser(PercentileWindow(mode="percentile", smoothing=1.0))
    blinking = [False] * 10 + [True, False] * 30
    flicker_instant = np.abs(np.diff(_background_levels(instant, blinking)[-20:])).max()
    flicker_smooth = np.abs(np.diff(_background_levels(smooth, blinking)[-20:])).max()
    assert flicker_instant > 0.5
    assert flicker_smooth < 0.1 * flicker_instant


def test_percentile_window_follows_a_lasting_change_gradually() -> None:
    smooth = ThermalNormaliser(PercentileWindow(mode="percentile", smoothing=0.1))
    levels = _background_levels(smooth, [False] * 10 + [True] * 80)
    target = _background_levels(ThermalNormaliser(PercentileWindow(mode="percentile", smoothing=1.0)), [True])[0]
    steps = np.diff(levels[9:])
    assert np.all(steps <= 1e-6)  # the background darkens monotonically as the window widens ...
    assert steps[0] > 0.6 * (target - levels[9])  # ... with no jump to the new window in one frame
    assert abs(levels[-1] - target) < 0.01  # ... and settles on it
    smooth.reset()
    assert smooth.window is None
