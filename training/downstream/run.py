"""Downstream comparison: supervised vs uni-modal vs bi-modal features for every base-model variant.

``python -m training.downstream --task 1 --data SIM_DIR --encoders unimodal_0.2=U2.pt unimodal_0.6=U6.pt
bimodal_0.2=B2.pt bimodal_0.6=B6.pt --families lstm,inception_time,transformer --variants 10 --epochs 20
--out runs/task1``

Protocol (PAPER.md section 4):

* ``variants`` hyper-parameter variants per family are sampled once (:func:`training.downstream.tune.sample_variants`,
  kept in ``OUT/variants.db``) and each is trained with every method using the same hyper-parameters.
* **supervised**: the base model on the raw bands, standardised with per-band statistics of the
  training set. **uni-modal / bi-modal**: the base model on the per-stamp embeddings of a frozen
  pre-trained S2 encoder, ``(B, T, C) -> (B, T, D)``, one run per encoder (corruption rate).
* Adam, learning rate decayed linearly from the variant's ``lr`` to 0 over all steps, cross-entropy,
  ``epochs`` epochs; validation accuracy, macro F1, Cohen's kappa and the confusion matrix after the
  last epoch (the accuracy after every ``eval_every`` epochs is kept as a curve).
* The encoder stays in eval mode with ``requires_grad=False`` throughout (its BatchNorm statistics
  never change). Its embeddings are computed once per encoder and kept in memory when the train and
  validation embeddings fit in ``embed_cache_gb`` (the papers' 54,000 x 144 x 256 float32 set needs
  8.0 GB); otherwise the encoder runs on every batch, still frozen.
* Each finished run writes its trained model to ``OUT/models/<run>.pt`` (a ``classifier`` checkpoint,
  :mod:`training.downstream.classifier`: base model, frozen encoder weights and path, normalisation, classes,
  time grid, bands, parity inputs) and then its line to ``OUT/results.jsonl`` (``"model"`` names the
  file); ``OUT/validation-task<T>.npz`` keeps the validation series for exports. A rerun skips
  finished runs, and refuses to mix results produced with another set-up in the same file.
  ``python -m exporters --best OUT -o model.onnx`` exports the best run as a bundle.

Task ``1`` / ``2`` read the simulated (DENETHOR-layout) scenes, task ``real`` a user's labelled
parcels (a WorldCereal extraction; supervised, uni-modal, or bi-modal encoders pre-trained on pairs of their region),
with the legend, time grid and split of :mod:`training.data.parcels`. Task ``real`` also takes any stack
``cropmap classify`` reads with ``--labels POLYGONS --label-column COL``: the labelled series are extracted once
(:mod:`training.data.extract`) into ``OUT/extractions/`` under a key of the inputs' contents and the extraction
options, so a rerun reads them from there.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import logging
import math
import sys
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from cropmap.contract.metadata import ClassInfo, TimeGrid
from cropmap.safeio.atomic import atomic_file
from training.checkpoint import CheckpointError, describe_error
from training.config import ConfigError, config_to_dict, load_config
from training.downstream.baselines import score
from training.downstream.classifier import classifier_metadata, describe_encoder, save_classifier
from training.downstream.recipe import (
    RECIPES,
    Recipe,
    augment_batch,
    class_weights,
    correct_prior,
    get_recipe,
    lr_lambda,
    selection_split,
)
from training.downstream.tune import sample_variants, split_lr
from training.evaluate.run import confusion_matrix, metrics_from_confusion
from training.models import MODELS, build_model
from training.models.encoder import compute_norm_stats, load_frozen_encoder

logger = logging.getLogger(__name__)

SSL_METHODS = ("unimodal", "bimodal")
"""Methods that read a pre-trained encoder."""


@dataclass(frozen=True)
class DownstreamConfig:
    """Settings of one downstream comparison (``training/configs/downstream*.toml``)."""

    task: Literal["1", "2", "real"] = "1"
    """``1``: same scene as pre-training; ``2``: the other scene; ``real``: WorldCereal parcels."""
    data: Path | None = None
    """Tasks 1/2: folder written by ``python -m training.simulate``. Task real: a WorldCereal parquet, or a stack
    (anything ``cropmap classify`` reads) with ``labels``."""
    labels: Path | None = None
    """Task real: labelled polygons (any OGR format) on the stack ``data``; ``label_column`` names their label."""
    id_column: str | None = None
    """Task real with ``labels``: polygon attribute of unique parcel ids (default: the row number)."""
    layer: str | None = None
    """Task real with ``labels``: layer of the polygon file."""
    pixels: str = "all"
    """Task real with ``labels``: per polygon ``all`` pixels, the ``mean``, or N random pixels."""
    buffer_m: float = 10.0
    """Task real with ``labels``: polygons shrink by this many metres before pixels are taken."""
    reflectance_scale: float | None = None
    """Task real with ``labels``: raw value = reflectance x this, for stacks that declare no scale."""
    families: tuple[str, ...] = ("lstm", "inception_time", "transformer")
    """Base-model registry keys."""
    variants: int = 10
    """Hyper-parameter variants per family."""
    epochs: int = 20
    """Training epochs per run."""
    batch_size: int = 256
    """Mini-batch size."""
    n_train_per_class: int = 5000
    """Balanced training pixels per class (tasks 1/2; the papers use 5,000)."""
    n_val_per_class: int = 1000
    """Balanced validation pixels per class (tasks 1/2; the papers use 1,000)."""
    val_fraction: float = 0.3
    """Task real: fraction of parcels held out for validation (stratified by class)."""
    seed: int = 0
    """Seeds the variants, the data sets and every run."""
    device: Literal["cpu", "cuda"] = "cpu"
    """Where models train; ``cuda`` is an error when no GPU is visible."""
    embed_cache_gb: float = 4.0
    """Keep an encoder's train + val embeddings in memory when they fit in this many GB."""
    eval_every: int = 1
    """Record validation accuracy every this many epochs (the final epoch is always evaluated)."""
    threads: int = 0
    """torch CPU threads (0: torch's default)."""
    fill: Literal["none", "linear"] = "none"
    """Tasks 1/2: keep cloudy observations (``none``, as in the papers) or interpolate them (``linear``,
    as inference does: use it for models you will deploy)."""
    split_seed: int = 0
    """Seeds the train / validation split (task real; tasks 1/2 keep the data layer's field split)."""
    split_file: Path | None = None
    """Task real: CSV ``sample_id,split`` (``train`` / ``val``) instead of a seeded split."""
    label_column: str = "ewoc_code"
    """Task real: integer label column (with ``labels``: the polygons' label attribute, codes or names)."""
    top_classes: int = 6
    """Task real: keep the N most frequent label codes as classes (unless ``class_map`` is given)."""
    class_map: Path | None = None
    """Task real: CSV ``match,name[,color]`` mapping label codes (or leading parts) to classes (with ``labels``:
    ``match,name``, a label name or code per row, :func:`training.data.extract.read_class_map`; every class kept)."""
    grid: str = "monthly"
    """Task real: ``monthly``, ``dekadal`` or comma-separated ``MM-DD`` stamps."""
    season: int | None = None
    """Task real: year the season starts in (default: the season holding most observations)."""
    season_start: str = "11-01"
    """Task real: season start ``MM-DD`` (tasks 1/2: the simulated calendar year, ``01-01``)."""
    min_valid: int = 3
    """Fewest valid observations a series needs; also the exported bundle's ``min_valid_steps``."""
    default_variant: bool = False
    """Also train each family with its default hyper-parameters (variant ``-1``, lr ``DEFAULT_LR``)."""
    repeats: int = 1
    """Train the default-hyper-parameter variant with this many seeds (variants ``-1 .. -repeats``)."""
    save_models: bool = True
    """Write every finished run's model to ``OUT/models/`` (what ``python -m exporters --best`` reads)."""
    recipe: str = "robust"
    """How base models train (:mod:`training.downstream.recipe`): ``robust`` (default for users) or ``papers`` (Table 1)."""
    prior_correction: float | None = None
    """Replace the recipe's prior correction (0: decisions as trained; 1: for the training class mix)."""
    baselines: bool = True
    """Also score a RandomForest (per method, on the same inputs) and the majority class (:mod:`training.downstream.baselines`)."""
    precision: Literal["fp32", "bf16"] = "fp32"
    """``bf16`` trains the base models under bf16 autocast (the loss stays fp32)."""
    selection_holdout: float | None = None
    """Fraction of the training samples set aside to pick and calibrate models (:mod:`training.downstream.selection`);
    ``None``: 0.2 for task real, 0 otherwise."""
    trees: tuple[str, ...] | None = None
    """Tree families trained on derived features of the raw series (:mod:`training.downstream.trees`); ``None``: forest and
    boosting for task real, none for the simulated tasks; empty: none."""
    tree_trials: int = 20
    """Optuna trials per tree family (3-fold CV inside the training samples)."""
    tree_budget_s: float = 120.0
    """Tuning time limit per tree family, seconds (the search stops at whichever limit comes first)."""
    min_class_parcels: int = 5
    """Task real with ``top_classes``: classes with fewer usable parcels are left out (with a warning and a count)."""

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "n_train_per_class", "n_val_per_class", "eval_every", "repeats"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.variants < 0 or (self.variants == 0 and not self.default_variant):
            raise ValueError(f"variants must be >= 1 (or 0 with default_variant), got {self.variants}")
        if not self.families:
            raise ValueError("families must name at least one base model")
        unknown = sorted(set(self.families) - set(MODELS))
        if unknown:
            raise ValueError(f"unknown base model(s) {unknown} in families; choose from {sorted(MODELS)}")
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in (0, 1), got {self.val_fraction}")
        if self.embed_cache_gb < 0 or self.threads < 0:
            raise ValueError("embed_cache_gb and threads must be >= 0")
        self.training_recipe()  # raises on an unknown name or a bad prior_correction
        from training.downstream.selection import check_holdout
        from training.downstream.trees import check_trees

        check_holdout(self.selection_holdout)
        check_trees(self.trees or (), self.tree_trials, self.tree_budget_s)

    def training_recipe(self) -> Recipe:
        """The named recipe with this configuration's overrides."""
        if self.prior_correction is None:
            return get_recipe(self.recipe)
        return get_recipe(self.recipe, prior_correction=float(self.prior_correction))


