"""Classification metrics and the papers' comparison report.

``cropmap evaluate protocol --results DIR/results.jsonl -o REPORT_DIR`` (alias ``python -m training.evaluate``)
reads the
JSON lines written by :mod:`training.downstream.run` and writes, per task and base model:

* the win matrix ``W[i, j]`` = fraction of experiments in which method ``i`` has a
  strictly higher validation accuracy than method ``j`` (SCARF's protocol; ties count
  for neither). An *experiment* is one (variant, corruption rate) pair: the supervised
  score of a variant is compared with the self-supervised scores of the same variant
  at each corruption rate, and the two self-supervised methods with each other at the
  same rate. With 10 variants x 2 rates every cell holds 20 comparisons.
  Saved as ``win_<task>_<family>.png`` heatmaps with the fractions printed.
* relative gains ``(acc_ssl - acc_sup) / acc_sup`` per variant and rate as box plots,
  ``gain_<task>.png``.
* ``table1.md``: supervised accuracy mean +- std over variants, mean uni-modal and
  bi-modal gains, and the bi-modal vs supervised wins, in the layout of the journal's
  Table 1, with the baselines (:mod:`training.downstream.baselines`: a RandomForest on the same inputs and the
  majority class) as rows of their own; the win matrices of the base models carry the baselines
  (RandomForest and majority on the supervised inputs) as extra rows and columns; ``per_class.md``: accuracy, macro F1, Cohen's kappa per method and the
  per-class recall / F1 from the summed confusion matrices; ``summary.json`` with all
  numbers; ``report.md`` tying them together.
"""

from __future__ import annotations

import json
import logging
import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

METHODS = ("supervised", "unimodal", "bimodal")
"""Method names in report order."""
METHOD_LABELS = {
    "supervised": "supervised",
    "unimodal": "uni-modal",
    "bimodal": "bi-modal",
    "random_forest": "RandomForest",
    "majority": "majority",
}
BASELINE_FAMILIES = ("random_forest", "majority")
"""Baseline records (:mod:`training.downstream.baselines`): their own Table-1 rows, and rows / columns of every win matrix."""


# ----------------------------------------------------------------------------------------------
# metrics
# ----------------------------------------------------------------------------------------------
def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """Confusion matrix with true classes on rows and predictions on columns.

    Args:
        y_true: ``(N,)`` integer labels in ``[0, n_classes)``.
        y_pred: ``(N,)`` integer predictions in ``[0, n_classes)``.
        n_classes: Number of classes ``K``.

    Returns:
        ``(K, K)`` int64 counts.
    """
    y_true = np.asarray(y_true, dtype=np.int64).ravel()
    y_pred = np.asarray(y_pred, dtype=np.int64).ravel()
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true has {y_true.size} labels but y_pred has {y_pred.size}")
    for name, arr in (("y_true", y_true), ("y_pred", y_pred)):
        if arr.size and (arr.min() < 0 or arr.max() >= n_classes):
            raise ValueError(
                f"{name} holds labels outside [0, {n_classes}): min {arr.min()}, max {arr.max()}"
            )
    return np.bincount(y_true * n_classes + y_pred, minlength=n_classes * n_classes).reshape(
        n_classes, n_classes
    )


@dataclass(frozen=True)
class Metrics:
    """Scores derived from one confusion matrix."""

    accuracy: float
    """Overall accuracy."""
    macro_f1: float
    """Mean F1 over the classes that occur in the labels or the predictions."""
    kappa: float
    """Cohen's kappa."""
    recall: tuple[float, ...]
    """Per-class recall (the per-class accuracy); NaN for classes without support."""
    f1: tuple[float, ...]
    """Per-class F1; NaN for classes that neither occur nor are predicted."""


