"""``busref bench --rig FILE --seconds N --json OUT``: run the daemon and measure where the time goes.

The daemon runs in this process, publishing on a private ipc endpoint (unless ``--endpoint``)
to a subscriber that only reads headers, so the numbers are the daemon's, not a viewer's.
Stage latencies are per pair on the inference thread; ``register`` runs on its own thread.

``--soak MINUTES`` runs the same set-up for a long time instead and reports memory, frame rate
and latency window by window (:mod:`busref.runtime.soak`); it exits with code 10 when memory
grew beyond ``--rss-bound-mb`` after ``--settle`` minutes.
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
from busref.runtime.metrics import Histogram
from busref.runtime.registration.geometry import ir_pixels
from busref.runtime.soak import Soak
from busref.runtime.synthetic import true_ir_pixels

log = logging.getLogger("busref.bench")

#: The speed targets of the project (640x512, ONNX Runtime on a 2-core CPU).
TARGETS = {"fps": 25.0, "capture_to_publish_p99_ms": 80.0, "registration_hz": 5.0}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_rig_argument(parser)
    parser.add_argument("--seconds", type=float, default=20.0, help="measured duration")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds run before measuring")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--endpoint", help="publish here instead of a private ipc endpoint")
    soak = parser.add_argument_group("soak (a long run watching memory, fps and latency for drift)")
    soak.add_argument("--soak", type=positive, metavar="MINUTES", help="run this long instead of --seconds")
    soak.add_argument("--window", type=positive, default=60.0, metavar="SECONDS",
                      help="one report line (and JSON entry) per this many seconds (default 60)")
    soak.add_argument("--settle", type=float, default=5.0, metavar="MINUTES",
                      help="memory is measured from this point on (default 5)")
    soak.add_argument("--rss-bound-mb", type=float, default=2.0, metavar="MB",
                      help=f"exit with code {exit_codes.SOAK_FAILED} if memory grew more after settling "
                           "(default 2)")
    soak.add_argument("--tracemalloc", action="store_true",
                      help="also list the allocation sites that grew (slows the daemon down)")


def positive(text: str) -> float:
    """An argparse type: a number > 0."""
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


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
        # A ring, not a list: a soak reads headers for hours in the process it measures.
        self.latency = Histogram()
        self.received = 0

    def run(self) -> None:
        while not self._halt.is_set():
            if not self._socket.poll(50):
                continue
            _, raw, _ = self._socket.recv_multipart(copy=False)
            header = json.loads(raw.bytes)
            self.received += 1
            self.latency.observe(time.time() - min(header["t_capture_ir"], header["t_capture_rgb"]))

    def reset(self) -> None:
        self.latency.reset()
        self.received = 0

    def stop(self) -> None:
        self._halt.set()
        self.join(1.0)
        self._socket.close()


def _ms(values: np.ndarray) -> dict[str, float]:
    if values.size == 0:
        return {"p50": float("nan"), "p99": float("nan"), "mean": float("nan"), "n": 0}
    return {"p50": float(np.percentile(values, 50) * 1e3), "p99": float(np.percentile(values, 99) * 1e3),
            "mean": float(values.mean() * 1e3), "n": int(values.size)}


#: Seconds between two samples of the registration's end-point error on a synthetic rig.
EPE_EVERY_S = 0.5


def registration_epe(daemon: Daemon, truth: tuple[np.ndarray, np.ndarray]) -> float:
    """Mean distance (IR pixels) between where the registration in force and the truth
    (:func:`busref.runtime.synthetic.true_ir_pixels`) send each published pixel, over the pixels
    whose true IR location is inside the IR frame; NaN before the first accepted estimate."""
    pipe = daemon.pipeline
    assert pipe is not None
    state = pipe.registration.state
    if state is None:
        return float("nan")
    geometry = pipe.registration.geometry
    x, y = ir_pixels(state.grid, geometry.norm_to_ir, geometry.out_size)
    tx, ty = truth
    w, h = geometry.ir_size
    inside = (tx >= 0) & (tx <= w - 1) & (ty >= 0) & (ty <= h - 1)
    return float(np.hypot(x - tx, y - ty)[inside].mean())


def sample_epe(daemon: Daemon, truth: tuple[np.ndarray, np.ndarray] | None, seconds: float, started: float,
               samples: list[list[float]]) -> None:
    """Wait ``seconds``; on a synthetic rig, append ``[seconds since start, EPE]`` every :data:`EPE_EVERY_S`."""
    end = time.monotonic() + seconds
    while (now := time.monotonic()) < end:
        if truth is not None:
            samples.append([now - started, registration_epe(daemon, truth)])
        time.sleep(min(EPE_EVERY_S, max(end - time.monotonic(), 0.0)))


def epe_summary(samples: list[list[float]], warmup: float) -> dict[str, Any]:
    """The registration's error over the run: every sample, and of those after the warm-up the
    first, last, mean and largest (px); ``diverged`` when the last is more than 1 px above the best."""
    measured = np.array([e for t, e in samples if t >= warmup and np.isfinite(e)])
    out: dict[str, Any] = {"every_s": EPE_EVERY_S, "samples": [[round(t, 2), e] for t, e in samples]}
    if measured.size:
        out.update(first=float(measured[0]), last=float(measured[-1]), mean=float(measured.mean()),
                   max=float(measured.max()), diverged=bool(measured[-1] > measured.min() + 1.0))
    return out


def measure(daemon: Daemon, counter: HeaderCounter, seconds: float, warmup: float, *, started: float,
            truth: tuple[np.ndarray, np.ndarray] | None = None) -> dict[str, Any]:
    """Run ``warmup`` then ``seconds`` more and report; ``started`` is the daemon's start (monotonic s)."""
    pipe = daemon.pipeline
    assert pipe is not None
    samples: list[list[float]] = []
    sample_epe(daemon, truth, warmup - (time.monotonic() - started), started, samples)
    for hist in (*pipe.stages.values(), pipe.capture_to_publish):
        hist.reset()
    counter.reset()
    published0, runs0 = pipe.counters.published, pipe.registration.runs
    pairs0 = daemon.pairer.stats
    rejected0 = pipe.registration.filter.rejected
    cpu0, t0 = os.times(), time.monotonic()
    sample_epe(daemon, truth, seconds, started, samples)
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
        "capture_to_receive_ms": _ms(counter.latency.recent()),
        "stages_ms": {name: _ms(h.recent()) for name, h in pipe.stages.items()},
        "cpu_utilisation": ((cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)) / elapsed,
        "cpu_count": os.cpu_count(),
        "size": {"rgb": list(pipe.rgb_size), "fuse": list(pipe.out_size),
                 "registration": list(daemon.config.registration.size)},
        "backends": daemon.backend_facts(),
        **({"registration_epe_px": epe_summary(samples, warmup)} if truth is not None else {}),
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
    epe = results.get("registration_epe_px", {})
    if "last" in epe:
        print(f"registration error against the synthetic truth: {epe['first']:.2f} px after the warm-up, "
              f"{epe['last']:.2f} px at the end (mean {epe['mean']:.2f}, max {epe['max']:.2f}"
              f"{', DIVERGED' if epe['diverged'] else ''})")
    marks = ", ".join(f"{k} {'ok' if ok else 'MISSED'}" for k, ok in results["targets_met"].items())
    print(f"targets {TARGETS}: {marks}")


