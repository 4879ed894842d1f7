"""Label efficiency on the shipped real parcels: accuracy against the number of labelled parcels per class.

    python bench/label_efficiency.py [--out runs/label_efficiency] [--sizes 5 10 20 50 all] [--seeds 0 1 2]
                                     [--encoder ENCODER.pt] [--s1-encoders runs/s1_bimodal] [--doc docs/results.md]

For each shipped WorldCereal data set (France 2022, six classes; Flanders 2021, four classes) and split seed, the
parcels are split 70/30 by parcel as ``cropmap train downstream --task real`` splits them; the training parcels are
then cut to N per class (seeded; a class with fewer keeps all of them), and every model is scored on the same
untouched 30 % test parcels:

* ``RandomForest``: 500 trees on the flattened series (the baseline every table compares with);
* ``boosting``: LightGBM on the derived features of the tree family, untuned: its defaults but for
  ``min_child_samples`` (leaf size), ``min(20, max(2, n / 2))`` for ``n`` parcels in the smallest class, since the
  default 20 leaves no split to make on a few dozen parcels;
* ``InceptionTime``: supervised, its default hyper-parameters and the default (robust) recipe;
* ``InceptionTime, embeddings``: the same on the per-date embeddings of a frozen uni-modal encoder pre-trained on
  unlabelled pixels of the Belgium 2021 sample stack (no parcel pixel);
* ``boosting, embeddings``: the same LightGBM on the flattened per-date embeddings of that encoder (the
  WorldCereal recipe: a pre-trained encoder feeding boosted trees).

With ``--s1-encoders DIR`` (the output folder of ``cropmap evaluate s1-bimodal``: per data set and split seed, a
uni-modal S2 encoder and a bi-modal S2-vs-S1 encoder pre-trained with identical settings on the (parcel, month) pairs
of every parcel outside that split's test parcels, labels unused), two more rows:

* ``InceptionTime, S2 embeddings (parcels)``: InceptionTime on that split's uni-modal encoder;
* ``InceptionTime, S2+S1 embeddings (parcels)``: the same on the S2 branch of that split's bi-modal encoder.

Those encoders saw the unlabelled pairs of all training parcels, also at 5 labelled parcels per class: the
semi-supervised setting (many unlabelled parcels, few labels). The script checks that their split is this one.

The networks and the forest train through :func:`training.downstream.run.run_comparison` in a folder of their own
(no selection split: every labelled parcel trains; nothing looks at the test parcels). One thread. Without
``--encoder`` the encoder is pre-trained first, as scripts/real_parcels.sh does, and kept in the output folder.
Resumable: finished (data set, seed, size) cells are read back from ``OUT/cells.jsonl``. Writes the plot
``docs/label_efficiency.png`` and the table between the label-efficiency markers of ``--doc``.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATASETS = {
    "france2022": (
        "France 2022 LPIS, six classes",
        ROOT / "sample_data/worldcereal/2022_FRA_LPIS_POLY_110_monthly.geoparquet",
        {"top_classes": 6},
    ),
    "flanders2021": (
        "Flanders 2021 LPIS, four classes",
        ROOT / "sample_data/worldcereal/2021_BEL_LPIS-Flanders_POLY_110_monthly.parquet",
        {"class_map": ROOT / "training/configs/classes_flanders.csv", "season": 2020},
    ),
}
MODELS = (
    "RandomForest",
    "boosting",
    "InceptionTime",
    "InceptionTime, embeddings",
    "boosting, embeddings",
)
S1_MODELS = ("InceptionTime, S2 embeddings (parcels)", "InceptionTime, S2+S1 embeddings (parcels)")
START, END = "<!-- label-efficiency:start -->", "<!-- label-efficiency:end -->"


def _encoder(out: Path) -> Path:
    """Pre-train the uni-modal encoder of scripts/real_parcels.sh on the Belgium sample stack (cached)."""
    enc = out / "enc_u02" / "encoder.pt"
    if enc.is_file():
        return enc
    pixels = out / "pixels.npz"
    if not pixels.is_file():
        subprocess.run(
            [
                "cropmap",
                "data",
                "stack-pixels",
                str(ROOT / "sample_data/belgium_2021/s2_stack.tif"),
                str(pixels),
            ],
            check=True,
        )
    subprocess.run(
        [
            *(
                "cropmap",
                "train",
                "pretrain",
                "--mode",
                "unimodal",
                "--alignment",
                "point",
                "--corruption",
                "0.2",
            ),
            *("--data", str(pixels), "-o", str(enc.parent), "--overwrite", "--no-progress"),
            *("--config", str(ROOT / "training/configs/pretrain_pointwise.toml")),
            *("--set", "epochs=5", "--set", "batch_size=512", "--set", "encoder.hidden=128"),
            *("--set", "encoder.out_dim=128", "--set", "encoder.n_layers=4", "--set", "projector.hidden=128"),
            *("--set", "projector.out=128"),
        ],
        check=True,
    )
    return enc


def _subsample(data: Any, n: int | None, seed: int) -> Any:
    """The task with at most ``n`` training parcels per class (all of them for ``None``)."""
    if n is None:
        return data
    if data.groups_train is not None:
        raise SystemExit("error: these parcels have several samples each; the cut is by sample here")
    rng = np.random.default_rng(seed)
    keep = np.concatenate(
        [rng.permutation(np.flatnonzero(data.y_train == k))[:n] for k in range(len(data.class_names))]
    )
    keep.sort()
    return dataclasses.replace(data, x_train=data.x_train[keep], y_train=data.y_train[keep])


def _scores(y: np.ndarray, pred: np.ndarray, k: int) -> tuple[float, float]:
    from training.downstream.baselines import score

    s = score(y, pred, k)
    return float(s["val_accuracy"]), float(s["macro_f1"])


def _boosting_hp(y: np.ndarray) -> dict[str, int]:
    """LightGBM's defaults, but a leaf size that lets it split a small training set."""
    smallest = int(np.bincount(y).min())
    return {"min_child_samples": min(20, max(2, smallest // 2))}


def _embedding_boosting(data: Any, encoder: Path, seed: int) -> tuple[float, float]:
    """LightGBM on the flattened per-date embeddings of the frozen encoder."""
    import torch

    from training.downstream.trees import fit_tree, predict_proba
    from training.models.encoder import load_frozen_encoder

    enc = load_frozen_encoder(encoder, map_location="cpu").eval()

    def embed(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            z = enc(torch.from_numpy(np.asarray(x, np.float32)))
        return z.reshape(len(x), -1).numpy()

    k = len(data.class_names)
    est = fit_tree("boosting", embed(data.x_train), data.y_train, _boosting_hp(data.y_train), seed=seed)
    pred = predict_proba(est, embed(data.x_val), k).argmax(1)
    return _scores(data.y_val, pred, k)


def _inception_runs(
    base: Any, data: Any, encoders: list[Any], run: Path, *, baselines: bool
) -> list[dict[str, Any]]:
    """InceptionTime (defaults) supervised and on each encoder through ``run_comparison``, no selection split, one
    thread; the records of ``run``."""
    from training.downstream.run import run_comparison

    cfg = dataclasses.replace(
        base,
        families=("inception_time",),
        default_variant=True,
        variants=0,
        selection_holdout=0.0,
        trees=(),
        baselines=baselines,
        save_models=False,
        threads=1,
    )
    run_comparison(cfg, data, encoders, run, show_progress=False)
    return [json.loads(line) for line in (run / "results.jsonl").read_text().splitlines()]


def _record(recs: list[dict[str, Any]], family: str, method: str) -> tuple[float, float]:
    """Test accuracy and macro F1 of the record of ``family`` / ``method``."""
    r = next(r for r in recs if r["family"] == family and r["method"] == method)
    return float(r["val_accuracy"]), float(r["macro_f1"])


def _cell(name: str, seed: int, size: int | None, encoder: Path, work: Path) -> dict[str, Any]:
    """Every model of one (data set, split seed, parcels per class) cell, scored on the test parcels."""
    from training.downstream.config import DownstreamConfig, EncoderSpec
    from training.downstream.tasks import load_real_task
    from training.downstream.trees import fit_tree, predict_proba, tree_features

    _, path, extra = DATASETS[name]
    base = DownstreamConfig(task="real", data=path, split_seed=seed, seed=seed, **extra)
    full = load_real_task(path, base)
    data = _subsample(full, size, 1000 * seed + (size or 0))
    k = len(data.class_names)
    t0 = time.perf_counter()
    run = work / f"{name}-s{seed}-n{size or 'all'}"
    recs = _inception_runs(base, data, [EncoderSpec("unimodal", 0.2, encoder)], run, baselines=True)

    hp = _boosting_hp(data.y_train)
    est = fit_tree("boosting", tree_features(data.x_train, data.bands), data.y_train, hp, seed=seed)
    boost = _scores(data.y_val, predict_proba(est, tree_features(data.x_val, data.bands), k).argmax(1), k)
    return {
        "dataset": name,
        "seed": seed,
        "size": size,
        "n_train": len(data.y_train),
        "n_test": len(data.y_val),
        "scores": {
            "RandomForest": _record(recs, "random_forest", "supervised"),
            "boosting": boost,
            "InceptionTime": _record(recs, "inception_time", "supervised"),
            "InceptionTime, embeddings": _record(recs, "inception_time", "unimodal"),
            "boosting, embeddings": _embedding_boosting(data, encoder, seed),
        },
        "seconds": time.perf_counter() - t0,
    }


def _s1_cell(name: str, seed: int, size: int | None, s1_dir: Path, work: Path) -> dict[str, Any]:
    """InceptionTime on the split's uni-modal S2 and bi-modal S2+S1 encoders (``cropmap evaluate s1-bimodal``)."""
    from training.data.parcels import load_parcels
    from training.downstream.config import DownstreamConfig, EncoderSpec
    from training.downstream.tasks import load_real_task

    _, path, extra = DATASETS[name]
    base = DownstreamConfig(task="real", data=path, split_seed=seed, seed=seed, **extra)
    full = load_real_task(path, base)
    theirs = load_parcels(
        path,
        top_classes=base.top_classes,
        class_map=base.class_map,
        season=base.season,
        split_seed=seed,
    )
    if not (np.array_equal(theirs.x_val, full.x_val) and np.array_equal(theirs.y_val, full.y_val)):
        raise SystemExit(
            f"error: the s1-bimodal encoders of {name} seed {seed} were pre-trained on another split"
        )
    folder = s1_dir / f"{name}-s{seed}"
    specs = [EncoderSpec(m, 0.2, folder / m / "encoder.pt") for m in ("unimodal", "bimodal")]
    missing = [str(e.path) for e in specs if not e.path.is_file()]
    if missing:
        raise SystemExit(
            f"error: {', '.join(missing)} missing; run cropmap evaluate s1-bimodal -o {s1_dir} first"
        )
    data = _subsample(full, size, 1000 * seed + (size or 0))
    t0 = time.perf_counter()
    recs = _inception_runs(base, data, specs, work / f"s1-{name}-s{seed}-n{size or 'all'}", baselines=False)

    return {
        "dataset": name,
        "seed": seed,
        "size": size,
        "scores": dict(
            zip(S1_MODELS, (_record(recs, "inception_time", m) for m in ("unimodal", "bimodal")), strict=True)
        ),
        "seconds": time.perf_counter() - t0,
    }


def _plot(
    cells: list[dict[str, Any]],
    sizes: list[int | None],
    names: list[str],
    models: tuple[str, ...],
    path: Path,
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(names), 2, figsize=(11, 4 * len(names)), sharex=True, squeeze=False)
    xs = np.arange(len(sizes))
    for row, name in enumerate(names):
        for col, metric in enumerate(("overall accuracy", "macro F1")):
            ax = axes[row, col]
            for model in models:
                vals = [
                    [100 * c["scores"][model][col] for c in cells if c["dataset"] == name and c["size"] == s]
                    for s in sizes
                ]
                mean = np.array([np.mean(v) if v else np.nan for v in vals])
                std = np.array([np.std(v, ddof=1) if len(v) > 1 else 0.0 for v in vals])
                style = "--" if model == "RandomForest" else ":" if model in S1_MODELS else "-"
                ax.errorbar(xs, mean, yerr=std, label=model, linestyle=style, marker="o", capsize=3)
            ax.set_title(f"{DATASETS[name][0]}: {metric}")
            ax.set_xticks(xs, [str(s) if s else "all" for s in sizes])
            ax.grid(alpha=0.3)
            if row == len(names) - 1:
                ax.set_xlabel("labelled training parcels per class")
            if col == 0:
                ax.set_ylabel("% on the test parcels")
    axes[0, 0].legend(fontsize=8, loc="lower right")
    fig.suptitle("Label efficiency on the shipped real parcels (mean +- std over split seeds)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def _table(
    cells: list[dict[str, Any]],
    sizes: list[int | None],
    seeds: list[int],
    names: list[str],
    models: tuple[str, ...],
) -> str:
    lines = [
        (
            f"Generated {dt.date.today().isoformat()} by `python bench/label_efficiency.py` (split seeds "
            f"{', '.join(map(str, seeds))}; mean +- std over them; OA / macro F1 in % on the untouched test parcels)."
        ),
        "",
        "![label efficiency](label_efficiency.png)",
        "",
    ]
    for name in names:
        title = DATASETS[name][0]
        mine = [c for c in cells if c["dataset"] == name]
        head = "| model | " + " | ".join(f"{s} / class" if s else "all" for s in sizes) + " |"
        lines += [
            f"**{title}** (training parcels: "
            + ", ".join(f"{int(np.mean([c['n_train'] for c in mine if c['size'] == s]))}" for s in sizes)
            + f"; test parcels: {mine[0]['n_test'] if mine else 0})",
            "",
            head,
            "|---|" + "---|" * len(sizes),
        ]
        for model in models:
            row = []
            for s in sizes:
                v = np.array([c["scores"][model] for c in mine if c["size"] == s]) * 100
                row.append(
                    f"{v[:, 0].mean():.1f} +- {v[:, 0].std(ddof=1):.1f} / {v[:, 1].mean():.1f}"
                    if len(v) > 1
                    else "-"
                )
            lines.append(f"| {model} | " + " | ".join(row) + " |")
        lines.append("")
    return "\n".join(lines)


def _fill(log: Path, args: Any, sizes: list[int | None], make: Any) -> list[dict[str, Any]]:
    """The cells of ``log`` for the asked data sets, seeds and sizes, computing (and appending) the missing ones."""
    cells = [json.loads(line) for line in log.read_text().splitlines()] if log.is_file() else []
    done = {(c["dataset"], c["seed"], c["size"]) for c in cells}
    for name in args.datasets:
        for seed in args.seeds:
            for size in sizes:
                if (name, seed, size) in done:
                    continue
                cell = make(name, seed, size)
                cells.append(cell)
                with log.open("a") as f:
                    f.write(json.dumps(cell) + "\n")
                shown = ", ".join(f"{m} {100 * v[0]:.1f}/{100 * v[1]:.1f}" for m, v in cell["scores"].items())
                print(f"{name} seed {seed} n={size or 'all'} ({cell['seconds']:.0f} s): {shown}", flush=True)
    return [
        c for c in cells if c["dataset"] in args.datasets and c["seed"] in args.seeds and c["size"] in sizes
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "runs/label_efficiency")
    parser.add_argument("--sizes", nargs="+", default=["5", "10", "20", "50", "all"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument("--encoder", type=Path, default=None, help="a pre-trained uni-modal encoder (.pt)")
    parser.add_argument(
        "--s1-encoders",
        type=Path,
        default=None,
        help="the output folder of cropmap evaluate s1-bimodal: adds InceptionTime on its per-split S2 and S2+S1 encoders",
    )
    parser.add_argument("--doc", type=Path, default=ROOT / "docs/results.md")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    logging.basicConfig(level=logging.WARNING)
    sizes: list[int | None] = [None if s == "all" else int(s) for s in args.sizes]
    args.out.mkdir(parents=True, exist_ok=True)
    encoder = args.encoder or _encoder(args.out)
    cells = _fill(
        args.out / "cells.jsonl", args, sizes, lambda n, s, z: _cell(n, s, z, encoder, args.out / "runs")
    )
    models: tuple[str, ...] = MODELS
    if args.s1_encoders is not None:
        extra = _fill(
            args.out / "cells_s1.jsonl",
            args,
            sizes,
            lambda n, s, z: _s1_cell(n, s, z, args.s1_encoders, args.out / "runs"),
        )
        by_key = {(c["dataset"], c["seed"], c["size"]): c["scores"] for c in extra}
        for c in cells:
            c["scores"].update(by_key[(c["dataset"], c["seed"], c["size"])])
        models = (*MODELS, *S1_MODELS)
    _plot(cells, sizes, args.datasets, models, args.doc.parent / "label_efficiency.png")
    block = _table(cells, sizes, args.seeds, args.datasets, models)
    text = args.doc.read_text()
    if START not in text or END not in text:
        raise SystemExit(f"error: {args.doc} lacks the {START} / {END} markers")
    head, rest = text.split(START, 1)
    args.doc.write_text(head + START + "\n\n" + block + "\n" + END + rest.split(END, 1)[1])
    print(f"updated {args.doc} and {args.doc.parent / 'label_efficiency.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