@dataclass(frozen=True)
class TaskData:
    """Labelled series of one downstream task, raw digital numbers."""

    x_train: np.ndarray
    """float32 ``(N, T, C)``."""
    y_train: np.ndarray
    """int64 ``(N,)`` in ``[0, K)``."""
    x_val: np.ndarray
    """float32 ``(M, T, C)``."""
    y_val: np.ndarray
    """int64 ``(M,)``."""
    class_names: tuple[str, ...]
    bands: tuple[str, ...]
    classes: tuple[ClassInfo, ...] | None = None
    """Codes and colours of the classes (``None``: codes 1..K, a generated palette)."""
    time_grid: TimeGrid | None = None
    """The grid the series lie on (needed to save deployable models)."""
    groups_train: np.ndarray | None = None
    """Parcel of each training sample where parcels have several samples (pixels): splits carved out of the
    training samples (model selection, best epoch, tuning folds) keep each parcel on one side. ``None``: one
    sample per parcel."""
    nodata: float | None = None
    """Nodata value of the source (informative, recorded in bundles)."""
    description: str = ""
    """Where the data came from, one line (recorded in bundles)."""

    def __post_init__(self) -> None:
        if self.classes is not None and tuple(c.name for c in self.classes) != tuple(self.class_names):
            raise ValueError("classes and class_names disagree")
        for name in ("x_train", "x_val"):
            arr = getattr(self, name)
            if arr.ndim != 3 or arr.shape[-1] != len(self.bands):
                raise ValueError(
                    f"{name} must be (N, T, {len(self.bands)}) for bands {self.bands}, got {arr.shape}"
                )
            if not np.isfinite(arr).all():
                raise ValueError(f"{name} holds non-finite values; fill gaps before the downstream task")
        if self.groups_train is not None and len(self.groups_train) != len(self.x_train):
            raise ValueError(
                f"groups_train has {len(self.groups_train)} entries for {len(self.x_train)} training series"
            )
        if self.x_train.shape[1] != self.x_val.shape[1]:
            raise ValueError(f"train has {self.x_train.shape[1]} stamps but val has {self.x_val.shape[1]}")
        k = len(self.class_names)
        for name, y, x in (("y_train", self.y_train, self.x_train), ("y_val", self.y_val, self.x_val)):
            if y.shape != (len(x),):
                raise ValueError(f"{name} has shape {y.shape}, expected ({len(x)},)")
            if len(y) and (y.min() < 0 or y.max() >= k):
                raise ValueError(f"{name} holds labels outside [0, {k}) for classes {self.class_names}")


@dataclass(frozen=True)
class EncoderSpec:
    """A pre-trained encoder given on the command line as ``<method>_<corruption>=PATH``."""

    method: str
    corruption: float
    path: Path

    @classmethod
    def parse(cls, text: str) -> EncoderSpec:
        """Parse ``unimodal_0.2=runs/u02/encoder.pt``."""
        key, sep, path = text.partition("=")
        method, _, rate = key.partition("_")
        try:
            corruption = float(rate)
        except ValueError:
            corruption = math.nan
        if not sep or not path or method not in SSL_METHODS or not 0.0 <= corruption < 1.0:
            raise ValueError(
                f"encoder {text!r} is not of the form <method>_<corruption>=PATH with method in "
                f"{list(SSL_METHODS)} and corruption in [0, 1), e.g. 'bimodal_0.2=runs/b02/encoder.pt'"
            )
        return cls(method, corruption, Path(path))


# ----------------------------------------------------------------------------------------------
# training one run
# ----------------------------------------------------------------------------------------------
def run_seed(*parts: object) -> int:
    """A stable 31-bit seed from the parts of a run key."""
    return zlib.crc32("/".join(map(str, parts)).encode()) & 0x7FFFFFFF


