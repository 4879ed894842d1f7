"""Baselines every downstream task is scored against: a RandomForest and the majority class.

A crop-mapping user's reference is scikit-learn's ``RandomForestClassifier(n_estimators=500)`` on the
flattened time series. :func:`random_forest` fits it on exactly the inputs a base model sees (the
gap-filled, standardised series for ``supervised``; the frozen encoder's per-date embeddings for the
pre-trained methods), flattened to ``T * D`` features, on the whole training set; :func:`majority`
predicts the most frequent training class. Both return the same metric fields as
:func:`training.downstream.loop.train_run`, so their records sit next to the base models' in
``results.jsonl``, the Table-1 report and the win matrices.

scikit-learn is a training-side dependency (the ``train`` extra); nothing in ``cropmap`` imports it.
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np

from training.evaluate.run import confusion_matrix, metrics_from_confusion

__all__ = ["BASELINES", "RF_TREES", "majority", "random_forest", "score"]

BASELINES = ("random_forest", "majority")
"""Family names of the baseline records."""

RF_TREES = 500
"""Trees of the RandomForest baseline."""


def score(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> dict[str, Any]:
    """Accuracy, macro F1, kappa, confusion and per-class recall of predictions."""
    cm = confusion_matrix(np.asarray(y_true), np.asarray(y_pred), n_classes)
    m = metrics_from_confusion(cm)
    return {
        "val_accuracy": m.accuracy,
        "macro_f1": m.macro_f1,
        "kappa": m.kappa,
        "confusion": cm.tolist(),
        "per_class_recall": [None if math.isnan(r) else r for r in m.recall],
    }


def bundle_metrics(res: dict[str, Any], n_train: int, n_val: int) -> dict[str, float]:
    """What a saved model's bundle metadata records of its run: validation scores and the sample counts."""
    return {
        "val_accuracy": res["val_accuracy"],
        "val_macro_f1": res["macro_f1"],
        "val_kappa": res["kappa"],
        "n_train": float(n_train),
        "n_val": float(n_val),
    }


def random_forest(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    n_classes: int,
    *,
    seed: int,
    n_estimators: int = RF_TREES,
    n_jobs: int = 1,
) -> dict[str, Any]:
    """Fit a RandomForest on flattened ``(N, T, D)`` series and score it on the validation set.

    Returns:
        The metric fields of :func:`score` plus ``seconds`` (fit and predict) and ``n_features``.
    """
    from sklearn.ensemble import RandomForestClassifier

    t0 = time.perf_counter()
    xt = np.asarray(x_train, dtype=np.float32).reshape(len(x_train), -1)
    xv = np.asarray(x_val, dtype=np.float32).reshape(len(x_val), -1)
    rf = RandomForestClassifier(n_estimators=n_estimators, n_jobs=n_jobs, random_state=seed)
    rf.fit(
        xt, np.asarray(y_train)
    )  # each tree's seed is drawn before the parallel fit: any n_jobs, same trees
    # Parallel prediction sums the trees' probabilities in the order threads finish; one thread keeps the order.
    pred = rf.set_params(n_jobs=1).predict(xv)
    return {
        **score(y_val, pred, n_classes),
        "seconds": time.perf_counter() - t0,
        "n_features": int(xt.shape[1]),
    }


def majority(y_train: np.ndarray, y_val: np.ndarray, n_classes: int) -> dict[str, Any]:
    """Predict the most frequent training class for every validation sample."""
    top = int(np.bincount(np.asarray(y_train), minlength=n_classes).argmax())
    return {**score(y_val, np.full(len(y_val), top), n_classes), "seconds": 0.0, "n_features": 0}
