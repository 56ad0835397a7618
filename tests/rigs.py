"""Helpers of the end-to-end runtime tests: the demo rig with tiny graphs, free ports, taking frames,
running ``busref`` as a process."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from tiny_graphs import write_fuse, write_register

from busref.client import Subscriber
from busref.client.wire import FrameHeader
from busref.rig_config import DEMO_RIG, load_rig

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_graphs(folder: Path) -> dict[str, Path]:
    """The tiny register (identity) and fuse (max) graphs at the demo rig's registration size."""
    size = tuple(load_rig(DEMO_RIG).registration.size)
    return {
        "register": write_register(folder / "register.onnx", np.array([[1, 0, 0.0], [0, 1, 0.0]]), size),
        "fuse": write_fuse(folder / "fuse.onnx"),
    }


def demo_rig(folder: Path, graphs: dict[str, Path], **sections: dict[str, Any]) -> Path:
    """demo.yaml with the tiny graphs, a tcp and an ipc endpoint, and ``sections`` merged in."""
    data = yaml.safe_load(DEMO_RIG.read_text())
    data["inference"].update(register_model=str(graphs["register"]), fuse_model=str(graphs["fuse"]))
    data["publisher"]["endpoints"] = [f"tcp://127.0.0.1:{free_port()}", f"ipc://{folder}/fused.sock"]
    for key, value in sections.items():
        data.setdefault(key, {}).update(value)
    path = folder / "rig.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def take(sub: Subscriber, n: int, timeout_s: float = 10.0) -> list[tuple[str, FrameHeader, np.ndarray]]:
    got = []
    deadline = time.monotonic() + timeout_s
    while len(got) < n and time.monotonic() < deadline:
        item = sub.recv(timeout_s=0.2)
        if item is not None:
            got.append(item)
    assert len(got) == n, f"received {len(got)} of {n} frames in {timeout_s} s"
    return got


def busref(*args: str, **kwargs: Any) -> subprocess.Popen:
    """``python -m busref ARGS`` from the repository root, stdout and stderr captured as text."""
    return subprocess.Popen([sys.executable, "-m", "busref", *args], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)