@torch.no_grad()
def encode(front: nn.Module, x: torch.Tensor, *, batch_size: int = 1024, device: str = "cpu") -> torch.Tensor:
    """Apply a frozen per-stamp front (normalisation or encoder) to ``(N, T, C)`` -> ``(N, T, D)`` on CPU."""
    front.eval()
    out = [front(x[i : i + batch_size].to(device)).cpu() for i in range(0, len(x), batch_size)]
    return torch.cat(out) if out else torch.empty(0)


def train_run(
    model: nn.Module,
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    x_val: torch.Tensor,
    y_val: torch.Tensor,
    *,
    lr: float,
    epochs: int,
    batch_size: int,
    seed: int,
    device: str = "cpu",
    front: nn.Module | None = None,
    eval_every: int = 1,
    progress: Any | None = None,
    recipe: Recipe | None = None,
    x_sel: torch.Tensor | None = None,
    y_sel: torch.Tensor | None = None,
    precision: Literal["fp32", "bf16"] = "fp32",
) -> dict[str, Any]:
    """Train a base model with a :class:`~training.downstream.recipe.Recipe`, then score it on the validation set.

    With ``recipe.prior_correction`` the head's bias is corrected after training (see
    :func:`~training.downstream.recipe.correct_prior`); the final scores include it, the per-epoch ``curve`` does not.

    Args:
        model: Base model ``(B, T, D) -> (B, K)``.
        x_train: ``(N, T, C)`` inputs: features already (``front`` None) or raw values for ``front``.
        y_train: ``(N,)`` int64 labels.
        x_val: ``(M, T, C)`` validation inputs, like ``x_train``; never used for any training decision.
        y_val: ``(M,)`` labels.
        lr: Peak learning rate.
        epochs: Number of epochs asked for (the recipe may raise it to reach its ``min_steps``).
        batch_size: Mini-batch size asked for (the recipe may cap it for small training sets).
        seed: Seeds the batch order and the augmentation.
        device: ``cpu`` or ``cuda``.
        front: Optional frozen module applied per batch under ``no_grad`` (kept in eval mode).
        eval_every: Validation accuracy is recorded every this many epochs and after the last one.
        progress: Optional tqdm bar updated once per epoch.
        recipe: How to train (default: the papers' protocol, ``RECIPES["papers"]``).
        x_sel: Selection inputs carved out of the training set: the model of the epoch with the best
            selection macro F1 (ties: lower selection loss) is kept, and ``recipe.patience`` stops early.
        y_sel: Selection labels.
        precision: ``bf16`` trains under bf16 autocast (the loss stays fp32); ``fp32`` does not.

    Returns:
        ``val_accuracy``, ``macro_f1``, ``kappa``, ``confusion`` (list of lists), ``per_class_recall``,
        ``curve`` (``[epoch, val accuracy]`` pairs), ``final_loss``, ``epochs_run``, ``best_epoch``,
        ``steps``, ``effective_batch_size`` and ``selection_f1`` (None without a selection split).
    """
    import copy

    from training.pretrain.loop import autocast_context

    recipe = recipe or RECIPES["papers"]
    if (x_sel is None) != (y_sel is None):
        raise ValueError("give both x_sel and y_sel, or neither")
    model.to(device)
    if front is not None:
        front.to(device).eval()
    n_classes = int(model.n_classes)
    bs = recipe.batch_size(batch_size, len(x_train))
    n_epochs = recipe.epochs(epochs, len(x_train), bs)
    if recipe.optimizer == "adamw":
        optimizer: torch.optim.Optimizer = torch.optim.AdamW(
            model.parameters(), lr=lr, weight_decay=recipe.weight_decay
        )
    else:
        optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=recipe.weight_decay)
    steps_per_epoch = math.ceil(len(x_train) / bs)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(recipe, steps_per_epoch * n_epochs))
    gen = torch.Generator().manual_seed(seed)
    weight = class_weights(y_train, n_classes).to(device) if recipe.balanced else None
    loss_fn = nn.CrossEntropyLoss(weight=weight, label_smoothing=recipe.label_smoothing)
    # Augmentation acts on what x_train holds: model inputs, or raw values before a per-batch front.
    scale = (
        x_train.reshape(-1, x_train.shape[-1]).float().std(dim=0).clamp(min=1e-6) if recipe.augments else None
    )
    curve: list[list[float]] = []
    loss_sum, loss_n = 0.0, 0
    best: tuple[float, float] | None = None
    best_state: dict[str, torch.Tensor] | None = None
    best_epoch, since_best, steps, epoch = n_epochs, 0, 0, 0
    for epoch in range(1, n_epochs + 1):
        model.train()
        if front is not None:
            front.eval()
        order = torch.randperm(len(x_train), generator=gen)
        loss_acc = torch.zeros((), device=device)
        loss_n = 0
        for start in range(0, len(order), bs):
            idx = order[start : start + bs]
            xb, yb = x_train[idx].to(device, non_blocking=True), y_train[idx].to(device, non_blocking=True)
            if scale is not None:
                xb = augment_batch(xb, recipe, scale, gen)
            if front is not None:
                with torch.no_grad():
                    xb = front(xb)
            with autocast_context(torch.device(device), precision):
                logits = model(xb)
            loss = loss_fn(logits.float(), yb)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            loss_acc += loss.detach() * len(idx)
            loss_n += len(idx)
            steps += 1
        loss_sum = float(loss_acc)
        if epoch % eval_every == 0 or epoch == n_epochs:
            pred = predict(model, x_val, batch_size=max(bs, 512), device=device, front=front)
            curve.append([epoch, float((pred == y_val).float().mean())])
        if x_sel is not None and y_sel is not None:
            sel_score = _selection_score(model, x_sel, y_sel, n_classes, device=device, front=front)
            if best is None or sel_score > best:
                best, best_epoch, since_best = sel_score, epoch, 0
                best_state = copy.deepcopy(model.state_dict())
            else:
                since_best += 1
        if progress is not None:
            progress.set_postfix(
                loss=f"{loss_sum / max(loss_n, 1):.3f}", acc=f"{curve[-1][1]:.3f}" if curve else "-"
            )
            progress.update(1)
        if recipe.patience and since_best >= recipe.patience:
            break
    epochs_run = epoch
    if best_state is not None:
        model.load_state_dict(best_state)
    if recipe.prior_correction:
        correct_prior(model, y_train, recipe.prior_correction)
    pred = predict(model, x_val, batch_size=max(bs, 512), device=device, front=front)
    return {
        **score(y_val.numpy(), pred.numpy(), n_classes),
        "curve": curve,
        "final_loss": loss_sum / max(loss_n, 1),
        "epochs_run": epochs_run,
        "best_epoch": best_epoch if best_state is not None else epochs_run,
        "steps": steps,
        "effective_batch_size": bs,
        "selection_f1": None if best is None else best[0],
    }


@torch.no_grad()
def _selection_score(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    n_classes: int,
    *,
    device: str,
    front: nn.Module | None,
) -> tuple[float, float]:
    """(macro F1, -mean cross-entropy) on the selection split: larger is better."""
    model.eval()
    logits = predict_logits(model, x, batch_size=512, device=device, front=front)
    nll = float(nn.functional.cross_entropy(logits, y))
    cm = confusion_matrix(y.numpy(), logits.argmax(-1).numpy(), n_classes)
    return metrics_from_confusion(cm).macro_f1, -nll


