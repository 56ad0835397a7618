#!/usr/bin/env bash
# Train the three stages on one GPU (the recipe of the shipped weights; MODEL_CARD.md).
# usage: scripts/train_gpu.sh DATA_DIR OUT_DIR [BUS_MIN FUSION_MIN REG_MIN]
set -euo pipefail
data=${1:?data folder (RoadScene layout)}; out=${2:?output folder}
bus_min=${3:-1.2}; fusion_min=${4:-1.8}; reg_min=${5:-4.8}
py=${PYTHON:-python3}
"$py" -m busref train bus --data "$data" --config configs/gpu.yaml --out "$out" --max-minutes "$bus_min"
"$py" -m busref train fusion --data "$data" --config configs/gpu.yaml --out "$out" --init "$out/bus.pt" \
  --max-minutes "$fusion_min"
"$py" -m busref train registration --data "$data" --config configs/gpu.yaml --out "$out" --init "$out/fusion.pt" \
  --max-minutes "$reg_min"
