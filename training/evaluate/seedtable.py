"""Mean +- std over split seeds of every model and baseline, from several downstream run directories.

``cropmap evaluate seedtable RUN_S0 RUN_S1 RUN_S2 --title "France 2022, top 6" [-o table.md]`` (alias
``python -m training.seedtable``)

Each run directory is one ``python -m training.downstream`` run on its own train / test split (``--split-seed``);
the table has one row per (model, method): overall accuracy and macro F1 on the held-out parcels as mean +- std
over the directories (sample std, ``ddof=1``: the conservative estimate for a few seeds), and the mean training
time per run. Rows are sorted by mean macro F1; the RandomForest row is marked, and every model's gap to it is
given in points, paired by split (the model minus the RandomForest on the same split, mean +- std over splits);
a gap in bold is larger than its standard deviation.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from training.downstream.store import ResultsStore

__all__ = ["collect", "seed_table"]


def _label(rec: dict[str, Any]) -> str:
    v = int(rec["variant"])
    family = str(rec["family"])
    if rec.get("hp_source") in ("baseline", "ensemble"):
        return family
    return f"{family} (one run: mean over its seeds)" if v < 0 else f"{family} v{v}"


def collect(run_dirs: Sequence[Path]) -> dict[tuple[str, str], list[dict[str, Any]]]:
    """Records per (model label, method label) across run directories (one record per directory)."""
    rows: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for d in run_dirs:
        path = Path(d) / "results.jsonl"
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} does not exist; run python -m training.downstream --out {d} first"
            )
        here: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
        for rec in ResultsStore(path).records():
            method = rec["method"] if rec["corruption"] is None else f"{rec['method']} {rec['corruption']:g}"
            here[(_label(rec), method)].append(rec)
        for (
            key,
            recs,
        ) in here.items():  # the seeds of a family's defaults count as one (averaged) run per split
            rows[key].append(
                recs[0]
                if len(recs) == 1
                else {
                    "val_accuracy": float(np.mean([r["val_accuracy"] for r in recs])),
                    "macro_f1": float(np.mean([r["macro_f1"] for r in recs])),
                    "seconds": float(np.mean([r.get("seconds", math.nan) for r in recs])),
                }
            )
    return rows


def _std(a: np.ndarray) -> float:
    """Sample standard deviation (``ddof=1``); 0 for a single value."""
    return float(a.std(ddof=1)) if len(a) > 1 else 0.0


def _gap(d: np.ndarray) -> str:
    """``+m +- s`` in points, in bold when the mean gap is positive and larger than its std."""
    text = f"{100 * d.mean():+.1f} +- {100 * _std(d):.1f}"
    return f"**{text}**" if d.mean() > 0 and d.mean() > _std(d) else text


def seed_table(run_dirs: Sequence[Path], title: str) -> tuple[str, dict[str, Any]]:
    """The markdown table and its numbers."""
    rows = collect(run_dirs)
    n = len(run_dirs)
    stats = {}
    for key, recs in rows.items():
        oa = np.array([r["val_accuracy"] for r in recs])
        f1 = np.array([r["macro_f1"] for r in recs])
        stats[key] = {
            "runs": len(recs),
            "oa_mean": float(oa.mean()),
            "oa_std": _std(oa),
            "f1_mean": float(f1.mean()),
            "f1_std": _std(f1),
            "seconds": float(np.mean([r.get("seconds", math.nan) for r in recs])),
        }
    rf = stats.get(("random_forest", "supervised"))
    lines = [
        f"**{title}** ({n} split seeds; mean +- std over seeds; test parcels never used for training or selection)\n",
        "| model | method | OA | macro F1 | OA - RF (paired) | F1 - RF (paired) | train time / run |",
        "|---|---|---|---|---|---|---|",
    ]
    for (label, method), s in sorted(stats.items(), key=lambda kv: -kv[1]["f1_mean"]):
        partial = "" if s["runs"] == n else f" ({s['runs']} of {n} seeds)"
        gap_oa = gap_f1 = "-"
        rf_recs = rows.get(("random_forest", "supervised"), [])
        if rf is not None and label != "random_forest" and len(rf_recs) == len(rows[(label, method)]):
            # Per split seed, the model minus the RandomForest on the same split: mean +- std over seeds.
            pairs = list(zip(rows[(label, method)], rf_recs, strict=True))
            d_oa = np.array([a["val_accuracy"] - b["val_accuracy"] for a, b in pairs])
            d_f1 = np.array([a["macro_f1"] - b["macro_f1"] for a, b in pairs])
            gap_oa, gap_f1 = _gap(d_oa), _gap(d_f1)
            s["oa_gap"], s["oa_gap_std"] = float(d_oa.mean()), _std(d_oa)
            s["f1_gap"], s["f1_gap_std"] = float(d_f1.mean()), _std(d_f1)
        name = "**RandomForest (500 trees)**" if label == "random_forest" else label
        lines.append(
            f"| {name}{partial} | {method} | {100 * s['oa_mean']:.1f} +- {100 * s['oa_std']:.1f} | "
            f"{100 * s['f1_mean']:.1f} +- {100 * s['f1_std']:.1f} | {gap_oa} | {gap_f1} | {s['seconds']:.1f} s |"
        )
    return "\n".join(lines) + "\n", {f"{k[0]}|{k[1]}": v for k, v in stats.items()}


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m training.seedtable``: an alias of ``cropmap evaluate seedtable``; returns the exit status."""
    from training.evaluate.cli import run_alias
    from training.evaluate.cli import seedtable as command

    return run_alias(command, argv, prog_name="python -m training.seedtable")


if __name__ == "__main__":
    raise SystemExit(main())