@torch.no_grad()
def predict_logits(
    model: nn.Module, x: torch.Tensor, *, batch_size: int, device: str = "cpu", front: nn.Module | None = None
) -> torch.Tensor:
    """Logits ``(M, K)`` (float32, on CPU) for ``(M, T, C)`` inputs, in eval mode."""
    model.eval()
    out = []
    for start in range(0, len(x), batch_size):
        xb = x[start : start + batch_size].to(device)
        if front is not None:
            xb = front(xb)
        out.append(model(xb).float().cpu())
    return torch.cat(out) if out else torch.empty(0, int(model.n_classes))


def predict(
    model: nn.Module, x: torch.Tensor, *, batch_size: int, device: str = "cpu", front: nn.Module | None = None
) -> torch.Tensor:
    """Class predictions ``(M,)`` for ``(M, T, C)`` inputs, in eval mode."""
    return predict_logits(model, x, batch_size=batch_size, device=device, front=front).argmax(dim=-1)


# ----------------------------------------------------------------------------------------------
# the comparison
# ----------------------------------------------------------------------------------------------
SETUP_KEYS = (
    "task",
    "epochs",
    "batch_size",
    "n_train",
    "n_val",
    "seed",
    "lr_schedule",
    "fill",
    "recipe",
    "prior_correction",
)
"""Record fields that must agree between runs stored in one results file."""


def _run_key(rec: dict[str, Any]) -> tuple[str, str, int, str, float | None]:
    c = rec["corruption"]
    return (
        str(rec["task"]),
        str(rec["family"]),
        int(rec["variant"]),
        str(rec["method"]),
        None if c is None else float(c),
    )


def load_finished(path: Path) -> dict[tuple[str, str, int, str, float | None], dict[str, Any]]:
    """Finished runs in a results file, by run key (empty when the file does not exist)."""
    done: dict[tuple[str, str, int, str, float | None], dict[str, Any]] = {}
    if not path.is_file():
        return done
    for lineno, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(
                f"{path}:{lineno} is not valid JSON ({err}); remove the broken line to resume"
            ) from err
        done[_run_key(rec)] = rec
    return done


def _check_setup(done: dict[Any, dict[str, Any]], setup: dict[str, Any], path: Path) -> None:
    for rec in done.values():
        if str(rec["task"]) != setup["task"]:
            continue
        # Files written before recipes existed used the papers' protocol; before the prior correction, none.
        rec = {"recipe": "papers", "prior_correction": 0.0, **rec}
        diff = {k: (rec.get(k), setup[k]) for k in SETUP_KEYS if rec.get(k) != setup[k]}
        if diff:
            pretty = ", ".join(f"{k}: stored {a!r}, now {b!r}" for k, (a, b) in diff.items())
            raise ValueError(
                f"{path} holds task {setup['task']} runs made with another set-up ({pretty}); use another --out"
            )


def _fronts(
    data: TaskData, encoders: Sequence[EncoderSpec], device: str
) -> list[tuple[str, float | None, nn.Module, dict[str, Any]]]:
    """The per-stamp fronts: training-set standardisation (supervised) and each frozen encoder."""
    stats = compute_norm_stats(data.x_train)
    from training.models.encoder import Normalize

    fronts: list[tuple[str, float | None, nn.Module, dict[str, Any]]] = [
        ("supervised", None, Normalize(stats["mean"], stats["std"]), {"norm_stats": stats})
    ]
    for spec in encoders:
        enc = load_frozen_encoder(spec.path, map_location=device)
        if enc.in_dim != len(data.bands):
            raise ValueError(
                f"encoder {spec.path} expects {enc.in_dim} input bands but task data has {len(data.bands)} "
                f"({', '.join(data.bands)}); pre-train it on the same bands"
            )
        fronts.append((spec.method, spec.corruption, enc, {"encoder": str(spec.path)}))
    return fronts


DEFAULT_LR = 1e-3
"""Learning rate of the default-hyper-parameter variant (``default_variant``)."""

VAL_INPUTS = "validation-task{task}.npz"
"""Validation series of a task inside a run directory (exports check parity and accuracy on them)."""

PARITY_ROWS = 512
"""Validation series stored inside each model checkpoint for a stand-alone parity check."""


def run_name(task: str, family: str, variant: int, method: str, corruption: float | None) -> str:
    """File stem of a run's model: ``1-lstm-v3-bimodal-0.2``, ``real-transformer-default-supervised``."""
    v = "default" if variant == -1 else f"default{-variant}" if variant < 0 else f"v{variant}"
    return f"{task}-{family}-{v}-{method}" + ("" if corruption is None else f"-{corruption:g}")


def _palette(n: int) -> list[str]:
    from training.data.parcels import _palette as palette

    return palette(n)


def _classes(data: TaskData) -> tuple[ClassInfo, ...]:
    if data.classes is not None:
        return data.classes
    colors = _palette(len(data.class_names))
    return tuple(ClassInfo(k + 1, n, colors[k]) for k, n in enumerate(data.class_names))


def _save_run_model(
    path: Path,
    *,
    cfg: DownstreamConfig,
    data: TaskData,
    family: str,
    hp: dict[str, Any],
    model: nn.Module,
    method: str,
    corruption: float | None,
    front: nn.Module,
    extra: dict[str, Any],
    res: dict[str, Any],
) -> Path:
    """Write one run's trained model as a ``classifier`` checkpoint."""
    assert data.time_grid is not None
    encoder = None if method == "supervised" else front.encoder  # NormalizedEncoder -> bare encoder
    norm_stats = front.norm_stats() if method == "supervised" else front.normalize.norm_stats()
    pretraining = "none" if method == "supervised" else f"{method}-{corruption:g}"
    metrics = {
        "val_accuracy": res["val_accuracy"],
        "val_macro_f1": res["macro_f1"],
        "val_kappa": res["kappa"],
        "n_train": float(len(data.y_train)),
        "n_val": float(len(data.y_val)),
    }
    meta = classifier_metadata(
        encoder=encoder,
        base_model=model,
        family=family,
        pretraining=pretraining,
        bands=data.bands,
        time_grid=data.time_grid,
        classes=_classes(data),
        min_valid_steps=cfg.min_valid,
        training_data=data.description or f"task {cfg.task}",
        metrics=metrics,
        nodata=data.nodata,
    )
    n = min(PARITY_ROWS, len(data.y_val))
    return save_classifier(
        path,
        encoder=encoder,
        encoder_name=describe_encoder(encoder)[0] if encoder is not None else None,
        base_model=model.cpu(),
        base_model_name=family,
        base_model_config=hp,
        norm_stats=norm_stats,
        metadata=meta,
        parity_inputs=data.x_val[:n],
        parity_labels=data.y_val[:n],
        encoder_path=extra.get("encoder"),
        fill=cfg.fill if cfg.task != "real" else "linear",
        config=config_to_dict(cfg),
    )


