#!/usr/bin/env bash
# The downstream comparison of docs/results.md at a size that fits a 2-core CPU, end to end:
# simulated scene pair -> four point-wise encoders (uni-/bi-modal x corruption 0.2/0.6) -> tasks 1 and 2
# (run side by side, one core each) -> uni-modal encoders on real Belgium pixels -> the real-parcel task
# -> the report. Resumable: rerunning skips finished pre-training outputs and recorded downstream runs.
#
#   bash bench/run_comparison.sh [RUN_DIR] [VARIANTS] [REAL_VARIANTS]   # defaults: runs/cmp 2 3 (the published run)
#
# Publish: cp RUN_DIR/results.jsonl docs/results/ &&
#          python -m training.evaluate --results docs/results/results.jsonl --out docs/results
set -euo pipefail
cd "$(dirname "$0")/.."
S=${1:-runs/cmp}
VARIANTS=${2:-2}
REAL_VARIANTS=${3:-3}
mkdir -p "$S"
log() { printf '[%s] %s\n' "$(date -u +%H:%M:%S)" "$*"; }

if [ ! -d "$S/sim/scene_b" ]; then
  log "simulate"
  python -m training.simulate --out "$S/sim" --size-px 96 --n-fields 200 --n-stamps 36 --ps-interval-days 10 --seed 0
fi

SMALL=(--config training/configs/pretrain_pointwise.toml --set epochs=5 --set batch_size=512
       --set encoder.hidden=128 --set encoder.out_dim=128 --set projector.hidden=128 --set projector.out=128)
ENC=()
for mode in unimodal bimodal; do for c in 0.2 0.6; do
  out="$S/enc_${mode}_$c"
  if [ ! -f "$out/encoder.pt" ]; then
    log "pre-train $mode $c"
    python -m training.pretrain --mode "$mode" --alignment point --corruption "$c" --data "$S/sim" --out "$out" \
      "${SMALL[@]}" --set encoder.n_layers=8 --set data.pixels_per_stamp=500 --no-progress
  fi
  ENC+=("${mode}_$c=$out/encoder.pt")
done; done
log "downstream tasks 1 and 2 ($VARIANTS variants per family)"
PIDS=()
for task in 1 2; do
  python -m training.downstream --task "$task" --data "$S/sim" --config training/configs/downstream_cpu.toml \
    --variants "$VARIANTS" --encoders "${ENC[@]}" --out "$S/ds_$task" --no-progress > "$S/ds_$task.log" 2>&1 &
  PIDS+=($!)
done
for i in 0 1; do  # a bare `wait` would return 0 even if a task failed
  wait "${PIDS[$i]}" || { log "task $((i + 1)) failed: see $S/ds_$((i + 1)).log"; exit 1; }
done

if [ ! -f "$S/real_pixels.npz" ]; then
  log "real pixels"
  python -m training.data.stack_pixels sample_data/belgium_2021/s2_stack.tif "$S/real_pixels.npz"
fi
for c in 0.2 0.6; do
  out="$S/real_u_$c"
  if [ ! -f "$out/encoder.pt" ]; then
    log "pre-train real unimodal $c"
    python -m training.pretrain --mode unimodal --alignment point --corruption "$c" --data "$S/real_pixels.npz" \
      --out "$out" "${SMALL[@]}" --set encoder.n_layers=4 --no-progress
  fi
done
log "downstream task real ($REAL_VARIANTS variants per family)"
python -m training.downstream --task real --season 2020 \
  --data sample_data/worldcereal/2021_BEL_LPIS-Flanders_POLY_110_monthly.parquet \
  --config training/configs/downstream_cpu.toml --variants "$REAL_VARIANTS" --set epochs=30 \
  --encoders "unimodal_0.2=$S/real_u_0.2/encoder.pt" "unimodal_0.6=$S/real_u_0.6/encoder.pt" \
  --out "$S/ds_real" --no-progress > "$S/ds_real.log" 2>&1

cat "$S/ds_1/results.jsonl" "$S/ds_2/results.jsonl" "$S/ds_real/results.jsonl" > "$S/results.jsonl"
log "report"
cropmap evaluate protocol --results "$S/results.jsonl" -o "$S/report" --overwrite
log "done: $S/report"
