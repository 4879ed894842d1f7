#!/usr/bin/env bash
# The whole chain on simulated data, one stage per command, with the wall time of each:
#   simulate -> bi-modal pre-training -> downstream (task 1, gap-filled as inference does) -> exporters --best
#   -> cropmap classify on the OTHER scene's stack -> map accuracy against that scene's labelled fields.
# Usage: bash scripts/demo_chain.sh OUT_DIR [PRESET] [EPOCHS]    (PRESET: a training.simulate.run preset; see docs/retrain.md)
set -euo pipefail
out=${1:?usage: demo_chain.sh OUT_DIR [PRESET] [EPOCHS]}
preset=${2:-default}
epochs=${3:-10}
mkdir -p "$out"
times="$out/stage_seconds.txt"
: > "$times"
stage() {  # stage NAME command...
    local name=$1; shift
    local t0=$SECONDS
    echo "== $name: $*"
    "$@"
    echo "$name $((SECONDS - t0))" >> "$times"
}
pretrain_size=()
downstream_size=(--set n_train_per_class=60 --set n_val_per_class=30 --set batch_size=16)
if [ "$preset" = tiny ]; then
    pretrain_size=(--set encoder.hidden=32 --set encoder.n_layers=2 --set encoder.out_dim=16 --set projector.hidden=32
                   --set projector.out=16 --set data.pixels_per_stamp=100 --set batch_size=256)
    # Smoke size: the papers' fixed-epoch recipe keeps the downstream stage to seconds (the default, robust
    # recipe trains every run for at least 800 steps).
    downstream_size=(--set n_train_per_class=20 --set n_val_per_class=10 --set batch_size=16 --recipe papers)
fi
[ -d "$out/sim/scene_a" ] || stage simulate python -m training.simulate --out "$out/sim" --preset "$preset"
[ -f "$out/bimodal/encoder.pt" ] || stage pretrain python -m training.pretrain --mode bimodal --alignment point \
    --corruption 0.2 --data "$out/sim" --out "$out/bimodal" --config training/configs/pretrain_pointwise.toml \
    --set epochs=2 "${pretrain_size[@]}" --no-progress
stage downstream python -m training.downstream --task 1 --data "$out/sim" --encoders "bimodal_0.2=$out/bimodal/encoder.pt" \
    --families lstm,inception_time,transformer --variants 1 --default-variant --epochs "$epochs" --set fill=linear \
    "${downstream_size[@]}" --out "$out/runs" --no-progress
stage export python -m exporters --best "$out/runs" -o "$out/model.onnx" --overwrite
stage classify cropmap classify "$out/sim/scene_b/s2_stack.tif" --mask "$out/sim/scene_b/fields.gpkg" \
    --model "$out/model.onnx" -o "$out/scene_b_map.tif" --overwrite
stage score cropmap evaluate mapscore "$out/scene_b_map.tif" "$out/sim/scene_b/fields.gpkg" -o "$out/score.json" --overwrite
echo "== seconds per stage"; cat "$times"