def _write_npz(path: Path, **arrays: np.ndarray) -> None:
    """Write ``arrays`` to ``path`` atomically (:func:`cropmap.safeio.atomic.atomic_file`)."""
    with atomic_file(path, "wb") as fh:
        np.savez(fh, **arrays)


def run_comparison(
    cfg: DownstreamConfig,
    data: TaskData,
    encoders: Sequence[EncoderSpec],
    out_dir: str | Path,
    *,
    show_progress: bool = True,
) -> Path:
    """Train every (family, variant, method) on one task and append the results.

    Args:
        cfg: The run settings.
        data: The task's train / validation series (raw digital numbers).
        encoders: Pre-trained encoders, one per (method, corruption rate).
        out_dir: Folder for ``results.jsonl``, ``variants.db`` and ``config.json``.
        show_progress: Show tqdm bars.

    Returns:
        The results file.

    Raises:
        ValueError: On duplicated encoders, a results file made with another set-up, or an encoder that does not
            fit the task's bands. (A bi-modal encoder's S2 branch serves any task on its bands: the real task takes
            one pre-trained on pairs from ``python -m training.pairs`` or ``training.data.s1pairs``.)
    """
    from tqdm.auto import tqdm

    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but torch sees no CUDA device; use --device cpu")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    keys = [(e.method, e.corruption) for e in encoders]
    if len(set(keys)) != len(keys):
        raise ValueError(f"encoders repeat a (method, corruption) pair: {keys}")
    recipe = cfg.training_recipe()
    from training.downstream.selection import SELECT_INPUTS, carve_selection, holdout_fraction, select_scores
    from training.downstream.trees import tree_families

    holdout = holdout_fraction(cfg)
    data, x_sel, y_sel = carve_selection(data, holdout, cfg.split_seed)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    results = out / "results.jsonl"
    (out / f"config_task{cfg.task}.json").write_text(
        json.dumps(
            {"config": config_to_dict(cfg), "encoders": [dataclasses.asdict(e) for e in encoders]},
            default=str,
            indent=1,
        )
    )
    setup = {
        "task": cfg.task,
        "epochs": cfg.epochs,
        "batch_size": cfg.batch_size,
        "n_train": len(data.y_train),
        "n_val": len(data.y_val),
        "seed": cfg.seed,
        "lr_schedule": "linear-to-zero" if recipe.schedule == "linear" else "warmup-cosine",
        "fill": cfg.fill,
        "recipe": recipe.name,
        "prior_correction": recipe.prior_correction,
        "selection_holdout": holdout,
        "n_select": 0 if y_sel is None else len(y_sel),
    }
    done = load_finished(results)
    _check_setup(done, setup, results)
    save = cfg.save_models and data.time_grid is not None
    if cfg.save_models and not save:
        logger.warning("task data has no time grid: trained models are not saved (nothing to export)")
    if save:
        (out / "models").mkdir(exist_ok=True)
        val_file = out / VAL_INPUTS.format(task=cfg.task)
        if not val_file.is_file():
            _write_npz(val_file, x=np.asarray(data.x_val, np.float32), y=np.asarray(data.y_val, np.int64))
        sel_file = out / SELECT_INPUTS.format(task=cfg.task)
        if x_sel is not None and y_sel is not None and not sel_file.is_file():
            _write_npz(sel_file, x=np.asarray(x_sel, np.float32), y=np.asarray(y_sel, np.int64))
    variants = {
        f: sample_variants(f, cfg.variants, seed=cfg.seed, storage=out / "variants.db")
        if cfg.variants
        else []
        for f in cfg.families
    }
    indices = (list(range(-1, -cfg.repeats - 1, -1)) if cfg.default_variant else []) + list(
        range(cfg.variants)
    )
    x_train = torch.from_numpy(np.ascontiguousarray(data.x_train, dtype=np.float32))
    x_val = torch.from_numpy(np.ascontiguousarray(data.x_val, dtype=np.float32))
    y_train = torch.from_numpy(data.y_train.astype(np.int64))
    y_val = torch.from_numpy(data.y_val.astype(np.int64))
    n_total = (1 + len(encoders)) * len(cfg.families) * len(indices)
    logger.info(
        "task %s: %d train / %d val series of %d stamps x %d bands, %d classes; %d runs",
        cfg.task,
        len(y_train),
        len(y_val),
        x_train.shape[1],
        x_train.shape[2],
        len(data.class_names),
        n_total,
    )
    bar = tqdm(total=n_total, desc=f"task {cfg.task}", unit="run", disable=not show_progress)
    for method, corruption, front, extra in _fronts(data, encoders, cfg.device):
        todo = [
            (f, v) for f in cfg.families for v in indices if (cfg.task, f, v, method, corruption) not in done
        ]
        bar.update(len(cfg.families) * len(indices) - len(todo))
        baselines_todo = cfg.baselines and (cfg.task, "random_forest", 0, method, corruption) not in done
        ensemble_todo = recipe.ensemble and any(
            (cfg.task, f"{f}_ensemble", 0, method, corruption) not in done for f in cfg.families
        )
        if not todo and not baselines_todo and not ensemble_todo:
            continue
        d = int(getattr(front, "out_dim", x_train.shape[2]))
        cache_gb = (len(x_train) + len(x_val)) * x_train.shape[1] * d * 4 / 1e9
        t0 = time.perf_counter()
        if cache_gb <= cfg.embed_cache_gb:
            feats_train = encode(front, x_train, device=cfg.device)
            feats_val = encode(front, x_val, device=cfg.device)
            run_front, mode = None, "precomputed"
            logger.info(
                "%s %s: features precomputed (%.2f GB) in %.1f s",
                method,
                corruption,
                cache_gb,
                time.perf_counter() - t0,
            )
        else:
            feats_train, feats_val, run_front, mode = x_train, x_val, front, "per_batch"
            logger.info(
                "%s %s: features need %.2f GB > embed_cache_gb=%.2f, encoding per batch",
                method,
                corruption,
                cache_gb,
                cfg.embed_cache_gb,
            )
        encode_s = time.perf_counter() - t0
        if cfg.baselines:
            _run_baselines(
                cfg,
                data,
                method,
                corruption,
                extra,
                feats_train,
                feats_val,
                mode,
                encode_s,
                setup,
                results,
                done,
            )
        if tree_families(cfg) and method == "supervised":
            from training.downstream.trees import run_trees

            run_trees(
                cfg,
                data,
                setup=setup,
                results=results,
                done=done,
                out=out,
                save=save,
                x_sel=x_sel,
                y_sel=y_sel,
            )
        sel_in = (
            None  # selection series as model inputs (like feats_val: encoded, or raw for a per-batch front)
        )
        if x_sel is not None:
            sel_t = torch.from_numpy(x_sel)
            sel_in = sel_t if run_front is not None else encode(front, sel_t, device=cfg.device)
        # The selection split (best epoch) is carved out of the training samples, never the validation ones.
        if recipe.selection_fraction > 0:
            fit_idx, sel_idx = (
                torch.from_numpy(i)
                for i in selection_split(
                    data.y_train, recipe.selection_fraction, cfg.seed, groups=data.groups_train
                )
            )
            fit_x, fit_y, sel_x, sel_y = (
                feats_train[fit_idx],
                y_train[fit_idx],
                feats_train[sel_idx],
                y_train[sel_idx],
            )
        else:
            fit_x, fit_y, sel_x, sel_y = feats_train, y_train, None, None
        trained: dict[tuple[str, int], nn.Module] = {}
        for family, v in todo:
            lr, hp = (DEFAULT_LR, {}) if v < 0 else split_lr(variants[family][v])
            hp = recipe.adapt_hp(family, hp, int(x_train.shape[1]))
            seed = run_seed(cfg.seed, cfg.task, family, v, method, corruption)
            torch.manual_seed(seed)
            model = build_model(family, d, len(data.class_names), **hp)
            bar.set_description(
                f"task {cfg.task} {family} v{v} {method} {corruption if corruption is not None else ''}"
            )
            n_epochs = recipe.epochs(cfg.epochs, len(fit_y), recipe.batch_size(cfg.batch_size, len(fit_y)))
            epoch_bar = tqdm(total=n_epochs, desc="epochs", unit="ep", leave=False, disable=not show_progress)
            t_run = time.perf_counter()
            res = train_run(
                model,
                fit_x,
                fit_y,
                feats_val,
                y_val,
                lr=lr,
                epochs=cfg.epochs,
                batch_size=cfg.batch_size,
                seed=seed,
                device=cfg.device,
                front=run_front,
                eval_every=cfg.eval_every,
                progress=epoch_bar,
                recipe=recipe,
                x_sel=sel_x,
                y_sel=sel_y,
                precision=cfg.precision,
            )
            epoch_bar.close()
            seconds = time.perf_counter() - t_run
            if sel_in is not None:
                pred_sel = predict(model, sel_in, batch_size=512, device=cfg.device, front=run_front).numpy()
                res.update(select_scores(y_sel, pred_sel, len(data.class_names)))
            model_file = None
            if save:
                model_file = Path("models") / f"{run_name(cfg.task, family, v, method, corruption)}.pt"
                _save_run_model(
                    out / model_file,
                    cfg=cfg,
                    data=data,
                    family=family,
                    hp=hp,
                    model=model,
                    method=method,
                    corruption=corruption,
                    front=front,
                    extra=extra,
                    res=res,
                )
            rec = {
                **setup,
                "family": family,
                "variant": v,
                "method": method,
                "corruption": corruption,
                "hp": hp,
                "hp_source": "defaults" if v < 0 else "sampled",
                "lr": lr,
                **res,
                "seconds": seconds,
                "encode_seconds": encode_s,
                "embedding_mode": mode,
                "in_dim": d,
                "class_names": list(data.class_names),
                "device": cfg.device,
                "model": None if model_file is None else model_file.as_posix(),
                **extra,
            }
            with results.open("a") as fh:
                fh.write(json.dumps(rec) + "\n")
            done[_run_key(rec)] = rec
            trained[(family, v)] = model
            bar.update(1)
            logger.info(
                "task %s %s v%d %s %s: val acc %.4f (%.1f s)",
                cfg.task,
                family,
                v,
                method,
                corruption,
                res["val_accuracy"],
                rec["seconds"],
            )
        if recipe.ensemble:
            for family in cfg.families:
                _run_ensemble(
                    cfg,
                    data,
                    family,
                    indices,
                    method,
                    corruption,
                    front,
                    run_front,
                    extra,
                    feats_val,
                    y_val,
                    trained,
                    setup,
                    results,
                    done,
                    out,
                    save,
                    select=(sel_in, y_sel),
                )
        _check_front_frozen(front, method)
    bar.close()
    return results


