"""JSON Schemas of the two message headers, generated from :mod:`busref.client.wire`'s classes.

The header classes are plain dataclasses (the client needs no pydantic); pydantic reads their
type hints and each field's ``metadata`` (``description``, ``ge``/``le``, ``json_schema_extra``)
and writes the schema. Two rules of the encoder are applied here, as they belong to no single
field: a field that may be None is left out of the JSON when it is (so no value on the wire is
``null``, and such a field is optional), and a class's ``ONE_OF`` names fields of which exactly
one is present. Every object is closed (``additionalProperties: false``), as the decoder refuses
unknown fields.

``busref config header-schema`` prints or writes them (docs/schemas/ ships them) and prints the
field tables of docs/runtime.md, which tests/test_wire_contract.py checks are current.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import TypeAdapter

from busref.client import wire

HeaderKind = Literal["frame", "status"]
HEADERS: dict[HeaderKind, type] = {"frame": wire.FrameHeader, "status": wire.StatusHeader}
SCHEMA_NAMES: dict[HeaderKind, str] = {"frame": wire.FRAME_SCHEMA, "status": wire.STATUS_SCHEMA}
#: The files in docs/schemas/.
FILE_NAMES: dict[HeaderKind, str] = {"frame": "frame-header.schema.json", "status": "status-header.schema.json"}
_DRAFT = "https://json-schema.org/draft/2020-12/schema"
_NULL = {"type": "null"}


def _wire_object(schema: dict[str, Any], cls: type) -> None:
    """Apply the encoder's rules to the schema of one header class (in place)."""
    required = []
    for name, prop in schema["properties"].items():
        prop.pop("title", None)
        prop.pop("default", None)  # every value is sent, so no default is ever used
        alternatives = prop.pop("anyOf", None)
        if alternatives is not None and _NULL in alternatives:
            rest = [a for a in alternatives if a != _NULL]
            # A field's own keywords (json_schema_extra) win over pydantic's of the type.
            prop.update({**rest[0], **prop} if len(rest) == 1 else {"anyOf": rest})
            continue  # None is sent as absence: optional
        if alternatives is not None:
            prop["anyOf"] = alternatives
        required.append(name)
    schema["required"] = required
    schema["additionalProperties"] = False
    if getattr(cls, "ONE_OF", ()):
        schema["oneOf"] = [{"required": [name]} for name in cls.ONE_OF]
    schema["description"] = " ".join((cls.__doc__ or "").split("\n\n")[0].split()).replace("``", "`")
    schema.pop("title", None)


def header_schema(kind: HeaderKind) -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of one header kind, as the daemon sends it."""
    cls = HEADERS[kind]
    schema = TypeAdapter(cls).json_schema(mode="serialization")
    _wire_object(schema, cls)
    for name, sub in schema.get("$defs", {}).items():
        _wire_object(sub, getattr(wire, name))
    schema["properties"]["schema"]["const"] = SCHEMA_NAMES[kind]
    return {"$schema": _DRAFT, "title": f"{SCHEMA_NAMES[kind]} header", **schema}


def schema_text(kind: HeaderKind) -> str:
    """The schema as shipped in docs/schemas/ (indented JSON, one trailing newline)."""
    return json.dumps(header_schema(kind), indent=2) + "\n"


def write_schemas(folder: Path) -> list[Path]:
    """Write both schemas into ``folder`` (created); returns the files."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for kind, name in FILE_NAMES.items():
        path = folder / name
        path.write_text(schema_text(kind))
        paths.append(path)
    return paths


# --------------------------------------------------------------------------- field tables


def _bounds(prop: dict[str, Any]) -> str:
    low, high = prop.get("minimum"), prop.get("maximum")
    if low is not None and high is not None:
        return f" in [{low:g}, {high:g}]"
    if low is not None:
        return f" >= {low:g}"
    return ""


def type_text(prop: dict[str, Any]) -> str:
    """A property's JSON type in words, for the tables."""
    if "const" in prop:
        return f'string `"{prop["const"]}"`'
    if "enum" in prop:
        return "string: " + ", ".join(f'`"{v}"`' for v in prop["enum"])
    if "$ref" in prop:
        return f"object ({prop['$ref'].rsplit('/', 1)[-1]}, below)"
    kind = prop.get("type")
    if kind in ("integer", "number"):
        return f"{kind}{_bounds(prop)}"
    if kind == "array":
        row = prop["items"]
        return f"array of {prop['minItems']} arrays of {row['minItems']} numbers"
    if kind == "object":
        values = prop.get("additionalProperties", {})
        inner = "object" if values.get("type") == "object" else f"{values.get('type', 'any')}{_bounds(values)}"
        return f"object: name -> {inner}"
    return str(kind)


def _table(schema: dict[str, Any]) -> list[str]:
    one_of = [alt["required"][0] for alt in schema.get("oneOf", [])]
    lines = ["| field | type | present | meaning |", "| --- | --- | --- | --- |"]
    for name, prop in schema["properties"].items():
        if name in schema["required"]:
            present = "always"
        elif name in one_of:
            present = "exactly one of " + ", ".join(f"`{n}`" for n in one_of)
        else:
            present = "optional"
        lines.append(f"| `{name}` | {type_text(prop)} | {present} | {prop.get('description', '')} |")
    return lines


def markdown_tables() -> str:
    """The field tables of docs/runtime.md: image header, its ``registration`` object, status header."""
    frame, status = header_schema("frame"), header_schema("status")
    parts = [f"Image header (`{wire.FRAME_SCHEMA}`, topics `fused` and `registered_ir`):", "", *_table(frame), ""]
    for name, sub in frame.get("$defs", {}).items():
        parts += [f"{name} object (`registration` of the image header):", "", *_table(sub), ""]
    parts += [f"Status header (`{wire.STATUS_SCHEMA}`, topic `status`):", "", *_table(status)]
    return "\n".join(parts) + "\n"