def metrics_from_confusion(cm: np.ndarray | Sequence[Sequence[int]]) -> Metrics:
    """Accuracy, macro F1, Cohen's kappa and per-class recall / F1 from a confusion matrix.

    Args:
        cm: ``(K, K)`` counts, true classes on rows.

    Returns:
        The :class:`Metrics`.
    """
    c = np.asarray(cm, dtype=np.float64)
    if c.ndim != 2 or c.shape[0] != c.shape[1]:
        raise ValueError(f"confusion matrix must be square (K, K), got shape {c.shape}")
    total = c.sum()
    if total <= 0:
        raise ValueError("confusion matrix is empty (no samples)")
    tp = np.diag(c)
    support = c.sum(axis=1)
    predicted = c.sum(axis=0)
    accuracy = float(tp.sum() / total)
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = np.where(support > 0, tp / support, np.nan)
        denom = support + predicted
        f1 = np.where(denom > 0, 2 * tp / denom, np.nan)
    present = denom > 0
    macro_f1 = float(np.mean(f1[present]))
    expected = float((support * predicted).sum() / total**2)
    kappa = 1.0 if expected >= 1.0 else (accuracy - expected) / (1.0 - expected)
    return Metrics(
        accuracy=accuracy,
        macro_f1=macro_f1,
        kappa=float(kappa),
        recall=tuple(float(v) for v in recall),
        f1=tuple(float(v) for v in f1),
    )


