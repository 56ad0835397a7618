"""SIGINT/SIGTERM for ``busref run``: caught from the first moment, acted on between steps.

Importing the daemon's dependencies (OpenCV, ONNX Runtime, pyzmq) and loading its graphs takes
seconds; a supervisor's SIGTERM in that time used to end the process with status 143 and no log
line. ``busref`` calls :func:`install` before it imports the subcommand; a signal only sets
:data:`REQUESTED` (and is remembered for the log, which may not be set up yet), and
``busref run`` checks it between start-up steps and stops cleanly with exit code 0.

Imports nothing outside the standard library, like :mod:`busref.runtime.exit_codes`.
"""

from __future__ import annotations

import signal
import threading

#: Set by the first SIGINT or SIGTERM.
REQUESTED = threading.Event()
_received: list[str] = []


def _on_signal(signum: int, _frame: object) -> None:
    _received.append(signal.Signals(signum).name)
    REQUESTED.set()


def install() -> None:
    """Catch SIGINT and SIGTERM from now on (main thread only, as Python requires)."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _on_signal)


def received() -> str:
    """The name of the first signal received (``SIGTERM``), or "" before any."""
    return _received[0] if _received else ""
