"""Bi-modal S2 + S1 against uni-modal S2 pre-training on real WorldCereal parcels, by linear probe.

``cropmap evaluate s1-bimodal -o runs/s1_bimodal [--seed 0 --seed 1] [--write-doc docs/results.md]`` (alias
``python -m training.s1_bimodal``, which also takes the old ``--seeds 0 1 2``)
regenerates the "S2 + S1 on real parcels" table of docs/results.md. For each data set and split seed:

1. the parcels are read and gap-filled onto the monthly grid as ``training.downstream.run --task real`` reads them
   (:func:`training.data.parcels.load_parcels`), split 70/30 by parcel (stratified, the split seed);
2. the point-wise S2 / S1 pairs of the file (:func:`training.data.s1pairs.extraction_pairs`) of every parcel
   **outside the validation split** are written to ``pairs.npz`` (so pre-training never sees a scored parcel;
   parcels of classes the probe does not score stay in, unlabelled);
3. ``python -m training.pretrain`` trains (a) a uni-modal SCARF encoder on the pairs' S2 side and (b) a
   bi-modal Eq. 1 encoder on both sides, with the same encoder, batch, epochs, learning rate, corruption and
   seed (the split seed);
4. the project's linear probe (:func:`training.evaluate.probe.linear_probe`, fixed settings) is fitted on the training
   parcels' series and scored on the validation parcels, on raw S2 bands (no pre-training), a randomly
   initialised ResMLP of the same architecture, the uni-modal and the bi-modal encoder; the frozen encoders
   embed every month and the embeddings are concatenated (``flatten``) or averaged (``mean``).

Writes ``OUT/results.json`` (every number), ``OUT/s1_bimodal.md`` (the table) and, with ``--write-doc``,
replaces the block between the ``s1-bimodal`` markers of that file. Reruns reuse finished encoders.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cropmap.errors import CropmapError
from cropmap.safeio.atomic import atomic_write
from training.data.parcels import ParcelTask, load_parcels
from training.data.s1pairs import S1_POLARISATIONS, extraction_pairs, s1_series, subset, write_pairs
from training.data.worldcereal import WorldCerealSeries, on_time_grid, read_extraction
from training.evaluate.probe import linear_probe, random_encoder, series_features
from training.models.encoder import load_frozen_encoder

logger = logging.getLogger(__name__)

START, END = "<!-- s1-bimodal:start -->", "<!-- s1-bimodal:end -->"
FEATURES = (
    "raw S2 bands (no pre-training)",
    "random ResMLP",
    "uni-modal S2 (SCARF)",
    "bi-modal S2 + S1 (Eq. 1)",
)
RAW_S2S1 = "context: raw S2 + S1 bands (S1 as an input)"


@dataclass(frozen=True)
class DataSet:
    """One labelled extraction and how the probe reads it."""

    name: str
    path: Path
    title: str
    top_classes: int = 6
    class_map: Path | None = None
    season: int | None = None


DATASETS = {
    "france2022": DataSet(
        "france2022",
        Path("sample_data/worldcereal/2022_FRA_LPIS_POLY_110_monthly.geoparquet"),
        "France 2022 LPIS (Corsica), six most frequent classes",
    ),
    "flanders2021": DataSet(
        "flanders2021",
        Path("sample_data/worldcereal/2021_BEL_LPIS-Flanders_POLY_110_monthly.parquet"),
        "Flanders 2021 LPIS, four classes (training/configs/classes_flanders.csv)",
        class_map=Path("training/configs/classes_flanders.csv"),
        season=2020,
    ),
}


def pretrain_args(pairs: Path, out: Path, mode: str, seed: int, epochs: int) -> list[str]:
    """The ``python -m training.pretrain`` arguments of one run (identical for both modes but ``--mode``)."""
    return [
        "--data",
        str(pairs),
        "--out",
        str(out),
        "--mode",
        mode,
        "--alignment",
        "point",
        "--corruption",
        "0.2",
        "--config",
        "training/configs/pretrain_pointwise.toml",
        "--set",
        f"epochs={epochs}",
        "--set",
        "batch_size=256",
        "--set",
        f"seed={seed}",
        "--set",
        "encoder.hidden=128",
        "--set",
        "encoder.n_layers=4",
        "--set",
        "encoder.out_dim=128",
        "--set",
        "projector.hidden=128",
        "--set",
        "projector.out=128",
        "--device",
        "cpu",
        "--no-progress",
        "--overwrite",
    ]


def _pretrain(pairs: Path, out: Path, mode: str, seed: int, epochs: int) -> float:
    """Run one pre-training, or reuse a finished one of the same arguments and pairs; returns its wall time in
    seconds (the recorded one when reused)."""
    import hashlib

    from training.pretrain.run import main as pretrain_main

    args = pretrain_args(pairs, out, mode, seed, epochs)
    with np.load(pairs) as npz:  # the arrays, not the file: a zip holds its write time
        digest = hashlib.md5(npz["s2"].tobytes() + npz["ps"].tobytes()).hexdigest()
    key = {"args": args, "pairs_md5": digest}
    stamp = out / "wall_s.json"
    if (out / "encoder.pt").exists() and stamp.exists():
        done = json.loads(stamp.read_text())
        if {k: done.get(k) for k in key} == key:
            return float(done["wall_s"])
        logger.info("%s was trained with other arguments or pairs; training again", out)
    t0 = time.perf_counter()
    rc = pretrain_main(args)
    if rc != 0:
        raise S1BimodalError(f"pre-training {mode} into {out} failed with exit status {rc}")
    wall = time.perf_counter() - t0
    atomic_write(stamp, json.dumps({**key, "wall_s": wall}) + "\n")
    return wall


def _probe(
    x_tr: np.ndarray,
    y_tr: np.ndarray,
    x_va: np.ndarray,
    y_va: np.ndarray,
    enc: torch.nn.Module | None,
    seed: int,
) -> dict[str, float]:
    out = {}
    for pooling in ("flatten", "mean"):
        ftr = series_features(x_tr, enc, pooling=pooling)
        fva = series_features(x_va, enc, pooling=pooling)
        for metric in ("accuracy", "balanced"):
            out[f"{pooling}_{metric}"] = linear_probe(ftr, y_tr, fva, y_va, seed=seed, metric=metric)
    return out


def s1_on_grid(
    ds: DataSet, task: ParcelTask
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """The parcels' Sentinel-1 (dB) on the task's grid, gap-filled as S2 is.

    Returns:
        ``((train, train_ok), (val, val_ok))``: ``(N, T, 2)`` series and whether the parcel has at least
        ``min_valid`` Sentinel-1 observations in the season (its series is NaN otherwise).
    """
    series = read_extraction(ds.path)
    s1 = WorldCerealSeries(
        values=s1_series(ds.path, series),
        dates=series.dates,
        bands=S1_POLARISATIONS,
        labels=series.labels,
        label_column=series.label_column,
        sample_ids=series.sample_ids,
    )
    grid = on_time_grid(s1, task.time_grid, season=task.season, min_valid=task.min_valid)
    row = {sid: i for i, sid in enumerate(series.sample_ids)}
    pick = [np.array([row[i] for i in ids]) for ids in (task.ids_train, task.ids_val)]
    return (grid.x[pick[0]], grid.ok[pick[0]]), (grid.x[pick[1]], grid.ok[pick[1]])


def run_seed(ds: DataSet, seed: int, out: Path, epochs: int) -> dict:
    """Pairs, both pre-trainings and the probes of one data set and split seed."""
    t0 = time.perf_counter()
    task = load_parcels(
        ds.path, top_classes=ds.top_classes, class_map=ds.class_map, season=ds.season, split_seed=seed
    )
    pairs = extraction_pairs(ds.path, alignment="point")
    if tuple(pairs.bands) != tuple(task.bands):
        raise ValueError(f"pairs hold bands {pairs.bands}, the probe's series {task.bands}")
    held_out = np.isin(pairs.sample_ids, task.ids_val)
    mine = subset(pairs, ~held_out)
    folder = out / f"{ds.name}-s{seed}"
    folder.mkdir(parents=True, exist_ok=True)
    write_pairs(mine, folder / "pairs.npz")
    t_data = time.perf_counter() - t0

    wall = {
        mode: _pretrain(folder / "pairs.npz", folder / mode, mode, seed, epochs)
        for mode in ("unimodal", "bimodal")
    }
    t1 = time.perf_counter()
    encoders: dict[str, torch.nn.Module | None] = {
        FEATURES[0]: None,
        FEATURES[1]: random_encoder(mine.s2, seed=seed, hidden=128, n_layers=4, out_dim=128),
        FEATURES[2]: load_frozen_encoder(folder / "unimodal" / "encoder.pt"),
        FEATURES[3]: load_frozen_encoder(folder / "bimodal" / "encoder.pt"),
    }
    scores = {
        name: _probe(task.x_train, task.y_train, task.x_val, task.y_val, enc, seed)
        for name, enc in encoders.items()
    }
    # Context: S1 as an input. Parcels without min_valid S1 observations in the season are left out of this
    # row only (counted in the results), never filled.
    (s1_tr, ok_tr), (s1_va, ok_va) = s1_on_grid(ds, task)
    scores[RAW_S2S1] = _probe(
        np.concatenate([task.x_train, s1_tr], axis=-1)[ok_tr],
        task.y_train[ok_tr],
        np.concatenate([task.x_val, s1_va], axis=-1)[ok_va],
        task.y_val[ok_va],
        None,
        seed,
    )
    t_probe = time.perf_counter() - t1
    losses = {
        mode: json.loads((folder / mode / "loss_log.jsonl").read_text().splitlines()[-1])["loss"]
        for mode in ("unimodal", "bimodal")
    }
    logger.info("%s seed %d: %s", ds.name, seed, scores)
    return {
        "dataset": ds.name,
        "seed": seed,
        "n_train": len(task.y_train),
        "n_val": len(task.y_val),
        "classes": [c.name for c in task.classes],
        "months": len(task.time_grid.day_of_season),
        "bands": list(task.bands),
        "pairs": {"file": pairs.counts.__dict__, "pretrain": len(mine.s2), "held_out": int(held_out.sum())},
        "final_loss": losses,
        "s1_context_left_out": {"train": int((~ok_tr).sum()), "val": int((~ok_va).sum())},
        "min_valid": task.min_valid,
        "wall_s": {"data": t_data, **{f"pretrain_{m}": w for m, w in wall.items()}, "probe": t_probe},
        "scores": scores,
    }


def _ms(values: Sequence[float]) -> str:
    v = 100 * np.asarray(values, dtype=float)
    return f"{v.mean():.1f} +- {v.std(ddof=1) if len(v) > 1 else 0.0:.1f}"


def table(ds: DataSet, runs: list[dict], epochs: int) -> str:
    """The markdown table of one data set."""
    seeds = [r["seed"] for r in runs]
    r0 = runs[0]
    cols = ("flatten_accuracy", "flatten_balanced", "mean_accuracy", "mean_balanced")
    lines = [
        (
            f"**{ds.title}**, `{ds.path.name}`: {r0['n_train']} training / {r0['n_val']} validation parcels per split "
            f"(70/30 by parcel, split seeds {seeds}), {r0['months']} months x {len(r0['bands'])} bands; pre-training on "
            f"{min(r['pairs']['pretrain'] for r in runs):,}-{max(r['pairs']['pretrain'] for r in runs):,} point-wise "
            f"(parcel, month) pairs of the parcels outside the validation split ({r0['pairs']['file']['pairs']:,} pairs "
            f"in the file); mean +- sample std over the seeds, in %."
        ),
        "",
        "| features | linear, months concatenated: OA | balanced acc. | linear, months averaged: OA | balanced acc. |",
        "|---|---|---|---|---|",
    ]
    for name in FEATURES:
        cells = [_ms([r["scores"][name][c] for r in runs]) for c in cols]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    diff = [_ms([r["scores"][FEATURES[3]][c] - r["scores"][FEATURES[2]][c] for r in runs]) for c in cols]
    lines.append("| bi-modal - uni-modal (paired) | " + " | ".join(diff) + " |")
    cells = [_ms([r["scores"][RAW_S2S1][c] for r in runs]) for c in cols]
    lines.append(f"| {RAW_S2S1} | " + " | ".join(cells) + " |")
    gone = [(r["s1_context_left_out"]["train"], r["s1_context_left_out"]["val"]) for r in runs]
    if any(a or b for a, b in gone):
        lines += [
            "",
            (
                f"Context row: parcels with fewer than {r0['min_valid']} Sentinel-1 observations in the "
                "season are left out of it "
                f"(train / validation per seed: {', '.join(f'{a} / {b}' for a, b in gone)})."
            ),
        ]
    per_seed = "; ".join(
        f"seed {r['seed']}: bi {100 * r['scores'][FEATURES[3]]['flatten_balanced']:.1f} / uni "
        f"{100 * r['scores'][FEATURES[2]]['flatten_balanced']:.1f} / raw "
        f"{100 * r['scores'][FEATURES[0]]['flatten_balanced']:.1f}"
        for r in runs
    )
    walls = {k: np.mean([r["wall_s"][k] for r in runs]) for k in r0["wall_s"]}
    loss = {m: np.mean([r["final_loss"][m] for r in runs]) for m in ("unimodal", "bimodal")}
    lines += [
        "",
        (
            f"Balanced accuracy, months concatenated, per seed: {per_seed}. Final epoch loss (mean over seeds): "
            f"uni-modal {loss['unimodal']:.3f}, bi-modal {loss['bimodal']:.3f}. Wall time per seed (mean): pairs "
            f"{walls['data']:.1f} s, uni-modal pre-training {walls['pretrain_unimodal']:.1f} s, bi-modal "
            f"{walls['pretrain_bimodal']:.1f} s, probes {walls['probe']:.1f} s ({epochs} epochs, batch 256, "
            "ResMLP 4 x 128, projector 128, corruption 0.2, one CPU thread)."
        ),
        "",
    ]
    return "\n".join(lines)


class S1BimodalError(CropmapError, RuntimeError):
    """The experiment cannot run as asked (a document without markers, a pre-training that failed)."""


def run_experiment(
    out: Path,
    *,
    datasets: Sequence[str],
    seeds: Sequence[int],
    epochs: int,
    threads: int,
    write_doc: Path | None,
    command: str,
) -> str:
    """Run every (data set, seed), write ``OUT/results.json`` and ``OUT/s1_bimodal.md`` and, with ``write_doc``,
    the block between its markers; returns the markdown written.

    Args:
        out: Run folder (finished encoders in it are reused).
        datasets: Names among :data:`DATASETS`.
        seeds: Split (and pre-training) seeds.
        epochs: Pre-training epochs of both modes.
        threads: torch CPU threads.
        write_doc: Markdown file whose ``s1-bimodal`` block is replaced, checked before anything runs.
        command: The command line, recorded under the table.

    Raises:
        S1BimodalError: If ``write_doc`` lacks the markers or a pre-training fails.
    """
    torch.set_num_threads(threads)
    if write_doc is not None:
        text = write_doc.read_text() if write_doc.exists() else ""
        if START not in text or END not in text:
            raise S1BimodalError(
                f"{write_doc} lacks the {START} / {END} markers; expected both around the table"
            )
    t0 = time.perf_counter()
    results = []
    parts = []
    for name in datasets:
        ds = DATASETS[name]
        runs = [run_seed(ds, seed, out, epochs) for seed in seeds]
        results += runs
        parts.append(table(ds, runs, epochs))
    total = time.perf_counter() - t0
    day = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d")
    trained = sum(r["wall_s"]["pretrain_unimodal"] + r["wall_s"]["pretrain_bimodal"] for r in results)
    body = "\n".join(parts) + (
        f"\nMeasured {day} by `{command.strip()}`: {total / 60:.1f} min for this run; the {2 * len(results)} "
        f"pre-trainings took {trained / 60:.1f} min when they ran (reruns reuse finished encoders).\n"
    )
    out.mkdir(parents=True, exist_ok=True)
    for fname, content in (("results.json", json.dumps(results, indent=1) + "\n"), ("s1_bimodal.md", body)):
        atomic_write(out / fname, content)
    if write_doc is not None:
        text = write_doc.read_text()
        head, rest = text.split(START, 1)
        _, tail = rest.split(END, 1)
        atomic_write(write_doc, f"{head}{START}\n\n{body}\n{END}{tail}")
    return body


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m training.s1_bimodal``: an alias of ``cropmap evaluate s1-bimodal``; returns the exit status."""
    from training.evaluate.cli import run_alias
    from training.evaluate.cli import s1_bimodal as command

    return run_alias(command, argv, prog_name="python -m training.s1_bimodal")


if __name__ == "__main__":
    raise SystemExit(main())
