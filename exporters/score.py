"""``python -m exporters.score``: score a bundle on labelled series: accuracy, macro F1, kappa, a per-class table.

    python -m exporters.score BUNDLE --data RUN_DIR/validation-taskreal.npz
    python -m exporters.score BUNDLE --run RUN_DIR [--data PARCELS.parquet] [--split test|selection|train|all]
    ... [--json SCORE.json]

* ``--data FILE.npz``: arrays ``x`` (float32 ``(N, T, C)``, raw, gap-free, on the bundle's grid and bands) and ``y``
  (0-based indices into the bundle's classes), as ``training.downstream.run`` writes them (``validation-task<T>.npz``:
  the test split, ``selection-task<T>.npz``: the model-selection split).
* ``--run RUN_DIR``: labelled parcels read exactly as that downstream run read them (its ``config_task<T>.json``:
  legend, grid, season, split seed, selection fraction), from the run's ``--data`` file or another ``--data``
  parquet with the same legend; ``--split`` picks the parcels: ``test`` (default; the validation split, which
  nothing in the run trained, selected or calibrated on), ``selection``, ``train`` or ``all``.

The bundle runs through ONNX Runtime exactly as ``cropmap classify`` runs it (argmax of its logits), so on a run's
test split the numbers equal the run's record (``val_accuracy``, ``macro_f1``) for the model in the bundle. The
JSON output (``--json``, written atomically) holds the same numbers and the confusion matrix.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np

from cropmap.safeio.atomic import atomic_path

SPLITS = ("test", "selection", "train", "all")


class ScoreError(ValueError):
    """The bundle cannot be scored on these data (one line)."""


def score_series(bundle: Any, x: np.ndarray, y: np.ndarray, *, batch: int = 4096) -> dict[str, Any]:
    """Accuracy, macro F1, kappa, the confusion matrix and per-class precision / recall / F1 of a bundle."""
    from training.evaluate.run import confusion_matrix, metrics_from_confusion

    meta = bundle.metadata
    x = np.asarray(x, dtype=np.float32)
    y = np.asarray(y, dtype=np.int64)
    if x.ndim != 3 or x.shape[1:] != (meta.n_timesteps, meta.n_bands):
        raise ScoreError(
            f"series have shape {x.shape}; the bundle takes (N, {meta.n_timesteps}, {meta.n_bands})"
        )
    if y.shape != (len(x),) or not len(y):
        raise ScoreError(f"labels have shape {y.shape}; expected ({len(x)},) with at least one series")
    k = len(meta.classes)
    if y.min() < 0 or y.max() >= k:
        raise ScoreError(
            f"labels lie in [{y.min()}, {y.max()}]; the bundle has {k} classes (indices 0..{k - 1})"
        )
    pred = np.concatenate(
        [np.asarray(bundle.run(x[i : i + batch])).argmax(1) for i in range(0, len(x), batch)]
    )
    cm = confusion_matrix(y, pred, k)
    m = metrics_from_confusion(cm)
    c = np.asarray(cm, dtype=np.float64)
    rows = []
    for j, info in enumerate(meta.classes):
        predicted = c[:, j].sum()
        rows.append(
            {
                "code": info.code,
                "name": info.name,
                "n": int(c[j].sum()),
                "precision": None if predicted == 0 else float(c[j, j] / predicted),
                "recall": None if math.isnan(m.recall[j]) else m.recall[j],
                "f1": None if math.isnan(m.f1[j]) else m.f1[j],
            }
        )
    return {
        "n": len(y),
        "accuracy": m.accuracy,
        "macro_f1": m.macro_f1,
        "kappa": m.kappa,
        "confusion": cm.tolist(),
        "per_class": rows,
    }


def run_series(
    run_dir: Path, split: str, data: Path | None = None
) -> tuple[np.ndarray, np.ndarray, Any, str]:
    """The labelled series of ``split`` read as the run ``run_dir`` read them (its recorded configuration).

    Returns:
        ``x``, ``y``, the task's :class:`~training.downstream.run.TaskData` (for its classes and grid) and a description.
    """
    from training.config import config_from_dict
    from training.downstream.run import DownstreamConfig, load_real_task
    from training.downstream.selection import carve_selection, holdout_fraction

    configs = sorted(run_dir.glob("config_task*.json"))
    if not configs:
        raise ScoreError(
            f"{run_dir} holds no config_task*.json; expected the --out folder of training.downstream.run"
        )
    if len(configs) > 1:
        raise ScoreError(
            f"{run_dir} holds several tasks ({[c.name for c in configs]}); score their .npz files instead"
        )
    cfg = config_from_dict(DownstreamConfig, json.loads(configs[0].read_text())["config"])
    if cfg.task != "real":
        raise ScoreError(
            f"{run_dir} is a task {cfg.task} run (simulated scenes); pass its validation .npz as --data"
        )
    path = data if data is not None else cfg.data
    if path is None or not Path(path).exists():
        raise ScoreError(f"parcels {path} do not exist; pass --data PARCELS")
    task = load_real_task(path, cfg, cache_dir=run_dir / "extractions")
    fit, x_sel, y_sel = carve_selection(task, holdout_fraction(cfg), cfg.split_seed)
    parts = {
        "test": (task.x_val, task.y_val),
        "train": (fit.x_train, fit.y_train),
        "selection": (x_sel, y_sel),
        "all": (np.concatenate([task.x_train, task.x_val]), np.concatenate([task.y_train, task.y_val])),
    }
    x, y = parts[split]
    if x is None or y is None:
        raise ScoreError(f"{run_dir} was trained without a model-selection split (selection_holdout 0)")
    return x, y, task, f"{Path(path).name}, {split} split as run {run_dir.name} made it ({len(y)} samples)"


def check_task_fits(bundle: Any, task: Any) -> None:
    """Refuse parcels whose legend, bands or grid differ from the bundle's."""
    meta = bundle.metadata
    if tuple(c.name for c in meta.classes) != tuple(task.class_names):
        raise ScoreError(
            f"the parcels' classes {list(task.class_names)} are not the bundle's "
            f"{[c.name for c in meta.classes]}"
        )
    if tuple(task.bands) != tuple(meta.bands):
        raise ScoreError(f"the parcels' bands {list(task.bands)} are not the bundle's {list(meta.bands)}")
    if task.time_grid is not None and task.time_grid.day_of_season != meta.time_grid.day_of_season:
        raise ScoreError("the parcels' time grid is not the bundle's (another grid or season start)")


