#!/usr/bin/env bash
# GPU smoke benchmark: ViT-B/16 (random init) + SD-LoRA, 2 tasks of synthetic 224x224 images; prints
# training img/s, merged-inference img/s and peak GPU memory. Extra arguments go to gpu_smoke.py, e.g.
#   benchmarks/gpu_smoke.sh --batch-size 64 --mode paper
#   benchmarks/gpu_smoke.sh --device cpu --tiny          # seconds, no GPU needed
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python}"
if command -v nvidia-smi >/dev/null 2>&1; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
fi
exec "$PYTHON" benchmarks/gpu_smoke.py "$@"
