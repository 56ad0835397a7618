"""``busref calibrate`` writes its prior into a copy of the rig file that keeps comments and layout."""

from __future__ import annotations

import difflib
import shutil
from pathlib import Path

import numpy as np
import pytest

from busref.rig_config import DEMO_RIG, RigConfigError, load_rig
from busref.runtime.cli.calibrate import PROVENANCE, write_rig

REPO = Path(__file__).resolve().parent.parent
# Tiny perspective terms as calibration gives them: their repr has an exponent ("-2e-06").
PRIOR = np.array([[1.9, 0.01, 3.25], [-0.02, 1.41, -7.5], [1.5e-07, -2e-06, 1.0]])
PRIOR_FLOW = "[[1.9, 0.01, 3.25], [-0.02, 1.41, -7.5], [1.5e-07, -2.0e-06, 1.0]]"

MINIMAL = """\
rig_id: t   # a test rig
cameras:
  ir: {source: {kind: synthetic}, width: 64, height: 48, fps: 30}
  rgb: {source: {kind: synthetic}, width: 64, height: 48, fps: 30}
"""


def calibrate(source: Path, out: Path) -> tuple[list[str], list[str]]:
    """Write ``PRIOR`` into ``out``; the lines removed from and added to ``source``'s text."""
    write_rig(load_rig(source), PRIOR, source, out)
    assert load_rig(out).registration.prior_homography == tuple(map(tuple, PRIOR.tolist()))
    diff = list(difflib.ndiff(source.read_text().splitlines(), out.read_text().splitlines()))
    return [d[2:] for d in diff if d.startswith("- ")], [d[2:] for d in diff if d.startswith("+ ")]


def test_only_the_prior_line_changes_and_comments_survive(tmp_path: Path) -> None:
    source = tmp_path / "usb.yaml"
    shutil.copy(REPO / "rig_config" / "usb_thermal_rgb.yaml", source)
    removed, added = calibrate(source, tmp_path / "calibrated.yaml")
    assert removed == ["  prior_homography: null"]
    assert len(added) == 2 and added[0].startswith(PROVENANCE)
    assert added[1] == f"  prior_homography: {PRIOR_FLOW}"


def test_a_block_matrix_keeps_its_layout_and_row_comments(tmp_path: Path) -> None:
    source = tmp_path / "rig.yaml"
    source.write_text(MINIMAL + """\
registration:
  # measured on the bench
  prior_homography:
    - [1, 0, 0]      # x
    - [0, 1, 0]
    - [0, 0, 1]
  hold_last_good: true
""")
    removed, added = calibrate(source, tmp_path / "calibrated.yaml")
    assert removed == ["    - [1, 0, 0]      # x", "    - [0, 1, 0]", "    - [0, 0, 1]"]
    assert added[1:] == ["    - [1.9, 0.01, 3.25]      # x", "    - [-0.02, 1.41, -7.5]",
                         "    - [1.5e-07, -2.0e-06, 1.0]"]


def test_a_missing_entry_is_added_to_the_registration_block(tmp_path: Path) -> None:
    source = tmp_path / "demo.yaml"
    shutil.copy(DEMO_RIG, source)
    removed, added = calibrate(source, tmp_path / "calibrated.yaml")
    assert removed == [] and added[1] == f"  prior_homography: {PRIOR_FLOW}"
    lines = (tmp_path / "calibrated.yaml").read_text().splitlines()
    assert lines[lines.index(added[1]) - 1].startswith("  hold_last_good: true")  # the block's last line


def test_a_missing_registration_block_is_appended(tmp_path: Path) -> None:
    source = tmp_path / "rig.yaml"
    source.write_text(MINIMAL)
    removed, added = calibrate(source, tmp_path / "calibrated.yaml")
    assert removed == [] and added[1:] == [f"registration: {{prior_homography: {PRIOR_FLOW}}}"]


def test_recalibrating_replaces_the_provenance_line(tmp_path: Path) -> None:
    source = tmp_path / "rig.yaml"
    source.write_text(MINIMAL)
    calibrate(source, tmp_path / "once.yaml")
    removed, added = calibrate(tmp_path / "once.yaml", tmp_path / "twice.yaml")
    assert [line[:len(PROVENANCE)] for line in removed + added] == [PROVENANCE, PROVENANCE]
    assert (tmp_path / "twice.yaml").read_text().count(PROVENANCE) == 1


def test_a_relative_path_that_would_move_is_refused(tmp_path: Path) -> None:
    # jetson_csi.yaml names ../weights/*: from another folder they would be other files.
    source = REPO / "rig_config" / "jetson_csi.yaml"
    out = tmp_path / "jetson.yaml"
    with pytest.raises(RigConfigError, match=r"inference\.register_model: .*write --out beside it"):
        write_rig(load_rig(source), PRIOR, source, out)
    assert not out.exists()
