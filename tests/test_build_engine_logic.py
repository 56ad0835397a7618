"""Engine-builder decisions as pure functions (profiles, TensorRT 10/11 precision, FP32 warp region,
staleness), the one-sentence refusal without TensorRT, and a real build where TensorRT exists."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import yaml
from tiny_graphs import metadata, write_fuse

from busref.cli import main as busref_main
from busref.conventions import parse_hw
from busref.export import build_engine as be
from busref.export.onnx_check import check_graph_file, set_metadata
from busref.rig_config import load_rig
from busref.runtime import exit_codes
from busref.runtime.artifact import ArtifactMetadata, TensorSpec
from busref.runtime.engine_header import EngineHeader, EngineTensor, Platform, bytes_sha256

HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None
NO_TENSORRT = "TensorRT is not installed (its PyPI wheels fetch from NVIDIA's own index)"
REPO = Path(__file__).resolve().parent.parent


def rig_file(tmp_path: Path, **changes: object) -> Path:
    """A copy of the USB rig example with top-level sections updated."""
    data = yaml.safe_load((REPO / "rig_config" / "usb_thermal_rgb.yaml").read_text())
    for section, values in changes.items():
        data[section] = {**data.get(section, {}), **values}
    path = tmp_path / "rig.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


# --------------------------------------------------------------------------- profiles


def test_parse_hw() -> None:
    assert parse_hw("512x640") == (512, 640)
    assert parse_hw("1080X1920") == (1080, 1920)
    with pytest.raises(ValueError, match="HEIGHTxWIDTH"):
        parse_hw("640")


def test_fixed_register_graph_gets_exactly_its_size() -> None:
    p = be.profile_for("register", (256, 320))
    assert p == be.Profile((256, 320), (256, 320), (256, 320))
    specs = [TensorSpec(name=n, shape=[1, 1, 256, 320]) for n in ("vis", "ir")]
    assert be.input_shapes(specs, p) == {n: ([1, 1, 256, 320],) * 3 for n in ("vis", "ir")}


FRAME_INPUTS = [TensorSpec(name="vis", shape=[1, 1, "H", "W"]), TensorSpec(name="ir", shape=[1, 1, "H_ir", "W_ir"]),
                TensorSpec(name="grid", shape=[1, "H", "W", 2])]


def test_frame_graph_inputs_get_their_own_profiles(tmp_path: Path) -> None:
    """The luminance and the grid follow the fuse profile, the IR the IR camera's size."""
    rig = load_rig(rig_file(tmp_path))  # fusion.size [360, 640], IR camera 640x512
    shapes = be.input_shapes(FRAME_INPUTS, be.profile_for("frame", None, rig=rig), be.ir_profile_for(rig))
    assert shapes == {"vis": ([1, 1, 360, 640],) * 3, "ir": ([1, 1, 512, 640],) * 3, "grid": ([1, 360, 640, 2],) * 3}
    shapes = be.input_shapes(FRAME_INPUTS, be.profile_for("frame", None), be.ir_profile_for(None))
    assert shapes["grid"] == ([1, 128, 160, 2], [1, 512, 640, 2], [1, 1080, 1920, 2])
    assert shapes["ir"] == tuple([1, 1, *hw] for hw in be.DEFAULT_IR_PROFILE)
    with pytest.raises(ValueError, match="input depth: no profile for its dimension 'D'"):
        be.input_shapes([TensorSpec(name="depth", shape=[1, "D"])], be.profile_for("frame", None))


def test_register_size_other_than_the_graph_is_refused_naming_both(tmp_path: Path) -> None:
    rig = load_rig(rig_file(tmp_path, registration={"size": [128, 160]}))
    with pytest.raises(ValueError, match=r"fixed at 256x320.*registration.size is 128x160"):
        be.profile_for("register", (256, 320), rig=rig)
    with pytest.raises(ValueError, match=r"--opt 128x160: the register graph is fixed at 256x320"):
        be.profile_for("register", (256, 320), opt_hw=(128, 160))


def test_dynamic_fuse_graph_default_profile() -> None:
    assert be.profile_for("fuse", None) == be.Profile(*be.DEFAULT_FUSE_PROFILE)


def test_fuse_profile_from_the_rig_is_the_daemons_fuse_size(tmp_path: Path) -> None:
    rig = load_rig(rig_file(tmp_path))  # fusion.size [360, 640]
    assert be.profile_for("fuse", None, rig=rig) == be.Profile((360, 640), (360, 640), (360, 640))
    rig = load_rig(REPO / "rig_config" / "jetson_csi.yaml")  # no fusion.size: RGB 1280x720 rounded to /8
    assert be.profile_for("fuse", None, rig=rig).opt == (720, 1280)


