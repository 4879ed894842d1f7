"""Tree learners as base-model families: a RandomForest and gradient boosting on derived features.

Families (``DownstreamConfig.trees``):

* ``forest``: scikit-learn ``RandomForestClassifier`` on :func:`tree_features`;
* ``boosting``: LightGBM ``LGBMClassifier`` on :func:`tree_features` (chosen over scikit-learn's
  ``HistGradientBoostingClassifier`` and XGBoost by measured accuracy and ONNX support; docs/trees.md).

Both read the gap-filled raw series ``(N, T, C)`` (digital numbers, as the bundle receives them) and compute
the same features inside the exported graph (:mod:`exporters.trees`), so a tree bundle takes raw reflectance
like every other bundle. Trees split on single features by thresholds, so they need no standardisation: the
graph holds none, on purpose.

Features, in this order (``T`` stamps, ``C`` bands, ``I`` indices; :func:`feature_names` lists them):

1. the flattened series, ``T * C`` values (time-major: every band of stamp 0, then stamp 1 ...);
2. spectral indices per stamp, each ``(a - b) / (a + b + 1)`` on digital numbers, for the pairs of
   :data:`INDICES` whose bands the data has: NDVI (B08, B04), NDWI (B03, B08), NDMI (B08, B11); ``T * I``;
3. temporal statistics over the stamps of every band and index: mean, standard deviation (population),
   minimum, maximum; ``4 * (C + I)``;
4. the stamp of each index's maximum (its first occurrence), ``I`` values (e.g. the date of peak NDVI).

Tuning: Optuna (TPE, seeded) over each family's space (:data:`SPACES`) for ``tree_trials`` trials or
``tree_budget_s`` seconds, whichever ends first; each trial is scored by stratified 3-fold cross-validation
(macro F1) inside the training samples only, so the selection and test samples stay unseen. The best
parameters are refitted on all training samples.

A trained tree model is saved as a ``tree_classifier`` checkpoint (:func:`save_tree_classifier`): the tree
ensemble already converted to ONNX (skl2onnx / onnxmltools, features in, probabilities out), the bundle
metadata, parity inputs and the probabilities the training library itself (``predict_proba``) gave for them.
No pickled Python object is stored, so loading a checkpoint cannot execute code.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from training.downstream.store import ResultsStore

logger = logging.getLogger(__name__)


__all__ = [
    "INDICES",
    "SPACES",
    "TREE_FAMILIES",
    "TREE_KIND",
    "TreeClassifier",
    "feature_names",
    "fit_tree",
    "load_tree_classifier",
    "save_tree_classifier",
    "tree_features",
    "tree_to_onnx",
    "tune_tree",
]

TREE_FAMILIES = ("forest", "boosting")
"""Family names of the tree learners (records, model files, ``exporters --best``)."""

TREE_KIND = "tree_classifier"
"""Checkpoint kind of a saved tree model."""

INDICES: tuple[tuple[str, str, str], ...] = (
    ("ndvi", "B08", "B04"),
    ("ndwi", "B03", "B08"),
    ("ndmi", "B08", "B11"),
)
"""Normalised differences ``(a - b) / (a + b + 1)``: name, band a, band b (digital numbers)."""

INDEX_EPS = 1.0
"""Added to the denominator of every index (one digital number: no division by zero on dark pixels)."""

STATS = ("mean", "std", "min", "max")
"""Temporal statistics of every band and index."""

TREE_OPSET = 15
"""ONNX opset of the tree graphs and of the feature graph merged with them (onnxmltools converts LightGBM up to 15)."""
ML_OPSET = 3
"""``ai.onnx.ml`` opset of the tree graphs."""

SPACES: dict[str, dict[str, tuple[str, float, float]]] = {
    "forest": {
        "max_features": ("float", 0.05, 0.6),
        "min_samples_leaf": ("int", 1, 8),
    },
    "boosting": {
        "learning_rate": ("logfloat", 0.02, 0.3),
        "n_estimators": ("int", 50, 400),
        "num_leaves": ("int", 4, 48),
        "min_child_samples": ("int", 3, 30),
        "colsample_bytree": ("float", 0.2, 1.0),
        "reg_lambda": ("logfloat", 1e-3, 10.0),
    },
}
"""Optuna search space per family: parameter -> (kind, low, high)."""

FOREST_TREES = 500
"""Trees of the ``forest`` family (as many as the flattened-series baseline)."""
FOREST_TUNE_TREES = 100
"""Trees of the ``forest`` candidates scored while tuning (the chosen parameters are refitted with 500)."""


def index_pairs(bands: Sequence[str]) -> list[tuple[str, int, int]]:
    """The indices of :data:`INDICES` whose two bands are in ``bands``: (name, column of a, column of b)."""
    pos = {b: i for i, b in enumerate(bands)}
    return [(name, pos[a], pos[b]) for name, a, b in INDICES if a in pos and b in pos]


def feature_names(bands: Sequence[str], n_steps: int) -> list[str]:
    """Names of the :func:`tree_features` columns, in order."""
    idx = [name for name, _, _ in index_pairs(bands)]
    names = [f"{b}_t{t}" for t in range(n_steps) for b in bands]
    names += [f"{name}_t{t}" for name in idx for t in range(n_steps)]
    names += [f"{s}_{c}" for s in STATS for c in (*bands, *idx)]
    names += [f"argmax_{name}" for name in idx]
    return names


def tree_features(x: np.ndarray, bands: Sequence[str]) -> np.ndarray:
    """Features ``(N, F)`` float32 of raw gap-filled series ``(N, T, C)`` (see the module docstring).

    The arithmetic is float32 in the order :func:`exporters.trees.feature_graph` uses, so the bundle's
    features match these up to float rounding of the sums.
    """
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 3 or x.shape[2] != len(bands):
        raise ValueError(
            f"series have shape {x.shape}; expected (N, T, {len(bands)}) for bands {list(bands)}"
        )
    n, t, _ = x.shape
    eps = np.float32(INDEX_EPS)
    idx = [(x[:, :, a] - x[:, :, b]) / (x[:, :, a] + x[:, :, b] + eps) for _, a, b in index_pairs(bands)]
    s = np.concatenate([x, *(i[:, :, None] for i in idx)], axis=2) if idx else x
    mean = s.mean(axis=1, dtype=np.float32)
    std = np.sqrt(np.square(s - mean[:, None, :]).mean(axis=1, dtype=np.float32))
    parts = [x.reshape(n, t * x.shape[2]), *idx, mean, std, s.min(axis=1), s.max(axis=1)]
    parts += [np.argmax(i, axis=1).astype(np.float32)[:, None] for i in idx]
    return np.ascontiguousarray(np.concatenate(parts, axis=1), dtype=np.float32)


def _estimator(family: str, hp: Mapping[str, Any], seed: int, *, tuning: bool = False) -> Any:
    if family == "forest":
        from sklearn.ensemble import RandomForestClassifier

        n = FOREST_TUNE_TREES if tuning else FOREST_TREES
        return RandomForestClassifier(n_estimators=n, n_jobs=1, random_state=seed, **hp)
    if family == "boosting":
        from lightgbm import LGBMClassifier

        return LGBMClassifier(
            random_state=seed,
            n_jobs=1,
            verbose=-1,
            deterministic=True,
            force_row_wise=True,
            subsample=1.0,
            **hp,
        )
    raise ValueError(f"unknown tree family {family!r}; choose from {list(TREE_FAMILIES)}")


def fit_tree(
    family: str,
    features: np.ndarray,
    y: np.ndarray,
    hp: Mapping[str, Any],
    *,
    seed: int,
    tuning: bool = False,
) -> Any:
    """A fitted estimator of ``family`` with hyper-parameters ``hp`` (one thread; ``tuning``: a smaller forest)."""
    est = _estimator(family, hp, seed, tuning=tuning)
    est.fit(np.asarray(features, dtype=np.float32), np.asarray(y, dtype=np.int64))
    return est


def predict_proba(est: Any, features: np.ndarray, n_classes: int) -> np.ndarray:
    """``(N, K)`` float32 probabilities, columns ``0..K-1`` (classes missing from the fit get 0)."""
    p = np.asarray(est.predict_proba(np.asarray(features, dtype=np.float32)), dtype=np.float32)
    out = np.zeros((len(p), n_classes), dtype=np.float32)
    out[:, np.asarray(est.classes_, dtype=np.int64)] = p
    return out


def _suggest(trial: Any, space: Mapping[str, tuple[str, float, float]]) -> dict[str, Any]:
    hp: dict[str, Any] = {}
    for name, (kind, lo, hi) in space.items():
        if kind == "int":
            hp[name] = trial.suggest_int(name, int(lo), int(hi))
        else:
            hp[name] = trial.suggest_float(name, lo, hi, log=kind == "logfloat")
    return hp


def tune_tree(
    family: str,
    features: np.ndarray,
    y: np.ndarray,
    *,
    seed: int,
    trials: int,
    budget_s: float,
    folds: int = 3,
    groups: np.ndarray | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Optuna search of ``family``'s hyper-parameters by ``folds``-fold CV macro F1 on the training samples.

    Returns:
        The best parameters and a record of the search (``trials`` run, ``cv_macro_f1``, ``seconds``).
    """
    import optuna
    from sklearn.metrics import f1_score
    from sklearn.model_selection import StratifiedKFold

    y = np.asarray(y, dtype=np.int64)
    n_folds = int(min(folds, np.bincount(y).min()))
    if n_folds < 2 or trials < 1:
        return {}, {
            "trials": 0,
            "cv_macro_f1": None,
            "seconds": 0.0,
            "note": "untuned: too few samples per class",
        }
    if groups is None:
        splits = list(StratifiedKFold(n_folds, shuffle=True, random_state=seed).split(features, y))
    else:  # pixels of one parcel in one fold: neighbouring pixels would leak between folds
        from sklearn.model_selection import StratifiedGroupKFold

        per_class = min(len(np.unique(groups[y == k])) for k in np.unique(y))
        n_folds = min(n_folds, per_class)
        if n_folds < 2:
            return {}, {
                "trials": 0,
                "cv_macro_f1": None,
                "seconds": 0.0,
                "note": "untuned: too few parcels per class",
            }
        splitter = StratifiedGroupKFold(n_folds, shuffle=True, random_state=seed)
        splits = list(splitter.split(features, y, groups))

    def objective(trial: Any) -> float:
        hp = _suggest(trial, SPACES[family])
        scores = []
        for fit_idx, val_idx in splits:
            est = fit_tree(family, features[fit_idx], y[fit_idx], hp, seed=seed, tuning=True)
            scores.append(f1_score(y[val_idx], est.predict(features[val_idx]), average="macro"))
        return float(np.mean(scores))

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed))
    t0 = time.perf_counter()
    study.optimize(objective, n_trials=trials, timeout=budget_s)
    done = len(study.trials)
    if done < trials:
        logger.warning(
            "%s: the tuning budget of %.0f s ended after %d of %d trials", family, budget_s, done, trials
        )
    return dict(study.best_params), {
        "trials": done,
        "cv_macro_f1": float(study.best_value),
        "folds": n_folds,
        "seconds": time.perf_counter() - t0,
    }