# ----------------------------------------------------------------------------------------------
# results and comparisons
# ----------------------------------------------------------------------------------------------
def read_results(path: str | Path) -> list[dict[str, Any]]:
    """Read the JSON-lines results file the downstream protocol writes (:class:`~training.downstream.store.ResultsStore`).

    Raises:
        FileNotFoundError: If the file is missing.
        ValueError: On a malformed line or a record without the required keys.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"results file {str(path)!r} does not exist")
    from training.downstream.store import ResultsStore

    required = {"task", "family", "variant", "method", "corruption", "val_accuracy", "confusion"}

    def check(rec: dict[str, Any], lineno: int) -> None:
        missing = sorted(required - set(rec))
        if missing:
            raise ValueError(f"{path}:{lineno}: record lacks keys {missing}")
        if rec["method"] not in METHODS:
            raise ValueError(
                f"{path}:{lineno}: unknown method {rec['method']!r}; expected one of {list(METHODS)}"
            )

    records = ResultsStore(path).records(check)
    if not records:
        raise ValueError(f"results file {str(path)!r} holds no records")
    return records


def experiment_scores(records: Iterable[dict[str, Any]]) -> dict[str, dict[tuple[int, float], float]]:
    """Validation accuracy per method and experiment ``(variant, corruption)`` of one task and family.

    Supervised runs have no corruption rate; their score is repeated for every rate at
    which a self-supervised method of the same variant was run, so that each
    experiment compares like with like.

    Returns:
        ``{method: {(variant, corruption): accuracy}}``.

    Raises:
        ValueError: If a (method, variant, corruption) occurs twice.
    """
    records = list(records)
    scores: dict[str, dict[tuple[int, float], float]] = defaultdict(dict)
    sup: dict[int, float] = {}
    seen: set[tuple[str, int, Any]] = set()
    for rec in records:
        key = (rec["method"], int(rec["variant"]), rec["corruption"])
        if key in seen:
            raise ValueError(f"duplicate result for {rec['task']}/{rec['family']} {key}")
        seen.add(key)
        if rec["method"] == "supervised":
            sup[int(rec["variant"])] = float(rec["val_accuracy"])
        else:
            if rec["corruption"] is None:
                raise ValueError(
                    f"{rec['method']} result for variant {rec['variant']} has no corruption rate"
                )
            scores[rec["method"]][(int(rec["variant"]), float(rec["corruption"]))] = float(
                rec["val_accuracy"]
            )
    rates = sorted({c for m in scores.values() for (_, c) in m})
    for v, acc in sup.items():
        for c in rates:
            scores["supervised"][(v, c)] = acc
    if not rates and sup:  # only supervised runs: one experiment per variant
        for v, acc in sup.items():
            scores["supervised"][(v, math.nan)] = acc
    return dict(scores)


def win_matrix(
    scores: dict[str, dict[tuple[int, float], float]], methods: Sequence[str]
) -> tuple[np.ndarray, np.ndarray]:
    """SCARF-style win matrix.

    Args:
        scores: ``{method: {experiment: accuracy}}`` as from :func:`experiment_scores`.
        methods: Row/column order.

    Returns:
        ``(W, n)``: ``W[i, j]`` = fraction of the shared experiments in which method ``i``
        scores strictly higher than method ``j`` (NaN on the diagonal and where no
        experiment is shared); ``n[i, j]`` = number of shared experiments.
    """
    k = len(methods)
    wins = np.full((k, k), np.nan)
    counts = np.zeros((k, k), dtype=np.int64)
    for i, a in enumerate(methods):
        for j, b in enumerate(methods):
            if i == j:
                continue
            shared = sorted(set(scores.get(a, {})) & set(scores.get(b, {})))
            counts[i, j] = len(shared)
            if shared:
                wins[i, j] = float(np.mean([scores[a][e] > scores[b][e] for e in shared]))
    return wins, counts


def relative_gains(scores: dict[str, dict[tuple[int, float], float]], method: str) -> list[float]:
    """``(acc_method - acc_sup) / acc_sup`` for every experiment both were run in."""
    sup = scores.get("supervised", {})
    own = scores.get(method, {})
    return [(own[e] - sup[e]) / sup[e] for e in sorted(set(own) & set(sup)) if sup[e] > 0]


# ----------------------------------------------------------------------------------------------
# report
# ----------------------------------------------------------------------------------------------
def _group(records: list[dict[str, Any]]) -> dict[tuple[str, str], list[dict[str, Any]]]:
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for rec in records:
        groups[(str(rec["task"]), str(rec["family"]))].append(rec)
    return dict(sorted(groups.items()))


def _mean(values: Sequence[Any]) -> float | None:
    vals = [float(v) for v in values if v is not None]
    return float(np.mean(vals)) if vals else None


def _fmt_pct(x: float) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:+.2f} %"


def summarise(records: list[dict[str, Any]]) -> dict[str, Any]:
    """All report numbers per ``task/family``: win matrix, gains, accuracy stats, per-class metrics."""
    out: dict[str, Any] = {}
    groups = _group(records)
    for (task, family), recs in groups.items():
        scores = experiment_scores(recs)
        methods = [m for m in METHODS if m in scores]
        matrix_methods = list(methods)
        if family not in BASELINE_FAMILIES:
            # Each baseline's supervised score stands against every experiment of the base model.
            experiments = sorted({e for m in methods for e in scores[m]}, key=str)
            for base in BASELINE_FAMILIES:
                acc = [r["val_accuracy"] for r in groups.get((task, base), []) if r["method"] == "supervised"]
                if acc and experiments:
                    scores[base] = {e: float(acc[0]) for e in experiments}
                    matrix_methods.append(base)
        wins, counts = win_matrix(scores, matrix_methods)
        sup_accs = [float(r["val_accuracy"]) for r in recs if r["method"] == "supervised"]
        entry: dict[str, Any] = {
            "task": task,
            "family": family,
            "methods": matrix_methods,
            "win_matrix": [[None if math.isnan(v) else v for v in row] for row in wins.tolist()],
            "win_counts": counts.tolist(),
            "supervised_accuracy_mean": float(np.mean(sup_accs)) if sup_accs else None,
            "supervised_accuracy_std": float(np.std(sup_accs, ddof=1)) if len(sup_accs) > 1 else None,
            "supervised_macro_f1_mean": _mean(
                [r.get("macro_f1") for r in recs if r["method"] == "supervised"]
            ),
            "baseline": family in BASELINE_FAMILIES,
            "n_variants": len({int(r["variant"]) for r in recs}),
            "corruption_rates": sorted({float(r["corruption"]) for r in recs if r["corruption"] is not None}),
            "gains": {},
            "per_method": {},
        }
        for m in methods:
            if m != "supervised":
                g = relative_gains(scores, m)
                entry["gains"][m] = {"values": g, "mean": float(np.mean(g)) if g else None}
        for m in methods:
            mrecs = [r for r in recs if r["method"] == m]
            cm = np.sum([np.asarray(r["confusion"], dtype=np.int64) for r in mrecs], axis=0)
            pooled = metrics_from_confusion(cm)
            entry["per_method"][m] = {
                "runs": len(mrecs),
                "accuracy_mean": float(np.mean([r["val_accuracy"] for r in mrecs])),
                "macro_f1_mean": float(np.mean([r.get("macro_f1", math.nan) for r in mrecs])),
                "kappa_mean": float(np.mean([r.get("kappa", math.nan) for r in mrecs])),
                "confusion_sum": cm.tolist(),
                "recall_pooled": list(pooled.recall),
                "f1_pooled": list(pooled.f1),
                "class_names": list(mrecs[0].get("class_names") or [str(k) for k in range(cm.shape[0])]),
            }
        if "bimodal" in methods and "supervised" in methods:
            i, j = matrix_methods.index("bimodal"), matrix_methods.index("supervised")
            entry["bimodal_vs_supervised_wins"] = [round(wins[i, j] * counts[i, j]), int(counts[i, j])]
        out[f"{task}/{family}"] = entry
    return out


def table1_markdown(summary: dict[str, Any]) -> str:
    """The journal's Table 1 layout for the measured numbers."""
    lines = [
        (
            "| task | base model | variants | supervised acc. | supervised macro F1 | uni-modal gain | bi-modal gain | "
            "bi vs sup wins |"
        ),
        "|---|---|---|---|---|---|---|---|",
    ]
    # Base models first, then the baselines of each task.
    order = {f: k for k, f in enumerate(BASELINE_FAMILIES)}
    entries = sorted(summary.values(), key=lambda e: (e["task"], order.get(e["family"], -1), e["family"]))
    for entry in entries:
        mean, std = entry["supervised_accuracy_mean"], entry["supervised_accuracy_std"]
        sup = "n/a" if mean is None else f"{100 * mean:.2f} +- {100 * (std or 0.0):.2f} %"
        f1 = entry.get("supervised_macro_f1_mean")
        family = f"baseline: {METHOD_LABELS[entry['family']]}" if entry.get("baseline") else entry["family"]
        uni = entry["gains"].get("unimodal", {}).get("mean")
        bi = entry["gains"].get("bimodal", {}).get("mean")
        wins = entry.get("bimodal_vs_supervised_wins")
        lines.append(
            f"| {entry['task']} | {family} | {entry['n_variants']} | {sup} | {'n/a' if f1 is None else f'{f1:.3f}'} | "
            f"{_fmt_pct(uni) if uni is not None else 'n/a'} | {_fmt_pct(bi) if bi is not None else 'n/a'} | "
            f"{f'{wins[0]}/{wins[1]}' if wins else 'n/a'} |"
        )
    return "\n".join(lines) + "\n"


