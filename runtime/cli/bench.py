"""``busref bench --rig FILE --seconds N --json OUT``: run the daemon and measure where the time goes.

The daemon runs in this process, publishing on a private ipc endpoint (unless ``--endpoint``)
to a subscriber that only reads headers, so the numbers are the daemon's, not a viewer's.
Stage latencies are per pair on the inference thread; ``register`` runs on its own thread.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import zmq

from busref.rig_config.resources import recorded_path
from busref.runtime import exit_codes
from busref.runtime.cli.run import add_rig_argument, load_or_report
from busref.runtime.daemon import Daemon, StartupError
from busref.runtime.logs import setup_logging

log = logging.getLogger("busref.bench")

#: The speed targets of the project (640x512, ONNX Runtime on a 2-core CPU).
TARGETS = {"fps": 25.0, "capture_to_publish_p99_ms": 80.0, "registration_hz": 5.0}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_rig_argument(parser)
    parser.add_argument("--seconds", type=float, default=20.0, help="measured duration")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds run before measuring")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--endpoint", help="publish here instead of a private ipc endpoint")


class HeaderCounter(threading.Thread):
    """A SUB socket that reads headers only: received count and capture->receive latency."""

    def __init__(self, endpoint: str) -> None:
        super().__init__(name="bench-subscriber", daemon=True)
        self._context = zmq.Context.instance()
        self._socket = self._context.socket(zmq.SUB)
        self._socket.setsockopt(zmq.SUBSCRIBE, b"fused")
        self._socket.setsockopt(zmq.LINGER, 0)
        self._socket.connect(endpoint)
        self._halt = threading.Event()
        self.latencies: list[float] = []
        self.received = 0

    def run(self) -> None:
        while not self._halt.is_set():
            if not self._socket.poll(50):
                continue
            _, raw, _ = self._socket.recv_multipart(copy=False)
            header = json.loads(raw.bytes)
            self.received += 1
            self.latencies.append(time.time() - min(header["t_capture_ir"], header["t_capture_rgb"]))

    def reset(self) -> None:
        self.latencies, self.received = [], 0

    def stop(self) -> None:
        self._halt.set()
        self.join(1.0)
        self._socket.close()


def _ms(values: np.ndarray) -> dict[str, float]:
    if values.size == 0:
        return {"p50": float("nan"), "p99": float("nan"), "mean": float("nan"), "n": 0}
    return {"p50": float(np.percentile(values, 50) * 1e3), "p99": float(np.percentile(values, 99) * 1e3),
            "mean": float(values.mean() * 1e3), "n": int(values.size)}


def measure(daemon: Daemon, counter: HeaderCounter, seconds: float, warmup: float) -> dict[str, Any]:
    pipe = daemon.pipeline
    assert pipe is not None
    time.sleep(warmup)
    for hist in (*pipe.stages.values(), pipe.capture_to_publish):
        hist.reset()
    counter.reset()
    published0, runs0 = pipe.counters.published, pipe.registration.runs
    pairs0 = daemon.pairer.stats
    rejected0 = pipe.registration.filter.rejected
    cpu0, t0 = os.times(), time.monotonic()
    time.sleep(seconds)
    cpu1, elapsed = os.times(), time.monotonic() - t0
    pairs1 = daemon.pairer.stats
    runs = pipe.registration.runs - runs0
    return {
        "seconds": elapsed,
        "fps": (pipe.counters.published - published0) / elapsed,
        "received_fps": counter.received / elapsed,
        "pairs_fps": (pairs1.pairs - pairs0.pairs) / elapsed,
        "stale_pairs_dropped": pairs1.superseded - pairs0.superseded,
        "registration_hz": runs / elapsed,
        "registration_rejected": pipe.registration.filter.rejected - rejected0,
        "capture_to_publish_ms": _ms(pipe.capture_to_publish.recent()),
        "capture_to_receive_ms": _ms(np.asarray(counter.latencies)),
        "stages_ms": {name: _ms(h.recent()) for name, h in pipe.stages.items()},
        "cpu_utilisation": ((cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)) / elapsed,
        "cpu_count": os.cpu_count(),
        "size": {"rgb": list(pipe.rgb_size), "fuse": list(pipe.out_size),
                 "registration": list(daemon.config.registration.size)},
        "backends": daemon.backend_facts(),
    }


def verdict(results: dict[str, Any]) -> dict[str, bool]:
    return {
        "fps": results["fps"] >= TARGETS["fps"],
        "capture_to_publish_p99_ms": results["capture_to_publish_ms"]["p99"] <= TARGETS["capture_to_publish_p99_ms"],
        "registration_hz": results["registration_hz"] >= TARGETS["registration_hz"],
    }


def print_table(results: dict[str, Any]) -> None:
    print(f"{'stage':<22}{'p50 ms':>9}{'p99 ms':>9}{'mean ms':>9}{'n':>7}")
    for name, s in results["stages_ms"].items():
        print(f"{name:<22}{s['p50']:>9.2f}{s['p99']:>9.2f}{s['mean']:>9.2f}{s['n']:>7}")
    for name in ("capture_to_publish_ms", "capture_to_receive_ms"):
        s = results[name]
        print(f"{name.removesuffix('_ms'):<22}{s['p50']:>9.2f}{s['p99']:>9.2f}{s['mean']:>9.2f}{s['n']:>7}")
    print(f"fps {results['fps']:.1f} (received {results['received_fps']:.1f}, pairs {results['pairs_fps']:.1f}, "
          f"stale pairs dropped {results['stale_pairs_dropped']}), registration {results['registration_hz']:.1f} Hz "
          f"({results['registration_rejected']} rejected), CPU {results['cpu_utilisation']:.2f} of "
          f"{results['cpu_count']} cores")
    marks = ", ".join(f"{k} {'ok' if ok else 'MISSED'}" for k, ok in results["targets_met"].items())
    print(f"targets {TARGETS}: {marks}")


def run(args: argparse.Namespace) -> int:
    setup_logging("DEBUG" if getattr(args, "verbose", False) else "WARNING")
    config = load_or_report(args.rig)
    if config is None:
        return exit_codes.BAD_CONFIG
    with tempfile.TemporaryDirectory(prefix="busref-bench-") as tmp:
        endpoint = args.endpoint or f"ipc://{tmp}/bench.sock"
        daemon = Daemon(config, endpoints=[endpoint], metrics_port=0)
        counter: HeaderCounter | None = None
        try:
            daemon.start()
            counter = HeaderCounter(endpoint)
            counter.start()
            results = measure(daemon, counter, args.seconds, args.warmup)
        except StartupError as exc:
            log.error("%s (exit code %d)", exc, exc.exit_code)
            return exc.exit_code
        finally:
            if counter is not None:
                counter.stop()
            daemon.stop()
    results["rig"] = recorded_path(args.rig)
    for graph, facts in results["backends"].items():
        if graph != "per_frame":  # its "path" is cpu or device, not a file
            facts["path"] = recorded_path(facts["path"])
    results["targets"] = TARGETS
    results["targets_met"] = verdict(results)
    print_table(results)
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2))
        print(f"results written to {args.json}")
    return exit_codes.OK
