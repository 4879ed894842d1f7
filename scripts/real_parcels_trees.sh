#!/usr/bin/env bash
# Honest selection on real parcels (docs/results.md, "Real parcels: every family, the trees and the bundle
# exporters --best picks, scored on untouched test parcels"): the shipped WorldCereal LPIS extractions, split 70/30
# by parcel with three split seeds; 20 % of the training parcels set aside as the model-selection split. Every
# neural family supervised with the default (robust) recipe (InceptionTime 3 seeds, Transformer and LSTM 2 seeds,
# and their ensembles; IT_REPEATS / REPEATS change them), the tree families (forest, LightGBM boosting,
# Optuna-tuned by CV inside the training parcels, TREE_BUDGET seconds each, default 60), the RandomForest baseline (500 trees, flattened series) and the majority class; then
# `cropmap export best` exports the cross-family ensemble or the best single model (chosen on the selection split,
# calibrated there), `--ensemble never` the best single model, and `cropmap export score` scores the bundles on
# the test parcels. The same runs are trained with a cross-validated selection (RUN_DIR/<dataset>-s<seed>-cv,
# `--selection-folds FOLDS`, default 5: every run on all training parcels, and once per fold with that fold held
# out): `cropmap export best` of that folder picks and calibrates on the out-of-fold predictions (cv.onnx), and
# `cropmap export best --refit` takes the choice made on the selection split and exports its runs from the same
# folder's all-parcel runs (refit.onnx). Both are compared with the forest trained on the same parcels.
#
#   bash scripts/real_parcels_trees.sh [RUN_DIR]   # default runs/real_trees; one thread per run
#   JOBS=2 bash scripts/real_parcels_trees.sh      # two splits at a time (one per core)
#   IT_REPEATS=5 REPEATS=3 TREE_BUDGET=120 bash scripts/real_parcels_trees.sh   # the sizes of real_parcels.sh
#   CURVES=0 bash scripts/real_parcels_trees.sh    # the tables only, not the label-efficiency curves
#
# Resumable (recorded runs are skipped). Writes RUN_DIR/<dataset>.md and replaces the block between the
# real-trees markers in docs/results.md; then bench/label_efficiency.py writes the label-efficiency block and plot.
set -euo pipefail
cd "$(dirname "$0")/.."
S=${1:-runs/real_trees}
SEEDS=(0 1 2)
IT_REPEATS=${IT_REPEATS:-3}
REPEATS=${REPEATS:-2}
TREE_BUDGET=${TREE_BUDGET:-60}
FOLDS=${FOLDS:-5}
JOBS=${JOBS:-1}
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1
mkdir -p "$S"
log() { printf '[%s] %s\n' "$(date -u +%H:%M:%S)" "$*"; }

train() {  # out-dir dataset-name data-file classes seed extra-args...
  local out=$1 name=$2 data=$3 classes=$4 seed=$5; shift 5
  for fam in inception_time:$IT_REPEATS transformer,lstm:$REPEATS; do
    log "$name, split seed $seed, ${fam%%:*} ($(basename "$out"))"
    python -m training.downstream --task real --data "$data" --classes "$classes" --split-seed "$seed" \
      --seed "$seed" --families "${fam%%:*}" --default-variant --set repeats="${fam##*:}" --variants 0 \
      --out "$out" --set threads=1 --set tree_budget_s="$TREE_BUDGET" --no-progress "$@" >> "$out.log" 2>&1 \
      || { log "failed: see $out.log"; return 1; }
  done
}

