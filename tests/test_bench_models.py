"""scripts/bench_models.py end to end on the tiny trained checkpoint: every graph exported,
timed and written to the JSON with positive numbers."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bench_models.py"
_spec = importlib.util.spec_from_file_location("bench_models", SCRIPT)
bench_models = sys.modules["bench_models"] = importlib.util.module_from_spec(_spec)  # a script, not a package
_spec.loader.exec_module(bench_models)
main = bench_models.main

GRAPHS = {"fuse", "encoder", "encoder_registration", "affine_deformable", "register"}


@pytest.mark.slow
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