def tree_to_onnx(family: str, est: Any, n_features: int, *, opset: int = TREE_OPSET) -> bytes:
    """The fitted estimator as a serialised ONNX model: input ``features`` float32 ``(N, F)``, output
    ``probabilities`` float32 ``(N, K)`` (and ``label``), converted by skl2onnx (forest) or onnxmltools (boosting)."""
    if family == "forest":
        from skl2onnx import convert_sklearn
        from skl2onnx.common.data_types import FloatTensorType

        model = convert_sklearn(
            est,
            initial_types=[("features", FloatTensorType([None, n_features]))],
            target_opset={"": opset, "ai.onnx.ml": ML_OPSET},
            options={id(est): {"zipmap": False}},
        )
    elif family == "boosting":
        from onnxmltools import convert_lightgbm
        from onnxmltools.convert.common.data_types import FloatTensorType as MLFloatTensorType

        model = convert_lightgbm(
            est,
            initial_types=[("features", MLFloatTensorType([None, n_features]))],
            target_opset=opset,
            zipmap=False,
        )
    else:
        raise ValueError(f"unknown tree family {family!r}; choose from {list(TREE_FAMILIES)}")
    outputs = [o.name for o in model.graph.output]
    if "probabilities" not in outputs:
        raise RuntimeError(f"the {family} converter wrote outputs {outputs}; expected 'probabilities'")
    return model.SerializeToString()


