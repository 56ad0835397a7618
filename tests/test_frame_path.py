"""The ``frame`` graph (warp + fusion in one call, for GPU backends): the export against PyTorch,
agreement with the CPU path (``cv2.remap`` + ``fuse`` graph) on real RoadScene pairs with a
non-trivial grid, the pipeline's choice of path, and the fallback for artifacts without it.

Real ONNX Runtime CPU sessions throughout; where a GPU-resident backend is needed, the flag is
forced through the backend's constructor (the session itself still runs on the CPU).
"""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
import yaml
from tiny_graphs import write_frame, write_fuse, write_register

from busref.conventions import affine_grid, file_sha256
from busref.export.onnx_check import OPSET, check_graph_file
from busref.export.onnx_export import TOLERANCE, build_metadata, compare_with_torch, graph_feeds, trace_graph
from busref.export.samples import folder_pairs
from busref.models.checkpoint import load_model
from busref.rig_config import DEMO_RIG, load_rig
from busref.rig_config.schema import RigConfig
from busref.runtime.backends.onnxruntime import OnnxRuntimeBackend
from busref.runtime.capture import Frame
from busref.runtime.daemon import open_frame_graph
from busref.runtime.pairing import FramePair, Pairer
from busref.runtime.pipeline import Pipeline, fuse_size, to_unit, warp_ir
from busref.runtime.publisher import Publisher
from busref.runtime.registration.geometry import RegistrationGeometry

#: A 3 degree rotation, 4 % zoom and a shift (normalised affine) ...
THETA = np.array([[1.04 * np.cos(np.radians(3.0)), -np.sin(np.radians(3.0)), 0.05],
                  [np.sin(np.radians(3.0)), 1.04 * np.cos(np.radians(3.0)), -0.04]])
#: ... on top of an IR -> RGB prior with a perspective term (the homogeneous branch of the maps).
PRIOR_TILT = np.array([[1.0, 0.01, 3.0], [0.005, 1.0, -2.0], [2e-5, 1e-5, 1.0]])
REG_HW = (96, 128)
#: |frame graph - CPU path| allowed per pixel: cv2.remap's maps are fixed point (1/32 pixel),
#: GridSample samples at the exact location, so strong edges move by up to ~1/64 pixel.
MAX_DIFF = 0.03
MEAN_DIFF = 1e-3
#: The same after fusion: where both sources' band energies are nearly equal, the GAF's per-band
#: selection turns such a difference into a partial switch of source (0.037 seen at one pixel of a
#: briefly trained GAF, mean 2.5e-4).
FUSED_MAX_DIFF = 0.05