one_seed() {  # dataset-name data-file classes seed extra-args...
  local name=$1 seed=$4
  local out="$S/$name-s$seed"
  train "$out" "$@" --no-refit
  # the same runs on every training parcel, and once per fold with that fold held out: the cross-validated selection;
  # its all-parcel runs are also the refit of the runs above (same runs, no selection split), beside the run folder
  # rather than in it (what `--refit`, the default, would do) so that both bundles come from one choice
  train "$out-cv" "$@" --selection-folds "$FOLDS"
  log "$name, split seed $seed: cropmap export best (cross-validated, --refit, plain, --ensemble never), scored"
  cropmap export best "$out-cv" -o "$out/cv.onnx" --overwrite >> "$out.log" 2>&1
  cropmap export best "$out" -o "$out/refit.onnx" --refit "$out-cv" --overwrite >> "$out.log" 2>&1
  cropmap export best "$out" -o "$out/best.onnx" --no-refit --overwrite >> "$out.log" 2>&1
  cropmap export best "$out" -o "$out/single.onnx" --ensemble never --no-refit --overwrite >> "$out.log" 2>&1
  for b in cv refit best single; do
    cropmap export score "$out/$b.onnx" --data "$out/validation-taskreal.npz" -o "$out/${b}_score.json" \
      --overwrite >> "$out.log" 2>&1
  done
}

t0=$(date +%s)
for seed in "${SEEDS[@]}"; do
  one_seed flanders2021 sample_data/worldcereal/2021_BEL_LPIS-Flanders_POLY_110_monthly.parquet \
    training/configs/classes_flanders.csv "$seed" --season 2020 &
  while (( $(jobs -rp | wc -l) >= JOBS )); do wait -n; done
done
for seed in "${SEEDS[@]}"; do
  one_seed france2022 sample_data/worldcereal/2022_FRA_LPIS_POLY_110_monthly.geoparquet 6 "$seed" &
  while (( $(jobs -rp | wc -l) >= JOBS )); do wait -n; done
done
while (( $(jobs -rp | wc -l) > 0 )); do wait -n; done
t1=$(date +%s)

python - "$S" "$((t1 - t0))" "$JOBS" "$FOLDS" <<'PY'
import datetime as dt
import json
import sys
from pathlib import Path

import numpy as np

from cropmap.runtime import load_bundle
from training.evaluate.seedtable import seed_table

run, secs, jobs, folds = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
titles = {
    "france2022": "France 2022 LPIS, six most frequent classes, 70/30 by parcel, 20 % of training parcels for selection",
    "flanders2021": "Flanders 2021 LPIS, four classes (training/configs/classes_flanders.csv), 70/30 by parcel, "
    "20 % of training parcels for selection",
}


def gap(d: np.ndarray) -> str:
    s = float(d.std(ddof=1)) if len(d) > 1 else 0.0
    text = f"{100 * d.mean():+.1f} +- {100 * s:.1f}"
    return f"**{text}**" if d.mean() > 0 and d.mean() > s else text


def forest(d: Path) -> dict:
    lines = (d / "results.jsonl").read_text().splitlines()
    return next(r for r in map(json.loads, lines) if r["family"] == "random_forest")


def picked(bundle: Path) -> str:
    prov = load_bundle(bundle).metadata.provenance
    if prov.base_model == "ensemble":  # a family's own ensemble: its family is named in the choice
        return prov.training_data.split("; best of ", 1)[1].split(", ")[1].split(" variant")[0].replace("_", " ")
    return prov.base_model.replace("_", " ")


