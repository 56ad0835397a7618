"""Checkpoint -> ONNX (register, track, fuse, frame): checker, ONNX Runtime vs PyTorch, metadata, dynamic H/W,
opset window, refusal of tampered or mismatched graphs, and the mixed-precision copy for TensorRT 11."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from busref.cli import main as busref_main
from busref.conventions import GRAPH_IO, file_sha256
from busref.export import build_engine as be
from busref.export.onnx_check import (
    DIGEST_KEY,
    OPSET,
    check_graph_file,
    check_opset,
    model_opset,
    set_metadata,
    value_shape,
)
from busref.export.onnx_export import (
    TOLERANCE,
    ExportError,
    build_metadata,
    compare_with_torch,
    export_checkpoint,
    graph_feeds,
    trace_graph,
)
from busref.export.onnx_fp16 import convolutions_to_fp16, in_fp32_scope
from busref.export.samples import folder_pairs, graph_feed, synthetic_pairs
from busref.models.checkpoint import load_model, save_checkpoint
from busref.models.config import LucasKanadeConfig, ModelConfig, TrainConfig
from busref.models.networks import BusReF
from busref.runtime.artifact import METADATA_KEY, PROTOCOL, ArtifactError, ArtifactMetadata, TensorSpec
from busref.runtime.backends.onnxruntime import OnnxRuntimeBackend

REG_HW = (64, 80)
SPLIT_SHA = "5" * 64


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh (untrained) model saved like a trained one: the export does not care about quality. It
    has a track schedule, so it has a track graph too."""
    torch.manual_seed(0)
    config = TrainConfig(model=ModelConfig(registration_size=REG_HW,
                                           lucas_kanade=LucasKanadeConfig(track_schedule=((1, 0.0),) * 2)))
    path = tmp_path_factory.mktemp("ckpt") / "busref.pt"
    save_checkpoint(path, model=BusReF(config.model), config=config, stage="registration", step=0,
                    split_name="train", split_sha256=SPLIT_SHA, metrics={})
    return path


@pytest.fixture(scope="module")
def exported(checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list]:
    out = tmp_path_factory.mktemp("onnx")
    return out, export_checkpoint(checkpoint, out)


pytestmark = pytest.mark.slow  # the module's export traces the full network once (~5 s)


def test_export_writes_four_verified_graphs(exported: tuple[Path, list]) -> None:
    out, reports = exported
    assert sorted(p.name for p in out.iterdir()) == ["frame.onnx", "fuse.onnx", "register.onnx", "track.onnx"]
    for report in reports:
        model = onnx.load(str(report.path))
        onnx.checker.check_model(model, full_check=True)
        assert model_opset(model) == OPSET
        assert 0.0 <= report.worst <= TOLERANCE, report.max_abs_diff
    by_graph = {r.graph: r for r in reports}
    register, fuse, frame = by_graph["register"], by_graph["fuse"], by_graph["frame"]
    assert set(register.max_abs_diff) == {"theta", "grid"} and register.sizes == [REG_HW]
    assert set(by_graph["track"].max_abs_diff) == {"grid"} and by_graph["track"].sizes == [REG_HW]
    assert set(fuse.max_abs_diff) == {"fused"} and len(fuse.sizes) == 2  # synthetic size and REG_HW
    assert set(frame.max_abs_diff) == {"fused"} and frame.sizes == fuse.sizes


def test_ort_matches_pytorch_on_folder_pairs(exported: tuple[Path, list], checkpoint: Path, pair_data: Path) -> None:
    out, _ = exported
    model, _ = load_model(checkpoint)
    pairs = folder_pairs(pair_data, limit=2)
    for graph in ("register", "fuse", "frame"):
        feeds = graph_feeds(graph, pairs, REG_HW)
        diffs = compare_with_torch(model, graph, out / f"{graph}.onnx", feeds)
        print(f"{graph} on {[p.name for p in pairs]}: max |ORT - torch| {diffs}")
        assert max(diffs.values()) <= TOLERANCE, diffs
    # Images of a size that is no multiple of 8: the fuse graph ran at their own size (cropped to /8).
    assert {f["vis"].shape for f in graph_feeds("fuse", pairs, REG_HW)} > {(1, 1, *REG_HW)}