@pytest.fixture(scope="module")
def graphs(trained_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """``fuse.onnx`` and ``frame.onnx`` of the tiny trained checkpoint, as ``busref export onnx``
    traces and checks them (the register graph, slow to trace, is not needed here)."""
    model, payload = load_model(trained_checkpoint)
    sha = file_sha256(trained_checkpoint)
    out = tmp_path_factory.mktemp("frame_graphs")
    paths = {}
    for graph in ("fuse", "frame"):
        meta = build_metadata(graph, payload, sha, OPSET, tuple(model.config.registration_size))
        path = out / f"{graph}.onnx"
        onnx.save_model(trace_graph(model, graph, meta), str(path))
        check_graph_file(path, graph=graph, checkpoint_sha256=sha)
        paths[graph] = path
    return paths


@pytest.fixture(scope="module")
def pair_u8(pair_data: Path) -> tuple[np.ndarray, np.ndarray]:
    """A pair as cameras deliver it: visible BGR uint8, IR gray uint8 shrunk to 80 % (an IR camera
    of its own size)."""
    name = folder_pairs(pair_data, limit=1)[0].name
    bgr = cv2.imread(str(pair_data / "crop_LR_visible" / f"{name}.jpg"), cv2.IMREAD_COLOR)
    ir = cv2.imread(str(pair_data / "cropinfrared" / f"{name}.jpg"), cv2.IMREAD_GRAYSCALE)
    h, w = ir.shape
    return bgr, cv2.resize(ir, (round(w * 0.8), round(h * 0.8)), interpolation=cv2.INTER_AREA)


def test_frame_graph_matches_pytorch_on_folder_pairs(graphs: dict[str, Path], trained_checkpoint: Path,
                                                     pair_data: Path) -> None:
    model, _ = load_model(trained_checkpoint)
    feeds = graph_feeds("frame", folder_pairs(pair_data, limit=2), tuple(model.config.registration_size))
    assert any(f["ir"].shape[2:] != f["vis"].shape[2:] for f in feeds)  # the IR at its own size
    diffs = compare_with_torch(model, "frame", graphs["frame"], feeds)
    assert diffs["fused"] <= TOLERANCE, diffs
    meta = check_graph_file(graphs["frame"]).metadata
    assert [(t.name, t.shape) for t in meta.inputs] == [
        ("vis", [1, 1, "H", "W"]), ("ir", [1, 1, "H_ir", "W_ir"]), ("grid", [1, "H", "W", 2])]
    assert meta.registration_size is None and meta.opset == OPSET


def test_frame_graph_matches_the_cpu_path(graphs: dict[str, Path], pair_u8: tuple[np.ndarray, np.ndarray],
                                          tmp_path: Path) -> None:
    bgr, ir_u8 = pair_u8
    rgb_size, ir_size = (bgr.shape[1], bgr.shape[0]), (ir_u8.shape[1], ir_u8.shape[0])
    out_size = fuse_size(rgb_size, None)
    same_view = np.diag([rgb_size[0] / ir_size[0], rgb_size[1] / ir_size[1], 1.0])
    geometry = RegistrationGeometry(rgb_size=rgb_size, ir_size=ir_size, reg_hw=REG_HW, out_size=out_size,
                                    prior=same_view @ PRIOR_TILT)
    # Affine plus a smooth deformable part, as the register graph's grid would be.
    grid = affine_grid(THETA, *REG_HW, coordinates="normalised")
    ys, xs = np.mgrid[0:REG_HW[0], 0:REG_HW[1]] / np.array(REG_HW, dtype=np.float64)[:, None, None]
    grid[..., 0] += (0.02 * np.sin(2 * np.pi * ys)).astype(np.float32)
    grid[..., 1] += (0.02 * np.cos(2 * np.pi * xs)).astype(np.float32)
    map1, map2 = geometry.maps(grid)
    sampling = geometry.frame_grid(grid)
    assert sampling.shape == (1, out_size[1], out_size[0], 2) and sampling.dtype == np.float32

    ir = ir_u8.astype(np.float32) / 255.0
    vis = to_unit(cv2.cvtColor(bgr, cv2.COLOR_BGR2YCrCb)[:, :, 0], out_size)[None, None]
    registered = warp_ir(ir, map1, map2)
    # The grid is far from the identity: the registered IR is not the IR merely resized.
    resized = cv2.resize(ir, out_size, interpolation=cv2.INTER_LINEAR)
    assert np.abs(registered - resized).mean() > 0.03

    # The warp alone (the tiny frame graph on a black luminance is the registered IR) ...
    tiny = OnnxRuntimeBackend(write_frame(tmp_path / "tiny_frame.onnx"), graph="frame", threads=1)
    warped = tiny.run({"vis": np.zeros_like(vis), "ir": ir[None, None], "grid": sampling})["fused"][0, 0]
    diff = np.abs(warped - registered)
    print(f"GridSample vs cv2.remap: max {diff.max():.2e}, mean {diff.mean():.2e}")
    assert diff.max() <= MAX_DIFF and diff.mean() <= MEAN_DIFF, (diff.max(), diff.mean())
    # ... and with the trained fusion.
    fuse = OnnxRuntimeBackend(graphs["fuse"], graph="fuse", threads=1)
    frame = OnnxRuntimeBackend(graphs["frame"], graph="frame", threads=1)
    cpu = fuse.run({"vis": vis, "ir": registered[None, None]})["fused"]
    device = frame.run({"vis": vis, "ir": ir[None, None], "grid": sampling})["fused"]
    diff = np.abs(device - cpu)
    print(f"frame graph vs cv2.remap + fuse: max {diff.max():.2e}, mean {diff.mean():.2e}")
    assert device.shape == (1, 1, out_size[1], out_size[0])
    assert diff.max() <= FUSED_MAX_DIFF and diff.mean() <= MEAN_DIFF, (diff.max(), diff.mean())


# --------------------------------------------------------------------------- pipeline


def rig_for(folder: Path, bgr: np.ndarray, ir: np.ndarray, models: dict[str, Path]) -> RigConfig:
    """The demo rig with the cameras at the pair's sizes, ``models`` as inference.*_model, the
    registered IR published, on an ipc endpoint in ``folder``."""
    data = yaml.safe_load(DEMO_RIG.read_text())
    data["cameras"]["rgb"].update(width=bgr.shape[1], height=bgr.shape[0])
    data["cameras"]["ir"].update(width=ir.shape[1], height=ir.shape[0])
    data["registration"]["size"] = list(REG_HW)
    data["inference"].update({f"{graph}_model": str(path) for graph, path in models.items()})
    data["publisher"].update(endpoints=[f"ipc://{folder}/frames.sock"], publish_registered_ir=True)
    path = folder / "rig.yaml"
    path.write_text(yaml.safe_dump(data))
    return load_rig(path)


def frame_pair(bgr: np.ndarray, ir: np.ndarray, seq: int) -> FramePair:
    t = 100.0 + seq / 30
    return FramePair(ir=Frame("ir", seq, t, ir), rgb=Frame("rgb", seq, t, bgr), skew_s=0.0)


@pytest.fixture
def publisher(tmp_path: Path):
    pub = Publisher([f"ipc://{tmp_path}/frames.sock"])
    yield pub
    pub.close(linger_ms=0)


@pytest.mark.parametrize("fusion", ["tiny", "trained"])
def test_pipeline_takes_the_frame_path_on_a_gpu_resident_backend(
        fusion: str, pair_u8: tuple[np.ndarray, np.ndarray], tmp_path: Path, publisher: Publisher,
        caplog: pytest.LogCaptureFixture, request: pytest.FixtureRequest) -> None:
    """``tiny``: fused = max(vis, registered IR), so every IR pixel the warp moves shows;
    ``trained``: the checkpoint's fusion."""
    bgr, ir = pair_u8
    if fusion == "trained":
        graphs = request.getfixturevalue("graphs")
    else:
        graphs = {"fuse": write_fuse(tmp_path / "fuse.onnx"), "frame": write_frame(tmp_path / "frame.onnx")}
    register = OnnxRuntimeBackend(write_register(tmp_path / "register.onnx", THETA, REG_HW), graph="register",
                                  threads=1)
    config = rig_for(tmp_path, bgr, ir, {"register": tmp_path / "register.onnx", **graphs})
    fuse = OnnxRuntimeBackend(graphs["fuse"], graph="fuse", threads=1)
    frame = OnnxRuntimeBackend(graphs["frame"], graph="frame", threads=1, gpu_resident=True)
    assert frame.gpu_resident and frame.describe()["gpu_resident"] and not fuse.gpu_resident
    common = {"register": register, "fuse": fuse, "publisher": publisher, "to_wall": float}
    cpu = Pipeline(config, pairer=Pairer(0.02), **common)
    with caplog.at_level(logging.INFO, logger="busref.runtime.pipeline"):
        device = Pipeline(config, pairer=Pairer(0.02), frame=frame, **common)
    assert "per-frame path: device: the frame graph runs on a GPU (onnxruntime)" in caplog.text
    assert not cpu.frame_path.device and cpu.frame is None
    assert device.frame_path.device and device.frame is frame
    assert device.frame_path.describe() == {
        "path": "device", "graph": "frame", "warp": "GridSample in the frame graph",
        "reason": device.frame_path.reason}

    want = cpu.infer(frame_pair(bgr, ir, 0))
    got = device.infer(frame_pair(bgr, ir, 0))
    assert want is not None and got is not None
    diff = np.abs(got.fused - want.fused)
    assert got.fused.shape == want.fused.shape == (device.out_size[1], device.out_size[0])
    assert diff.max() <= FUSED_MAX_DIFF and diff.mean() <= MEAN_DIFF, (diff.max(), diff.mean())
    # The device path made no registered IR on the inference thread, and holds the grid ...
    assert got.registered is None and want.registered is not None
    held = frame._held["grid"]
    assert got.state.sampling_grid is not None and cpu.registration.state.sampling_grid is None
    # ... which a later pair under the same registration does not upload again.
    again = device.infer(frame_pair(bgr, ir, 1))
    assert again is not None and again.state.sampling_grid is got.state.sampling_grid
    assert frame._held["grid"] is held
    np.testing.assert_allclose(again.fused, got.fused, atol=1e-6)
    # The registered IR is made for its topic on the output side.
    device.output(got)
    assert device.counters.published == 1 and device.counters.failures == 0


def test_an_artifact_without_the_frame_graph_falls_back_to_the_cpu_path(
        graphs: dict[str, Path], pair_u8: tuple[np.ndarray, np.ndarray], tmp_path: Path, publisher: Publisher,
        caplog: pytest.LogCaptureFixture) -> None:
    bgr, ir = pair_u8
    old = tmp_path / "old_export"  # register.onnx + fuse.onnx only, as exported before the frame graph
    old.mkdir()
    models = {"register": write_register(old / "register.onnx", THETA, REG_HW), "fuse": graphs["fuse"],
              "frame": old / "frame.onnx"}
    config = rig_for(tmp_path, bgr, ir, models)
    register = OnnxRuntimeBackend(models["register"], graph="register", threads=1)
    fuse_gpu = OnnxRuntimeBackend(graphs["fuse"], graph="fuse", threads=1, gpu_resident=True)
    assert open_frame_graph(config, fuse_gpu) is None
    with caplog.at_level(logging.INFO, logger="busref.runtime.pipeline"):
        pipeline = Pipeline(config, register=register, fuse=fuse_gpu, publisher=publisher, pairer=Pairer(0.02),
                            to_wall=float, frame=open_frame_graph(config, fuse_gpu))
    assert [r.levelno for r in caplog.records if r.name == "busref.runtime.pipeline"] == [logging.WARNING]
    assert "the artifact has no frame graph" in caplog.text and "cv2.remap" in caplog.text
    assert not pipeline.frame_path.device and pipeline.frame_path.describe()["path"] == "cpu"
    fused = pipeline.infer(frame_pair(bgr, ir, 0))
    assert fused is not None and fused.registered is not None


def test_the_frame_graph_is_loaded_only_where_it_can_pay_off(
        tmp_path: Path, pair_u8: tuple[np.ndarray, np.ndarray], publisher: Publisher,
        caplog: pytest.LogCaptureFixture) -> None:
    bgr, ir = pair_u8
    models = {"register": write_register(tmp_path / "register.onnx", THETA, REG_HW),
              "fuse": write_fuse(tmp_path / "fuse.onnx"), "frame": write_frame(tmp_path / "frame.onnx")}
    config = rig_for(tmp_path, bgr, ir, models)
    fuse_cpu = OnnxRuntimeBackend(models["fuse"], graph="fuse", threads=1)
    assert open_frame_graph(config, fuse_cpu) is None  # a CPU fuse backend: cv2.remap + fuse is faster
    fuse_gpu = OnnxRuntimeBackend(models["fuse"], graph="fuse", threads=1, gpu_resident=True)
    frame = open_frame_graph(config, fuse_gpu)
    assert frame is not None and frame.metadata.graph == "frame"
    # Opened here on ONNX Runtime's CPU provider: not GPU-resident, so the CPU path is kept.
    register = OnnxRuntimeBackend(models["register"], graph="register", threads=1)
    with caplog.at_level(logging.INFO, logger="busref.runtime.pipeline"):
        pipeline = Pipeline(config, register=register, fuse=fuse_gpu, publisher=publisher, pairer=Pairer(0.02),
                            to_wall=float, frame=frame)
    assert not pipeline.frame_path.device and pipeline.frame is None
    assert "the frame graph's backend (onnxruntime) runs on the CPU" in caplog.text
