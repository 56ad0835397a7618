"""``busref run --rig FILE``: the rig daemon in the foreground until SIGINT/SIGTERM.

Exit codes are those of :mod:`busref.runtime.exit_codes`: 0 after a clean stop by signal, also
one received during start-up (:mod:`busref.runtime.shutdown`); 2 for any configuration error,
in the rig file or on the command line.
"""

from __future__ import annotations

import argparse
import logging
import signal
from pathlib import Path

from busref.rig_config import DEMO_RIG, RigConfig, RigConfigError, load_rig
from busref.rig_config.schema import check_endpoints
from busref.runtime import exit_codes, shutdown
from busref.runtime.daemon import Daemon, StartupError, StartupInterrupted
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
    parser.add_argument("--metrics-port", type=port, default=None,
                        help="serve Prometheus metrics on this port (overrides metrics.port; 0 = off)")
    parser.add_argument("--endpoint", action="append", default=None, metavar="ENDPOINT",
                        help="publish here instead of publisher.endpoints (repeatable)")
    parser.add_argument("--camera-timeout", type=positive, default=10.0, metavar="SECONDS",
                        help=f"exit with code {exit_codes.NO_CAMERA} if a camera delivers no frame this long "
                             "after start")


def port(text: str) -> int:
    """An argparse type: a TCP port, 0..65535 (a usage error, exit code 2, otherwise)."""
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be a TCP port 0..65535, got {text}")
    return value


def positive(text: str) -> float:
    """An argparse type: a number > 0."""
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def load_or_report(path: Path) -> RigConfig | None:
    """The validated rig, or None after logging the file's errors (one message listing them all)."""
    try:
        return load_rig(path)
    except RigConfigError as exc:
        log.error("%s", exc)
        return None


def run(args: argparse.Namespace) -> int:
    # busref's main installed the handlers before importing this module; a caller that did not
    # come through it (a test) gets them here, and its own back at the end.
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    shutdown.install()
    try:
        return _run(args)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _stopped_during_start_up(where: str = "before the daemon was created") -> int:
    log.info("received %s during start-up, stopping (%s)", shutdown.received(), where)
    return exit_codes.OK


def _run(args: argparse.Namespace) -> int:
    # Plain logging until the rig file says otherwise, so its own errors are reported too.
    setup_logging("DEBUG" if getattr(args, "verbose", False) else "INFO", json_lines=args.log_json)
    if shutdown.REQUESTED.is_set():
        return _stopped_during_start_up()
    config = load_or_report(args.rig)
    if config is None:
        return exit_codes.BAD_CONFIG
    if args.endpoint is not None:
        try:
            check_endpoints(args.endpoint)
        except ValueError as exc:
            log.error("--endpoint: %s (exit code %d: %s)", exc, exit_codes.BAD_CONFIG,
                      exit_codes.DESCRIPTIONS[exit_codes.BAD_CONFIG])
            return exit_codes.BAD_CONFIG
    level = "DEBUG" if getattr(args, "verbose", False) else config.logging.level
    setup_logging(level, json_lines=args.log_json or config.logging.json_)
    daemon = Daemon(config, camera_timeout_s=args.camera_timeout, endpoints=args.endpoint,
                    metrics_port=args.metrics_port, interrupt=shutdown.REQUESTED)
    try:
        daemon.start()
        while not shutdown.REQUESTED.wait(0.2):
            pass
        log.info("received %s, stopping", shutdown.received())
        return exit_codes.OK
    except StartupInterrupted as exc:
        return _stopped_during_start_up(str(exc))
    except StartupError as exc:
        log.error("%s (exit code %d: %s)", exc, exc.exit_code, exit_codes.DESCRIPTIONS[exc.exit_code])
        return exc.exit_code
    finally:
        daemon.stop()
