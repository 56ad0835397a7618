"""Script entry: ``python export/export_onnx.py --checkpoint PATH --out DIR`` (= ``busref export onnx``)."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from export.cli import add_onnx_arguments, run_onnx


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="export_onnx.py", description="checkpoint -> register.onnx + fuse.onnx "
                                                                        "+ frame.onnx, verified against PyTorch")
    add_onnx_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return run_onnx(args)


if __name__ == "__main__":
    raise SystemExit(main())
