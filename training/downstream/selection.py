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

**Cross-validated selection** (``selection_folds`` ``K`` >= 2, ``--selection-folds K``): one selection split of a
few hundred parcels holds a few dozen, too few to tell the families apart (docs/results.md). Instead, the training
samples are cut into ``K`` folds (stratified by class, by parcel where samples are pixels, seeded by ``split_seed``;
a class with a single parcel is never held out). The command trains every run on all training samples into
``OUT`` (the models a bundle is made of) and once per fold ``k`` into ``OUT/cv/fold<k>`` with fold ``k`` as that
pass's selection split. Each training sample is then predicted once by a model that never saw it; ``cropmap export
best OUT`` picks the run or the cross-family ensemble on these out-of-fold predictions and fits the temperature on
them (:mod:`exporters.crossval`). It costs ``K`` more trainings of every run.
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

MAX_FOLDS = 20
"""Most folds of a cross-validated selection."""


def holdout_fraction(cfg: Any) -> float:
    """The configured selection fraction, or the task's default when it is ``None``; ``1 / K`` in a pass of a
    cross-validated selection that holds a fold out, 0 in its pass on every training sample."""
    folds = int(getattr(cfg, "selection_folds", 0) or 0)
    if folds >= 2:
        return 0.0 if cfg.selection_fold is None else 1.0 / folds
    frac = cfg.selection_holdout
    return float(DEFAULT_HOLDOUT.get(str(cfg.task), 0.0) if frac is None else frac)


def check_holdout(value: float | None) -> None:
    """Raise ``ValueError`` unless ``value`` is ``None`` or in ``[0, 0.5)``."""
    if value is not None and not 0.0 <= float(value) < 0.5:
        raise ValueError(f"selection_holdout must be in [0, 0.5), got {value}")


def check_folds(folds: int, fold: int | None, holdout: float | None) -> None:
    """Raise ``ValueError`` unless ``folds`` is 0 or in ``[2, MAX_FOLDS]``, ``fold`` is ``None`` or one of them,
    and no selection fraction is asked for beside them."""
    if folds != 0 and not 2 <= folds <= MAX_FOLDS:
        raise ValueError(f"selection_folds must be 0 (off) or in [2, {MAX_FOLDS}], got {folds}")
    if fold is not None and not 0 <= fold < max(folds, 1):
        raise ValueError(f"selection_fold must be in [0, {folds}) with selection_folds {folds}, got {fold}")
    if folds and holdout:
        raise ValueError(
            f"selection_folds {folds} and selection_holdout {holdout:g} are two ways of selecting; expected one "
            "(selection_holdout=0 with folds)"
        )


def fold_split(
    y: np.ndarray, fold: int, folds: int, seed: int, groups: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Stratified (fit, held-out) indices of fold ``fold`` of ``folds`` over the training samples.

    Per class, the units (samples, or parcels with ``groups``) are shuffled with ``seed`` and dealt to the folds in
    turn, so each fold holds about ``1 / folds`` of every class and the folds together hold every unit once. A class
    with a single unit is never held out (no model could learn it otherwise).
    """
    rng = np.random.default_rng(seed)
    held = np.zeros(len(y), bool)
    for k in np.unique(y):
        idx = np.flatnonzero(y == k)
        keys = idx if groups is None else groups[idx]
        units = np.unique(keys)
        rng.shuffle(units)
        if len(units) < 2:
            continue
        held[idx[np.isin(keys, units[fold::folds])]] = True
    return np.flatnonzero(~held), np.flatnonzero(held)


def carve_selection(
    data: Any, fraction: float, seed: int, *, fold: tuple[int, int] | None = None
) -> tuple[Any, np.ndarray | None, np.ndarray | None]:
    """Split ``data``'s training samples into (fit, selection), stratified by class.

    ``fold=(k, K)``: the selection split is fold ``k`` of ``K`` (:func:`fold_split`) instead of a ``fraction``.

    Returns:
        ``data`` with only the fitting samples, and the selection series and labels (``None`` for fraction 0).

    Raises:
        ValueError: If a class would have no fitting sample or the selection split would be empty.
    """
    from training.downstream.recipe import selection_split

    if fold is None and fraction <= 0:
        return data, None, None
    groups = getattr(data, "groups_train", None)
    y = np.asarray(data.y_train)
    fit, sel = (
        selection_split(y, fraction, seed, groups=groups)
        if fold is None
        else fold_split(y, *fold, seed, groups)
    )
    if not len(sel):
        what = (
            f"{len(data.y_train)} training samples"
            if groups is None
            else f"the {len(np.unique(groups))} training parcels (split by parcel)"
        )
        if fold is None:
            raise ValueError(
                f"selection_holdout {fraction:g} of {what} selects none; raise it or set it to 0"
            )
        raise ValueError(
            f"fold {fold[0]} of {fold[1]} of {what} holds none out; expected fewer selection_folds"
        )
    x_sel, y_sel = data.x_train[sel], data.y_train[sel]
    parts: dict[str, Any] = {"x_train": data.x_train[fit], "y_train": data.y_train[fit]}
    if groups is not None:
        parts["groups_train"] = groups[fit]
    fitted = dataclasses.replace(data, **parts)
    logger.info(
        "model-selection split: %d of %d training samples (%s, stratified%s, seed %d) set aside to pick and calibrate "
        "models; %d train, %d untouched test samples",
        len(sel),
        len(data.y_train),
        f"{100 * fraction:.0f} %" if fold is None else f"fold {fold[0]} of {fold[1]}",
        "" if groups is None else " by parcel",
        seed,
        len(fit),
        len(data.y_val),
    )
    return fitted, x_sel, y_sel


def carve_for(data: Any, cfg: Any) -> tuple[Any, np.ndarray | None, np.ndarray | None]:
    """:func:`carve_selection` as configuration ``cfg`` asks for it: its fraction, or its fold of a cross-validated
    selection, seeded by its ``split_seed``."""
    fold = None if cfg.selection_fold is None else (cfg.selection_fold, cfg.selection_folds)
    return carve_selection(data, holdout_fraction(cfg), cfg.split_seed, fold=fold)


def select_scores(y_sel: np.ndarray, pred: np.ndarray, n_classes: int) -> dict[str, float]:
    """``select_accuracy`` and ``select_macro_f1`` of predictions on the selection split."""
    s = score(np.asarray(y_sel), np.asarray(pred), n_classes)
    return {"select_accuracy": float(s["val_accuracy"]), "select_macro_f1": float(s["macro_f1"])}
