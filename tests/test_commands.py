"""The eval, register and fuse commands on 3 synthetic pairs (RoadScene layout): files, conventions, errors."""

from __future__ import annotations

import json
import shutil

import cv2
import numpy as np
import pytest
from conftest import write_synthetic_pairs

from busref.cli import main
from busref.models.data import category_pairs

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def three_pairs(tmp_path_factory, pair_data):
    root = tmp_path_factory.mktemp("pairs")
    names = json.loads((pair_data / "split.json").read_text())["test"][:3]
    for sub in ("cropinfrared", "crop_LR_visible"):
        (root / sub).mkdir()
        for n in names:
            shutil.copy(pair_data / sub / f"{n}.jpg", root / sub / f"{n}.jpg")
    return root, names


def test_eval_registration_writes_tables(trained_checkpoint, pair_data, tmp_path, capsys):
    code = main(["eval", "registration", "--data", str(pair_data), "--split", "test", "--limit", "3",
                 "--methods", "busref,busref-refined,identity,ecc", "--checkpoint", str(trained_checkpoint),
                 "--out", str(tmp_path),
                 "--no-progress", "--contact-sheet", "2"])
    assert code == 0
    sheet = cv2.imread(str(tmp_path / "registration_moderate_sheet.png"))
    assert sheet is not None and sheet.shape[1] == 4 * (256 + 2)  # 4 tiles of the default width
    report = json.loads((tmp_path / "registration_moderate.json").read_text())
    assert report["protocol"] == "irvis-reg-v1" and report["n_pairs"] == 3
    summary = report["results"]["identity"]["summary"]
    assert {"MNCC", "EPE_mean", "NCC", "MMSE"} <= set(summary["mean"]) and 0 <= summary["success_2px"] <= 1
    printed = capsys.readouterr().out
    assert "| busref |" in printed and "| busref-refined |" in printed
    assert report["results"]["busref-refined"]["summary"]["failures"] == 0
    assert report["descriptor"] is None  # none is shipped: the refinement is NGF + MIND unless given one


def test_eval_fusion(trained_checkpoint, pair_data, tmp_path):
    assert main(["eval", "fusion", "--data", str(pair_data), "--limit", "2", "--methods", "gaf,average",
                 "--checkpoint", str(trained_checkpoint), "--out", str(tmp_path), "--no-progress",
                 "--contact-sheet", "2"]) == 0
    summary = json.loads((tmp_path / "fusion.json").read_text())["results"]["gaf"]["summary"]["mean"]
    assert {"EI", "CE", "SF", "FMI_w", "Q_cv", "Qabf", "VIF"} <= set(summary)
    sheet = cv2.imread(str(tmp_path / "fusion_sheet.png"))
    assert sheet is not None and sheet.shape[1] == 4 * (256 + 2)  # visible | IR | pyramid | GAF; 2 pairs + zoom


def test_train_takes_extra_pairs_by_category_and_names_an_empty_choice(pair_data, tmp_path, caplog):
    extra = write_synthetic_pairs(tmp_path / "nir", {"train": ["field_0001", "field_0002", "urban_0001"]},
                                  hw=(64, 80))
    assert [p.name for p in category_pairs(extra, "train", ["field"])] == ["field_0001", "field_0002"]
    code = main(["train", "fusion", "--data", str(pair_data), "--val-pairs", "2", "--extra-data", str(extra),
                 "--extra-categories", "nosuch", "--out", str(tmp_path / "run")])
    assert code == 2 and "no 'train' pairs of the categories nosuch" in caplog.text


