"""The process's memory as the OS sees it, and handing freed heap memory back to the OS.

The pipeline allocates and frees a few MB of frame buffers per pair in several threads. glibc
serves buffers of that size from per-thread arenas once its adaptive mmap threshold has grown
past them, and keeps what is freed there for reuse: RSS then ratchets up by a few MB whenever
the machine's load lets more frames be in flight at once, and never comes down (a 15-minute
demo-rig run on a loaded 2-core machine: 337.8 -> 342.9 MB in three steps, with no live object
added). :func:`release_free_heap` (``malloc_trim``) returns those free pages; the daemon calls
it once a minute, which brought the same run's RSS down by about 25 MB and took the ratchet away.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from collections.abc import Callable

_PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")


def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, or None where the C library has none (musl, macOS)."""
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):
        return None


_TRIM = _malloc_trim()


def release_free_heap() -> bool:
    """Return the C heap's free pages to the OS; False where the C library cannot."""
    if _TRIM is None:
        return False
    _TRIM(0)
    return True


def rss_mb() -> float:
    """This process's resident set size in MiB (Linux: ``/proc/self/statm``)."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * _PAGE_BYTES / 2**20


def os_threads() -> int:
    """Threads of this process as the kernel counts them (libzmq's and ONNX Runtime's included)."""
    return len(os.listdir("/proc/self/task"))