def print_window(soak: Soak) -> None:
    w = soak.windows[-1]
    print(f"{w.t_min:6.1f} min  RSS {w.rss_mb:8.2f} MB (floor {w.rss_floor_mb:8.2f})  {w.fps:5.1f} fps  "
          f"capture->publish p50 {w.capture_to_publish_p50_ms:6.1f} p99 {w.capture_to_publish_p99_ms:6.1f} ms  "
          f"CPU {w.cpu_utilisation:4.2f}  load {w.load_1m:5.2f}  threads {w.threads}", flush=True)


def print_soak(report: dict[str, Any]) -> None:
    s = report["summary"]
    if "rss_settled_mb" in s:
        print(f"RSS {s['rss_first_window_mb']:.2f} MB at the first window, {s['rss_settled_mb']:.2f} after "
              f"{s['settle_min']:g} min, {s['rss_end_mb']:.2f} at the end (floor {s['rss_floor_settled_mb']:.2f} -> "
              f"{s['rss_floor_end_mb']:.2f}); fps {s['fps_mean']:.1f} (trend {s['fps_trend_per_hour']:+.2f}/h), "
              f"p99 {s['capture_to_publish_p99_ms_mean']:.1f} ms "
              f"(trend {s['capture_to_publish_p99_ms_trend_per_hour']:+.2f} ms/h), load {s['load_1m_mean']:.2f}")
    verdict = "passed" if s["passed"] else "FAILED"
    print(f"soak {verdict}: RSS grew {s['rss_growth_after_settle_mb']:+.2f} MB after settling, by its trend "
          f"(bound {s['rss_bound_mb']:g} MB; the floor {s['rss_floor_growth_after_settle_mb']:+.2f} MB)")


