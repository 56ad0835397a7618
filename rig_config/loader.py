"""Read a rig YAML file into a validated :class:`RigConfig`, with errors that point at lines.

Every problem in a file is reported at once, each as ``line N: field.path: message``, so a
user fixes a rig file in one pass instead of one error per run.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError
from pydantic_core import ErrorDetails

from busref.rig_config.schema import RigConfig


class RigConfigError(ValueError):
    """A rig file that cannot be read or does not validate; ``errors`` holds one line per problem."""

    def __init__(self, path: Path, errors: list[str]) -> None:
        self.path = path
        self.errors = errors
        noun = "error" if len(errors) == 1 else "errors"
        super().__init__(f"{path}: {len(errors)} {noun} in rig file\n" + "\n".join(f"  {e}" for e in errors))


#: Keys that select a variant of a discriminated union in the schema.
_DISCRIMINATORS = ("kind", "mode")


def _line(node: yaml.Node) -> int:
    return node.start_mark.line + 1


def _find(node: yaml.Node, loc: tuple[int | str, ...]) -> tuple[yaml.Node, list[str]]:
    """Walk ``loc`` (a pydantic error location) down the YAML node tree.

    Returns the deepest node reached and the printable path. Pydantic puts the tag of a
    discriminated union (``v4l2``, ``fixed``) in the location; it is the value of the mapping's
    ``kind``/``mode`` key, not a key the user wrote, so it is skipped. A missing field stays in
    the path and points at its parent mapping's line.
    """
    parts: list[str] = []
    for key in loc:
        child = None
        if isinstance(node, yaml.MappingNode):
            entries = {k.value: v for k, v in node.value}
            tag = next((entries[d].value for d in _DISCRIMINATORS if d in entries), None)
            if key == tag and key not in entries:
                continue
            child = entries.get(str(key))
        elif isinstance(node, yaml.SequenceNode) and isinstance(key, int) and key < len(node.value):
            child = node.value[key]
        if child is not None:
            node = child
        parts.append(f"[{key}]" if isinstance(key, int) else str(key))
    return node, parts


def _format_path(parts: list[str]) -> str:
    return ".".join(parts).replace(".[", "[") or "(top level)"


def _duplicate_keys(node: yaml.Node, path: tuple[str, ...] = ()) -> Iterator[tuple[int, str]]:
    """PyYAML keeps the last of repeated keys silently; a rig file should say it once."""
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key, value in node.value:
            if key.value in seen:
                yield _line(key), f"{_format_path([*path, key.value])}: key given more than once"
            seen.add(key.value)
            yield from _duplicate_keys(value, (*path, key.value))
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            yield from _duplicate_keys(item, (*path, f"[{i}]"))


def _message(err: ErrorDetails) -> str:
    if err["type"] == "union_tag_not_found":
        # pydantic's wording ("Unable to extract tag ...") does not tell a user what to add.
        return f"missing {err.get('ctx', {}).get('discriminator', 'the kind')}: says which variant this is"
    return err["msg"].removeprefix("Value error, ")


def parse_rig(text: str, path: Path) -> RigConfig:
    """Validate rig YAML ``text``; ``path`` names it in errors and anchors relative paths."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data: Any = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise RigConfigError(path, [f"{where}YAML syntax error: {problem}"]) from None
    if root is None or not isinstance(data, dict):
        raise RigConfigError(path, ["the file must be a YAML mapping with at least rig_id and cameras"])
    errors = [(line, msg) for line, msg in _duplicate_keys(root)]
    try:
        config = RigConfig.model_validate(data, context={"base_dir": path.parent})
    except ValidationError as exc:
        for err in exc.errors(include_url=False):
            node, parts = _find(root, err["loc"])
            message = _message(err)
            errors.append((_line(node), f"{_format_path(parts)}: {message}"))
    else:
        if not errors:
            return config
    errors.sort(key=lambda e: e[0])
    raise RigConfigError(path, [f"line {line}: {msg}" for line, msg in errors])


def load_rig(path: str | Path) -> RigConfig:
    """Read and validate the rig file at ``path``; raises :class:`RigConfigError` naming every problem."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise RigConfigError(path, [f"cannot read the file: {exc.strerror or exc}"]) from None
    except UnicodeDecodeError as exc:
        raise RigConfigError(path, [f"not UTF-8 text: {exc.reason} at byte {exc.start}"]) from None
    return parse_rig(text, path.resolve().parent / path.name)
