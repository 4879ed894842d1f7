#!/usr/bin/env bash
# The prepared GPU check of the fast pre-training path and the downstream cost (bench/gpu_check.py).
#
#   bash bench/gpu_check.sh OUT_DIR        # writes OUT_DIR/gpu_check.md, gpu_check.json, gpu_check.log
#
# Needs an NVIDIA GPU, python with torch (CUDA build) and numpy; run it from anywhere in this source tree,
# installed or not (nothing is downloaded or installed). training.downstream.run also needs tqdm and optuna: where
# they are missing, the downstream rows say so and the rest runs. Finishes within 8 minutes: the check stops
# starting rows after 7 (a row that was not run says so) and is killed at 7 min 50 s; the markdown file is
# rewritten after every row, so what ran is kept.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="${1:?usage: bash bench/gpu_check.sh OUT_DIR}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"
cd "$here"
python=${PYTHON:-python}
{
  echo "== $(date -u +%FT%TZ) $(uname -srm)"
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader \
    || echo "nvidia-smi not found"
  "$python" - <<'PY'
import importlib.util as u
mods = ["torch", "numpy", "tqdm", "optuna", "onnx", "onnxruntime", "triton"]
print("modules:", ", ".join(f"{m} {'yes' if u.find_spec(m) else 'MISSING'}" for m in mods))
import torch
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())
PY
} 2>&1 | tee "$out/gpu_check.log"
status=0
timeout --signal=TERM --kill-after=10 470 "$python" bench/gpu_check.py --device cuda --budget-s 420 \
  --out "$out/gpu_check.md" --json "$out/gpu_check.json" 2>&1 | tee -a "$out/gpu_check.log" || status=$?
echo "exit status $status (0: every row ran; 3: some rows failed or were skipped; 124: cut at the time limit)" \
  | tee -a "$out/gpu_check.log"
exit "$status"
