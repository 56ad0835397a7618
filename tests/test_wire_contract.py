"""The wire contract of docs/runtime.md: the shipped JSON Schemas and field tables are current,
the schemas and the decoder agree, and every message of a running daemon matches the schemas as
read by a subscriber that shares no code with busref (tests/independent_subscriber.py)."""

from __future__ import annotations

import ast
import copy
import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from rigs import REPO, busref, demo_rig, write_graphs

from busref.client.wire import FrameHeader, Registration, StatusHeader, header_bytes
from busref.rig_config import load_rig
from busref.runtime.header_schema import FILE_NAMES, header_schema, markdown_tables, schema_text

SCHEMAS = REPO / "docs" / "schemas"
SUBSCRIBER = Path(__file__).with_name("independent_subscriber.py")


@pytest.fixture(scope="module")
def graphs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_graphs(tmp_path_factory.mktemp("graphs"))


def frame_doc(**registration: Any) -> dict[str, Any]:
    reg = Registration(**{"source": "fine", "age_s": 0.1, "confidence": 0.9, **registration})
    header = FrameHeader(seq=3, rig_id="r", t_capture_ir=10.0, t_capture_rgb=10.01, t_publish=10.05, skew_ms=-10.0,
                         width=64, height=48, encoding="jpeg", registration=reg, model_id="a+b")
    return json.loads(header_bytes(header))


def status_doc() -> dict[str, Any]:
    status = StatusHeader(rig_id="r", t_publish=1.0, uptime_s=2.0, state="degraded", counters={"pairs_total": 3},
                          gauges={"fps": 29.5}, backends={"fuse": {"backend": "onnxruntime"}},
                          message="ir camera: video file /x.avi was removed or renamed")
    return json.loads(header_bytes(status))


@pytest.mark.parametrize("kind", ["frame", "status"])
def test_the_shipped_schemas_are_current(kind: str) -> None:
    shipped = SCHEMAS / FILE_NAMES[kind]
    assert shipped.read_text() == schema_text(kind), (
        f"{shipped} is out of date: busref config header-schema --write docs/schemas")
    jsonschema.Draft202012Validator.check_schema(json.loads(shipped.read_text()))


def test_the_field_tables_of_the_docs_are_generated_from_the_schemas() -> None:
    assert markdown_tables() in (REPO / "docs" / "runtime.md").read_text(), (
        "docs/runtime.md's header tables are out of date: busref config header-schema --markdown")


def test_a_header_carries_exactly_one_matrix_and_no_null() -> None:
    affine = frame_doc(affine=[[1, 0, 2], [0, 1, 3]])
    assert "affine" in affine["registration"] and "homography" not in affine["registration"]
    projective = frame_doc(homography=[[1, 0, 2], [0, 1, 3], [0.001, 0, 1]])
    assert "homography" in projective["registration"] and "affine" not in projective["registration"]
    assert "null" not in json.dumps([affine, projective, status_doc()])
    # a decoder from before the change read "null" for the absent key: absent still decodes
    assert FrameHeader.from_dict(affine).registration.homography is None


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(doc: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        for key in parents:
            doc = doc[key]
        doc[last] = value
    return mutate


def _drop(path: str) -> Callable[[dict[str, Any]], None]:
    def mutate(doc: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        for key in parents:
            doc = doc[key]
        del doc[last]
    return mutate


FRAME_BREAKS = {
    "negative seq": _set("seq", -1),
    "float seq": _set("seq", 1.5),
    "zero width": _set("width", 0),
    "unknown encoding": _set("encoding", "png"),
    "other schema": _set("schema", "busref.frame/2"),
    "unknown field": _set("extra", 1),
    "missing rig_id": _drop("rig_id"),
    "both matrices": _set("registration.homography", [[1, 0, 0], [0, 1, 0], [0, 0, 1]]),
    "no matrix": _drop("registration.affine"),
    "affine 3x3": _set("registration.affine", [[1, 0, 0], [0, 1, 0], [0, 0, 1]]),
    "affine row of 2": _set("registration.affine", [[1, 0], [0, 1]]),
    "confidence above 1": _set("registration.confidence", 1.5),
    "negative age": _set("registration.age_s", -0.1),
    "unknown source": _set("registration.source", "guess"),
    "unknown registration field": _set("registration.scale", 1.0),
}
STATUS_BREAKS = {
    "unknown state": _set("state", "sleeping"),
    "negative uptime": _set("uptime_s", -1.0),
    "negative counter": _set("counters.pairs_total", -1),
    "float counter": _set("counters.pairs_total", 1.5),
    "text gauge": _set("gauges.fps", "fast"),
    "backend not an object": _set("backends.fuse", "onnxruntime"),
    "message not text": _set("message", None),
    "unknown field": _set("extra", 1),
}


@pytest.mark.parametrize("kind,name", [("frame", n) for n in FRAME_BREAKS] + [("status", n) for n in STATUS_BREAKS])
def test_the_schema_and_the_decoder_refuse_the_same_headers(kind: str, name: str) -> None:
    good, breaks, cls = ((frame_doc(affine=[[1, 0, 2], [0, 1, 3]]), FRAME_BREAKS, FrameHeader) if kind == "frame"
                         else (status_doc(), STATUS_BREAKS, StatusHeader))
    validator = jsonschema.Draft202012Validator(header_schema(kind))
    assert validator.is_valid(good)
    cls.from_dict(good)
    bad = copy.deepcopy(good)
    breaks[name](bad)
    assert not validator.is_valid(bad), f"the schema accepts a header with {name}"
    with pytest.raises(ValueError):
        cls.from_dict(bad)


def test_the_independent_subscriber_imports_nothing_of_busref() -> None:
    tree = ast.parse(SUBSCRIBER.read_text())
    modules = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    modules |= {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert {m.split(".")[0] for m in modules} <= {"__future__", "json", "struct", "sys", "time", "pathlib",
                                                  "jsonschema", "zmq"}, modules


@pytest.mark.slow
@pytest.mark.parametrize("encoding", ["raw", "jpeg"])
def test_every_message_of_a_running_daemon_matches_the_shipped_schemas(
    encoding: str, tmp_path: Path, graphs: dict[str, Path]
) -> None:
    """A real ``busref run`` (demo rig, tiny graphs, both image topics) read by the independent
    subscriber until the daemon's last status after SIGTERM."""
    rig = demo_rig(tmp_path, graphs, publisher={"encoding": encoding, "publish_registered_ir": True})
    endpoint = load_rig(rig).publisher.endpoints[1]
    subscriber = subprocess.Popen([sys.executable, str(SUBSCRIBER), endpoint, str(SCHEMAS), "60"],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    daemon = busref("run", "--rig", str(rig))
    try:
        deadline = time.monotonic() + 40
        while "running" not in (line := daemon.stderr.readline()) and time.monotonic() < deadline:
            assert line, "the daemon ended before it ran"
        time.sleep(2.0)  # ~60 pairs and two status messages
        daemon.send_signal(signal.SIGTERM)
        out, err = subscriber.communicate(timeout=30)
        assert daemon.wait(timeout=10) == 0
    finally:
        daemon.kill()
        subscriber.kill()
    report = json.loads(out)
    assert subscriber.returncode == 0 and report["problem_count"] == 0, report["problems"] or err
    counts = report["counts"]
    assert counts["fused"] >= 10 and counts["registered_ir"] >= 10 and counts["status"] >= 2, counts
    assert report["seq_shared_by_both_topics"] >= 10
