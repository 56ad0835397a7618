"""Exit codes of the ``busref`` command: the one place they are defined, documented in docs/runtime.md.

A supervisor (systemd, a container runtime) can tell from the code whether restarting helps:
2, 3, 6 and 8 need a person to fix a file or an installation; 4 and 5 may clear up on their own
(camera plugged in, port freed). This module imports nothing, so ``busref/cli.py`` can use it
before (or without) loading a subcommand and its dependencies.
"""

from __future__ import annotations

OK = 0  # ran and stopped cleanly (also after SIGINT/SIGTERM)
FAILURE = 1  # unexpected internal error (a bug: the log has the traceback)
BAD_CONFIG = 2  # a configuration error: the rig file, an option, or a file they name (a CURVE key)
MISSING_MODEL = 3  # a configured model file does not exist
NO_CAMERA = 4  # a camera delivered no frame within the startup timeout
BIND_FAILED = 5  # a publisher endpoint or the metrics port cannot be bound
BAD_MODEL = 6  # a model exists but cannot be loaded, is not a busref graph, or no backend can run it
NO_DATA = 7  # busref watch / calibrate: no frame or no usable estimate was received
MISSING_DEPENDENCY = 8  # the subcommand needs an optional Python package that is not installed
UNAVAILABLE = 9  # busref export engine: this machine has no TensorRT or no usable GPU
SOAK_FAILED = 10  # busref bench --soak: memory grew beyond the bound after settling

#: What each code means, as logged and as listed in docs/runtime.md and ``busref run --help``.
DESCRIPTIONS: dict[int, str] = {
    OK: "stopped cleanly (also after SIGINT/SIGTERM, even one received during start-up)",
    FAILURE: "unexpected internal error (the log has the traceback)",
    # argparse exits with 2 on a usage error; both need a person to fix the invocation.
    BAD_CONFIG: "a configuration error: a bad rig file or option (an endpoint such as foo://bar or an ipc path in "
                "a folder that does not exist), or a file they name (e.g. a CURVE key) is unreadable; busref usage "
                "errors too",
    MISSING_MODEL: "a configured model file does not exist",
    NO_CAMERA: "a camera delivered no frame within --camera-timeout",
    BIND_FAILED: "a publisher endpoint or the metrics port cannot be bound now (in use, or its address or "
                 "interface is not on this host yet)",
    BAD_MODEL: "a model exists but cannot be loaded / is not a busref graph / no backend can run it",
    NO_DATA: "busref watch: no frame was received; busref calibrate: no usable estimate",
    MISSING_DEPENDENCY: "the command needs a Python package that is not installed (the message names the pip extra)",
    UNAVAILABLE: "busref export engine: this machine has no TensorRT or no usable GPU (the message says which)",
    SOAK_FAILED: "busref bench --soak: memory grew by more than --rss-bound-mb after --settle minutes",
}

#: Whether a supervisor restarting the daemon can help ("" where the question does not arise).
RESTART_HELPS: dict[int, str] = {
    OK: "",
    FAILURE: "maybe",
    BAD_CONFIG: "no",
    MISSING_MODEL: "no",
    NO_CAMERA: "yes (camera plugged in later)",
    BIND_FAILED: "yes (port freed)",
    BAD_MODEL: "no",
    NO_DATA: "",
    MISSING_DEPENDENCY: "no",
    UNAVAILABLE: "",
    SOAK_FAILED: "",
}


def help_table() -> str:
    """The codes as plain text for a ``--help`` epilog (use with ``RawDescriptionHelpFormatter``)."""
    lines = ["exit codes:"]
    for code, meaning in DESCRIPTIONS.items():
        restart = f" [restart helps: {RESTART_HELPS[code]}]" if RESTART_HELPS[code] else ""
        lines.append(f"  {code}  {meaning}{restart}")
    return "\n".join(lines)
