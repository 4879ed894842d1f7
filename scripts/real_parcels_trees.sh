#!/usr/bin/env bash
# Honest selection on real parcels (docs/results.md, "Real parcels: every family, the trees and the bundle
# exporters --best picks, scored on untouched test parcels"): the shipped WorldCereal LPIS extractions, split 70/30
# by parcel with SPLITS split seeds (default 10: 0 .. 9); 20 % of the training parcels set aside as the
# model-selection split. Every neural family supervised with the default (robust) recipe (InceptionTime 3 seeds,
# Transformer and LSTM 2 seeds, and their ensembles; IT_REPEATS / REPEATS change them), the tree families (forest,
# LightGBM boosting, Optuna-tuned by CV inside the training parcels, TREE_BUDGET seconds each, default 60), the
# RandomForest baseline (500 trees, flattened series) and the majority class, each trained again on every training
# parcel into RUN_DIR/<dataset>-s<seed>/refit (the default flow); then `cropmap export best` exports the chosen
# runs from there (refit.onnx; the cross-family ensemble or the best single model, chosen on the selection split,
# calibrated there), the same without --refit (best.onnx), `--ensemble never` the best single model (single.onnx),
# and `cropmap export score` scores the bundles on the test parcels against the forest trained on the same parcels.
# The table also gives the test-parcel sampling noise of each split's gap (paired bootstrap).
# With FOLDS=K the same runs are instead trained with a cross-validated selection (RUN_DIR/<dataset>-s<seed>-cv,
# `--selection-folds K`: every run on all training parcels, and once per fold with that fold held out):
# `cropmap export best` of that folder picks and calibrates on the out-of-fold predictions (cv.onnx), and its
# all-parcel runs serve as the refit; about five times the training time.
#
#   bash scripts/real_parcels_trees.sh [RUN_DIR]   # default runs/real_trees; one thread per run
#   JOBS=2 bash scripts/real_parcels_trees.sh      # two splits at a time (one per core)
#   SPLITS=3 FOLDS=5 bash scripts/real_parcels_trees.sh   # three split seeds, with the cross-validated selection
#   IT_REPEATS=5 REPEATS=3 TREE_BUDGET=120 bash scripts/real_parcels_trees.sh runs/real_trees_big   # the sizes of
#                                                  # real_parcels.sh, in a new RUN_DIR (a folder whose family
#                                                  # ensembles are recorded refuses more seeds)
#   CURVES=0 bash scripts/real_parcels_trees.sh    # the tables only, not the label-efficiency curves
#
# Resumable (recorded runs are skipped). Writes RUN_DIR/<dataset>.md and replaces the block between the
# real-trees markers in docs/results.md; then bench/label_efficiency.py writes the label-efficiency block and plot.
set -euo pipefail
cd "$(dirname "$0")/.."
S=${1:-runs/real_trees}
SPLITS=${SPLITS:-10}
mapfile -t SEEDS < <(seq 0 $((SPLITS - 1)))
IT_REPEATS=${IT_REPEATS:-3}
REPEATS=${REPEATS:-2}
TREE_BUDGET=${TREE_BUDGET:-60}
FOLDS=${FOLDS:-0}
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
  local out="$S/$name-s$seed" bundles=(refit best single) refit
  if (( FOLDS > 0 )); then
    train "$out" "$@" --no-refit
    # the same runs on every training parcel, and once per fold with that fold held out: the cross-validated
    # selection; its all-parcel runs are also the refit of the runs above (same runs, no selection split), beside
    # the run folder rather than in it (what `--refit`, the default, would do) so that both bundles come from one
    # choice
    train "$out-cv" "$@" --selection-folds "$FOLDS"
    refit="$out-cv" bundles+=(cv)
    log "$name, split seed $seed: cropmap export best (cross-validated, --refit, plain, --ensemble never), scored"
    cropmap export best "$out-cv" -o "$out/cv.onnx" --overwrite >> "$out.log" 2>&1
  else
    train "$out" "$@"  # the default flow: the refit pass into $out/refit
    refit="$out/refit"
    log "$name, split seed $seed: cropmap export best (--refit, plain, --ensemble never), scored"
  fi
  cropmap export best "$out" -o "$out/refit.onnx" --refit "$refit" --overwrite >> "$out.log" 2>&1
  cropmap export best "$out" -o "$out/best.onnx" --no-refit --overwrite >> "$out.log" 2>&1
  cropmap export best "$out" -o "$out/single.onnx" --ensemble never --no-refit --overwrite >> "$out.log" 2>&1
  for b in "${bundles[@]}"; do
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