def library_versions(family: str) -> str:
    """The training library and converter versions of ``family`` (recorded with every tree model)."""
    import onnx
    import sklearn

    if family == "forest":
        import skl2onnx

        return f"scikit-learn {sklearn.__version__}, skl2onnx {skl2onnx.__version__}, onnx {onnx.__version__}"
    import lightgbm
    import onnxmltools

    return f"lightgbm {lightgbm.__version__}, onnxmltools {onnxmltools.__version__}, onnx {onnx.__version__}"


@dataclass(frozen=True)
class TreeClassifier:
    """A saved tree model, as :func:`load_tree_classifier` reads it."""

    family: str
    hp: dict[str, Any]
    bands: tuple[str, ...]
    n_steps: int
    onnx_model: bytes
    """The tree ensemble: ``features (N, F)`` -> ``probabilities (N, K)``."""
    metadata: Any
    """:class:`cropmap.contract.metadata.BundleMetadata` to export with."""
    parity_inputs: np.ndarray
    """Raw series ``(N, T, C)``."""
    parity_probabilities: np.ndarray
    """What the training library's ``predict_proba`` gave for them, ``(N, K)``."""
    parity_labels: np.ndarray | None
    payload: dict[str, Any]
    feature_onnx: bytes | None = None
    """The feature stage of a tree model on a frozen encoder's embeddings (:mod:`training.downstream.embedding_trees`):
    ``x (B, T, C)`` -> ``features (B, F)``; ``None`` for the derived features of :func:`tree_features`."""