def per_class_markdown(summary: dict[str, Any]) -> str:
    """Per-method accuracy, macro F1, kappa and pooled per-class recall / F1."""
    parts = []
    for key, entry in summary.items():
        parts.append(f"## {key}\n")
        parts.append("| method | runs | accuracy | macro F1 | kappa |\n|---|---|---|---|---|")
        for m, pm in entry["per_method"].items():
            parts.append(
                f"| {METHOD_LABELS[m]} | {pm['runs']} | {100 * pm['accuracy_mean']:.2f} % | "
                f"{pm['macro_f1_mean']:.3f} | {pm['kappa_mean']:.3f} |"
            )
        methods = list(entry["per_method"])
        names = entry["per_method"][methods[0]]["class_names"]
        header = " | ".join(f"{METHOD_LABELS[m]} recall / F1" for m in methods)
        parts.append(f"\nPer class (confusion matrices summed over runs):\n\n| class | {header} |")
        parts.append("|---|" + "---|" * len(methods))
        for k, name in enumerate(names):
            cells = []
            for m in methods:
                r, f = entry["per_method"][m]["recall_pooled"][k], entry["per_method"][m]["f1_pooled"][k]
                cells.append("n/a" if math.isnan(r) else f"{r:.2f} / {f:.2f}")
            parts.append(f"| {name} | " + " | ".join(cells) + " |")
        parts.append("")
    return "\n".join(parts) + "\n"


