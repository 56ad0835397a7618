"""``busref bench --soak``: the verdict on memory growth, and a short soak end to end."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import pytest
from rigs import demo_rig, write_graphs

from busref.runtime import exit_codes
from busref.runtime.memory import release_free_heap, rss_mb
from busref.runtime.soak import Soak, Window, trend_per_minute


def window(t_min: float, rss: float) -> Window:
    return Window(t_min=t_min, rss_mb=rss, rss_floor_mb=rss - 10, threads=20, python_blocks=50000, fps=30.0,
                  received_fps=30.0, capture_to_publish_p50_ms=25.0, capture_to_publish_p99_ms=40.0,
                  cpu_utilisation=1.2, load_1m=1.0)


def soak_with(rss: list[float], settle_min: float = 5.0) -> Soak:
    soak = Soak(daemon=None, received=lambda: 0, minutes=60, settle_min=settle_min)  # type: ignore[arg-type]
    soak.windows = [window(t + 1.0, r) for t, r in enumerate(rss)]
    soak.settled_at = next(i for i, w in enumerate(soak.windows) if w.t_min >= settle_min)
    return soak


def test_the_verdict_is_the_trend_of_the_rss_after_settling() -> None:
    assert trend_per_minute([0, 1, 2, 3], [1.0, 2.0, 3.0, 4.0]) == pytest.approx(1.0)
    assert math.isnan(trend_per_minute([0, 1], [1.0, 2.0]))
    # Growing 4 MB during the first 5 minutes (imports, pools), then flat with noise: passes.
    steady = soak_with([300, 302, 303, 304] + [304 + (1.5 if i % 7 == 3 else 0.0) for i in range(56)])
    assert steady.passed() and abs(steady.growth_mb()) < 0.5
    # 0.05 MB a minute after settling (the size of the leak this soak was written for): 2.75 MB, fails.
    leaking = soak_with([300, 302, 303, 304] + [304 + 0.05 * i for i in range(56)])
    assert leaking.growth_mb() == pytest.approx(0.05 * 55) and not leaking.passed()
    report = leaking.report()["summary"]
    assert report["passed"] is False and report["rss_settled_mb"] == 304
    assert report["rss_floor_growth_after_settle_mb"] == pytest.approx(0.05 * 55)
    assert report["fps_trend_per_hour"] == pytest.approx(0.0)
    with pytest.raises(ValueError, match="longer than its settling time"):
        Soak(daemon=None, received=lambda: 0, minutes=5, settle_min=5)  # type: ignore[arg-type]


def test_memory_readings() -> None:
    assert 1.0 < rss_mb() < 100_000
    assert release_free_heap() in (True, False)  # False only where the C library has no malloc_trim


@pytest.mark.slow
def test_a_short_soak_writes_its_windows(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from busref.runtime.cli import bench

    rig = demo_rig(tmp_path, write_graphs(tmp_path))
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    out = tmp_path / "soak.json"
    args = parser.parse_args(["--rig", str(rig), "--soak", "0.2", "--window", "2", "--settle", "0.05",
                              "--rss-bound-mb", "1000", "--json", str(out)])
    assert bench.run(args) == exit_codes.OK
    report = json.loads(out.read_text())
    assert report["command"]["minutes"] == 0.2 and len(report["windows"]) >= 3
    assert report["summary"]["passed"] and report["summary"]["fps_mean"] > 5
    assert all(w["rss_floor_mb"] <= w["rss_mb"] + 1 for w in report["windows"])
    assert "soak passed" in capsys.readouterr().out