def run(args: argparse.Namespace) -> int:
    setup_logging("DEBUG" if getattr(args, "verbose", False) else "WARNING")
    config = load_or_report(args.rig)
    if config is None:
        return exit_codes.BAD_CONFIG
    if args.soak is not None and args.soak <= args.settle:
        log.error("--soak %g must be longer than --settle %g (minutes)", args.soak, args.settle)
        return exit_codes.BAD_CONFIG
    with tempfile.TemporaryDirectory(prefix="busref-bench-") as tmp:
        endpoint = args.endpoint or f"ipc://{tmp}/bench.sock"
        daemon = Daemon(config, endpoints=[endpoint], metrics_port=0)
        counter: HeaderCounter | None = None
        try:
            started = time.monotonic()
            daemon.start()
            counter = HeaderCounter(endpoint)
            counter.start()
            if args.soak is not None:
                return soak(args, daemon, counter)
            truth = true_ir_pixels(config, daemon.pipeline.out_size) if daemon.pipeline is not None else None
            results = measure(daemon, counter, args.seconds, args.warmup, started=started, truth=truth)
        except StartupError as exc:
            log.error("%s (exit code %d)", exc, exc.exit_code)
            return exc.exit_code
        finally:
            if counter is not None:
                counter.stop()
            daemon.stop()
    results["rig"] = recorded_path(args.rig)
    results["backends"] = recorded_backends(results["backends"])
    results["targets"] = TARGETS
    results["targets_met"] = verdict(results)
    print_table(results)
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2))
        print(f"results written to {args.json}")
    return exit_codes.OK


def recorded_backends(backends: dict[str, dict[str, object]]) -> dict[str, dict[str, object]]:
    """``Daemon.backend_facts()`` with the graphs' paths as recorded in results (repository-relative)."""
    return {graph: facts if graph == "per_frame"  # its "path" is cpu or device, not a file
            else {**facts, "path": recorded_path(facts["path"])} for graph, facts in backends.items()}


def soak(args: argparse.Namespace, daemon: Daemon, counter: HeaderCounter) -> int:
    """Run the soak on a started daemon; the JSON (if asked for) is rewritten after every window."""
    command = {"rig": recorded_path(args.rig), "minutes": args.soak, "window_s": args.window,
               "settle_min": args.settle, "rss_bound_mb": args.rss_bound_mb}

    def save(run: Soak) -> None:
        if args.json is not None:
            report = {"command": command, **run.report(),
                      "backends": recorded_backends(daemon.backend_facts())}
            args.json.write_text(json.dumps(report, indent=2))

    def on_window(run: Soak) -> None:
        print_window(run)
        save(run)

    run = Soak(daemon, lambda: counter.received, minutes=args.soak, window_s=args.window,
               settle_min=args.settle, bound_mb=args.rss_bound_mb, trace=args.tracemalloc, on_window=on_window)
    run.run()
    save(run)  # once more: with --tracemalloc, the allocation sites are compared at the end
    print_soak(run.report())
    return exit_codes.OK if run.passed() else exit_codes.SOAK_FAILED
