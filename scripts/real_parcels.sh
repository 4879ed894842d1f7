#!/usr/bin/env bash
# The real-parcel evaluation of docs/results.md ("Real parcels: base models against a RandomForest"):
# WorldCereal LPIS parcels the project has not trained on, split 70/30 by parcel with three split seeds,
# the project's monthly grid and gap filling. Every family trained supervised and on the embeddings of a
# uni-modal encoder pre-trained on real unlabelled Sentinel-2 pixels (the Belgium 2021 stack; no parcel
# pixels), with the default (robust) recipe, plus the RandomForest and majority baselines.
#
#   bash scripts/real_parcels.sh [RUN_DIR] [REPEATS] [IT_REPEATS]   # defaults: runs/real_parcels 3 5 (published)
#   JOBS=2 bash scripts/real_parcels.sh ...                            # split seeds in parallel (one core each)
#
# REPEATS seeds of each family's defaults (IT_REPEATS for InceptionTime, the strongest family and the cheapest
# per run) form each family's ensemble.
#
# Resumable: rerunning skips finished pre-training and recorded downstream runs. Writes
# RUN_DIR/<dataset>.md tables and replaces the block between the real-parcels markers in docs/results.md.
set -euo pipefail
cd "$(dirname "$0")/.."
S=${1:-runs/real_parcels}
REPEATS=${2:-3}
IT_REPEATS=${3:-5}
JOBS=${JOBS:-1}
SEEDS=(0 1 2)
mkdir -p "$S"
log() { printf '[%s] %s\n' "$(date -u +%H:%M:%S)" "$*"; }

if [ ! -f "$S/pixels.npz" ]; then
  log "unlabelled real pixels"
  python -m training.data.stack_pixels sample_data/belgium_2021/s2_stack.tif "$S/pixels.npz"
fi
if [ ! -f "$S/enc_u02/encoder.pt" ]; then
  log "pre-train a uni-modal encoder on them"
  python -m training.pretrain --mode unimodal --alignment point --corruption 0.2 --data "$S/pixels.npz" \
    --out "$S/enc_u02" --config training/configs/pretrain_pointwise.toml --set epochs=5 --set batch_size=512 \
    --set encoder.hidden=128 --set encoder.out_dim=128 --set encoder.n_layers=4 --set projector.hidden=128 \
    --set projector.out=128 --no-progress
fi

one_seed() {  # dataset-name data-file classes seed extra-args...
  local name=$1 data=$2 classes=$3 seed=$4; shift 4
  for fam in inception_time:$IT_REPEATS transformer,lstm:$REPEATS; do
    log "$name, split seed $seed, ${fam%%:*}"
    python -m training.downstream --task real --data "$data" --classes "$classes" --split-seed "$seed" \
      --seed "$seed" --families "${fam%%:*}" --default-variant --set repeats="${fam##*:}" --variants 0 \
      --encoders "unimodal_0.2=$S/enc_u02/encoder.pt" --out "$S/$name-s$seed" --set threads=1 --no-progress "$@" \
      >> "$S/$name-s$seed.log" 2>&1 || { log "failed: see $S/$name-s$seed.log"; return 1; }
  done
}

run() {  # dataset-name data-file classes extra-args...: the split seeds, JOBS at a time
  local name=$1 data=$2 classes=$3 pids=() failed=0; shift 3
  for seed in "${SEEDS[@]}"; do
    one_seed "$name" "$data" "$classes" "$seed" "$@" &
    pids+=($!)
    if [ "${#pids[@]}" -ge "$JOBS" ]; then
      wait "${pids[0]}" || failed=1
      pids=("${pids[@]:1}")
    fi
  done
  for p in "${pids[@]}"; do wait "$p" || failed=1; done
  [ "$failed" = 0 ] || exit 1
}
run france2022 sample_data/worldcereal/2022_FRA_LPIS_POLY_110_monthly.geoparquet 6
run flanders2021 sample_data/worldcereal/2021_BEL_LPIS-Flanders_POLY_110_monthly.parquet \
  training/configs/classes_flanders.csv --season 2020

cropmap evaluate seedtable "$S"/france2022-s{0,1,2} -o "$S/france2022.md" --overwrite \
  --title "France 2022 LPIS, six most frequent classes, 70/30 by parcel"
cropmap evaluate seedtable "$S"/flanders2021-s{0,1,2} -o "$S/flanders2021.md" --overwrite \
  --title "Flanders 2021 LPIS, four classes (training/configs/classes_flanders.csv), 70/30 by parcel"
python - "$S" <<'PY'
import sys
from pathlib import Path

run = Path(sys.argv[1])
doc = Path("docs/results.md")
start, end = "<!-- real-parcels:start -->", "<!-- real-parcels:end -->"
text = doc.read_text()
if start not in text or end not in text:
    sys.exit(f"error: {doc} lacks the {start} / {end} markers")
block = "\n".join([start, "", (run / "france2022.md").read_text(), (run / "flanders2021.md").read_text(), end])
head, rest = text.split(start, 1)
doc.write_text(head + block + rest.split(end, 1)[1])
print(f"updated {doc}")
PY
log "done: $S"
