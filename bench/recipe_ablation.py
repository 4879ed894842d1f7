"""What each part of the robust training recipe does, measured on real parcels (docs/results.md).

    python bench/recipe_ablation.py [--data PARQUET] [--family inception_time] [--seeds 0 1 2] [--out FILE.md]

One model per configuration and split seed (the family's defaults, supervised on the gap-filled monthly series
of the six most frequent classes, 70/30 by parcel), scored on the held-out parcels; the RandomForest of the
protocol on the same splits for reference. Configurations: the papers' protocol, the robust recipe, and the
robust recipe with one part removed (or, for the selection split, added), so each row's gap to "robust" is that
part's effect. Times are wall seconds per run on the machine it ran on.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from training.data.parcels import load_parcels
from training.downstream.baselines import random_forest
from training.downstream.recipe import get_recipe, selection_split
from training.downstream.run import DEFAULT_LR, encode, train_run
from training.models import build_model
from training.models.encoder import Normalize, compute_norm_stats

FRANCE = REPO / "sample_data" / "worldcereal" / "2022_FRA_LPIS_POLY_110_monthly.geoparquet"

CONFIGS = {
    "papers' protocol (20 epochs, batch 256, Adam, linear decay)": ("papers", {}),
    "papers' protocol + step floor (800 steps, batch <= N/16)": (
        "papers",
        {"min_steps": 800, "max_batch_fraction": 1 / 16},
    ),
    "robust": ("robust", {}),
    "robust without the step floor": ("robust", {"min_steps": 0, "max_batch_fraction": 1.0}),
    "robust without augmentation": ("robust", {"shift": 0, "drop": 0.0, "noise": 0.0}),
    "robust without label smoothing": ("robust", {"label_smoothing": 0.0}),
    "robust without the prior correction (balanced decisions)": ("robust", {"prior_correction": 0.0}),
    "robust without class balancing or prior correction": (
        "robust",
        {"balanced": False, "prior_correction": 0.0},
    ),
    "robust with Adam + linear decay (no AdamW, warm-up, cosine)": (
        "robust",
        {"optimizer": "adam", "weight_decay": 0.0, "schedule": "linear", "warmup": 0.0},
    ),
    "robust without the kernel fitted to the series (kernel 40)": ("robust", {"fit_kernel": False}),
    "robust + selection split (15 % of training parcels, best epoch)": (
        "robust",
        {"selection_fraction": 0.15},
    ),
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=FRANCE)
    parser.add_argument("--family", default="inception_time")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", type=Path, help="also write the markdown table here")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows: dict[str, list[tuple[float, float, float]]] = {}
    for seed in args.seeds:
        task = load_parcels(
            args.data,
            label_column="ewoc_code",
            top_classes=6,
            class_map=None,
            grid="monthly",
            season_start="11-01",
            season=None,
            min_valid=3,
            val_fraction=0.3,
            split_seed=seed,
            split_file=None,
        )
        k = len(task.classes)
        rf = random_forest(task.x_train, task.y_train, task.x_val, task.y_val, k, seed=seed)
        rows.setdefault("RandomForest (500 trees, flattened series)", []).append(
            (rf["val_accuracy"], rf["macro_f1"], rf["seconds"])
        )
        stats = compute_norm_stats(task.x_train)
        front = Normalize(stats["mean"], stats["std"])
        xt, xv = encode(front, torch.from_numpy(task.x_train)), encode(front, torch.from_numpy(task.x_val))
        yt, yv = (
            torch.from_numpy(task.y_train.astype(np.int64)),
            torch.from_numpy(task.y_val.astype(np.int64)),
        )
        for label, (name, over) in CONFIGS.items():
            recipe = dataclasses.replace(get_recipe(name), **over)
            xs = ys = None
            xf, yf = xt, yt
            if recipe.selection_fraction > 0:
                fit, sel = (
                    torch.from_numpy(i)
                    for i in selection_split(task.y_train, recipe.selection_fraction, seed)
                )
                xf, yf, xs, ys = xt[fit], yt[fit], xt[sel], yt[sel]
            torch.manual_seed(seed)
            hp = recipe.adapt_hp(args.family, {}, int(xt.shape[1]))
            model = build_model(args.family, int(xt.shape[2]), k, **hp)
            t0 = time.perf_counter()
            res = train_run(
                model,
                xf,
                yf,
                xv,
                yv,
                lr=DEFAULT_LR,
                epochs=20,
                batch_size=256,
                seed=seed,
                recipe=recipe,
                x_sel=xs,
                y_sel=ys,
            )
            rows.setdefault(label, []).append(
                (res["val_accuracy"], res["macro_f1"], time.perf_counter() - t0)
            )
            print(f"seed {seed} {label}: OA {res['val_accuracy']:.3f} F1 {res['macro_f1']:.3f}", flush=True)
    lines = [
        f"{args.family}, defaults, supervised; {args.data.name}; split seeds {args.seeds} (mean +- sample std)\n",
        "| configuration | OA | macro F1 | s / run |",
        "|---|---|---|---|",
    ]
    for label, vals in rows.items():
        a = np.asarray(vals)
        sd = a.std(axis=0, ddof=1) if len(a) > 1 else np.zeros(3)  # sample std over split seeds
        lines.append(
            f"| {label} | {100 * a[:, 0].mean():.1f} +- {100 * sd[0]:.1f} | "
            f"{100 * a[:, 1].mean():.1f} +- {100 * sd[1]:.1f} | {a[:, 2].mean():.1f} |"
        )
    table = "\n".join(lines) + "\n"
    print(table)
    if args.out:
        args.out.write_text(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
