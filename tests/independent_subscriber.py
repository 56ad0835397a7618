"""A busref stream consumer written from docs/runtime.md alone: raw pyzmq + json + jsonschema.

It imports nothing from busref, on purpose: it checks that the published messages follow the
documented contract and the shipped JSON Schemas (docs/schemas/), not that busref agrees with
itself. tests/test_wire_contract.py runs it as a separate process against a running daemon.

    python tests/independent_subscriber.py ENDPOINT SCHEMA_DIR TIMEOUT_SECONDS

Reads until the daemon's last status (state ``stopping``) or the timeout, prints one JSON object
(message counts per topic, the problems found) and exits 0 when every message conformed and the
stream ended with ``stopping``, 1 otherwise.
"""

from __future__ import annotations

import json
import struct
import sys
import time
from pathlib import Path

import jsonschema
import zmq

TOPICS = (b"fused", b"registered_ir", b"status")


def jpeg_size_and_components(data: bytes) -> tuple[int, int, int]:
    """(width, height, components) from a JPEG's start-of-frame marker."""
    if data[:2] != b"\xff\xd8":
        raise ValueError("not a JPEG (no SOI marker)")
    i = 2
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            raise ValueError(f"JPEG marker expected at byte {i}")
        marker = data[i + 1]
        length = struct.unpack(">H", data[i + 2:i + 4])[0]
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # SOFn
            height, width = struct.unpack(">HH", data[i + 5:i + 9])
            return width, height, data[i + 9]
        i += 2 + length
    raise ValueError("JPEG has no start-of-frame marker")


def check(topic: bytes, header: dict, payload: bytes, validators: dict[str, jsonschema.Validator]) -> list[str]:
    """Every way this message breaks the contract (empty when it follows it)."""
    kind = "status" if topic == b"status" else "frame"
    problems = [f"schema: {e.message} at {'/'.join(map(str, e.path)) or 'top'}"
                for e in validators[kind].iter_errors(header)]
    if problems:
        return problems
    if kind == "status":
        return [] if payload == b"" else [f"status payload has {len(payload)} bytes, expected none"]
    width, height, encoding = header["width"], header["height"], header["encoding"]
    if encoding in ("bgr8", "mono8"):
        expected = width * height * (3 if encoding == "bgr8" else 1)
        if len(payload) != expected:
            problems.append(f"{encoding} payload has {len(payload)} bytes, expected {expected}")
        return problems
    w, h, components = jpeg_size_and_components(payload)
    if (w, h) != (width, height):
        problems.append(f"JPEG is {w}x{h}, header says {width}x{height}")
    expected_components = 1 if topic == b"registered_ir" else 3
    if components != expected_components:
        problems.append(f"{topic.decode()} JPEG has {components} components, expected {expected_components}")
    return problems


def main(endpoint: str, schema_dir: Path, timeout_s: float) -> int:
    validators = {}
    for kind in ("frame", "status"):
        schema = json.loads((schema_dir / f"{kind}-header.schema.json").read_text())
        cls = jsonschema.validators.validator_for(schema)
        cls.check_schema(schema)
        validators[kind] = cls(schema)
    context = zmq.Context()
    socket = context.socket(zmq.SUB)
    socket.setsockopt(zmq.LINGER, 0)
    socket.setsockopt(zmq.RCVHWM, 1000)
    for topic in TOPICS:
        socket.setsockopt(zmq.SUBSCRIBE, topic)
    socket.connect(endpoint)
    counts = {topic.decode(): 0 for topic in TOPICS}
    problems: list[str] = []
    captures: dict[int, dict[str, tuple[float, float]]] = {}
    stopped = False
    deadline = time.monotonic() + timeout_s
    while not stopped and time.monotonic() < deadline:
        if not socket.poll(100):
            continue
        parts = socket.recv_multipart()
        if len(parts) != 3:
            problems.append(f"message of {len(parts)} frames, expected 3")
            continue
        topic, raw, payload = parts
        if topic not in TOPICS:
            problems.append(f"unknown topic {topic!r}")
            continue
        counts[topic.decode()] += 1
        try:
            header = json.loads(raw.decode("utf-8"))
            found = check(topic, header, payload, validators)
        except ValueError as exc:
            found = [str(exc)]
        problems += [f"{topic.decode()}: {p}" for p in found]
        if not found and topic == b"status":
            stopped = header["state"] == "stopping"
        elif not found:
            # fused and registered_ir of one pair share seq (and so their capture times)
            times = (header["t_capture_ir"], header["t_capture_rgb"])
            seen = captures.setdefault(header["seq"], {})
            if any(other != times for other in seen.values()):
                problems.append(f"seq {header['seq']}: the topics' capture times differ")
            seen[topic.decode()] = times
    socket.close()
    context.term()
    shared = sum(len(seen) == 2 for seen in captures.values())
    if not stopped:
        problems.append(f"no status with state 'stopping' within {timeout_s:g} s")
    if "busref" in sys.modules:
        problems.append("the independent subscriber imported busref")
    print(json.dumps({"counts": counts, "seq_shared_by_both_topics": shared, "problems": problems[:20],
                      "problem_count": len(problems)}))
    return 0 if not problems else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1], Path(sys.argv[2]), float(sys.argv[3])))
