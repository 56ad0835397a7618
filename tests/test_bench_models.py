"""scripts/bench_models.py end to end on the tiny trained checkpoint: every graph exported,
timed and written to the JSON with positive numbers."""

from __future__ import annotations

import json
from pathlib import Path

from scripts.bench_models import main

GRAPHS = {"fuse", "encoder", "encoder_registration", "affine_deformable", "register"}


def test_bench_models_writes_every_graph(trained_checkpoint: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "speed.json"
    assert main(["--checkpoint", str(trained_checkpoint), "--size", "64x64", "--repeats", "2", "--warmup", "1",
                 "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert {g["graph"] for g in report["graphs"]} == GRAPHS
    for g in report["graphs"]:
        for key in ("cpu_ms", "wall_ms"):
            assert all(v > 0 for v in g[key].values()), (g["graph"], key, g[key])
    sizes = {g["graph"]: g["input_size"] for g in report["graphs"]}
    assert sizes["fuse"] == sizes["encoder"] == [64, 64]
    assert sizes["register"] == sizes["affine_deformable"] == list(report["registration_size"])
    assert report["threads"] == 1 and report["onnxruntime"] and report["machine"]["cpu"]
    table = capsys.readouterr().out
    assert table.startswith("| graph |") and table.count("\n") == len(GRAPHS) + 2


def test_bench_models_refuses_bad_size(capsys) -> None:
    import pytest

    with pytest.raises(SystemExit):
        main(["--size", "60x64"])
    assert "multiples of 8" in capsys.readouterr().err