def _run_ensemble(
    cfg: DownstreamConfig,
    data: TaskData,
    family: str,
    indices: Sequence[int],
    method: str,
    corruption: float | None,
    front: nn.Module,
    run_front: nn.Module | None,
    extra: dict[str, Any],
    feats_val: torch.Tensor,
    y_val: torch.Tensor,
    trained: dict[tuple[str, int], nn.Module],
    setup: dict[str, Any],
    results: Path,
    done: dict[Any, dict[str, Any]],
    out: Path,
    save: bool,
    select: tuple[torch.Tensor | None, np.ndarray | None] = (None, None),
) -> None:
    """Average the probabilities of every run of ``family`` with this method; score and save the ensemble."""
    from training.downstream.classifier import load_classifier
    from training.models.ensemble import EnsembleClassifier

    name = f"{family}_ensemble"
    if (cfg.task, name, 0, method, corruption) in done:
        return
    members, spec, recs = [], [], []
    for v in indices:
        rec = done.get((cfg.task, family, v, method, corruption))
        if rec is None:
            continue
        model = trained.get((family, v))
        if model is None and rec.get("model") and (out / rec["model"]).is_file():
            model = load_classifier(out / rec["model"]).base_model
        if model is None:
            continue
        members.append(model.cpu().eval())
        spec.append({"family": family, "hp": rec["hp"], "variant": v})
        recs.append(rec)
    if len(members) < 2:
        logger.info("%s %s %s: fewer than 2 trained runs, no ensemble", family, method, corruption)
        return
    t0 = time.perf_counter()
    ens = EnsembleClassifier(members, spec).to(cfg.device)
    logits = predict_logits(ens, feats_val, batch_size=512, device=cfg.device, front=run_front)
    res = score(y_val.numpy(), logits.argmax(-1).numpy(), len(data.class_names))
    sel = [r.get("selection_f1") for r in recs]
    res["selection_f1"] = float(np.mean(sel)) if all(v is not None for v in sel) else None
    if select[0] is not None:
        from training.downstream.selection import select_scores

        pred_sel = predict(ens, select[0], batch_size=512, device=cfg.device, front=run_front).numpy()
        res.update(select_scores(select[1], pred_sel, len(data.class_names)))
    hp = {"members": spec}
    model_file = None
    if save:
        model_file = (
            Path("models")
            / f"{run_name(cfg.task, family, 0, method, corruption).replace('-v0-', '-ensemble-')}.pt"
        )
        _save_run_model(
            out / model_file,
            cfg=cfg,
            data=data,
            family="ensemble",
            hp=hp,
            model=ens,
            method=method,
            corruption=corruption,
            front=front,
            extra=extra,
            res=res,
        )
    rec = {
        **setup,
        "family": name,
        "variant": 0,
        "method": method,
        "corruption": corruption,
        "hp": hp,
        "hp_source": "ensemble",
        "lr": None,
        **res,
        "seconds": float(sum(r["seconds"] for r in recs)) + time.perf_counter() - t0,
        "encode_seconds": recs[0].get("encode_seconds"),
        "embedding_mode": recs[0].get("embedding_mode"),
        "in_dim": recs[0].get("in_dim"),
        "class_names": list(data.class_names),
        "device": cfg.device,
        "model": None if model_file is None else model_file.as_posix(),
        **extra,
    }
    with results.open("a") as fh:
        fh.write(json.dumps(rec) + "\n")
    done[_run_key(rec)] = rec
    logger.info(
        "task %s %s of %d runs, %s %s: val acc %.4f, macro F1 %.4f",
        cfg.task,
        name,
        len(members),
        method,
        corruption,
        res["val_accuracy"],
        res["macro_f1"],
    )


