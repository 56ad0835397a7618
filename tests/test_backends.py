"""Inference backends on real ONNX Runtime sessions over tiny contract-following graphs."""

from __future__ import annotations

import logging
import sys
import threading
import time
import types
from pathlib import Path

import numpy as np
import pytest
from tiny_graphs import metadata, write_frame, write_fuse, write_register, write_slow_fuse

from busref.conventions import affine_grid
from busref.runtime.artifact import ArtifactError
from busref.runtime.backends import BackendUnavailable, InferenceBackend, ModelMissing, RunCancelled
from busref.runtime.backends.onnxruntime import OnnxRuntimeBackend
from busref.runtime.backends.select import open_backend


@pytest.fixture
def fuse_onnx(tmp_path: Path) -> Path:
    return write_fuse(tmp_path / "fuse.onnx")


def test_runs_the_graph_and_reports_itself(fuse_onnx: Path) -> None:
    backend = OnnxRuntimeBackend(fuse_onnx, graph="fuse", threads=1)
    assert isinstance(backend, InferenceBackend)
    vis = np.linspace(0, 1, 2 * 24 * 32, dtype=np.float32).reshape(1, 1, 48, 32)
    ir = np.full_like(vis, 0.5)
    out = backend.run({"vis": vis, "ir": ir})
    np.testing.assert_array_equal(out["fused"], np.maximum(vis, ir))
    info = backend.describe()
    assert info["providers"] == ["CPUExecutionProvider"] and info["device"] == "cpu"
    assert info["model_id"] == "tiny-fuse-000000000000" and info["threads"] == 1
    assert backend.metadata.graph == "fuse"


def test_held_input_stays_bound_between_runs(tmp_path: Path) -> None:
    """``hold`` binds the frame graph's grid once (ONNX Runtime IO binding, here on the CPU);
    later runs give only the per-pair inputs."""
    backend = OnnxRuntimeBackend(write_frame(tmp_path / "frame.onnx"), graph="frame", threads=1)
    assert not backend.gpu_resident and backend.describe()["gpu_resident"] is False
    rng = np.random.default_rng(0)
    vis = rng.random((1, 1, 16, 24), dtype=np.float32) * 0.5
    irs = [rng.random((1, 1, 12, 20), dtype=np.float32) for _ in range(2)]
    grids = [affine_grid(theta, 16, 24, coordinates="normalised")[None]
             for theta in ([[0.9, 0.1, 0.05], [-0.1, 0.9, 0.0]], np.eye(2, 3))]
    plain = {(i, g): backend.run({"vis": vis, "ir": ir, "grid": grid})["fused"]
             for i, ir in enumerate(irs) for g, grid in enumerate(grids)}
    for g, grid in enumerate(grids):
        backend.hold("grid", grid)
        for i, ir in enumerate(irs):
            np.testing.assert_array_equal(backend.run({"vis": vis, "ir": ir})["fused"], plain[i, g])
    with pytest.raises(ValueError, match=r"\['grid'\] both given and held"):
        backend.run({"vis": vis, "ir": irs[0], "grid": grids[0]})
    with pytest.raises(ValueError, match=r"\['ir'\] neither given nor held"):
        backend.run({"vis": vis})
    with pytest.raises(ValueError, match="has no input 'theta'"):
        backend.hold("theta", grids[0])
    forced = OnnxRuntimeBackend(tmp_path / "frame.onnx", graph="frame", threads=1, gpu_resident=True)
    assert forced.gpu_resident and forced.device == "cpu"


def test_cancel_ends_a_run_in_progress_and_refuses_later_ones(tmp_path: Path) -> None:
    """What a daemon's stop relies on: a process must not exit with a thread inside ORT's run."""
    backend = OnnxRuntimeBackend(write_slow_fuse(tmp_path / "slow.onnx", nodes=400), graph="fuse", threads=1)
    big = np.zeros((1, 1, 1024, 1024), np.float32)
    feed = {"vis": big, "ir": big}
    started = time.perf_counter()
    backend.run(feed)
    full_s = time.perf_counter() - started
    outcome: dict[str, object] = {}

    def run() -> None:
        started = time.perf_counter()
        try:
            backend.run(feed)
        except RunCancelled as exc:
            outcome["error"] = exc
        outcome["seconds"] = time.perf_counter() - started

    thread = threading.Thread(target=run)
    thread.start()
    time.sleep(full_s / 4)
    backend.cancel()
    thread.join(10)
    assert isinstance(outcome.get("error"), RunCancelled), outcome
    assert outcome["seconds"] < 0.75 * full_s, (outcome, full_s)
    with pytest.raises(RunCancelled, match=r"slow\.onnx: cancelled"):
        backend.run(feed)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ModelMissing, match="fuse model does not exist"):
        OnnxRuntimeBackend(tmp_path / "nope.onnx", graph="fuse")