def save_tree_classifier(
    path: str | Path,
    *,
    family: str,
    est: Any,
    hp: Mapping[str, Any],
    metadata: Any,
    parity_inputs: np.ndarray,
    parity_labels: np.ndarray | None = None,
    feature_onnx: bytes | None = None,
    **extra: Any,
) -> Path:
    """Write a ``tree_classifier`` checkpoint atomically (see the module docstring); ``feature_onnx``: the feature
    stage of a tree model on embeddings (:mod:`training.downstream.embedding_trees`), kept in the checkpoint."""
    import torch

    from training.checkpoint import save_checkpoint
    from training.downstream.embedding_trees import features_of

    metadata.validate()
    x = np.asarray(parity_inputs, dtype=np.float32)
    if x.ndim != 3 or x.shape[1:] != (metadata.n_timesteps, metadata.n_bands) or not len(x):
        raise ValueError(
            f"parity inputs have shape {x.shape}; expected (N, {metadata.n_timesteps}, {metadata.n_bands})"
        )
    feats = features_of(feature_onnx, x, metadata.bands)
    blob = tree_to_onnx(family, est, feats.shape[1])
    payload = {
        "kind": TREE_KIND,
        "model_name": family,
        "model_config": dict(hp),
        "state_dict": {"onnx": torch.frombuffer(bytearray(blob), dtype=torch.uint8).clone()},
        "n_features": int(feats.shape[1]),
        "n_classes": len(metadata.classes),
        "bundle_metadata": metadata.to_json(),
        "parity_inputs": torch.from_numpy(np.ascontiguousarray(x)),
        "parity_probabilities": torch.from_numpy(predict_proba(est, feats, len(metadata.classes))),
        "parity_labels": None
        if parity_labels is None
        else torch.as_tensor(np.asarray(parity_labels, dtype=np.int64)),
        "libraries": library_versions(family),
    }
    if feature_onnx is not None:
        payload["feature_onnx"] = torch.frombuffer(bytearray(feature_onnx), dtype=torch.uint8).clone()
    payload.update(extra)
    return save_checkpoint(path, payload)