def _run_baselines(
    cfg: DownstreamConfig,
    data: TaskData,
    method: str,
    corruption: float | None,
    extra: dict[str, Any],
    feats_train: torch.Tensor,
    feats_val: torch.Tensor,
    mode: str,
    encode_s: float,
    setup: dict[str, Any],
    results: Path,
    done: dict[Any, dict[str, Any]],
) -> None:
    """Score the RandomForest on this method's inputs (and, once, the majority class); append their records."""
    from training.downstream.baselines import majority, random_forest

    k = len(data.class_names)
    todo = [("random_forest", method, corruption)]
    if method == "supervised":
        todo.append(("majority", method, corruption))
    for family, m, c in todo:
        if (cfg.task, family, 0, m, c) in done:
            continue
        if family == "random_forest" and mode != "precomputed":
            logger.warning(
                "%s %s: features are encoded per batch (larger than embed_cache_gb); the RandomForest baseline "
                "needs them in memory and is not run for this method",
                method,
                corruption,
            )
            continue
        if family == "random_forest":
            res = random_forest(
                feats_train.numpy(),
                data.y_train,
                feats_val.numpy(),
                data.y_val,
                k,
                seed=cfg.seed,
                n_jobs=cfg.threads or -1,
            )
        else:
            res = majority(data.y_train, data.y_val, k)
        rec = {
            **setup,
            "family": family,
            "variant": 0,
            "method": m,
            "corruption": c,
            "hp": {"n_estimators": 500} if family == "random_forest" else {},
            "hp_source": "baseline",
            "lr": None,
            **res,
            "encode_seconds": encode_s,
            "embedding_mode": mode,
            "in_dim": int(feats_train.shape[-1]),
            "class_names": list(data.class_names),
            "device": "cpu",
            "model": None,
            **extra,
        }
        with results.open("a") as fh:
            fh.write(json.dumps(rec) + "\n")
        done[_run_key(rec)] = rec
        logger.info(
            "task %s baseline %s on %s %s: val acc %.4f, macro F1 %.4f (%.1f s)",
            cfg.task,
            family,
            m,
            c,
            res["val_accuracy"],
            res["macro_f1"],
            res["seconds"],
        )


def _check_front_frozen(front: nn.Module, method: str) -> None:
    """Internal invariant: a frozen front never trains and never accumulates gradients."""
    if front.training or any(p.requires_grad or p.grad is not None for p in front.parameters()):
        raise RuntimeError(
            f"the {method} encoder left eval mode or received gradients during downstream training"
        )


# ----------------------------------------------------------------------------------------------
# task data
# ----------------------------------------------------------------------------------------------
def load_real_task(path: str | Path, cfg: DownstreamConfig, cache_dir: str | Path | None = None) -> TaskData:
    """A user's labelled parcels as configured (:func:`training.data.parcels.load_parcels`).

    ``path`` is a WorldCereal extraction, or with ``cfg.labels`` a stack whose labelled series are extracted
    first (:func:`training.data.extract.extract_cached`, cached in ``cache_dir``; ``None``: a temporary folder).
    The split is by parcel: a parcel's samples (its pixels, with ``labels``) are never on both sides.
    """
    import tempfile

    from training.data.parcels import load_parcels
    from training.data.worldcereal import NODATA

    if cfg.labels is not None:
        from training.data.extract import ExtractOptions, code_column, extract_cached

        opts = ExtractOptions(
            label_column=cfg.label_column,
            id_column=cfg.id_column,
            layer=cfg.layer,
            class_map=cfg.class_map,
            pixels=cfg.pixels,
            seed=cfg.seed,
            buffer_m=cfg.buffer_m,
            min_valid=cfg.min_valid,
            reflectance_scale=cfg.reflectance_scale,
        )
        with tempfile.TemporaryDirectory(prefix="cropmap-extract-") as tmp:
            table = extract_cached(path, cfg.labels, opts, cache_dir if cache_dir is not None else tmp)
            cfg = dataclasses.replace(
                cfg, class_map=None, top_classes=254 if cfg.class_map is not None else cfg.top_classes
            )
            return load_real_task(
                table, dataclasses.replace(cfg, labels=None, label_column=code_column(cfg.label_column))
            )
    task = load_parcels(
        path,
        label_column=cfg.label_column,
        top_classes=cfg.top_classes,
        class_map=cfg.class_map,
        grid=cfg.grid,
        season_start=cfg.season_start,
        season=cfg.season,
        min_valid=cfg.min_valid,
        val_fraction=cfg.val_fraction,
        split_seed=cfg.split_seed,
        split_file=cfg.split_file,
        min_class_parcels=cfg.min_class_parcels,
    )
    return TaskData(
        x_train=task.x_train,
        y_train=task.y_train,
        x_val=task.x_val,
        y_val=task.y_val,
        class_names=tuple(c.name for c in task.classes),
        bands=task.bands,
        classes=task.classes,
        time_grid=task.time_grid,
        nodata=float(NODATA),
        description=task.description,
        groups_train=task.groups_train,
    )


def load_sim_task(
    root: str | Path,
    task: str,
    *,
    n_train: int,
    n_val: int,
    seed: int,
    fill: Literal["none", "linear"] = "none",
) -> TaskData:
    """Balanced pixel sets of a simulated scene pair (task 1: ``scene_a``, task 2: ``scene_b``).

    Args:
        root: Folder written by ``python -m training.simulate``.
        task: ``"1"`` or ``"2"``.
        n_train: Training pixels per class.
        n_val: Validation pixels per class.
        seed: Sampling seed (the field splits use the data layer's fixed split seed).
        fill: ``"none"`` keeps cloudy / no-data observations as the papers' base models saw them;
            ``"linear"`` interpolates them in time as inference does.
    """
    from training.data.datasets import task_sets
    from training.data.denethor import S2_BAND_NAMES
    from training.simulate.run import CROP_NAMES

    sets = task_sets(root, int(task), n_train, n_val, seed, fill=fill)
    probe = TimeGrid("01-01", (0,), ())
    dates = [d if isinstance(d, dt.date) and not isinstance(d, dt.datetime) else d.date() for d in sets.dates]
    grid = TimeGrid("01-01", tuple(probe.position_of(d) for d in dates), tuple(d.isoformat() for d in dates))
    colors = _palette(len(CROP_NAMES))
    # Map values are the simulator's crop ids (position in CROP_NAMES + 1), as in its label polygons.
    classes = tuple(
        ClassInfo(CROP_NAMES.index(n) + 1, n, colors[CROP_NAMES.index(n)]) for n in sets.class_names
    )
    scene = "scene_a" if task == "1" else "scene_b"
    return TaskData(
        x_train=np.asarray(sets.x_train, dtype=np.float32),
        y_train=np.asarray(sets.y_train, dtype=np.int64),
        x_val=np.asarray(sets.x_val, dtype=np.float32),
        y_val=np.asarray(sets.y_val, dtype=np.int64),
        class_names=tuple(sets.class_names),
        bands=tuple(S2_BAND_NAMES),
        classes=classes,
        time_grid=grid,
        nodata=0.0,
        description=(
            f"simulated {scene} of {Path(root).name}: {n_train} train / {n_val} val pixels per class from "
            f"disjoint fields, fill {fill}"
        ),
    )