def plot_win_matrix(entry: dict[str, Any], path: Path) -> Path:
    """Heatmap of one win matrix with the fractions (and experiment counts) printed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = entry["methods"]
    w = np.array([[np.nan if v is None else v for v in row] for row in entry["win_matrix"]], dtype=float)
    n = np.asarray(entry["win_counts"])
    fig, ax = plt.subplots(figsize=(1.4 * len(methods) + 1.6, 1.2 * len(methods) + 1.0))
    im = ax.imshow(np.ma.masked_invalid(w), vmin=0.0, vmax=1.0, cmap="RdYlGn")
    labels = [METHOD_LABELS[m] for m in methods]
    ax.set_xticks(range(len(methods)), labels)
    ax.set_yticks(range(len(methods)), labels)
    ax.set_xlabel("method j")
    ax.set_ylabel("method i (row beats column)")
    for i in range(len(methods)):
        for j in range(len(methods)):
            text = "" if np.isnan(w[i, j]) else f"{w[i, j]:.2f}\n({round(w[i, j] * n[i, j])}/{n[i, j]})"
            ax.text(j, i, text, ha="center", va="center", fontsize=9)
    ax.set_title(f"task {entry['task']}, {entry['family']}: win ratio")
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_gains(task: str, entries: list[dict[str, Any]], path: Path) -> Path:
    """Box plots of the relative gains per base model and self-supervised method for one task."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data, labels, colours = [], [], []
    palette = {"unimodal": "#8da0cb", "bimodal": "#66c2a5"}
    for entry in entries:
        for m in ("unimodal", "bimodal"):
            g = entry["gains"].get(m, {}).get("values")
            if g:
                data.append([100 * v for v in g])
                labels.append(f"{entry['family']}\n{METHOD_LABELS[m]}")
                colours.append(palette[m])
    fig, ax = plt.subplots(figsize=(max(4.0, 1.3 * len(data) + 1.0), 4.0))
    if data:
        box = ax.boxplot(data, patch_artist=True)
        for patch, colour in zip(box["boxes"], colours, strict=True):
            patch.set_facecolor(colour)
        ax.set_xticks(range(1, len(labels) + 1), labels, fontsize=8)
    else:
        ax.text(0.5, 0.5, "no self-supervised runs", ha="center", va="center", transform=ax.transAxes)
    ax.axhline(0.0, color="grey", lw=0.8, ls="--")
    ax.set_ylabel("relative gain over supervised (%)")
    ax.set_title(f"task {task}: (acc_ssl - acc_sup) / acc_sup per variant and corruption rate")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(results: str | Path, out_dir: str | Path) -> dict[str, Any]:
    """Write the full report for a results file.

    Args:
        results: JSON-lines file from :mod:`training.downstream.run`.
        out_dir: Report folder (created).

    Returns:
        The summary (also written as ``summary.json``).
    """
    records = read_results(results)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary = summarise(records)
    (out / "summary.json").write_text(json.dumps(_nan_to_none(summary), indent=1, allow_nan=False))
    table = table1_markdown(summary)
    (out / "table1.md").write_text(table)
    (out / "per_class.md").write_text(per_class_markdown(summary))
    report = [
        "# Downstream comparison\n",
        f"Results: `{results}` ({len(records)} runs).\n",
        "## Table 1\n",
        table,
    ]
    by_task: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for entry in summary.values():
        by_task[entry["task"]].append(entry)
    for task, entries in by_task.items():
        report.append(f"## Task {task}\n")
        gain_png = plot_gains(task, entries, out / f"gain_{task}.png")
        report.append(f"![relative gains, task {task}]({gain_png.name})\n")
        for entry in entries:
            if len(entry["methods"]) < 2:
                continue
            png = plot_win_matrix(entry, out / f"win_{task}_{entry['family']}.png")
            report.append(f"![win matrix, task {task}, {entry['family']}]({png.name})\n")
    report.append("Per-class metrics: [per_class.md](per_class.md).\n")
    (out / "report.md").write_text("\n".join(report))
    logger.info("wrote report for %d runs to %s", len(records), out)
    return summary


def _nan_to_none(value: Any) -> Any:
    """Replace NaN floats by ``None`` so the summary is strict JSON."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _nan_to_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_nan_to_none(v) for v in value]
    return value


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m training.evaluate``: an alias of ``cropmap evaluate protocol``; returns the exit status."""
    from training.evaluate.cli import protocol as command
    from training.evaluate.cli import run_alias

    return run_alias(command, argv, prog_name="python -m training.evaluate")


if __name__ == "__main__":
    raise SystemExit(main())
