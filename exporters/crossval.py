"""Cross-validated selection: pick and calibrate the bundle on out-of-fold predictions of every training sample.

``cropmap train downstream --selection-folds K -o RUN_DIR`` (:mod:`training.downstream.selection`) trains every run
on all training samples into ``RUN_DIR`` and once per fold ``k`` into ``RUN_DIR/cv/fold<k>``, that fold held out.
``cropmap export best RUN_DIR`` then:

* predicts each fold's held-out series with the fold's counterpart of every kept run (same model file; family,
  variant, method, seed, recipe and encoder must agree), so every training sample is predicted once by a model that
  never saw it: the out-of-fold probabilities of each run;
* ranks the runs on them (``--metric``, ties: the other metric) and weighs the cross-family ensemble (the mean of
  its members' out-of-fold probabilities) against the best run by the rule of :mod:`exporters.ensemble`;
* fits the temperature on the chosen model's out-of-fold probabilities;
* exports the chosen runs of ``RUN_DIR`` (trained on every training sample) with that temperature; the test
  scores it records are theirs, on the untouched test series.

Against one selection split (a fifth of the training parcels: 15 on the shipped Flanders set) the choice rests on
all of them, and no model loses the selection samples: nothing to refit afterwards.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from exporters.refit import Refit, _records, _series, calibration_from, same_test_series
from exporters.to_onnx import ExportError

logger = logging.getLogger(__name__)

CV_SPLIT = "cross-validation"
"""The ``split`` a choice made on out-of-fold predictions names."""

HINT = "rerun the same 'cropmap train downstream --selection-folds K' command (it resumes)"


@dataclass(frozen=True)
class Folds:
    """The fold directories of a cross-validated run directory, each checked against it."""

    run_dir: Path
    folds: tuple[Refit, ...]
    """Per fold: its directory and kept records (a run's counterpart is found as a refit's is)."""
    series: tuple[tuple[np.ndarray, np.ndarray], ...]
    """Per fold: its held-out series and labels."""
    n_train: int
    """Training samples of the runs of ``run_dir``."""

    @property
    def labels(self) -> np.ndarray:
        """The labels of the out-of-fold predictions, fold after fold."""
        return np.concatenate([y for _, y in self.series])

    def describe(self) -> str:
        n = sum(len(y) for _, y in self.series)
        return (
            f"{len(self.folds)}-fold cross-validation inside the {self.n_train} training samples ({n} out-of-fold "
            f"predictions, {self.run_dir.name}/cv)"
        )

    def probabilities(
        self, record: dict[str, Any], work: Path, example: np.ndarray, atol: float
    ) -> np.ndarray:
        """The out-of-fold probabilities of the run ``record`` describes: each fold's held-out series through that
        fold's counterpart of the run (exported and parity-checked like any member)."""
        from exporters.ensemble import load_member

        parts = []
        for k, (fold, (x, _)) in enumerate(zip(self.folds, self.series, strict=True)):
            found, _ = fold.counterpart(record)
            where = work / f"fold{k}"
            where.mkdir(parents=True, exist_ok=True)
            parts.append(load_member(found, fold.run_dir, where, example, atol).probabilities(x))
        return np.concatenate(parts)


def open_folds(run_dir: str | Path, task: str) -> Folds | None:
    """The folds of ``run_dir`` (``None`` when it has no ``cv`` folder), checked: every fold present, the same test
    series, each fold's runs trained on the other folds of the same training samples.

    Raises:
        ExportError: Naming what was found and what was expected.
    """
    from training.downstream.run import CV, fold_dir
    from training.downstream.selection import SELECT_INPUTS

    run_dir = Path(run_dir)
    if not (run_dir / CV).is_dir():
        return None
    main = [r for r in _records(run_dir / "results.jsonl", task) if r.get("model")]
    counts = sorted({int(r.get("selection_folds") or 0) for r in main})
    if len(counts) != 1 or counts[0] < 2 or any(r.get("n_select") for r in main):
        raise ExportError(
            f"{run_dir / CV} holds fold runs, but the runs of {run_dir} were trained with selection_folds "
            f"{counts} and {sorted({int(r.get('n_select') or 0) for r in main})} selection samples; expected "
            "the output folder of 'cropmap train downstream --selection-folds K'"
        )
    n_folds = counts[0]
    n_train = {int(r["n_train"]) for r in main}
    if len(n_train) != 1:
        raise ExportError(
            f"the runs of {run_dir} trained on {sorted(n_train)} samples; expected one training set"
        )
    total = n_train.pop()
    folds, series = [], []
    for k in range(n_folds):
        where = fold_dir(run_dir, k)
        results = where / "results.jsonl"
        if not results.is_file():
            raise ExportError(f"fold {k} of {n_folds} ({where}) holds no results; {HINT}")
        kept = [r for r in _records(results, task) if r.get("model")]
        wrong = [
            r["model"] for r in kept if (r.get("selection_fold"), r.get("selection_folds")) != (k, n_folds)
        ]
        if not kept or wrong:
            raise ExportError(
                f"{results} holds {len(kept)} kept runs, {len(wrong)} of them not trained with fold {k} of "
                f"{n_folds} held out; {HINT}"
            )
        sizes = {int(r["n_train"]) + int(r.get("n_select") or 0) for r in kept}
        if sizes != {total}:
            raise ExportError(
                f"the runs of {where} trained on {sorted(sizes)} training plus held-out samples; expected the "
                f"{total} training samples of {run_dir}"
            )
        same_test_series(where, run_dir, task, f"fold {k} of a cross-validated selection")
        path = where / SELECT_INPUTS.format(task=task)
        try:
            with np.load(path) as data:
                held = (np.asarray(data["x"], np.float32), np.asarray(data["y"], np.int64))
        except (OSError, KeyError, ValueError) as err:
            raise ExportError(f"cannot read the held-out series of fold {k}, {path}: {err}") from err
        folds.append(Refit(where, {str(r["model"]): r for r in kept}, total - len(held[1]), HINT))
        series.append(held)
    held_out = sum(len(y) for _, y in series)
    if held_out > total:
        raise ExportError(f"the folds of {run_dir} hold out {held_out} samples of {total}; {HINT}")
    return Folds(run_dir, tuple(folds), tuple(series), total)