def format_table(result: dict[str, Any], what: str) -> str:
    """The human-readable report: overall numbers and the per-class table."""

    def pct(v: float | None) -> str:
        return "-" if v is None else f"{100 * v:.1f}"

    lines = [
        (
            f"{what}: accuracy {100 * result['accuracy']:.2f} %, macro F1 {100 * result['macro_f1']:.2f} %, "
            f"kappa {result['kappa']:.4f} on {result['n']} samples"
        ),
        "",
        "| code | class | n | precision | recall | F1 |",
        "|---|---|---|---|---|---|",
    ]
    for r in result["per_class"]:
        lines.append(
            f"| {r['code']} | {r['name']} | {r['n']} | {pct(r['precision'])} | {pct(r['recall'])} | "
            f"{pct(r['f1'])} |"
        )
    return "\n".join(lines)


def _write_json(path: Path, doc: dict[str, Any]) -> None:
    with atomic_path(path, mode=0o644) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        json.dump(doc, fh, indent=1)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m exporters.score``; returns the exit status."""
    from cropmap.errors import BundleError
    from cropmap.runtime import load_bundle
    from training.checkpoint import describe_error
    from training.config import ConfigError

    parser = argparse.ArgumentParser(prog="python -m exporters.score", description=__doc__.split("\n\n")[0])
    parser.add_argument("bundle", type=Path, help="the bundle (.onnx)")
    parser.add_argument(
        "--data", type=Path, help="an .npz of series x and labels y, or labelled parcels (with --run)"
    )
    parser.add_argument(
        "--run", type=Path, metavar="RUN_DIR", help="read parcels as this downstream run read them"
    )
    parser.add_argument(
        "--split", choices=SPLITS, default="test", help="with --run: which parcels (default: test)"
    )
    parser.add_argument("--json", type=Path, metavar="OUT", help="also write the numbers as JSON")
    args = parser.parse_args(argv)
    if args.run is None and (args.data is None or args.data.suffix != ".npz"):
        parser.error("give --data SERIES.npz, or --run RUN_DIR (optionally with --data PARCELS)")
    try:
        if not args.bundle.is_file():
            raise ScoreError(f"bundle {args.bundle} does not exist")
        bundle = load_bundle(args.bundle)
        if args.run is not None:
            x, y, task, what = run_series(args.run, args.split, args.data)
            check_task_fits(bundle, task)
        else:
            if not args.data.is_file():
                raise ScoreError(f"--data {args.data} does not exist")
            with np.load(args.data) as d:
                if not {"x", "y"} <= set(d):
                    raise ScoreError(f"--data {args.data} holds {sorted(d)}; expected arrays x and y")
                x, y = d["x"], d["y"]
            what = f"{args.data.name} ({len(y)} samples)"
        result = score_series(bundle, x, y)
        if args.json is not None:
            _write_json(args.json, {"bundle": str(args.bundle), "data": what, **result})
    except (ScoreError, BundleError, ConfigError, ValueError, OSError) as err:
        print(f"error: {describe_error(err)}", file=sys.stderr)
        return 1
    print(f"{args.bundle.name} ({bundle.metadata.model_name}) on {format_table(result, what)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
