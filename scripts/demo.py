"""The main job on the built-in default: the daemon on the synthetic demo rig, a watcher that saves
a contact sheet and a short clip of the fused stream, then both stopped cleanly.

usage: python scripts/demo.py [--out out/demo] [--seconds 8]
"""

from __future__ import annotations

import argparse
import logging
import signal
import subprocess
import sys
import time
from pathlib import Path

log = logging.getLogger("demo")
ROOT = Path(__file__).resolve().parents[1]
ENDPOINT = "tcp://127.0.0.1:5555"  # the publisher of the demo rig (rig_config/demo.yaml, busref run's default)


#: How long the daemon may take to publish its first frame. Building the ONNX Runtime session of the
#: register graph (its 32 unrolled Lucas-Kanade iterations) alone takes ~5 s on the 2-core
#: development CPU; the watcher's recording starts after the first frame, not before it.
START_TIMEOUT_S = 60.0


def first_frame(daemon: subprocess.Popen, timeout_s: float) -> bool:
    """Wait until the demo rig publishes a fused frame; False if the daemon exits or time runs out."""
    from busref.client.subscriber import Subscriber  # pyzmq + numpy: the runtime install has both

    deadline = time.monotonic() + timeout_s
    with Subscriber(ENDPOINT, silence_timeout_s=None) as sub:
        while time.monotonic() < deadline and daemon.poll() is None:
            if sub.recv(timeout_s=0.5) is not None:
                return True
    return False


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("out/demo"))
    parser.add_argument("--seconds", type=float, default=8.0, help="how long the watcher records")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args.out.mkdir(parents=True, exist_ok=True)
    cli = [sys.executable, "-m", "busref"]
    daemon = subprocess.Popen([*cli, "run"], cwd=ROOT)  # no --rig: the demo rig shipped in the package
    try:
        if not first_frame(daemon, START_TIMEOUT_S):
            log.error("busref run published nothing within %.0f s (exit code %s)", START_TIMEOUT_S, daemon.poll())
            return daemon.poll() or 1
        watch = subprocess.run([*cli, "watch", ENDPOINT, "--seconds", str(args.seconds),
                                "--contact-sheet", str(args.out / "contact_sheet.png"),
                                "--video", str(args.out / "fused.avi")], cwd=ROOT)
    finally:
        daemon.send_signal(signal.SIGTERM)
        try:
            daemon.wait(timeout=5)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait()
    log.info("daemon stopped with code %s; watcher exited %s", daemon.returncode, watch.returncode)
    log.info("contact sheet: %s  clip: %s", args.out / "contact_sheet.png", args.out / "fused.avi")
    return watch.returncode or daemon.returncode


if __name__ == "__main__":
    raise SystemExit(main())
