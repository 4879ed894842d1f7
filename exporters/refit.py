"""Refit after the choice: the chosen runs trained again on every training sample, the selection split included.

The honest protocol (:mod:`training.downstream.selection`) sets a fifth of the training parcels aside to pick and
calibrate the bundle, so every model it weighs trains on 56 % of the parcels instead of 70 %. On a few hundred
labelled parcels that fifth is worth having back once the choice is made.
``cropmap export best RUN_DIR --refit REFIT_DIR`` does that:

* ``RUN_DIR`` is the ``--out`` of ``python -m training.downstream`` (with a selection split, as by default for
  task ``real``); the choice (best single run or cross-family ensemble, :mod:`exporters.best`) is made there,
  on its selection split, exactly as without ``--refit``;
* ``REFIT_DIR`` is the ``--out`` of the same command with ``--set selection_holdout=0``: the same runs (same
  families, seeds, variants and recipe) trained on all training samples. It must hold the same test series
  (same data, split seed and classes), no selection split, and ``n_select`` more training samples;
* the bundle holds the REFIT_DIR counterparts of the chosen runs (a run's counterpart is the run with the same
  model file; family, variant, method and seed must agree too);
* the temperature cannot be fitted on the refit models (they trained on the selection series): it is fitted on
  the selection series with the models of RUN_DIR, which never saw them, and applied unchanged to the refit
  ones (said in the bundle's calibration record);
* the test scores the bundle records are the refit models' own on the untouched test series.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from exporters.to_onnx import ExportError
from training.downstream.run import VAL_INPUTS

LOG_FLOOR = 1e-7
"""Probabilities are floored here before the log that turns them into logits for the temperature fit."""

SAME = ("family", "variant", "method", "seed", "recipe", "encoder")
"""Record fields a run and its refit counterpart must share."""


@dataclass(frozen=True)
class Refit:
    """A refit run directory checked against the run directory the choice is made in."""

    run_dir: Path
    records: dict[str, dict[str, Any]]
    """The refit directory's records of the task, by model path (as ``results.jsonl`` names it)."""
    n_train: int
    """Training samples of the refit runs."""
    hint: str = "train it with the same families, seeds and variants as the run directory and --set selection_holdout=0"
    """What the error of a missing counterpart tells the user to do."""

    def counterpart(self, record: dict[str, Any]) -> tuple[dict[str, Any], Path]:
        """The refit record and checkpoint of the run ``record`` describes.

        Raises:
            ExportError: If the refit directory has no kept run with that model file, or it differs.
        """
        found = self.records.get(str(record.get("model")))
        path = None if found is None else self.run_dir / str(found["model"])
        if found is None or path is None or not path.is_file():
            raise ExportError(
                f"{self.run_dir} has no counterpart of {record.get('model')} ({record['family']}); {self.hint}"
            )
        differ = [k for k in SAME if str(found.get(k)) != str(record.get(k))]
        if differ:
            raise ExportError(
                f"{path} differs from the run it stands for in {', '.join(differ)}: "
                + ", ".join(f"{k} {found.get(k)!r} instead of {record.get(k)!r}" for k in differ)
            )
        return found, path

    def describe(self) -> str:
        return f"refit on all {self.n_train} training samples ({self.run_dir.name}, no selection split)"


def _records(path: Path, task: str) -> list[dict[str, Any]]:
    """The records of ``task`` in a results file, read and checked as :func:`exporters.best.select_best` reads them."""
    from exporters.best import _read_records

    return [r for r in _read_records(path) if str(r.get("task")) == task]


def _series(run_dir: Path, task: str) -> tuple[np.ndarray, np.ndarray]:
    path = run_dir / VAL_INPUTS.format(task=task)
    try:
        with np.load(path) as data:
            return np.asarray(data["x"]), np.asarray(data["y"])
    except (OSError, KeyError, ValueError) as err:
        raise ExportError(f"cannot read the test series {path}: {err}") from err