def test_flags_override_one_end_of_the_profile(tmp_path: Path) -> None:
    rig = load_rig(rig_file(tmp_path))
    p = be.profile_for("fuse", None, rig=rig, max_hw=(720, 1280))
    assert p == be.Profile((360, 640), (360, 640), (720, 1280))
    assert p.sizes() == [(360, 640), (720, 1280)]


@pytest.mark.parametrize(
    ("sizes", "message"),
    [
        ({"opt_hw": (500, 640)}, "multiples of 8"),
        ({"min_hw": (600, 640)}, "min <= opt <= max"),
        ({"max_hw": (256, 320)}, "min <= opt <= max"),
    ],
)
def test_bad_profiles_are_refused(sizes: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message) as info:
        be.profile_for("fuse", None, **sizes)
    assert "--min/--opt/--max" in str(info.value)


# --------------------------------------------------------------------------- TensorRT 10 vs 11


def test_parse_version() -> None:
    assert be.parse_version("10.3.0.30") == (10, 3, 0, 30)
    assert be.parse_version("11.1.0.post1") == (11, 1, 0)
    with pytest.raises(ValueError):
        be.parse_version("unknown")


def test_tensorrt10_fp16_uses_the_builder_flag_and_pins_the_warp() -> None:
    plan = be.precision_plan("10.3.0", "fp16")
    assert not plan.strongly_typed and plan.pin_warp_fp32 and not plan.fp16_graph
    assert plan.set_flags == ("FP16", "OBEY_PRECISION_CONSTRAINTS")


def test_tensorrt10_fp32_turns_tf32_off() -> None:
    plan = be.precision_plan("10.13.3.9", "fp32")
    assert plan.set_flags == () and plan.clear_flags == ("TF32",) and not plan.pin_warp_fp32


def test_tensorrt11_is_strongly_typed_without_precision_flags() -> None:
    fp16 = be.precision_plan("11.0.0", "fp16")
    assert fp16.strongly_typed and fp16.fp16_graph and not fp16.pin_warp_fp32
    assert "FP16" not in fp16.set_flags and "OBEY_PRECISION_CONSTRAINTS" not in fp16.set_flags
    fp32 = be.precision_plan("11.4.1", "fp32")
    assert fp32.strongly_typed and not fp32.fp16_graph


def test_old_tensorrt_int8_and_dla_fp32_are_refused() -> None:
    with pytest.raises(be.BuildUnavailable, match=r"TensorRT 8\.6\.1 is too old"):
        be.precision_plan("8.6.1", "fp16")
    with pytest.raises(ValueError, match="Q/DQ"):
        be.precision_plan("10.3.0", "int8")
    with pytest.raises(ValueError, match="DLA runs FP16"):
        be.precision_plan("10.3.0", "fp32", dla=True)
    assert "GPU_FALLBACK" in be.precision_plan("10.3.0", "fp16", dla=True).set_flags


def test_warp_region_stops_at_convolutions() -> None:
    layers = [
        be.LayerInfo("conv_vis", "CONVOLUTION", ("vis",), ("fv",)),
        be.LayerInfo("conv_ir", "CONVOLUTION", ("ir",), ("fi",)),
        be.LayerInfo("pool", "REDUCE", ("fv", "fi"), ("pooled",)),
        be.LayerInfo("mlp", "MATRIX_MULTIPLY", ("pooled",), ("theta",)),
        be.LayerInfo("base", "FILL", (), ("base",)),
        be.LayerInfo("affine", "MATRIX_MULTIPLY", ("base", "theta"), ("coarse",)),
        be.LayerInfo("sample", "GRID_SAMPLE", ("ir", "coarse"), ("warped",)),
        be.LayerInfo("conv_warped", "CONVOLUTION", ("warped",), ("fw",)),
        be.LayerInfo("head", "ACTIVATION", ("fw",), ("d",)),
        be.LayerInfo("compose", "ELEMENTWISE", ("coarse", "d"), ("grid",)),
    ]
    keep = be.warp_layers(layers, keep_outputs=["theta", "grid"])
    assert keep == {"pool", "mlp", "base", "affine", "sample", "compose", "head"}


