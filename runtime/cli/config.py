"""``busref config check FILE...`` / ``schema`` / ``header-schema``: validate rig files, print the
rig file's JSON Schema, print or write the message headers' JSON Schemas."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from busref.rig_config import RigConfig, RigConfigError, load_rig
from busref.runtime import exit_codes
from busref.runtime.header_schema import FILE_NAMES, markdown_tables, schema_text, write_schemas


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = (
        "examples:\n"
        "  busref config check rig_config/demo.yaml rig_config/usb_thermal_rgb.yaml\n"
        "  busref config schema > rig.schema.json   # for editor completion and validation\n"
        "  busref config header-schema frame         # the image header a subscriber receives\n"
        "  busref config header-schema --write docs/schemas"
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    check = actions.add_parser("check", help="validate rig files: every error with its field path and line")
    check.add_argument("files", nargs="+", type=Path, metavar="FILE", help="rig YAML file(s)")
    actions.add_parser("schema", help="print the rig file's JSON Schema")
    headers = actions.add_parser("header-schema", help="print or write the JSON Schemas of the message headers")
    headers.add_argument("kind", nargs="?", choices=("frame", "status"),
                         help="print this header's schema (frame: topics fused and registered_ir)")
    headers.add_argument("--write", type=Path, metavar="DIR",
                         help="write both schemas into DIR (" + ", ".join(FILE_NAMES.values()) + ")")
    headers.add_argument("--markdown", action="store_true", help="print the field tables of docs/runtime.md")


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


def header_schemas(args: argparse.Namespace) -> int:
    if args.kind is None and args.write is None and not args.markdown:
        print("busref config header-schema: give a header (frame or status), --write DIR or --markdown",
              file=sys.stderr)
        return exit_codes.BAD_CONFIG
    if args.kind is not None:
        print(schema_text(args.kind), end="")
    if args.markdown:
        print(markdown_tables(), end="")
    if args.write is not None:
        for path in write_schemas(args.write):
            print(f"wrote {path}", file=sys.stderr)
    return exit_codes.OK


def run(args: argparse.Namespace) -> int:
    if args.action == "header-schema":
        return header_schemas(args)
    if args.action == "schema":
        print(json.dumps(RigConfig.model_json_schema(), indent=2))
        return exit_codes.OK
    return check_files(args.files)