def test_metadata_round_trip(exported: tuple[Path, list], checkpoint: Path) -> None:
    out, _ = exported
    sha = file_sha256(checkpoint)
    for graph in ("register", "track", "fuse", "frame"):
        meta = check_graph_file(out / f"{graph}.onnx", graph=graph, checkpoint_sha256=sha).metadata
        assert meta.model_id == f"busref-{sha[:12]}" and meta.checkpoint_sha256 == sha
        assert (meta.training_split, meta.training_split_sha256, meta.protocol) == ("train", SPLIT_SHA, PROTOCOL)
        assert meta.opset == OPSET and "torch" in meta.exporter_versions
        assert tuple(t.name for t in meta.inputs) == GRAPH_IO[graph][0]
        assert meta.normalisation.scale == 255.0
        assert ArtifactMetadata.from_json(meta.to_json()) == meta
        # The daemon's ONNX Runtime backend reads the same metadata.
        assert OnnxRuntimeBackend(out / f"{graph}.onnx", graph=graph).metadata == meta
    register = check_graph_file(out / "register.onnx").metadata
    assert register.registration_size == REG_HW
    assert [t.shape for t in register.outputs] == [[1, 2, 3], [1, *REG_HW, 2]]
    track = check_graph_file(out / "track.onnx").metadata
    assert track.registration_size == REG_HW
    assert [t.shape for t in track.inputs] == [[1, 1, *REG_HW], [1, 1, *REG_HW], [1, *REG_HW, 2]]
    assert [t.shape for t in track.outputs] == [[1, *REG_HW, 2]]
    fuse = check_graph_file(out / "fuse.onnx").metadata
    assert fuse.registration_size is None and fuse.outputs[0].shape == [1, 1, "H", "W"]
    frame = check_graph_file(out / "frame.onnx").metadata
    assert frame.registration_size is None and frame.outputs[0].shape == [1, 1, "H", "W"]
    assert [t.shape for t in frame.inputs] == [[1, 1, "H", "W"], [1, 1, "H_ir", "W_ir"], [1, "H", "W", 2]]


def test_fuse_graph_runs_at_two_other_sizes(exported: tuple[Path, list], checkpoint: Path) -> None:
    out, _ = exported
    model, _ = load_model(checkpoint)
    backend = OnnxRuntimeBackend(out / "fuse.onnx", graph="fuse")
    assert value_shape(onnx.load(str(out / "fuse.onnx")).graph.input[0]) == [1, 1, "H", "W"]
    for hw in ((96, 128), (136, 200)):
        pair = synthetic_pairs(1, hw)[0]
        feed = {"vis": pair.vis[None, None], "ir": pair.ir[None, None]}
        got = backend.run(feed)["fused"]
        assert got.shape == (1, 1, *hw)
        with torch.no_grad():
            want = model.fuse(torch.from_numpy(feed["vis"]), torch.from_numpy(feed["ir"])).numpy()
        assert float(np.abs(got - want).max()) <= TOLERANCE


def test_opset_is_pinned_to_17_to_19(checkpoint: Path, tmp_path: Path) -> None:
    assert check_opset(OPSET) == 17
    for bad in (16, 20):
        with pytest.raises(ValueError, match=r"TensorRT#4646"):
            check_opset(bad)
    with pytest.raises(ValueError, match="opset 20 is not supported"):
        export_checkpoint(checkpoint, tmp_path / "out", opset=20)
    assert not (tmp_path / "out").exists()
    model, payload = load_model(checkpoint)
    proto = trace_graph(model, "fuse", build_metadata("fuse", payload, "0" * 64, 19, REG_HW))
    assert model_opset(proto) == 19


