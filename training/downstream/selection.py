"""Honest model selection: a model-selection split carved from the training samples, apart from the test split.

``python -m training.downstream`` holds out the validation samples of the data split (for task real, 30 % of
the parcels by default); every record's ``val_accuracy`` / ``macro_f1`` are measured on them. To pick a model
(``python -m exporters --best``) and calibrate it without ever looking at those samples, a further
``selection_holdout`` fraction of the *training* samples (stratified by class, seeded by ``split_seed``) is set
aside before anything trains:

* every model (neural families, their ensembles, tree families, the RandomForest baseline) trains on the rest;
* every kept model is scored on the selection split: ``select_accuracy`` and ``select_macro_f1`` in its record;
* the selection series are stored as ``OUT/selection-task<T>.npz``; ``exporters --best`` ranks on
  ``select_macro_f1`` and fits the temperature on these series, so the validation samples stay an untouched
  test split and the score it reports is the test score.

Every record carries ``selection_holdout`` (the fraction) and ``n_select`` (samples). Default fraction: 0.2 for
task ``real``, 0 (no selection split; ``--best`` then ranks on the validation split and says so) for the
simulated tasks. The carve is by sample: with one sample per parcel (WorldCereal extractions) that is by parcel.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import numpy as np

from training.downstream.baselines import score

logger = logging.getLogger(__name__)

SELECT_INPUTS = "selection-task{task}.npz"
"""Selection series of a task inside a run directory (``exporters --best`` picks and calibrates on them)."""

DEFAULT_HOLDOUT = {"real": 0.2}
"""Default ``selection_holdout`` per task (other tasks: 0)."""


def holdout_fraction(cfg: Any) -> float:
    """The configured selection fraction, or the task's default when it is ``None``."""
    frac = cfg.selection_holdout
    return float(DEFAULT_HOLDOUT.get(str(cfg.task), 0.0) if frac is None else frac)


def check_holdout(value: float | None) -> None:
    """Raise ``ValueError`` unless ``value`` is ``None`` or in ``[0, 0.5)``."""
    if value is not None and not 0.0 <= float(value) < 0.5:
        raise ValueError(f"selection_holdout must be in [0, 0.5), got {value}")


def carve_selection(
    data: Any, fraction: float, seed: int
) -> tuple[Any, np.ndarray | None, np.ndarray | None]:
    """Split ``data``'s training samples into (fit, selection), stratified by class.

    Returns:
        ``data`` with only the fitting samples, and the selection series and labels (``None`` for fraction 0).

    Raises:
        ValueError: If a class would have no fitting sample or the selection split would be empty.
    """
    from training.downstream.recipe import selection_split

    if fraction <= 0:
        return data, None, None
    groups = getattr(data, "groups_train", None)
    fit, sel = selection_split(np.asarray(data.y_train), fraction, seed, groups=groups)
    if not len(sel):
        what = (
            f"{len(data.y_train)} training samples"
            if groups is None
            else f"the {len(np.unique(groups))} training parcels (split by parcel)"
        )
        raise ValueError(f"selection_holdout {fraction:g} of {what} selects none; raise it or set it to 0")
    x_sel, y_sel = data.x_train[sel], data.y_train[sel]
    parts: dict[str, Any] = {"x_train": data.x_train[fit], "y_train": data.y_train[fit]}
    if groups is not None:
        parts["groups_train"] = groups[fit]
    fitted = dataclasses.replace(data, **parts)
    logger.info(
        "model-selection split: %d of %d training samples (%.0f %%, stratified%s, seed %d) set aside to pick and calibrate "
        "models; %d train, %d untouched test samples",
        len(sel),
        len(data.y_train),
        100 * fraction,
        "" if groups is None else " by parcel",
        seed,
        len(fit),
        len(data.y_val),
    )
    return fitted, x_sel, y_sel


def select_scores(y_sel: np.ndarray, pred: np.ndarray, n_classes: int) -> dict[str, float]:
    """``select_accuracy`` and ``select_macro_f1`` of predictions on the selection split."""
    s = score(np.asarray(y_sel), np.asarray(pred), n_classes)
    return {"select_accuracy": float(s["val_accuracy"]), "select_macro_f1": float(s["macro_f1"])}
