#!/usr/bin/env bash
# The install a rig gets, end to end: build the wheel (not editable), install it with the
# 'runtime' extra into a fresh virtual environment without torch, then, from a folder outside
# the checkout, run the daemon on the demo rig shipped inside the wheel until a subscriber
# (busref.client) has received frames. Proves that the weights and rig files are package data
# and that nothing reads the source tree.
#   usage: scripts/wheel_smoke.sh        (PYTHON=... picks the interpreter; default .venv's, else python3)
# Every step has a time limit; the daemon is stopped (TERM, then KILL) and the work folder
# removed on any exit.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
py="${PYTHON:-}"
if [ -z "$py" ]; then
    if [ -x "$root/.venv/bin/python" ]; then py="$root/.venv/bin/python"; else py=python3; fi
fi
frames="${BUSREF_SMOKE_FRAMES:-10}"
work="$(mktemp -d "${TMPDIR:-/tmp}/busref-wheel-smoke.XXXXXX")"
daemon=""

cleanup() {
    status=$?
    if [ -n "$daemon" ] && kill -0 "$daemon" 2>/dev/null; then
        kill -TERM "$daemon" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$daemon" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$daemon" 2>/dev/null || true
    fi
    if [ "$status" -ne 0 ] && [ -f "$work/daemon.log" ]; then
        echo "--- daemon log" >&2
        tail -n 40 "$work/daemon.log" >&2
    fi
    rm -rf "$work"
    exit "$status"
}
trap cleanup EXIT
step() { printf '== %s\n' "$*"; }

step "build the wheel"
timeout 300 "$py" -m pip wheel --no-deps --quiet --wheel-dir "$work/dist" "$root"
wheel="$(ls "$work"/dist/busref-*.whl)"
echo "$(basename "$wheel")"

step "install it with the runtime extra into a fresh venv"
timeout 60 "$py" -m venv "$work/venv"
bin="$work/venv/bin"
timeout 600 "$bin/python" -m pip install --quiet --disable-pip-version-check "$wheel[runtime]"

cd "$work"  # from here on nothing can come from the checkout
step "outside the checkout: no torch, and the package data resolves inside the venv"
timeout 60 "$bin/python" - "$work/venv" <<'EOF'
import importlib.util
import sys
from pathlib import Path

from busref.rig_config import DEMO_RIG, default_model_path, rig_file

venv = Path(sys.argv[1]).resolve()
assert importlib.util.find_spec("torch") is None, "torch is installed: the runtime must not need it"
for path in (DEMO_RIG, rig_file("demo_nir.yaml"), *(default_model_path(g, m) for g in ("register", "fuse")
                                                     for m in ("thermal", "nir"))):
    assert path.resolve().is_relative_to(venv) and path.is_file(), f"{path}: not package data in {venv}"
print("demo rig:", DEMO_RIG)
EOF
rig="$("$bin/python" -c 'from busref.rig_config import DEMO_RIG; print(DEMO_RIG)')"

step "busref run --rig <the packaged demo rig>"
endpoint="ipc://$work/busref.sock"  # not the rig's TCP port: another daemon may hold it
timeout --signal=TERM 180 "$bin/busref" run --rig "$rig" --endpoint "$endpoint" >"$work/daemon.log" 2>&1 &
daemon=$!

step "a subscriber receives $frames frames"
timeout 120 "$bin/python" - "$endpoint" "$frames" "$daemon" <<'EOF'
import os
import sys
import time

from busref.client import Subscriber

endpoint, wanted, daemon = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
received, deadline = 0, time.monotonic() + 90.0
with Subscriber(endpoint, silence_timeout_s=None) as sub:
    while received < wanted:
        os.kill(daemon, 0)  # ProcessLookupError: the daemon died (its log follows)
        if time.monotonic() > deadline:
            sys.exit(f"only {received} of {wanted} frames in 90 s")
        got = sub.recv(timeout_s=1.0)
        if got is None:
            continue
        _, header, image = got
        assert image.shape == (header.height, header.width, 3), (image.shape, header)
        received += 1
print(f"received {received} frames from {header.rig_id}, seq {header.seq}, {header.width}x{header.height} "
      f"{header.encoding}, registration {header.registration.source}, model {header.model_id}")
EOF

step "stop the daemon"
kill -TERM "$daemon"
code=0
wait "$daemon" || code=$?
daemon=""
if [ "$code" -ne 0 ]; then
    echo "busref run exited with $code after SIGTERM" >&2
    exit 1
fi
echo "wheel smoke test passed"
