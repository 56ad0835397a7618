"""Tiny real ONNX graphs that honour the busref artifact contract, for runtime tests.

``fuse``: ``fused = max(vis, ir)`` (any H, W). ``register``: constant ``theta`` and the
matching ``busref.conventions.affine_grid`` (fixed H, W), so a test knows exactly what registration must do.
``track``: ``grid = start + shift`` (a constant normalised shift), so a test knows what a track run returns.
``frame``: ``fused = max(vis, GridSample(ir, grid))``, the tiny fuse graph after the contract's
warp (bilinear, zeros, align_corners), so it must agree with ``cv2.remap`` + the tiny fuse graph.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from busref.conventions import affine_grid
from busref.runtime.artifact import METADATA_KEY, ArtifactMetadata, TensorSpec

onnx = pytest.importorskip("onnx", reason="building test graphs needs the 'onnx' package")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

OPSET = 17


def metadata(graph: str, *, registration_size: tuple[int, int] | None = None, **overrides: object) -> str:
    io = {
        "register": (["vis", "ir"], ["theta", "grid"]),
        "track": (["vis", "ir", "start"], ["grid"]),
        "fuse": (["vis", "ir"], ["fused"]),
        "frame": (["vis", "ir", "grid"], ["fused"]),
    }[graph]
    fields: dict[str, object] = {
        "graph": graph,
        "model_name": f"tiny-{graph}",
        "model_id": f"tiny-{graph}-000000000000",
        "checkpoint_sha256": "0" * 64,
        "opset": OPSET,
        "inputs": [TensorSpec(name=n, shape=[1, 1, "H", "W"]) for n in io[0]],
        "outputs": [TensorSpec(name=n, shape=[1]) for n in io[1]],
        "registration_size": registration_size,
        **overrides,
    }
    return ArtifactMetadata(**fields).to_json()


def _save(model: onnx.ModelProto, path: Path, meta: str | None) -> Path:
    if meta is not None:
        entry = model.metadata_props.add()
        entry.key, entry.value = METADATA_KEY, meta
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def write_fuse(path: Path, *, meta: str | None = None) -> Path:
    """``fused = max(vis, ir)`` with symbolic H, W."""
    shape = [1, 1, "H", "W"]
    graph = helper.make_graph(
        [helper.make_node("Max", ["vis", "ir"], ["fused"])],
        "tiny_fuse",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, shape) for n in ("vis", "ir")],
        [helper.make_tensor_value_info("fused", TensorProto.FLOAT, shape)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    return _save(model, path, metadata("fuse") if meta is None else meta)


def write_slow_fuse(path: Path, nodes: int) -> Path:
    """``fused = max(vis, ir)`` through ``nodes`` alternating Sin and Cos: a fuse graph whose run
    takes long enough on a large input (~1 s at 1024x1024 and 400 nodes) to be cancelled midway."""
    shape = [1, 1, "H", "W"]
    chain = [helper.make_node("Max", ["vis", "ir"], ["x0"])]
    chain += [helper.make_node("Sin" if i % 2 else "Cos", [f"x{i}"], [f"x{i + 1}"]) for i in range(nodes)]
    chain.append(helper.make_node("Identity", [f"x{nodes}"], ["fused"]))
    graph = helper.make_graph(
        chain, "slow_fuse",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, shape) for n in ("vis", "ir")],
        [helper.make_tensor_value_info("fused", TensorProto.FLOAT, shape)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    return _save(model, path, metadata("fuse"))


def _zero_of_both_images(name: str) -> list[onnx.NodeProto]:
    """Nodes computing ``name = 0 * mean(vis - ir)``: added to an output, it keeps both inputs in the
    graph without changing the outputs."""
    return [
        helper.make_node("Sub", ["vis", "ir"], ["diff"]),
        helper.make_node("ReduceMean", ["diff"], ["m"], keepdims=0),
        helper.make_node("Constant", [], ["zero"], value=numpy_helper.from_array(np.float32(0.0), "zero")),
        helper.make_node("Mul", ["m", "zero"], [name]),
    ]


def write_register(path: Path, theta: np.ndarray, hw: tuple[int, int], *, meta: str | None = None) -> Path:
    """Outputs the constant ``theta`` and its grid; ``vis`` feeds a no-op so both inputs are used."""
    h, w = hw
    theta = np.asarray(theta, dtype=np.float32).reshape(1, 2, 3)
    grid = affine_grid(theta[0], *hw, coordinates="normalised")[None]
    shape = [1, 1, h, w]
    nodes = [
        helper.make_node("Constant", [], ["theta_c"], value=numpy_helper.from_array(theta, "theta_c")),
        helper.make_node("Constant", [], ["grid_c"], value=numpy_helper.from_array(grid, "grid_c")),
        *_zero_of_both_images("z"),
        helper.make_node("Add", ["theta_c", "z"], ["theta"]),
        helper.make_node("Add", ["grid_c", "z"], ["grid"]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_register",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, shape) for n in ("vis", "ir")],
        [
            helper.make_tensor_value_info("theta", TensorProto.FLOAT, [1, 2, 3]),
            helper.make_tensor_value_info("grid", TensorProto.FLOAT, [1, h, w, 2]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    return _save(model, path, metadata("register", registration_size=hw) if meta is None else meta)


def write_track(path: Path, shift: tuple[float, float], hw: tuple[int, int], *, meta: str | None = None) -> Path:
    """``grid = start + shift`` (normalised, x first); ``vis`` and ``ir`` feed a no-op so all inputs are used."""
    h, w = hw
    offset = np.asarray(shift, dtype=np.float32).reshape(1, 1, 1, 2)
    nodes = [
        helper.make_node("Constant", [], ["shift"], value=numpy_helper.from_array(offset, "shift")),
        *_zero_of_both_images("z"),
        helper.make_node("Add", ["start", "shift"], ["moved"]),
        helper.make_node("Add", ["moved", "z"], ["grid"]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_track",
        [*(helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 1, h, w]) for n in ("vis", "ir")),
         helper.make_tensor_value_info("start", TensorProto.FLOAT, [1, h, w, 2])],
        [helper.make_tensor_value_info("grid", TensorProto.FLOAT, [1, h, w, 2])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    return _save(model, path, metadata("track", registration_size=hw) if meta is None else meta)


def write_frame(path: Path, *, meta: str | None = None) -> Path:
    """``fused = max(vis, GridSample(ir, grid))`` with symbolic H, W and H_ir, W_ir."""
    nodes = [
        helper.make_node("GridSample", ["ir", "grid"], ["registered"], mode="bilinear", padding_mode="zeros",
                         align_corners=1),
        helper.make_node("Max", ["vis", "registered"], ["fused"]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_frame",
        [helper.make_tensor_value_info("vis", TensorProto.FLOAT, [1, 1, "H", "W"]),
         helper.make_tensor_value_info("ir", TensorProto.FLOAT, [1, 1, "H_ir", "W_ir"]),
         helper.make_tensor_value_info("grid", TensorProto.FLOAT, [1, "H", "W", 2])],
        [helper.make_tensor_value_info("fused", TensorProto.FLOAT, [1, 1, "H", "W"])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    return _save(model, path, metadata("frame") if meta is None else meta)
