"""Exit codes of ``busref run`` (and the other runtime commands): one place, documented in docs/runtime.md.

A supervisor (systemd, a container runtime) can tell from the code whether restarting helps:
2, 3 and 6 need a person to fix a file; 4 and 5 may clear up on their own (camera plugged in,
port freed).
"""

from __future__ import annotations

OK = 0  # ran and stopped cleanly (also after SIGINT/SIGTERM)
FAILURE = 1  # unexpected internal error (a bug: the log has the traceback)
BAD_CONFIG = 2  # the rig file (or a file it names, such as a CURVE key) is invalid or unreadable
MISSING_MODEL = 3  # a configured model file does not exist
NO_CAMERA = 4  # a camera delivered no frame within the startup timeout
BIND_FAILED = 5  # a publisher endpoint or the metrics port cannot be bound
BAD_MODEL = 6  # a model exists but cannot be loaded, is not a busref graph, or no backend can run it
NO_DATA = 7  # busref watch: no frame was received

DESCRIPTIONS: dict[int, str] = {
    OK: "stopped cleanly",
    FAILURE: "unexpected internal error",
    BAD_CONFIG: "invalid rig file or a file it names",
    MISSING_MODEL: "model file missing",
    NO_CAMERA: "a camera delivered no frame",
    BIND_FAILED: "cannot bind a publisher endpoint or the metrics port",
    BAD_MODEL: "model unreadable or not runnable",
    NO_DATA: "no frame received",
}
