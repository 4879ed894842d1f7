"""``cropmap export score``: score a bundle on labelled series: accuracy, macro F1, kappa, a per-class table.

    cropmap export score BUNDLE --data RUN_DIR/validation-taskreal.npz
    cropmap export score BUNDLE --run RUN_DIR [--data PARCELS.parquet] [--split test|selection|train|all]
    ... [-o SCORE.json] [--json]

(``python -m exporters.score`` is an alias; its ``--json SCORE.json`` is ``-o SCORE.json --overwrite``.)

* ``--data FILE.npz``: arrays ``x`` (float32 ``(N, T, C)``, raw, gap-free, on the bundle's grid and bands) and ``y``
  (0-based indices into the bundle's classes), as ``training.downstream.run`` writes them (``validation-task<T>.npz``:
  the test split, ``selection-task<T>.npz``: the model-selection split).
* ``--run RUN_DIR``: labelled parcels read exactly as that downstream run read them (its ``config_task<T>.json``:
  legend, grid, season, split seed, selection fraction), from the run's ``--data`` file or another ``--data``
  parquet with the same legend; ``--split`` picks the parcels: ``test`` (default; the validation split, which
  nothing in the run trained, selected or calibrated on), ``selection``, ``train`` or ``all``.

The bundle runs through ONNX Runtime exactly as ``cropmap classify`` runs it (argmax of its logits), so on a run's
test split the numbers equal the run's record (``val_accuracy``, ``macro_f1``) for the model in the bundle. The
JSON output (``-o``, written atomically; ``--json`` prints it on stdout) holds the same numbers and the confusion matrix.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cropmap.errors import CropmapError

SPLITS = ("test", "selection", "train", "all")


class ScoreError(CropmapError, ValueError):
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
    from training.downstream.selection import carve_for

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
    fit, x_sel, y_sel = carve_for(task, cfg)
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


def score_files(
    bundle_path: Path, *, data: Path | None, run_dir: Path | None, split: str = "test"
) -> tuple[dict[str, Any], str, str]:
    """Score the bundle at ``bundle_path`` on an ``.npz`` of series (``data``) or on a run's parcels (``run_dir``).

    Returns:
        The numbers (:func:`score_series`), a description of the data, and the bundle's model name.

    Raises:
        ScoreError: A missing bundle or data file, arrays that do not fit the bundle, parcels of another legend.
    """
    from cropmap.runtime import load_bundle

    if not bundle_path.is_file():
        raise ScoreError(f"bundle {bundle_path} does not exist")
    bundle = load_bundle(bundle_path)
    if run_dir is not None:
        x, y, task, what = run_series(run_dir, split, data)
        check_task_fits(bundle, task)
    else:
        if data is None:
            raise ScoreError("no labelled series given; expected --data SERIES.npz or --run RUN_DIR")
        if not data.is_file():
            raise ScoreError(f"--data {data} does not exist")
        try:
            with np.load(data) as d:
                if not {"x", "y"} <= set(d):
                    raise ScoreError(f"--data {data} holds {sorted(d)}; expected arrays x and y")
                x, y = d["x"], d["y"]
        except ValueError as err:  # not an .npz (numpy's own words), or arrays it cannot read
            if isinstance(err, ScoreError):
                raise
            raise ScoreError(
                f"--data {data} is not a readable .npz file ({err}); expected arrays x and y"
            ) from err
        what = f"{data.name} ({len(y)} samples)"
    return score_series(bundle, x, y), what, bundle.metadata.model_name


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m exporters.score``: an alias of ``cropmap export score``; returns the exit status.

    Its old ``--json OUT`` (write the numbers to OUT, replacing it) is ``-o OUT --overwrite`` there.
    """
    from cropmap.cli_common import json_path_as_output, run_command
    from exporters.cli import score

    args = sys.argv[1:] if argv is None else argv
    return run_command(
        score, json_path_as_output(args, overwrite=True), prog_name="python -m exporters.score"
    )


if __name__ == "__main__":
    sys.exit(main())