def load_task(cfg: DownstreamConfig, cache_dir: str | Path | None = None) -> TaskData:
    """The task's data as configured (``cfg.data`` must be set; ``cache_dir``: see :func:`load_real_task`)."""
    if cfg.data is None:
        raise ValueError(
            f"task {cfg.task} needs data: a simulated scene folder (tasks 1/2) or a WorldCereal parquet (real); "
            "pass --data"
        )
    if not cfg.data.exists():
        raise FileNotFoundError(f"data path {str(cfg.data)!r} does not exist")
    if cfg.labels is not None and cfg.task != "real":
        raise ValueError(
            f"--labels is for task real (a stack and labelled polygons); task {cfg.task} reads {cfg.data}"
        )
    if cfg.task == "real":
        return load_real_task(cfg.data, cfg, cache_dir)
    return load_sim_task(
        cfg.data,
        cfg.task,
        n_train=cfg.n_train_per_class,
        n_val=cfg.n_val_per_class,
        seed=cfg.seed,
        fill=cfg.fill,
    )


# ----------------------------------------------------------------------------------------------
# entry point
# ----------------------------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m training.downstream``."""
    parser = argparse.ArgumentParser(
        prog="python -m training.downstream", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--task", choices=("1", "2", "real"), help="downstream task")
    parser.add_argument(
        "--data",
        type=Path,
        help="simulated scene folder (tasks 1/2); WorldCereal parquet, or a stack with --labels (real)",
    )
    parser.add_argument(
        "--encoders",
        nargs="*",
        default=[],
        metavar="METHOD_RATE=PATH",
        help="pre-trained encoders, e.g. unimodal_0.2=u02/encoder.pt bimodal_0.6=b06/encoder.pt",
    )
    parser.add_argument("--families", help="comma-separated base models (default: all three)")
    parser.add_argument("--variants", type=int, help="variants per family")
    parser.add_argument("--epochs", type=int, help="epochs per run")
    parser.add_argument("--device", choices=("cpu", "cuda"))
    parser.add_argument("--seed", type=int, help="seed of the variants, weights and batches")
    parser.add_argument(
        "--recipe",
        choices=sorted(RECIPES),
        help="how base models train: robust (default) or papers (the papers' protocol, Table 1)",
    )
    parser.add_argument(
        "--no-baselines", action="store_true", help="skip the RandomForest and majority-class baselines"
    )
    parser.add_argument(
        "--precision", choices=("fp32", "bf16"), help="bf16: train under bf16 autocast (GPUs)"
    )
    parser.add_argument(
        "--default-variant",
        action="store_true",
        help="also train each family with its default hyper-parameters",
    )
    real = parser.add_argument_group("task real (your labelled parcels)")
    real.add_argument(
        "--classes",
        metavar="N|CSV",
        help="the N most frequent labels (default 6), or a class map CSV match,name[,color]",
    )
    real.add_argument(
        "--label-column",
        help="integer label column (default ewoc_code); with --labels the polygons' label attribute",
    )
    real.add_argument("--grid", help="time grid: monthly (default), dekadal, or comma-separated MM-DD stamps")
    real.add_argument(
        "--season", type=int, help="year the season starts in (default: the one with most data)"
    )
    real.add_argument("--season-start", help="season start MM-DD (default 11-01)")
    real.add_argument("--split-seed", type=int, help="seed of the train/validation split (default 0)")
    real.add_argument(
        "--split-file", type=Path, help="CSV sample_id,split (train/val) instead of a seeded split"
    )
    real.add_argument(
        "--labels",
        type=Path,
        metavar="POLYGONS",
        help="labelled polygons on the stack given as --data (any stack cropmap classify reads)",
    )
    real.add_argument(
        "--id-column", help="with --labels: polygon attribute of unique parcel ids (default: row number)"
    )
    real.add_argument("--layer", help="with --labels: layer of the polygon file")
    real.add_argument("--pixels", help="with --labels: per polygon all (default), mean, or N random pixels")
    real.add_argument(
        "--buffer", type=float, metavar="M", help="with --labels: shrink polygons by M metres (default 10)"
    )
    parser.add_argument(
        "--out", type=Path, required=True, help="run directory (results.jsonl, models/, variants.db)"
    )
    parser.add_argument("--config", type=Path, help="TOML file with DownstreamConfig fields")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field"
    )
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    overrides = []
    for flag, key in (
        ("task", "task"),
        ("data", "data"),
        ("families", "families"),
        ("variants", "variants"),
        ("epochs", "epochs"),
        ("device", "device"),
        ("seed", "seed"),
        ("label_column", "label_column"),
        ("grid", "grid"),
        ("season", "season"),
        ("season_start", "season_start"),
        ("split_seed", "split_seed"),
        ("split_file", "split_file"),
        ("recipe", "recipe"),
        ("precision", "precision"),
        ("labels", "labels"),
        ("id_column", "id_column"),
        ("layer", "layer"),
        ("pixels", "pixels"),
        ("buffer", "buffer_m"),
    ):
        value = getattr(args, flag)
        if value is not None:
            overrides.append(f"{key}={value}")
    if args.classes is not None:
        overrides.append(
            f"top_classes={args.classes}" if args.classes.isdigit() else f"class_map={args.classes}"
        )
    if args.default_variant:
        overrides.append("default_variant=true")
    if args.no_baselines:
        overrides.append("baselines=false")
    try:
        cfg = load_config(DownstreamConfig, args.config, [*overrides, *args.set])
        encoders = [EncoderSpec.parse(e) for e in args.encoders]
    except (ValueError, FileNotFoundError) as err:
        parser.error(str(err))
    for spec in encoders:
        if not spec.path.is_file():
            parser.error(f"encoder file {str(spec.path)!r} does not exist")
    for name in ("class_map", "split_file", "labels"):
        path = getattr(cfg, name)
        if path is not None and not (path.exists() if name == "labels" else path.is_file()):
            parser.error(f"{name.replace('_', ' ')} {str(path)!r} does not exist")
    try:
        if cfg.device == "cuda" and not torch.cuda.is_available():
            raise ValueError("--device cuda was asked for but torch sees no CUDA device; use --device cpu")
        data = load_task(cfg, cache_dir=args.out / "extractions")
        results = run_comparison(cfg, data, encoders, args.out, show_progress=not args.no_progress)
    except (ValueError, CheckpointError, ConfigError, OSError) as err:
        print(f"error: {describe_error(err)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(
            "interrupted: finished runs are kept in results.jsonl; rerun the same command to resume",
            file=sys.stderr,
        )
        return 130
    n_runs = len(results.read_text().splitlines())
    print(
        f"results: {results} ({n_runs} runs); report: python -m training.evaluate --results {results} "
        f"--out {args.out / 'report'}; best model as a bundle: python -m exporters --best {args.out} "
        f"-o {args.out / 'model.onnx'}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
