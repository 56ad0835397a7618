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
        time.sleep(2.0)  # let the cameras, models and publisher come up
        if daemon.poll() is not None:
            log.error("busref run exited early with code %s", daemon.returncode)
            return daemon.returncode or 1
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
