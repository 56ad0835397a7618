#!/usr/bin/env bash
# The GPU check, in one short run on a machine with an NVIDIA GPU:
#   export the graphs (ONNX Runtime vs PyTorch), then 'busref doctor': GPU and CUDA buffer
#   round trip, ONNX Runtime CUDA vs CPU parity, TensorRT build + verify + timing at 640x512.
# Whatever the machine lacks (TensorRT, onnxruntime-gpu, pydantic...) is reported as skipped,
# never as a crash. Python wheels the image lacks may be carried in .whl/ (installed into a scratch
# folder made by mktemp and removed on exit, like every other scratch file of the run).
# usage: scripts/device_check.sh [OUT_DIR]      (default: $OUT, else out/device_check in the checkout)
# exit status: that of 'busref doctor' (0 = nothing failed), or 1 if the export failed.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
repo="$PWD"
out="${1:-${OUT:-$repo/out/device_check}}"
py="${PYTHON:-python3}"
mkdir -p "$out"
scratch="$(mktemp -d -t busref-device-check.XXXXXX)" || exit 1
trap 'rm -rf "$scratch"' EXIT
exec > >(tee "$out/device_check.log") 2>&1
export PYTHONUNBUFFERED=1

section() { printf '\n== %s\n' "$*"; }

if compgen -G ".whl/*.whl" >/dev/null; then
    section "carried wheels"
    "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$scratch/site" \
        .whl/*.whl && export PYTHONPATH="$scratch/site${PYTHONPATH:+:$PYTHONPATH}"
    ls .whl
fi

# Without an install, make the checkout importable as installed: busref.models, busref.runtime...
# are the folders models/, runtime/... (pyproject.toml package-dir), so link them under one busref/.
if ! "$py" -c "import busref.runtime" 2>/dev/null; then
    section "linking the checkout as the busref package"
    tree="$scratch/checkout"
    mkdir -p "$tree/busref"
    for entry in busref/*; do ln -s "$repo/$entry" "$tree/busref/"; done
    for folder in models export runtime rig_config weights; do ln -s "$repo/$folder" "$tree/busref/$folder"; done
    export PYTHONPATH="$tree${PYTHONPATH:+:$PYTHONPATH}"
    cd "$tree" || exit 1  # the checkout's own busref/ (the CLI alone) must not come first on the path
fi

section "machine"
nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv,noheader 2>&1 \
    || echo "nvidia-smi: not available"
"$py" - <<'EOF'
import importlib, platform
print("python", platform.python_version())
for name in ("torch", "onnx", "onnxruntime", "pydantic", "cv2", "yaml", "tensorrt", "cuda.bindings"):
    try:
        print(f"{name:14s}", getattr(importlib.import_module(name), "__version__", "installed"))
    except Exception as exc:
        print(f"{name:14s} missing ({type(exc).__name__}: {exc})")
EOF

section "checkpoint"
checkpoint="$repo/weights/busref.pt"
if [ ! -f "$checkpoint" ]; then
    checkpoint="$scratch/untrained.pt"
    echo "weights/busref.pt is absent: exporting an untrained model (numbers check the path, not quality)"
    "$py" - "$checkpoint" <<'EOF' || { echo "cannot make a checkpoint (torch or pydantic missing?)"; exit 1; }
import sys, torch
from busref.models.checkpoint import save_checkpoint
from busref.models.config import TrainConfig
from busref.models.networks import BusReF
torch.manual_seed(0)
config = TrainConfig()
save_checkpoint(sys.argv[1], model=BusReF(config.model), config=config, stage="registration", step=0,
                split_name="none", split_sha256="", metrics={})
EOF
fi
echo "$checkpoint"

section "export onnx (ONNX Runtime vs PyTorch)"
started=$SECONDS
if ! "$py" -m busref export onnx --checkpoint "$checkpoint" --out "$out/onnx"; then
    echo "export failed: nothing to check on the GPU"
    exit 1
fi
echo "export took $((SECONDS - started)) s"

section "busref doctor"
"$py" -m busref doctor --weights "$out/onnx" --engine-dir "$out/engines" --json "$out/doctor.json" --iterations 200
status=$?
section "done: doctor exit status $status; files in $out"
exit "$status"
