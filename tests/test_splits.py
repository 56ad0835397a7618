"""Held-out splits: a split file other than the data folder's, and the NIR split the package ships."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from busref.conventions import DataError
from busref.models.cli.common import add_data_arguments, select_pairs, shipped_splits

NIRSCENE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "nirscene"


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_data_arguments(parser)
    return parser.parse_args(list(argv))


def test_a_split_file_replaces_the_folders_own(pair_data: Path, tmp_path: Path) -> None:
    own, _ = select_pairs(_args("--data", str(pair_data), "--split", "test"))
    custom = tmp_path / "mine.json"
    custom.write_text(json.dumps({"test": ["pair_01", "pair_03.jpg"]}))
    pairs, indices = select_pairs(_args("--data", str(pair_data), "--split", "test", "--split-file", str(custom)))
    assert [p.name for p in pairs] == ["pair_01", "pair_03"] != [p.name for p in own]
    assert indices == [1, 3]  # protocol indices stay positions among all the folder's pairs
    with pytest.raises(DataError, match=r"mine\.json: has no split 'train'"):
        select_pairs(_args("--data", str(pair_data), "--split", "train", "--split-file", str(custom)))


def test_the_shipped_nir_split_holds_out_whole_categories() -> None:
    assert "nirscene" in shipped_splits()
    if not (NIRSCENE / "cropinfrared").is_dir():
        pytest.skip(f"NIR pairs not found at {NIRSCENE}")
    test, _ = select_pairs(_args("--data", str(NIRSCENE), "--split", "test", "--split-file", "nirscene"))
    train, _ = select_pairs(_args("--data", str(NIRSCENE), "--split", "train", "--split-file", "nirscene"))
    assert len(test) == 40 and len(train) == 60
    assert {p.name.split("_")[0] for p in test} == {"mountain", "urban"}
    assert not {p.name.split("_")[0] for p in train} & {"mountain", "urban"}
