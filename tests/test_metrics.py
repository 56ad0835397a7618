"""Latency histograms: the recent-sample window costs constant memory and reads back in order."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from busref.runtime.metrics import Histogram


def test_observing_allocates_nothing_once_constructed() -> None:
    hist = Histogram(window=5000)
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        for i in range(12000):  # more than two windows
            hist.observe(0.001 * (i % 97))
        grown = sum(s.size_diff for s in tracemalloc.take_snapshot().compare_to(before, "filename"))
    finally:
        tracemalloc.stop()
    # A deque of Python floats kept ~32 bytes per sample: 160 kB for this window.
    assert grown < 2048, f"the histogram grew by {grown} bytes while observing"


def test_the_window_keeps_the_newest_samples_oldest_first() -> None:
    hist = Histogram(window=4)
    assert hist.recent().size == 0 and np.isnan(hist.percentiles()["p50"])
    for x in (1.0, 2.0, 3.0):
        hist.observe(x)
    np.testing.assert_array_equal(hist.recent(), [1.0, 2.0, 3.0])
    for x in (4.0, 5.0, 6.0):
        hist.observe(x)
    np.testing.assert_array_equal(hist.recent(), [3.0, 4.0, 5.0, 6.0])
    assert hist.count == 6 and hist.percentiles((50,)) == {"p50": 4.5}
    assert 'le="+Inf"} 6' in hist.exposition("h", {})[-3]
    hist.reset()
    assert hist.count == 0 and hist.recent().size == 0
    hist.observe(7.0)
    np.testing.assert_array_equal(hist.recent(), [7.0])
    with pytest.raises(ValueError, match="window"):
        Histogram(window=0)