def calibration_note(folds: Folds, task: str) -> str:
    """The calibration record's text for a temperature fitted on out-of-fold predictions."""
    return (
        f"out-of-fold predictions of {folds.describe()} (task {task}; never the test split), each sample predicted "
        "by the fold model that never saw it; applied to the runs trained on every training sample"
    )


def choose(
    folds: Folds,
    records: list[dict[str, Any]],
    with_model: list[dict[str, Any]],
    *,
    metric: str,
    ensemble: str,
    work: Path,
    atol: float,
) -> tuple[Any, list[Any] | None, tuple[Any, np.ndarray, np.ndarray]]:
    """The choice on out-of-fold predictions: the best single run (a :class:`exporters.best.Choice`) or the
    cross-family ensemble (an :class:`exporters.ensemble.EnsembleChoice`, with its members exported from the run
    directory), and the calibration fitted on the chosen model's out-of-fold probabilities."""
    from exporters.best import Choice
    from exporters.ensemble import (
        _check_legend,
        _metric,
        candidate_runs,
        ensemble_choice,
        load_member,
        paired_stderr,
        single_leads,
    )

    run_dir = folds.run_dir
    task = str(with_model[0]["task"])
    x_test, y_test = _series(run_dir, task)
    x_test = x_test.astype(np.float32)
    example = x_test[:256]
    y = folds.labels
    other = "accuracy" if metric == "macro_f1" else "macro_f1"
    probs = {str(r["model"]): folds.probabilities(r, work, example, atol) for r in with_model}
    n_classes = next(iter(probs.values())).shape[1]
    scored = [
        (
            _metric(y, probs[str(r["model"])].argmax(1), n_classes, metric),
            _metric(y, probs[str(r["model"])].argmax(1), n_classes, other),
            -i,
            r,
        )
        for i, r in enumerate(with_model)
    ]
    for value, second, _, r in sorted(scored, key=lambda s: s[:3], reverse=True):
        logger.info(
            "out-of-fold %s %.4f (%s %.4f): %s", metric, value, other, second, Path(str(r["model"])).stem
        )
    value, _, _, best = max(scored, key=lambda s: s[:3])
    single = Choice(best, run_dir / best["model"], metric, value, len(with_model), CV_SPLIT)
    note = calibration_note(folds, task)
    runs = (
        None if ensemble == "never" else candidate_runs(run_dir, records, task, always=ensemble == "always")
    )
    if runs is not None:
        p_ens = np.mean([probs[str(r["model"])] for r in runs], axis=0)
        ens_pred, single_pred = p_ens.argmax(1), probs[str(best["model"])].argmax(1)
        ens_value = _metric(y, ens_pred, n_classes, metric)
        margin = value - ens_value
        stderr = paired_stderr(y, single_pred, ens_pred, n_classes, metric)
        logger.info(
            "cross-family ensemble of %d runs: out-of-fold %s %.4f; best single run %s %.4f (margin %+.4f, "
            "standard error %.4f)",
            len(runs),
            metric,
            ens_value,
            best["family"],
            value,
            margin,
            stderr,
        )
        if ensemble == "always" or not single_leads(margin, stderr):
            main = work / "main"
            main.mkdir(parents=True, exist_ok=True)
            members = [load_member(r, run_dir, main, example, atol) for r in runs]
            _check_legend(members, run_dir)
            choice = ensemble_choice(
                members,
                single,
                metric=metric,
                value=ens_value,
                margin=margin,
                stderr=stderr,
                test=(x_test, y_test),
                forced=ensemble == "always",
                split=CV_SPLIT,
            )
            return choice, members, calibration_from(p_ens, y, note)
    return single, None, calibration_from(probs[str(best["model"])], y, note)
