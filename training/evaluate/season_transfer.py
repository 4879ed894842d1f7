"""Out-of-season check: accuracy on a season (and region) the model never saw, next to the in-season figure.

    cropmap evaluate season-transfer --data SIM_DIR [--family inception_time] [--repeats 3] [-o FILE.md]

(alias ``python -m training.season_transfer``).

The simulator's scene pair is two seasons of two regions (``scene_b`` is another year with shifted phenology and
other soils; docs/simulator.md). Models are trained on scene A's training fields only, with the default (robust)
recipe, on gap-filled series (``fill=linear``, as inference sees them); scene B's series are resampled onto scene
A's acquisition days by linear interpolation in day of year, as ``cropmap`` resamples a stack onto a bundle's time
grid. Reported: overall accuracy and macro F1 on scene A's held-out fields (in season) and on every sampled pixel of
scene B (out of season), for each seed of the family's defaults, their ensemble, and the RandomForest baseline.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

__all__ = ["resample_days", "season_transfer"]


def resample_days(x: np.ndarray, days: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Linear interpolation of series ``(N, T, C)`` observed on ``days`` onto ``target`` days (edges held)."""
    days = np.asarray(days, dtype=np.float64)
    target = np.asarray(target, dtype=np.float64)
    hi = np.clip(np.searchsorted(days, target), 1, len(days) - 1)
    lo = hi - 1
    w = np.clip((target - days[lo]) / np.maximum(days[hi] - days[lo], 1e-9), 0.0, 1.0)
    return (x[:, lo, :] * (1 - w)[None, :, None] + x[:, hi, :] * w[None, :, None]).astype(np.float32)


def _doy(dates: Sequence[dt.date]) -> np.ndarray:
    return np.array([d.timetuple().tm_yday for d in dates], dtype=np.float64)


def season_transfer(root: Path, *, family: str, repeats: int, n_train: int, n_val: int, seed: int = 0) -> str:
    """Train on scene A, score in and out of season; returns the markdown table."""
    from training.data.datasets import task_sets
    from training.downstream.baselines import random_forest, score
    from training.downstream.recipe import get_recipe
    from training.downstream.run import DEFAULT_LR, encode, predict_logits, train_run
    from training.models import build_model
    from training.models.encoder import Normalize, compute_norm_stats

    a = task_sets(root, 1, n_train, n_val, seed, fill="linear")
    b = task_sets(root, 2, n_train, n_val, seed, fill="linear")
    if a.class_names != b.class_names:
        raise ValueError(f"the scenes' classes differ: {a.class_names} vs {b.class_names}")
    xb = resample_days(np.concatenate([b.x_train, b.x_val]), _doy(b.dates), _doy(a.dates))
    yb = np.concatenate([b.y_train, b.y_val])
    k = len(a.class_names)
    stats = compute_norm_stats(a.x_train)
    front = Normalize(stats["mean"], stats["std"])
    xt, xa, xo = (encode(front, torch.from_numpy(np.ascontiguousarray(v))) for v in (a.x_train, a.x_val, xb))
    yt = torch.from_numpy(a.y_train.astype(np.int64))
    ya = torch.from_numpy(a.y_val.astype(np.int64))
    recipe = get_recipe("robust")
    rows: list[tuple[str, dict[str, float], dict[str, float], float]] = []
    logits_a, logits_o = [], []
    for r in range(repeats):
        torch.manual_seed(seed + r)
        model = build_model(family, int(xt.shape[2]), k, **recipe.adapt_hp(family, {}, int(xt.shape[1])))
        t0 = time.perf_counter()
        train_run(
            model, xt, yt, xa, ya, lr=DEFAULT_LR, epochs=20, batch_size=256, seed=seed + r, recipe=recipe
        )
        secs = time.perf_counter() - t0
        la, lo = predict_logits(model, xa, batch_size=1024), predict_logits(model, xo, batch_size=1024)
        logits_a.append(la)
        logits_o.append(lo)
        rows.append(
            (
                f"{family} (defaults, seed {r + 1})",
                score(a.y_val, la.argmax(-1).numpy(), k),
                score(yb, lo.argmax(-1).numpy(), k),
                secs,
            )
        )
    ens_a, ens_o = torch.stack(logits_a).mean(0), torch.stack(logits_o).mean(0)
    rows.append(
        (
            f"{family} ensemble of {repeats}",
            score(a.y_val, ens_a.argmax(-1).numpy(), k),
            score(yb, ens_o.argmax(-1).numpy(), k),
            sum(r[3] for r in rows),
        )
    )
    rf_in = random_forest(a.x_train, a.y_train, a.x_val, a.y_val, k, seed=seed)
    rf_out = random_forest(a.x_train, a.y_train, xb, yb, k, seed=seed)
    rows.append(("RandomForest (500 trees)", rf_in, rf_out, rf_in["seconds"]))
    lines = [
        (
            f"Trained on scene A of `{root}` ({len(yt)} pixels, {k} classes, {xt.shape[1]} stamps); in season: scene A's "
            f"held-out fields ({len(ya)} px); out of season: scene B, another year and region ({len(yb)} px).\n"
        ),
        "| model | in-season OA | in-season macro F1 | out-of-season OA | out-of-season macro F1 | train s |",
        "|---|---|---|---|---|---|",
    ]
    for name, i, o, secs in rows:
        lines.append(
            f"| {name} | {100 * i['val_accuracy']:.1f} | {100 * i['macro_f1']:.1f} | "
            f"{100 * o['val_accuracy']:.1f} | {100 * o['macro_f1']:.1f} | {secs:.0f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m training.season_transfer``: an alias of ``cropmap evaluate season-transfer``; returns the exit status."""
    from training.evaluate.cli import run_alias
    from training.evaluate.cli import season_transfer as command

    return run_alias(command, argv, prog_name="python -m training.season_transfer")


if __name__ == "__main__":
    raise SystemExit(main())
