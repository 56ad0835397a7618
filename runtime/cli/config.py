"""``busref config check FILE...`` / ``busref config schema``: validate rig files, print the schema."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from busref.rig_config import RigConfig, RigConfigError, load_rig
from busref.runtime import exit_codes


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = (
        "examples:\n"
        "  busref config check rig_config/demo.yaml rig_config/usb_thermal_rgb.yaml\n"
        "  busref config schema > rig.schema.json   # for editor completion and validation"
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    check = actions.add_parser("check", help="validate rig files: every error with its field path and line")
    check.add_argument("files", nargs="+", type=Path, metavar="FILE", help="rig YAML file(s)")
    actions.add_parser("schema", help="print the rig file's JSON Schema")


def check_files(files: list[Path]) -> int:
    """Print ``FILE: OK`` or the file's errors for each file; OK if all are valid, else BAD_CONFIG."""
    status = exit_codes.OK
    for path in files:
        try:
            load_rig(path)
        except RigConfigError as exc:
            print(exc, file=sys.stderr)
            status = exit_codes.BAD_CONFIG
        else:
            print(f"{path}: OK")
    return status


def run(args: argparse.Namespace) -> int:
    if args.action == "schema":
        print(json.dumps(RigConfig.model_json_schema(), indent=2))
        return exit_codes.OK
    return check_files(args.files)