def test_cli_refuses_an_opset_outside_the_window(checkpoint: Path, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    status = busref_main(["export", "onnx", "--checkpoint", str(checkpoint), "--out", str(tmp_path), "--opset", "20"])
    assert status == 1 and "NVIDIA/TensorRT#4646" in capsys.readouterr().err
    status = busref_main(["export", "onnx", "--checkpoint", str(tmp_path / "none.pt"), "--out", str(tmp_path)])
    assert status == 1 and "none.pt: no such checkpoint" in capsys.readouterr().err


def _edited(source: Path, dest: Path, edit) -> Path:
    model = onnx.load(str(source))
    edit(model)
    onnx.save(model, str(dest))
    return dest


def test_tampered_graph_is_refused(exported: tuple[Path, list], tmp_path: Path) -> None:
    out, _ = exported

    def bump_a_weight(model: onnx.ModelProto) -> None:
        weight = model.graph.initializer[0]
        values = onnx.numpy_helper.to_array(weight) + 0.5
        weight.CopyFrom(onnx.numpy_helper.from_array(values, weight.name))

    path = _edited(out / "fuse.onnx", tmp_path / "fuse.onnx", bump_a_weight)
    with pytest.raises(ArtifactError, match="modified after export") as info:
        check_graph_file(path)
    assert str(path) in str(info.value)


def test_mismatched_graphs_are_refused(exported: tuple[Path, list], tmp_path: Path) -> None:
    out, _ = exported
    with pytest.raises(ArtifactError, match="is a 'register' graph, expected a 'fuse' graph"):
        check_graph_file(out / "register.onnx", graph="fuse")
    with pytest.raises(ArtifactError, match="exported from checkpoint"):
        check_graph_file(out / "fuse.onnx", checkpoint_sha256="f" * 64)

    def strip(model: onnx.ModelProto) -> None:
        del model.metadata_props[:]

    with pytest.raises(ArtifactError, match="not a busref export"):
        check_graph_file(_edited(out / "fuse.onnx", tmp_path / "plain.onnx", strip))

    def wrong_declaration(model: onnx.ModelProto) -> None:
        meta = ArtifactMetadata.from_json(next(p.value for p in model.metadata_props if p.key == METADATA_KEY))
        inputs = [TensorSpec(name=n, shape=[1, 1, 512, 640]) for n in ("vis", "ir")]
        set_metadata(model, meta.model_copy(update={"inputs": inputs}))

    with pytest.raises(ArtifactError, match=r"tensor 'vis' has shape \[1, 1, 'H', 'W'\], its metadata declares"):
        check_graph_file(_edited(out / "fuse.onnx", tmp_path / "declared.onnx", wrong_declaration))
    with pytest.raises(ArtifactError, match="no such ONNX file"):
        check_graph_file(tmp_path / "absent.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"not a protobuf at all")
    with pytest.raises(ArtifactError, match=r"junk\.onnx: not an ONNX file"):
        check_graph_file(tmp_path / "junk.onnx")
    assert DIGEST_KEY in {p.key for p in onnx.load(str(out / "fuse.onnx")).metadata_props}


def test_failed_verification_writes_nothing(checkpoint: Path, tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="differs from PyTorch") as info:
        export_checkpoint(checkpoint, tmp_path, verify_pairs=1, tolerance=1e-12)
    assert "nothing written" in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_warp_region_of_the_real_register_graph(exported: tuple[Path, list]) -> None:
    """The FP32 region computed on the exported graph: GridSample and the grid arithmetic, no conv."""
    out, _ = exported
    model = onnx.load(str(out / "register.onnx"))
    nodes = [be.LayerInfo(n.name, n.op_type, tuple(n.input), tuple(n.output)) for n in model.graph.node]
    keep = be.warp_layers(nodes, keep_outputs=["theta", "grid"])
    kinds = {n.op_type for n in model.graph.node if n.name in keep}
    assert "GridSample" in kinds and "Conv" not in kinds
    producers = {o: n.name for n in model.graph.node for o in n.output}
    assert producers["grid"] in keep and producers["theta"] in keep
    encoder = [n.name for n in model.graph.node  # compute nodes; the tracer shares constants across scopes
               if n.name.startswith(("/stem/", "/down1/", "/r1/")) and n.op_type != "Constant"]
    assert encoder and not keep & set(encoder), "the encoder may run in FP16"


def test_the_track_graph_is_the_stage_alone_and_stays_fp32_in_the_mixed_precision_copy(
        exported: tuple[Path, list]) -> None:
    """Every compute node of the track graph lies in the stage's FP32 scope, so TensorRT FP16 engines
    (per-layer FP32 in TensorRT 10, the FP16 copy in TensorRT 11) keep its descriptor arithmetic FP32."""
    out, _ = exported
    model = onnx.load(str(out / "track.onnx"))
    compute = [n for n in model.graph.node if n.op_type not in ("Constant", "ConstantOfShape", "Shape")]
    assert any(n.op_type == "Conv" for n in compute)  # the descriptors' blur and gradients
    assert all(in_fp32_scope(n.name) for n in compute), [n.name for n in compute if not in_fp32_scope(n.name)][:5]
    half = convolutions_to_fp16(model)
    assert not any(n.op_type == "Cast" and n.attribute[0].i == onnx.TensorProto.FLOAT16 for n in half.graph.node)


def test_frame_graph_warp_region_is_the_sampler_alone(exported: tuple[Path, list]) -> None:
    """The frame graph's grid is a network input: only GridSample (and the fusion's tail) stays FP32."""
    out, _ = exported
    model = onnx.load(str(out / "frame.onnx"))
    nodes = [be.LayerInfo(n.name, n.op_type, tuple(n.input), tuple(n.output)) for n in model.graph.node]
    producers = {o: n for n in model.graph.node for o in n.output}
    sampler = next(n for n in model.graph.node if n.op_type == "GridSample")
    ir, grid = sampler.input
    # The inputs themselves, the grid at most through the tracer's no-op float32 Cast.
    assert ir == "ir" and (grid == "grid" or (producers[grid].op_type == "Cast" and producers[grid].input == ["grid"]))
    keep = be.warp_layers(nodes, keep_outputs=["fused"])
    assert sampler.name in keep and (grid == "grid" or producers[grid].name in keep)
    assert "Conv" not in {n.op_type for n in model.graph.node if n.name in keep}


def test_fp16_copy_keeps_the_warp_fp32(exported: tuple[Path, list]) -> None:
    out, _ = exported
    pair = synthetic_pairs(1, (128, 160))[0]
    for graph in ("register", "fuse", "frame"):
        model = onnx.load(str(out / f"{graph}.onnx"))
        half = onnx.shape_inference.infer_shapes(convolutions_to_fp16(model), strict_mode=True)
        types = {v.name: v.type.tensor_type.elem_type for v in [*half.graph.value_info, *half.graph.input,
                                                                 *half.graph.output]}
        for node in half.graph.node:
            if node.op_type == "Conv":
                assert types[node.input[0]] == onnx.TensorProto.FLOAT16
            if node.op_type == "GridSample":
                assert all(types[t] == onnx.TensorProto.FLOAT for t in node.input)
        assert all(v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT for v in half.graph.output)
        feed = graph_feed(graph, pair, REG_HW if graph == "register" else (128, 160), ir_hw=(96, 120))
        import onnxruntime as ort

        full = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feed)
        mixed = ort.InferenceSession(half.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feed)
        for a, b in zip(full, mixed, strict=True):
            assert float(np.abs(a - b).max()) < 2e-2


def test_a_model_without_a_track_schedule_has_no_track_graph_and_a_stale_one_goes(exported: tuple[Path, list],
                                                                                   tmp_path: Path) -> None:
    """Exporting over a folder whose track graph came from another checkpoint removes it: the daemon
    would refuse it beside the new register graph anyway."""
    out, _ = exported
    folder = tmp_path / "weights"
    folder.mkdir()
    (folder / "track.onnx").write_bytes((out / "track.onnx").read_bytes())
    torch.manual_seed(0)
    config = TrainConfig(model=ModelConfig(registration_size=REG_HW))
    plain = tmp_path / "plain.pt"
    save_checkpoint(plain, model=BusReF(config.model), config=config, stage="registration", step=0,
                    split_name="train", split_sha256=SPLIT_SHA, metrics={})
    reports = export_checkpoint(plain, folder)
    assert sorted(r.graph for r in reports) == ["frame", "fuse", "register"]
    assert sorted(p.name for p in folder.iterdir()) == ["frame.onnx", "fuse.onnx", "register.onnx"]
