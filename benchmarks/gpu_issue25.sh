#!/usr/bin/env bash
# Issue 25's GPU figures in one prepared call (a lent machine gives a session about 15 minutes, start included):
#   1. the eager SD-LoRA step against the frozen forward + backward at 1 and 20 tasks (ViT-B/16, batch 128, bf16);
#   2. the same through CUDA graphs (train.compile: reduce-overhead);
#   3. the engine's whole job against its bare floor (synthetic tiny-ViT case), DataLoader workers 0 and 4,
#      i.e. collate and pinning overlapped with compute in the feature and evaluation passes;
#   4. the same as 2 with the default inductor compile (last: the longest to compile).
# Each step has its own time limit (seconds below) and a step that runs out is reported, not fatal, so the
# ones before it still print. Logs go to $OUT when it is set (the device tool brings them back), else to /tmp.
#
#   device run:  bash benchmarks/gpu_issue25.sh          (timeout_s 570: the five limits sum to 540)
#   CPU check:   GPU_ISSUE25_TINY=1 bash benchmarks/gpu_issue25.sh   (tiny ViT, a minute; what CI-like checks run)
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PYTHON="${PYTHON:-python3}"
LOGS="${OUT:-/tmp/gpu_issue25}"
mkdir -p "$LOGS"
if [[ "${GPU_ISSUE25_TINY:-0}" == 1 ]]; then
  SMOKE=(--device cpu --tiny --batch-size 8 --tasks 3 --timed-tasks 1 3 --steps 2 --warmup 1 --eval-batches 2)
  ENGINE=(--device cpu --threads 1 --reps 1 --warmup 0)
  LIMITS=(120 240 240 240)
else
  SMOKE=(--tasks 20 --timed-tasks 1 20 --steps 30)
  ENGINE=(--device cuda --reps 2 --warmup 1)
  LIMITS=(60 180 60 180)
fi
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
"$PYTHON" -c "import torch, timm; print('torch', torch.__version__, 'timm', timm.__version__, 'cuda', torch.cuda.is_available())"

step() {  # step NAME LIMIT_S COMMAND...
  local name=$1 limit=$2
  shift 2
  echo "== $name (limit ${limit} s)"
  local start=$SECONDS
  timeout "$limit" "$@" 2>&1 | tee "$LOGS/$name.log"
  local rc=${PIPESTATUS[0]}
  echo "== $name: exit $rc after $((SECONDS - start)) s$([[ $rc == 124 ]] && echo ' (ran out of time)')"
}

step eager "${LIMITS[0]}" "$PYTHON" benchmarks/gpu_smoke.py "${SMOKE[@]}"
step cuda_graphs "${LIMITS[1]}" "$PYTHON" benchmarks/gpu_smoke.py "${SMOKE[@]}" --compile reduce-overhead
step workers "${LIMITS[2]}" "$PYTHON" benchmarks/engine_overhead.py tiny-vit "${ENGINE[@]}" \
  --set train.num_workers=0 --json "$LOGS/workers0.json"
step workers4 "${LIMITS[2]}" "$PYTHON" benchmarks/engine_overhead.py tiny-vit "${ENGINE[@]}" \
  --set train.num_workers=4 --json "$LOGS/workers4.json"
step inductor "${LIMITS[3]}" "$PYTHON" benchmarks/gpu_smoke.py "${SMOKE[@]}" --compile default
