"""``busref run --rig FILE``: the rig daemon in the foreground until SIGINT/SIGTERM.

Exit codes are those of :mod:`busref.runtime.exit_codes` (0 after a clean stop by signal).
"""

from __future__ import annotations

import argparse
import logging
import signal
import threading
from pathlib import Path

from busref.rig_config import DEMO_RIG, RigConfig, RigConfigError, load_rig
from busref.runtime import exit_codes
from busref.runtime.daemon import Daemon, StartupError
from busref.runtime.logs import setup_logging

log = logging.getLogger("busref.run")


def add_rig_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rig", type=Path, default=DEMO_RIG,
                        help="rig YAML file (default: the built-in synthetic demo rig)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = exit_codes.help_table()
    add_rig_argument(parser)
    parser.add_argument("--log-json", action="store_true", help="one JSON object per log line "
                                                                "(overrides logging.json in the rig file)")
    parser.add_argument("--metrics-port", type=int, default=None,
                        help="serve Prometheus metrics on this port (overrides metrics.port; 0 = off)")
    parser.add_argument("--endpoint", action="append", default=None, metavar="ENDPOINT",
                        help="publish here instead of publisher.endpoints (repeatable)")
    parser.add_argument("--camera-timeout", type=float, default=10.0, metavar="SECONDS",
                        help=f"exit with code {exit_codes.NO_CAMERA} if a camera delivers no frame this long "
                             "after start")


def load_or_report(path: Path) -> RigConfig | None:
    """The validated rig, or None after logging the file's errors (one message listing them all)."""
    try:
        return load_rig(path)
    except RigConfigError as exc:
        log.error("%s", exc)
        return None


def run(args: argparse.Namespace) -> int:
    # Plain logging until the rig file says otherwise, so its own errors are reported too.
    setup_logging("DEBUG" if getattr(args, "verbose", False) else "INFO", json_lines=args.log_json)
    config = load_or_report(args.rig)
    if config is None:
        return exit_codes.BAD_CONFIG
    level = "DEBUG" if getattr(args, "verbose", False) else config.logging.level
    setup_logging(level, json_lines=args.log_json or config.logging.json_)

    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        log.info("received %s, stopping", signal.Signals(signum).name)
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    daemon = Daemon(config, camera_timeout_s=args.camera_timeout, endpoints=args.endpoint,
                    metrics_port=args.metrics_port, interrupt=stop)
    try:
        daemon.start()
        while not stop.wait(0.2):
            pass
        return exit_codes.OK
    except StartupError as exc:
        log.error("%s (exit code %d: %s)", exc, exc.exit_code, exit_codes.DESCRIPTIONS[exc.exit_code])
        return exc.exit_code
    finally:
        daemon.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