python - "$S" "$((t1 - t0))" "$JOBS" "$FOLDS" "${SEEDS[@]}" <<'PY'
import datetime as dt
import json
import sys
from pathlib import Path

import numpy as np
from sklearn.ensemble import RandomForestClassifier

from cropmap.runtime import load_bundle
from exporters.score import run_series
from training.downstream.baselines import RF_TREES
from training.evaluate.run import confusion_matrix, metrics_from_confusion
from training.evaluate.seedtable import seed_table

run, secs, jobs, folds = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
seeds = [int(s) for s in sys.argv[5:]]
titles = {
    "france2022": "France 2022 LPIS, six most frequent classes, 70/30 by parcel, 20 % of training parcels for selection",
    "flanders2021": "Flanders 2021 LPIS, four classes (training/configs/classes_flanders.csv), 70/30 by parcel, "
    "20 % of training parcels for selection",
}
DRAWS = 2000


def gap(d: np.ndarray) -> str:
    s = float(d.std(ddof=1)) if len(d) > 1 else 0.0
    text = f"{100 * d.mean():+.1f} +- {100 * s:.1f}"
    return f"**{text}**" if d.mean() > 0 and d.mean() > s else text


def forest(d: Path) -> dict:
    lines = (d / "results.jsonl").read_text().splitlines()
    return next(r for r in map(json.loads, lines) if r["family"] == "random_forest")


def picked(prov) -> str:  # noqa: ANN001  (a bundle's provenance)
    if prov.base_model == "ensemble":  # a family's own ensemble: its family is named in the choice
        return prov.training_data.split("; best of ", 1)[1].split(", ")[1].split(" variant")[0].replace("_", " ")
    return prov.base_model.replace("_", " ")


def macro_f1(y: np.ndarray, pred: np.ndarray, k: int) -> float:
    return metrics_from_confusion(confusion_matrix(y, pred, k)).macro_f1


def sampling_noise(refit: Path, bundle: Path, seed: int) -> tuple[float, float]:
    """Standard error of the bundle's paired gap to the forest (OA, macro F1) from the test parcels alone: the
    forest of refit's record refitted (checked against it), both predictions bootstrapped over the test parcels."""
    rec = forest(refit)
    x_train, y_train, task, _ = run_series(refit, "train")
    x_test, y_test, _, _ = run_series(refit, "test")
    k = len(task.class_names)
    mean, std = (np.asarray(rec["norm_stats"][s], np.float32) for s in ("mean", "std"))
    norm = lambda x: ((x - mean) / std).astype(np.float32)  # noqa: E731  (the features the baseline was fitted on)
    rf = RandomForestClassifier(n_estimators=RF_TREES, n_jobs=2, random_state=int(rec["seed"]))
    rf.fit(norm(x_train).reshape(len(x_train), -1), y_train).set_params(n_jobs=1)  # as the baseline predicts
    p_rf = rf.predict(norm(x_test).reshape(len(x_test), -1))
    refitted = confusion_matrix(y_test, p_rf, k)
    assert np.array_equal(refitted, rec["confusion"]), f"{refit}: the refitted forest differs from its record"
    p_b = np.asarray(load_bundle(bundle).run(x_test.astype(np.float32))).argmax(1)
    rng = np.random.default_rng(seed)
    d_oa, d_f1 = [], []
    for _ in range(DRAWS):
        i = rng.integers(0, len(y_test), len(y_test))
        d_oa.append(np.mean(p_b[i] == y_test[i]) - np.mean(p_rf[i] == y_test[i]))
        d_f1.append(macro_f1(y_test[i], p_b[i], k) - macro_f1(y_test[i], p_rf[i], k))
    return float(np.std(d_oa)), float(np.std(d_f1))