def test_not_an_onnx_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a protobuf")
    with pytest.raises(ArtifactError, match=r"bad.onnx: ONNX Runtime cannot load it"):
        OnnxRuntimeBackend(bad, graph="fuse")


def test_graph_without_busref_metadata(tmp_path: Path) -> None:
    import onnx

    path = write_fuse(tmp_path / "plain.onnx")
    model = onnx.load(str(path))
    del model.metadata_props[:]
    onnx.save(model, str(path))
    with pytest.raises(ArtifactError, match="no 'busref' metadata"):
        OnnxRuntimeBackend(path, graph="fuse")


def test_wrong_graph_kind(tmp_path: Path) -> None:
    path = write_register(tmp_path / "register.onnx", np.eye(2, 3), (16, 16))
    with pytest.raises(ArtifactError, match="is a 'register' graph, expected a 'fuse' graph"):
        OnnxRuntimeBackend(path, graph="fuse")


def test_foreign_schema(tmp_path: Path) -> None:
    meta = metadata("fuse").replace("busref.artifact/1", "busref.artifact/9")
    path = write_fuse(tmp_path / "future.onnx", meta=meta)
    with pytest.raises(ArtifactError, match=r"busref\.artifact/9"):
        OnnxRuntimeBackend(path, graph="fuse")


def test_io_names_must_follow_the_contract(tmp_path: Path) -> None:
    # a fuse graph labelled as a register graph: metadata passes, the tensor names do not
    path = write_fuse(tmp_path / "mislabelled.onnx", meta=metadata("register"))
    with pytest.raises(ArtifactError, match=r"needs inputs \['vis', 'ir'\] and outputs \['theta', 'grid'\]"):
        OnnxRuntimeBackend(path, graph="register")


def test_auto_without_engine_is_onnxruntime(fuse_onnx: Path) -> None:
    backend = open_backend("fuse", fuse_onnx, None, choice="auto", threads=1)
    assert backend.name == "onnxruntime"


def test_unloadable_engine_falls_back_with_the_reason(fuse_onnx: Path, tmp_path: Path,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    engine = tmp_path / "fuse.engine"
    engine.write_bytes(b"not an engine")
    with caplog.at_level(logging.WARNING):
        backend = open_backend("fuse", fuse_onnx, engine, choice="auto")
    assert backend.name == "onnxruntime"
    assert "TensorRT engine not loadable, falling back to ONNX Runtime" in caplog.text
    with pytest.raises(BackendUnavailable):
        open_backend("fuse", fuse_onnx, engine, choice="auto", allow_fallback=False)


def test_tensorrt_without_engine(fuse_onnx: Path) -> None:
    assert open_backend("fuse", fuse_onnx, None, choice="tensorrt").name == "onnxruntime"
    with pytest.raises(BackendUnavailable, match="no fuse engine is configured"):
        open_backend("fuse", fuse_onnx, None, choice="tensorrt", allow_fallback=False)


def test_onnxruntime_choice_ignores_the_engine(fuse_onnx: Path, tmp_path: Path) -> None:
    backend = open_backend("fuse", fuse_onnx, tmp_path / "any.engine", choice="onnxruntime")
    assert backend.name == "onnxruntime"


def _tensorrt_module(failure: str | None) -> types.ModuleType:
    """Stand-in for busref.runtime.backends.tensorrt (written elsewhere): the plug-in contract only."""
    module = types.ModuleType("busref.runtime.backends.tensorrt")

    class EngineMismatch(Exception):  # deliberately not a BackendUnavailable subclass
        pass

    class TensorRTBackend:
        name = "tensorrt"

        def __init__(self, engine_path: Path, *, graph: str, onnx_path: Path) -> None:
            if failure == "mismatch":
                raise EngineMismatch(f"{engine_path} was built for another GPU")
            if failure == "import":
                raise ImportError("libnvinfer.so.10: cannot open shared object file")
            self.graph = graph

        def describe(self) -> dict[str, str]:
            return {"backend": "tensorrt"}

    module.EngineMismatch = EngineMismatch  # type: ignore[attr-defined]
    module.TensorRTBackend = TensorRTBackend  # type: ignore[attr-defined]
    return module


@pytest.mark.parametrize("failure", [None, "mismatch", "import"])
def test_tensorrt_plugin_contract(failure: str | None, fuse_onnx: Path, tmp_path: Path,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "busref.runtime.backends.tensorrt", _tensorrt_module(failure))
    backend = open_backend("fuse", fuse_onnx, tmp_path / "fuse.engine", choice="auto")
    assert backend.name == ("tensorrt" if failure is None else "onnxruntime")
    if failure is not None:
        with pytest.raises(BackendUnavailable, match=r"fuse\.engine"):
            open_backend("fuse", fuse_onnx, tmp_path / "fuse.engine", choice="tensorrt", allow_fallback=False)