def test_register_writes_every_file_in_the_protocol_convention(trained_checkpoint, three_pairs, tmp_path):
    root, names = three_pairs
    out = tmp_path / "reg"
    assert main(["register", "--vis", str(root / "crop_LR_visible"), "--ir", str(root / "cropinfrared"),
                 "--out", str(out), "--checkpoint", str(trained_checkpoint), "--contact-sheet"]) == 0
    for n in names:
        vis = cv2.imread(str(root / "crop_LR_visible" / f"{n}.jpg"))
        h, w = vis.shape[:2]
        reg = cv2.imread(str(out / "registered" / f"{n}.png"), cv2.IMREAD_UNCHANGED)
        fused = cv2.imread(str(out / "fused" / f"{n}.png"), cv2.IMREAD_UNCHANGED)
        grid = np.load(out / "grid" / f"{n}.npy")
        theta = json.loads((out / "theta" / f"{n}.json").read_text())
        assert reg.shape == (h, w) and reg.dtype == np.uint8
        assert fused.shape == (h, w, 3)
        assert grid.shape == (h, w, 2) and grid.dtype == np.float32
        assert np.array(theta["affine_pixels"]).shape == (2, 3)
        # The grid is in IR pixel coordinates: the registered image is the IR sampled at it.
        ir = cv2.imread(str(root / "cropinfrared" / f"{n}.jpg"), cv2.IMREAD_GRAYSCALE).astype(np.float32)
        resampled = cv2.remap(ir, grid[..., 0], grid[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
        inner = (slice(h // 4, 3 * h // 4), slice(w // 4, 3 * w // 4))
        assert np.abs(resampled[inner] - reg[inner].astype(np.float32)).mean() < 2.0
    assert cv2.imread(str(out / "contact_sheet.png")) is not None


def test_register_refine_moves_the_grid_and_writes_the_same_files(trained_checkpoint, three_pairs, tmp_path):
    root, names = three_pairs
    for flags, out in (([], tmp_path / "plain"), (["--refine"], tmp_path / "refined")):
        assert main(["register", "--vis", str(root / "crop_LR_visible"), "--ir", str(root / "cropinfrared"),
                     "--out", str(out), "--checkpoint", str(trained_checkpoint), *flags]) == 0
    for n in names:
        plain, refined = (np.load(tmp_path / run / "grid" / f"{n}.npy") for run in ("plain", "refined"))
        assert refined.shape == plain.shape and refined.dtype == np.float32 and np.isfinite(refined).all()
        assert np.linalg.norm(refined - plain, axis=-1).mean() > 0.1
        assert (tmp_path / "refined" / "registered" / f"{n}.png").exists()


def test_fuse_command(trained_checkpoint, three_pairs, tmp_path):
    root, names = three_pairs
    assert main(["fuse", "--vis", str(root / "crop_LR_visible"), "--ir", str(root / "cropinfrared"),
                 "--out", str(tmp_path), "--checkpoint", str(trained_checkpoint)]) == 0
    assert sorted(p.stem for p in tmp_path.glob("*.png")) == sorted(names)


def test_missing_partner_is_named(trained_checkpoint, three_pairs, tmp_path, caplog):
    root, names = three_pairs
    ir = tmp_path / "ir"
    shutil.copytree(root / "cropinfrared", ir)
    (ir / f"{names[0]}.jpg").unlink()
    code = main(["fuse", "--vis", str(root / "crop_LR_visible"), "--ir", str(ir), "--out", str(tmp_path / "o"),
                 "--checkpoint", str(trained_checkpoint)])
    assert code == 2
    assert f"{names[0]}.jpg (no partner" in caplog.text


def test_unreadable_image_is_named_and_the_rest_is_written(trained_checkpoint, three_pairs, tmp_path, caplog):
    root, names = three_pairs
    ir = tmp_path / "ir"
    shutil.copytree(root / "cropinfrared", ir)
    (ir / f"{names[1]}.jpg").write_bytes(b"garbage")
    out = tmp_path / "o"
    code = main(["register", "--vis", str(root / "crop_LR_visible"), "--ir", str(ir), "--out", str(out),
                 "--checkpoint", str(trained_checkpoint)])
    assert code == 1
    assert f"{names[1]}.jpg: cannot read this image" in caplog.text
    assert (out / "fused" / f"{names[0]}.png").is_file() and (out / "fused" / f"{names[2]}.png").is_file()


def test_missing_checkpoint_is_a_clear_error(three_pairs, tmp_path, caplog):
    root, _ = three_pairs
    code = main(["fuse", "--vis", str(root / "crop_LR_visible"), "--ir", str(root / "cropinfrared"),
                 "--out", str(tmp_path), "--checkpoint", str(tmp_path / "nope.pt")])
    assert code == 2 and "nope.pt: no such checkpoint" in caplog.text


def test_train_descriptor_writes_a_file_that_refine_loads(trained_checkpoint, three_pairs, tmp_path):
    from busref.models.descriptor import load_descriptor

    root, names = three_pairs
    folders = ["--vis", str(root / "crop_LR_visible"), "--ir", str(root / "cropinfrared")]
    assert main(["train", "descriptor", *folders, "--val-pairs", "1", "--steps", "3", "--out", str(tmp_path)]) == 0
    _, meta = load_descriptor(tmp_path / "descriptor.pt")
    assert meta["step"] == 3 and meta["split"]["name"] == "all"
    assert main(["register", *folders, "--out", str(tmp_path / "reg"), "--checkpoint", str(trained_checkpoint),
                 "--refine", "--descriptor", str(tmp_path / "descriptor.pt")]) == 0
    assert sorted(p.stem for p in (tmp_path / "reg" / "grid").glob("*.npy")) == sorted(names)


def test_train_descriptor_on_the_refinement_s_iterations_records_that_stage(three_pairs, tmp_path):
    from busref.models.descriptor import load_descriptor
    from busref.models.refinement import DESCRIPTOR_REFINEMENT

    root, _ = three_pairs
    folders = ["--vis", str(root / "crop_LR_visible"), "--ir", str(root / "cropinfrared"), "--val-pairs", "1"]
    assert main(["train", "descriptor", *folders, "--steps", "1", "--out", str(tmp_path / "first")]) == 0
    config = tmp_path / "iterations.yaml"
    config.write_text("objective: iterations\nunrolled: 2\ncrop: 48\nbatch: 2\n")
    assert main(["train", "descriptor", *folders, "--config", str(config), "--steps", "1", "--finetune",
                 str(tmp_path / "first" / "descriptor.pt"), "--stage-of", "refinement", "--out", str(tmp_path)]) == 0
    _, meta = load_descriptor(tmp_path / "descriptor.pt")
    refinement = DESCRIPTOR_REFINEMENT
    assert meta["stage"]["descriptor_iterations"] == refinement.descriptor_iterations
    assert (meta["stage"]["descriptor_pool"], meta["stage"]["descriptor_gain"]) == \
        (refinement.descriptor_cells, refinement.descriptor_gain)
    assert meta["config"]["unrolled"] == 2 and meta["metrics"]["last_error"] >= 0


def test_descriptor_errors_are_clear(trained_checkpoint, three_pairs, tmp_path, caplog):
    root, _ = three_pairs
    folders = ["--vis", str(root / "crop_LR_visible"), "--ir", str(root / "cropinfrared")]
    assert main(["train", "descriptor", *folders, "--init", str(trained_checkpoint), "--out", str(tmp_path)]) == 2
    assert "--init does not apply to the descriptor stage" in caplog.text
    assert main(["train", "registration", *folders, "--size", "192x256", "--out", str(tmp_path)]) == 2
    assert "--size applies to the descriptor stage only" in caplog.text
    bad = tmp_path / "towers.yaml"
    bad.write_text("max_log_resize: 3\n")
    assert main(["train", "descriptor", *folders, "--config", str(bad), "--out", str(tmp_path)]) == 2
    assert "towers.yaml: invalid descriptor config" in caplog.text and "max_log_resize" in caplog.text
    assert main(["train", "registration", *folders, "--stage-of", str(trained_checkpoint), "--out", str(tmp_path)]) == 2
    assert "--stage-of applies to the descriptor stage only" in caplog.text
    iterating = tmp_path / "iterations.yaml"
    iterating.write_text("objective: iterations\n")
    assert main(["train", "descriptor", *folders, "--config", str(iterating), "--val-pairs", "1",
                 "--out", str(tmp_path)]) == 2
    assert "already match (--finetune)" in caplog.text and "(--stage-of)" in caplog.text
    assert main(["train", "descriptor", *folders, "--config", str(iterating), "--stage-of", str(tmp_path / "no.pt"),
                 "--out", str(tmp_path)]) == 2
    assert "no.pt" in caplog.text
    assert main(["register", *folders, "--out", str(tmp_path / "reg"), "--checkpoint", str(trained_checkpoint),
                 "--refine", "--descriptor", str(tmp_path / "nope.pt")]) == 2
    assert "nope.pt: no such descriptor file" in caplog.text
    # A descriptor serves the refinement only; without --refine it would be ignored, so it is refused.
    assert main(["register", *folders, "--out", str(tmp_path / "plain"), "--checkpoint", str(trained_checkpoint),
                 "--descriptor", str(tmp_path / "nope.pt")]) == 2
    assert "--descriptor is the refinement's: it needs --refine" in caplog.text