blocks = []
bundles = ("refit", "cv", "best", "single") if folds else ("refit", "best", "single")
for name, title in titles.items():
    dirs = [run / f"{name}-s{s}" for s in seeds]
    table, _ = seed_table(dirs, title)
    cols: dict[str, list[float]] = {}
    picks: dict[str, list[str]] = {b: [] for b in bundles}
    noise = []
    for d, seed in zip(dirs, seeds):
        for b in bundles:
            score = json.loads((d / f"{b}_score.json").read_text())
            prov = load_bundle(d / f"{b}.onnx").metadata.provenance
            recorded = prov.metrics["test_accuracy"]
            assert abs(score["accuracy"] - recorded) < 1e-9, f"{d / b}.onnx: score differs from its record"
            picks[b].append(picked(prov))
            cols.setdefault(f"{b} OA", []).append(score["accuracy"])
            cols.setdefault(f"{b} F1", []).append(score["macro_f1"])
        refit = Path(f"{d}-cv") if folds else d / "refit"
        for label, rf in (("rf70", forest(refit)), ("rf56", forest(d))):
            cols.setdefault(f"{label} OA", []).append(rf["val_accuracy"])
            cols.setdefault(f"{label} F1", []).append(rf["macro_f1"])
        noise.append(sampling_noise(refit, d / "refit.onnx", seed))
    a = {key: np.array(v) for key, v in cols.items()}
    se = 100 * np.array(noise)
    # the splits share parcels, so the gaps are not independent: Nadeau and Bengio's corrected resampled t
    # divides the mean by sqrt(1/J + n_test/n_train) standard deviations instead of sqrt(1/J)
    rf70 = forest(Path(f"{dirs[0]}-cv") if folds else dirs[0] / "refit")
    shrink = np.sqrt(1 / len(dirs) + rf70["n_val"] / rf70["n_train"])
    t_stat = lambda d: d.mean() / (d.std(ddof=1) * shrink)  # noqa: E731
    sd = lambda v: float(v.std(ddof=1))  # noqa: E731
    cell = lambda v: f"{100 * v.mean():.1f} +- {100 * sd(v):.1f}"  # noqa: E731
    line = lambda label, b, rf: (  # noqa: E731  (bundle b against the forest rf trained on the same parcels)
        f"| {label} | {cell(a[b + ' OA'])} | {cell(a[b + ' F1'])} | {gap(a[b + ' OA'] - a[rf + ' OA'])} | "
        f"{gap(a[b + ' F1'] - a[rf + ' F1'])} |\n"
    )
    per_split = lambda b: "; ".join(  # noqa: E731
        f"{100 * x:.1f} / {100 * f:.1f} vs {100 * rx:.1f} / {100 * rf:.1f}"
        for x, f, rx, rf in zip(a[b + " OA"], a[b + " F1"], a["rf70 OA"], a["rf70 F1"])
    )
    cv_picks = f"chosen and calibrated by {folds}-fold cross-validation inside the training parcels " \
        f"(`--selection-folds {folds}`: {', '.join(picks['cv'])}); " if folds else ""
    best = (
        f"\n**The bundles `cropmap export best` exports**, scored with `cropmap export score` on the test parcels: "
        f"chosen and calibrated on the selection split, then the chosen runs as trained on every training parcel "
        f"(the default, `--refit`; per split seed: {', '.join(picks['refit'])}); {cv_picks}the first without "
        f"`--refit` ({', '.join(picks['best'])}); the best single model on the selection split "
        f"(`--ensemble never`: {', '.join(picks['single'])}); and the forest trained on the same parcels as each\n\n"
        "| model | trained on | OA | macro F1 | OA - RF (paired) | F1 - RF (paired) |\n|---|---|---|---|---|---|\n"
        + line("**cropmap export best** (default: selection split, then `--refit`) | all training parcels (70 %)",
               "refit", "rf70")
        + (line(f"cropmap export best, `--selection-folds {folds}` | all training parcels (70 %)", "cv", "rf70")
           if folds else "")
        + line("cropmap export best (selection split, no refit) | 56 %", "best", "rf56")
        + line("best single model (`--ensemble never`) | 56 %", "single", "rf56")
        + f"| RandomForest (500 trees, flattened series) | 70 % | {cell(a['rf70 OA'])} | {cell(a['rf70 F1'])} | - | - |\n"
        + f"| RandomForest (500 trees, flattened series) | 56 % | {cell(a['rf56 OA'])} | {cell(a['rf56 F1'])} | - | - |\n"
        + "\nPer split seed, bundle OA / F1 vs forest on the same parcels OA / F1: default (`--refit`) "
        + per_split("refit")
        + ("; cross-validated " + per_split("cv") if folds else "")
        + f". Test-parcel sampling alone (the default bundle and the forest, both predictions bootstrapped over each "
        f"split's {rf70['n_val']} test parcels, {DRAWS} draws) gives the gap a standard error "
        f"of {se[:, 0].min():.1f}-{se[:, 0].max():.1f} points of OA (mean {se[:, 0].mean():.1f}) and "
        f"{se[:, 1].min():.1f}-{se[:, 1].max():.1f} of macro F1 (mean {se[:, 1].mean():.1f}) within one split. "
        f"Over the {len(dirs)} splits the default bundle's mean gap is {t_stat(a['refit OA'] - a['rf70 OA']):.1f} "
        f"(OA) and {t_stat(a['refit F1'] - a['rf70 F1']):.1f} (macro F1) times its standard error by the corrected "
        "resampled t-test (Nadeau and Bengio 2003: the splits share parcels). "
        f"Wall time of this invocation for both data sets: {secs / 60:.0f} min, {jobs} split(s) at a time (a "
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