def load_tree_classifier(path: str | Path) -> TreeClassifier:
    """Read a ``tree_classifier`` checkpoint.

    Raises:
        training.checkpoint.CheckpointError: If the file is not a tree checkpoint or lacks keys.
    """
    from cropmap.contract.metadata import BundleMetadata
    from training.checkpoint import CheckpointError, load_checkpoint

    ckpt = load_checkpoint(path, kind=TREE_KIND)
    need = (
        "model_name",
        "model_config",
        "n_features",
        "n_classes",
        "bundle_metadata",
        "parity_inputs",
        "parity_probabilities",
    )
    missing = [k for k in need if k not in ckpt] + (
        [] if "onnx" in ckpt["state_dict"] else ["state_dict.onnx"]
    )
    if missing:
        raise CheckpointError(f"{path}: tree checkpoint lacks {missing}")
    meta = BundleMetadata.from_json(ckpt["bundle_metadata"])
    labels = ckpt.get("parity_labels")
    return TreeClassifier(
        family=str(ckpt["model_name"]),
        hp=dict(ckpt["model_config"]),
        bands=tuple(meta.bands),
        n_steps=meta.n_timesteps,
        onnx_model=ckpt["state_dict"]["onnx"].numpy().tobytes(),
        metadata=meta,
        parity_inputs=ckpt["parity_inputs"].numpy(),
        parity_probabilities=ckpt["parity_probabilities"].numpy(),
        parity_labels=None if labels is None else labels.numpy(),
        payload=ckpt,
        feature_onnx=None if ckpt.get("feature_onnx") is None else ckpt["feature_onnx"].numpy().tobytes(),
    )


def is_tree_checkpoint(path: str | Path) -> bool:
    """Whether ``path`` is a readable ``tree_classifier`` checkpoint (read without executing code).

    Any file that is not one, unreadable ones included, gives ``False``: the caller then treats it as a neural
    ``classifier`` checkpoint, whose checks say what is wrong with it.
    """
    from training.checkpoint import CheckpointError, load_checkpoint

    try:
        return load_checkpoint(path)["kind"] == TREE_KIND
    except (CheckpointError, OSError, ValueError, RuntimeError):
        return False


def tree_metadata(
    cfg: Any,
    data: Any,
    family: str,
    hp: Mapping[str, Any],
    metrics: Mapping[str, float],
    *,
    encoder: str | None = None,
    pretraining: str = "none",
    n_features: int | None = None,
) -> Any:
    """The bundle metadata of a tree model trained on ``data`` (no embedding output; provenance names the library
    and, for a tree model on embeddings, the ``encoder`` file and its ``pretraining``)."""
    import datetime as dt

    from training.downstream.tasks import task_classes
    from training.metadata import bundle_metadata

    assert data.time_grid is not None
    n = len(data.time_grid.day_of_season)
    if encoder is None:
        name, what = f"features_{family}", f"{len(feature_names(data.bands, n))} derived features"
    else:
        name, what = f"embeddings_{family}", f"{n_features} features of the frozen encoder's embeddings"
    return bundle_metadata(
        model_name=name,
        input_name="x",
        bands=data.bands,
        time_grid=data.time_grid,
        classes=task_classes(data),
        min_valid_steps=int(cfg.min_valid),
        nodata=data.nodata,
        embedding=None,
        encoder="none" if encoder is None else encoder,
        base_model=family,
        pretraining=pretraining,
        training_data=f"{data.description or f'task {cfg.task}'}; {family}: {library_versions(family).split(',')[0]} "
        f"on {what} (training.downstream.trees)",
        metrics=metrics,
        created=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    )