def same_test_series(other: Path, run_dir: Path, task: str, what: str) -> None:
    """Refuse ``other`` unless its stored test series are those of ``run_dir``.

    Raises:
        ExportError: Naming both folders and what ``what`` needs.
    """
    x_run, y_run = _series(run_dir, task)
    x_other, y_other = _series(other, task)
    if x_run.shape != x_other.shape or not (
        np.array_equal(x_run, x_other) and np.array_equal(y_run, y_other)
    ):
        raise ExportError(
            f"the test series of {other} ({len(y_other)} samples) are not those of {run_dir} ({len(y_run)}); "
            f"{what} needs the same data, classes, split seed and validation fraction"
        )


def open_refit(refit_dir: str | Path, run_dir: str | Path, task: str) -> Refit:
    """Check that ``refit_dir`` refits the runs of ``run_dir`` (see the module docstring).

    Raises:
        ExportError: Naming what was found and what was expected.
    """
    refit_dir, run_dir = Path(refit_dir), Path(run_dir)
    if refit_dir.resolve() == run_dir.resolve():
        raise ExportError(f"--refit {refit_dir} is the run directory itself; expected a second run directory")
    results = refit_dir / "results.jsonl"
    if not results.is_file():
        raise ExportError(
            f"{refit_dir} holds no results.jsonl; expected the --out folder of python -m training.downstream run "
            "with the same arguments and --set selection_holdout=0"
        )
    records = [r for r in _records(results, task) if r.get("model")]
    if not records:
        raise ExportError(f"{results} holds no kept run of task {task}")
    carved = sorted({str(r.get("selection_holdout")) for r in records if r.get("n_select")})
    if carved:
        raise ExportError(
            f"the runs of {refit_dir} set a selection split aside (selection_holdout {', '.join(carved)}); a refit "
            "trains on every training sample: rerun with --set selection_holdout=0"
        )
    same_test_series(refit_dir, run_dir, task, "a refit")
    original = [r for r in _records(run_dir / "results.jsonl", task) if r.get("model")]
    expected = {int(r["n_train"]) + int(r.get("n_select") or 0) for r in original}
    got = {int(r["n_train"]) for r in records}
    if len(expected) != 1 or got != expected:
        raise ExportError(
            f"the runs of {refit_dir} trained on {sorted(got)} samples; expected the {sorted(expected)} training "
            f"samples of {run_dir} (its training plus selection samples)"
        )
    return Refit(refit_dir, {str(r["model"]): r for r in records}, got.pop())


def calibration_from(
    probabilities: np.ndarray, labels: np.ndarray, note: str
) -> tuple[Any, np.ndarray, np.ndarray]:
    """Temperature scaling fitted on held-out class probabilities (their log as logits: softmax of it gives them
    back, so the fit is that of the models' own logits).

    Returns:
        The :class:`~cropmap.contract.metadata.Calibration`, the logits and labels it was fitted on.
    """
    from exporters.calibration import CalibrationError, calibrate

    logits = np.log(np.maximum(np.asarray(probabilities, np.float64), LOG_FLOOR))
    labels = np.asarray(labels, np.int64)
    try:
        return calibrate(logits, labels, data=note), logits, labels
    except CalibrationError as err:
        raise ExportError(f"cannot calibrate: {err}") from err


def refit_note(run_dir: Path, task: str, refit: Refit) -> str:
    """The calibration record's text for a temperature carried over to refit models."""
    return (
        f"model-selection series of {run_dir.name} (task {task}; never the test split), fitted with the models "
        f"trained without them and applied to the same runs {refit.describe()}"
    )


def with_record(choice: Any, record: dict[str, Any], model: Path, refit: Refit) -> Any:
    """``choice`` (a :class:`exporters.best.Choice`) pointing at the refit run (its test scores are the refit's)."""
    return dataclasses.replace(choice, record=record, model=model, refit=refit.describe())
