#!/usr/bin/env bash
# The path most users take, on files shaped like theirs, one stage per command with the wall time of each:
#   an S2 stack + labelled parcel polygons + PlanetScope scenes as delivered (own footprints, UDM2, another UTM zone)
#   -> bi-modal pairs -> bi-modal pre-training -> downstream on the stack + polygons -> exporters --best
#   -> cropmap classify on ANOTHER region's stack -> cropmap assess against that region's labelled fields.
# The simulator writes region A and B in those shapes (s2_stack.tif, fields.gpkg, planet_scenes/); replace them by
# your own files and the commands stay the same (docs/retrain.md, "Your own region, end to end").
# Usage: bash scripts/demo_own_data.sh OUT_DIR [PRESET] [EPOCHS]    (PRESET: a training.simulate.run preset)
set -euo pipefail
out=${1:?usage: demo_own_data.sh OUT_DIR [PRESET] [EPOCHS]}
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
a="$out/sim/scene_a" b="$out/sim/scene_b"
pretrain_size=()
# The simulated regions hold 3 to 8 fields per crop: keep classes down to 2 parcels (one on each side of the split).
downstream_size=(--set batch_size=32 --set min_class_parcels=2)
if [ "$preset" = tiny ]; then  # smoke size: 27 fields of 3 per crop, seconds per stage
    pretrain_size=(--set encoder.hidden=32 --set encoder.n_layers=2 --set encoder.out_dim=16 --set projector.hidden=32
                   --set projector.out=16 --set batch_size=256)
    # 2 training parcels per crop at this size: one of them picks the model (round(0.4 x 2); the default 20 % picks none)
    downstream_size=(--set batch_size=16 --recipe papers --set min_class_parcels=2 --set tree_trials=3
                     --set selection_holdout=0.4 --families lstm --variants 0)
fi
[ -d "$a" ] || stage simulate python -m training.simulate --out "$out/sim" --preset "$preset"
stage pairs python -m training.pairs "$a/s2_stack.tif" "$a/planet_scenes" -o "$out/pairs" --alignment point \
    --overwrite --no-progress
stage pretrain python -m training.pretrain --data "$out/pairs" --mode bimodal --alignment point --corruption 0.2 \
    --config training/configs/pretrain_pointwise.toml --set epochs=2 "${pretrain_size[@]}" --out "$out/bimodal" \
    --overwrite --no-progress
stage downstream python -m training.downstream --task real --data "$a/s2_stack.tif" --labels "$a/fields.gpkg" \
    --label-column class_name --classes 9 --season-start 01-01 --encoders "bimodal_0.2=$out/bimodal/encoder.pt" \
    --families lstm,inception_time --variants 1 --default-variant --epochs "$epochs" "${downstream_size[@]}" \
    --out "$out/runs" --no-progress
stage export python -m exporters --best "$out/runs" -o "$out/model.onnx" --overwrite
stage classify cropmap classify "$b/s2_stack.tif" --mask "$b/fields.gpkg" --model "$out/model.onnx" \
    -o "$out/map_b.tif" --overwrite
stage assess cropmap assess "$out/map_b.tif" --reference "$b/fields.gpkg" --label-column class_name \
    -o "$out/assess_b.json" --overwrite
echo "== seconds per stage"; cat "$times"