def test_a_gather_warp_and_the_layers_that_weight_its_samples_stay_fp32() -> None:
    # busref.models.geometry.warp_features: corners gathered, weighted by (x - floor x), summed, reshaped.
    layers = [
        be.LayerInfo("tower", "CONVOLUTION", ("f",), ("desc",)),
        be.LayerInfo("flatten", "SHUFFLE", ("desc",), ("flat",)),
        be.LayerInfo("scale", "ELEMENTWISE", ("flow",), ("x",)),
        be.LayerInfo("floor", "UNARY", ("x",), ("x0",)),
        be.LayerInfo("frac", "ELEMENTWISE", ("x", "x0"), ("wx",)),
        be.LayerInfo("index", "CAST", ("x0",), ()),  # the int64 corner index: not a float output
        be.LayerInfo("corner", "GATHER", ("flat",), ("sample",)),
        be.LayerInfo("weigh", "ELEMENTWISE", ("sample", "wx"), ("weighted",)),
        be.LayerInfo("sum", "ELEMENTWISE", ("weighted", "other"), ("warped_flat",)),
        be.LayerInfo("unflatten", "SHUFFLE", ("warped_flat",), ("warped",)),
        be.LayerInfo("head", "CONVOLUTION", ("warped",), ("out",)),
        be.LayerInfo("shape_gather", "GATHER", (), ()),  # shape arithmetic: integers only
    ]
    keep = be.warp_layers(layers)
    assert keep == {"flatten", "scale", "floor", "frac", "corner", "weigh", "sum"}


def test_the_lucas_kanade_stage_stays_fp32_convolutions_included() -> None:
    layers = [
        be.LayerInfo("/model/conv", "CONVOLUTION", ("vis",), ("f",)),
        be.LayerInfo("/lucas_kanade/Conv_3", "CONVOLUTION", ("terms",), ("blurred",)),
        be.LayerInfo("/lucas_kanade/Mul_7", "ELEMENTWISE", ("blurred", "blurred"), ("det",)),
    ]
    assert be.warp_layers(layers) == {"/lucas_kanade/Conv_3", "/lucas_kanade/Mul_7"}


def _header(onnx_sha: str = "a" * 64, precision: str = "fp16", opt: list[int] | None = None) -> EngineHeader:
    shapes = {"min": [1, 1, 128, 160], "opt": opt or [1, 1, 512, 640], "max": [1, 1, 1080, 1920]}
    return EngineHeader(tensorrt_version="10.3.0", cuda_version="12.6", gpu_name="Orin", compute_capability="8.7",
                        onnx_sha256=onnx_sha, precision=precision,
                        inputs=[EngineTensor(name=n, shape=[1, 1, -1, -1], **shapes) for n in ("vis", "ir")],
                        outputs=[EngineTensor(name="fused", shape=[1, 1, -1, -1])],
                        metadata=ArtifactMetadata.from_json(metadata("fuse")), plan_size=1,
                        plan_sha256=bytes_sha256(b"x"))


def _frame_header(ir_hw: tuple[int, int]) -> EngineHeader:
    image = {"min": [1, 1, 128, 160], "opt": [1, 1, 512, 640], "max": [1, 1, 1080, 1920]}
    grid = {k: [1, *v[2:], 2] for k, v in image.items()}
    ir = {key: [1, 1, *ir_hw] for key in ("min", "opt", "max")}
    inputs = [EngineTensor(name="vis", shape=[1, 1, -1, -1], **image),
              EngineTensor(name="ir", shape=[1, 1, -1, -1], **ir),
              EngineTensor(name="grid", shape=[1, -1, -1, 2], **grid)]
    meta = ArtifactMetadata.from_json(metadata("frame")).model_copy(update={"inputs": FRAME_INPUTS})
    return _header().model_copy(update={"inputs": inputs, "metadata": meta})


def test_stale_reason() -> None:
    orin = Platform("10.3.0", "12.6", "Orin", "8.7")
    profile = be.Profile(*be.DEFAULT_FUSE_PROFILE)
    current = {"onnx_sha256": "a" * 64, "running": orin, "precision": "fp16", "profile": profile}
    assert be.stale_reason(_header(), **current) is None
    assert "another version of the ONNX" in be.stale_reason(_header(onnx_sha="b" * 64), **current)
    other = {**current, "running": Platform("10.13.3", "12.9", "NVIDIA RTX 4090", "8.9")}
    assert "NVIDIA RTX 4090" in be.stale_reason(_header(), **other)
    assert be.stale_reason(_header(precision="fp32"), **current) == "it is fp32, fp16 was asked for"
    assert "profile for vis" in be.stale_reason(_header(opt=[1, 1, 256, 320]), **current)
    camera = be.Profile((512, 640), (512, 640), (512, 640))
    assert be.stale_reason(_frame_header((512, 640)), **current, ir_profile=camera) is None
    assert "profile for ir is [1, 1, 288, 384]" in be.stale_reason(_frame_header((288, 384)), **current,
                                                                   ir_profile=camera)