def run_trees(
    cfg: Any,
    data: Any,
    *,
    setup: Mapping[str, Any],
    results: ResultsStore,
    done: dict[Any, dict[str, Any]],
    out: Path,
    save: bool,
    x_sel: np.ndarray | None,
    y_sel: np.ndarray | None,
    method: str = "supervised",
    corruption: float | None = None,
    front: Any = None,
    encoder: str | None = None,
) -> None:
    """Tune, fit, score, save and record every family of ``cfg.trees`` on the raw series: on their derived features
    (method ``supervised``), or on the embeddings of the frozen ``front`` (standardisation and the ``encoder`` file
    pre-trained by ``method`` at ``corruption``; :mod:`training.downstream.embedding_trees`).

    Appends one record per family to the ``results`` store (skipping recorded ones), like the neural families': validation
    (test) metrics, ``select_*`` metrics on the selection split when there is one, ``hp``, ``tuning``, ``seconds``
    and the checkpoint under ``models/``.
    """
    from training.downstream.baselines import bundle_metrics, score
    from training.downstream.embedding_trees import feature_onnx, features_of
    from training.downstream.loop import run_seed
    from training.downstream.protocol import PARITY_ROWS, run_name
    from training.downstream.selection import select_scores
    from training.downstream.store import run_key

    k = len(data.class_names)
    todo = [f for f in tree_families(cfg) if (cfg.task, f, 0, method, corruption) not in done]
    if not todo:
        return
    t0 = time.perf_counter()
    blob = None if front is None else feature_onnx(front, data.x_val[:PARITY_ROWS], opset=TREE_OPSET)
    f_train, f_val = features_of(blob, data.x_train, data.bands), features_of(blob, data.x_val, data.bands)
    f_sel = None if x_sel is None else features_of(blob, x_sel, data.bands)
    feat_s = time.perf_counter() - t0
    pretraining = "none" if front is None else f"{method}-{corruption:g}"
    for family in todo:
        seed = run_seed(cfg.seed, cfg.task, family, 0, method, corruption)
        t_run = time.perf_counter()
        hp, tuning = tune_tree(
            family,
            f_train,
            data.y_train,
            seed=seed,
            trials=cfg.tree_trials,
            budget_s=cfg.tree_budget_s,
            groups=getattr(data, "groups_train", None),
        )
        est = fit_tree(family, f_train, data.y_train, hp, seed=seed)
        res = score(data.y_val, predict_proba(est, f_val, k).argmax(1), k)
        if f_sel is not None and y_sel is not None:
            res.update(select_scores(y_sel, predict_proba(est, f_sel, k).argmax(1), k))
        seconds = time.perf_counter() - t_run
        model_file = None
        if save:
            assert data.time_grid is not None
            model_file = Path("models") / f"{run_name(cfg.task, family, 0, method, corruption)}.pt"
            metrics = bundle_metrics(res, len(data.y_train), len(data.y_val))
            meta = tree_metadata(
                cfg,
                data,
                family,
                hp,
                metrics,
                encoder=None if encoder is None else Path(encoder).name,
                pretraining=pretraining,
                n_features=int(f_train.shape[1]),
            )
            n = min(PARITY_ROWS, len(data.y_val))
            save_tree_classifier(
                out / model_file,
                family=family,
                est=est,
                hp=hp,
                metadata=meta,
                parity_inputs=data.x_val[:n],
                parity_labels=data.y_val[:n],
                feature_onnx=blob,
            )
        rec = {
            **setup,
            "family": family,
            "variant": 0,
            "method": method,
            "corruption": corruption,
            **({} if encoder is None else {"encoder": str(encoder)}),
            "hp": hp,
            "hp_source": "optuna" if tuning["trials"] else "defaults",
            "tuning": tuning,
            "lr": None,
            **res,
            "seconds": seconds,
            "encode_seconds": feat_s,
            "embedding_mode": "tree_features" if front is None else "embedding_tree_features",
            "in_dim": int(f_train.shape[1]),
            "class_names": list(data.class_names),
            "device": "cpu",
            "model": None if model_file is None else model_file.as_posix(),
            "libraries": library_versions(family),
        }
        if not results.append_new(rec):
            logger.warning(
                "%s: recorded already by another worker; this result is not appended", run_key(rec)
            )
            continue
        done[run_key(rec)] = rec
        logger.info(
            "task %s %s (%s) on %d tree features (%d tuning trials): val acc %.4f, macro F1 %.4f (%.1f s)",
            cfg.task,
            family,
            method,
            f_train.shape[1],
            tuning["trials"],
            res["val_accuracy"],
            res["macro_f1"],
            seconds,
        )


def check_trees(trees: Sequence[str], trials: int, budget_s: float) -> None:
    """Raise ``ValueError`` for an unknown tree family or a negative trial count / budget."""
    unknown = sorted(set(trees) - set(TREE_FAMILIES))
    if unknown:
        raise ValueError(
            f"unknown tree famil{'y' if len(unknown) == 1 else 'ies'} {unknown} in trees; "
            f"choose from {list(TREE_FAMILIES)} (or none: --set trees=)"
        )
    if trials < 0 or budget_s < 0:
        raise ValueError(f"tree_trials and tree_budget_s must be >= 0, got {trials} and {budget_s}")


def tree_families(cfg: Any) -> tuple[str, ...]:
    """The tree families a downstream configuration trains (``trees`` ``None``: both for task real, else none)."""
    if cfg.trees is None:
        return TREE_FAMILIES if str(cfg.task) == "real" else ()
    return tuple(cfg.trees)