blocks = []
bundles = ("cv", "refit", "best", "single")
for name, title in titles.items():
    dirs = [run / f"{name}-s{s}" for s in (0, 1, 2)]
    table, _ = seed_table(dirs, title)
    rows, picks = [], {b: [] for b in bundles}
    for d in dirs:
        scores = {b: json.loads((d / f"{b}_score.json").read_text()) for b in bundles}
        for b in bundles:
            meta = load_bundle(d / f"{b}.onnx").metadata
            recorded = meta.provenance.metrics["test_accuracy"]
            assert abs(scores[b]["accuracy"] - recorded) < 1e-9, f"{d / b}.onnx: score differs from its record"
            picks[b].append(picked(d / f"{b}.onnx"))
        rf_all, rf = forest(Path(f"{d}-cv")), forest(d)
        rows.append(tuple(scores[b][k] for b in bundles for k in ("accuracy", "macro_f1"))
                    + (rf_all["val_accuracy"], rf_all["macro_f1"], rf["val_accuracy"], rf["macro_f1"]))
    a = np.array(rows)
    sd = lambda v: float(v.std(ddof=1))  # noqa: E731
    cell = lambda v: f"{100 * v.mean():.1f} +- {100 * sd(v):.1f}"  # noqa: E731
    line = lambda label, i, f: (  # noqa: E731  (bundle columns i, i+1 against the forest columns f, f+1)
        f"| {label} | {cell(a[:, i])} | {cell(a[:, i + 1])} | {gap(a[:, i] - a[:, f])} | "
        f"{gap(a[:, i + 1] - a[:, f + 1])} |\n"
    )
    per_split = lambda i: "; ".join(  # noqa: E731
        f"{100 * r[i]:.1f} / {100 * r[i + 1]:.1f} vs {100 * r[8]:.1f} / {100 * r[9]:.1f}" for r in rows
    )
    best = (
        f"\n**The bundles `cropmap export best` exports**, scored with `cropmap export score` on the test parcels: "
        f"chosen and calibrated on the selection split, then the chosen runs as trained on every training parcel "
        f"(the default, `--refit`; per split seed: {', '.join(picks['refit'])}); chosen and calibrated by "
        f"{folds}-fold cross-validation inside the training parcels (`--selection-folds {folds}`: "
        f"{', '.join(picks['cv'])}); the first without `--refit` ({', '.join(picks['best'])}); the best single "
        f"model on the selection split "
        f"(`--ensemble never`: {', '.join(picks['single'])}); and the forest trained on the same parcels as each\n\n"
        "| model | trained on | OA | macro F1 | OA - RF (paired) | F1 - RF (paired) |\n|---|---|---|---|---|---|\n"
        + line("**cropmap export best** (default: selection split, then `--refit`) | all training parcels (70 %)", 2, 8)
        + line(f"cropmap export best, `--selection-folds {folds}` | all training parcels (70 %)", 0, 8)
        + line("cropmap export best (selection split, no refit) | 56 %", 4, 10)
        + line("best single model (`--ensemble never`) | 56 %", 6, 10)
        + f"| RandomForest (500 trees, flattened series) | 70 % | {cell(a[:, 8])} | {cell(a[:, 9])} | - | - |\n"
        + f"| RandomForest (500 trees, flattened series) | 56 % | {cell(a[:, 10])} | {cell(a[:, 11])} | - | - |\n"
        + "\nPer split seed, bundle OA / F1 vs forest on the same parcels OA / F1: default (`--refit`) "
        + per_split(2)
        + "; cross-validated "
        + per_split(0)
        + f". Wall time of this invocation for both data sets: {secs / 60:.0f} min, {jobs} split(s) at a time (a "
        "rerun reuses the recorded runs and only exports and scores).\n"
    )
    (run / f"{name}.md").write_text(table + best)
    blocks.append(table + best)
doc = Path("docs/results.md")
start, end = "<!-- real-trees:start -->", "<!-- real-trees:end -->"
text = doc.read_text()
if start not in text or end not in text:
    sys.exit(f"error: {doc} lacks the {start} / {end} markers")
stamp = f"Generated {dt.date.today().isoformat()} by `bash scripts/real_parcels_trees.sh`.\n"
head, rest = text.split(start, 1)
doc.write_text(head + "\n".join([start, "", stamp, *blocks, end]) + rest.split(end, 1)[1])
print(f"updated {doc}")
PY
if [[ ${CURVES:-1} == 0 ]]; then log "done (CURVES=0: label-efficiency curves left as they are): $S"; exit 0; fi
log "per-split S2 and S2+S1 encoders for the label-efficiency curves (cropmap evaluate s1-bimodal; resumable)"
cropmap evaluate s1-bimodal -o "$S/s1_bimodal" --seed 0 --seed 1 --seed 2
log "label efficiency (bench/label_efficiency.py; resumable)"
python bench/label_efficiency.py --out "$S/label_efficiency" --s1-encoders "$S/s1_bimodal"
log "done: $S"