def test_frame_engine_is_verified_with_the_ir_at_its_own_sizes() -> None:
    from busref.export.samples import synthetic_pairs

    feeds = be.engine_feeds(_frame_header((288, 384)), synthetic_pairs(1, (96, 128)))
    assert [(f["vis"].shape, f["ir"].shape, f["grid"].shape) for f in feeds] == [
        ((1, 1, *hw), (1, 1, 288, 384), (1, *hw, 2)) for hw in ((128, 160), (512, 640), (1080, 1920))]


def test_psnr() -> None:
    ref = np.linspace(0, 1, 100, dtype=np.float32)
    assert be.psnr(ref, ref) == float("inf")
    assert be.psnr(ref, ref + 0.01) == pytest.approx(40.0, abs=0.01)


# --------------------------------------------------------------------------- without / with TensorRT


def busref_graph(tmp_path: Path) -> Path:
    """The tiny fuse graph of the runtime tests (fused = max(vis, ir)) with the metadata and
    digest the exporter writes, so the builder accepts it."""
    import onnx

    path = write_fuse(tmp_path / "fuse.onnx")
    model = onnx.load(str(path))
    image = [1, 1, "H", "W"]
    meta = metadata("fuse", inputs=[TensorSpec(name=n, shape=image) for n in ("vis", "ir")],
                    outputs=[TensorSpec(name="fused", shape=image)])
    set_metadata(model, ArtifactMetadata.from_json(meta))
    onnx.save(model, str(path))
    return path


@pytest.mark.skipif(HAS_TENSORRT, reason="checks the sentence given where TensorRT is missing")
def test_without_tensorrt_one_clear_sentence(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    graph = busref_graph(tmp_path)
    status = busref_main(["export", "engine", "--onnx", str(graph), "--out", str(tmp_path / "fuse.engine")])
    err = capsys.readouterr().err.strip()
    assert status == exit_codes.UNAVAILABLE
    assert err.startswith("Cannot build a TensorRT engine here: TensorRT is not installed")
    assert err.count(". ") == 0 and err.endswith(".")  # one sentence
    assert not (tmp_path / "fuse.engine").exists()


def test_engine_cli_needs_a_target(capsys: pytest.CaptureFixture[str]) -> None:
    assert busref_main(["export", "engine", "--precision", "fp32"]) == 1
    assert "give --onnx GRAPH and --out ENGINE, or --rig FILE" in capsys.readouterr().err


def test_engine_cli_refuses_a_rig_without_engine_paths(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert busref_main(["export", "engine", "--rig", str(rig_file(tmp_path))]) == 1
    assert "inference.register_engine is not set" in capsys.readouterr().err


def test_rig_builds_the_frame_engine_only_where_its_graph_and_path_are_set(tmp_path: Path) -> None:
    from argparse import Namespace

    from busref.export.cli import _targets

    def engines(**inference: str) -> list[str]:
        paths = {f"{g}_engine": str(tmp_path / f"{g}.engine") for g in ("register", "fuse")}
        targets, _ = _targets(Namespace(rig=rig_file(tmp_path, inference={**paths, **inference}), onnx=None, out=None))
        return [engine.name for _, engine in targets]

    frame = {"frame_engine": str(tmp_path / "frame.engine"), "frame_model": str(tmp_path / "frame.onnx")}
    assert engines() == ["register.engine", "fuse.engine"]  # no frame_engine set
    assert engines(**frame) == ["register.engine", "fuse.engine"]  # an export without frame.onnx
    (tmp_path / "frame.onnx").write_bytes(b"")
    assert engines(**frame) == ["register.engine", "fuse.engine", "frame.engine"]


@pytest.mark.tensorrt
@pytest.mark.skipif(not HAS_TENSORRT, reason=NO_TENSORRT)
def test_build_verify_and_reuse_a_real_engine(tmp_path: Path) -> None:
    from busref.export.samples import synthetic_pairs

    graph = busref_graph(tmp_path)
    request = be.BuildRequest(graph, tmp_path / "fuse.engine", precision="fp32", opt_hw=(256, 320),
                              timing_cache=tmp_path / "timing.cache")
    header = be.build(request)
    assert header.onnx_sha256 == check_graph_file(graph).file_sha256
    assert (tmp_path / "timing.cache").stat().st_size > 0
    checks = be.verify(request.engine_path, graph, synthetic_pairs(1, (256, 320)))
    assert all(c.ok for c in checks), checks
    _, built = be.build_if_stale(request)
    assert not built
