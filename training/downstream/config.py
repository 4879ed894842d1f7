"""Settings of a downstream comparison (``training/configs/downstream*.toml``) and the encoders it compares."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from training.downstream.recipe import Recipe, get_recipe
from training.models import MODELS

__all__ = ["SSL_METHODS", "DownstreamConfig", "EncoderSpec", "check_device_name"]

DEVICE_NAME = re.compile(r"auto|cpu|cuda(:\d+)?")
"""The ``device`` values a configuration accepts; :func:`training.device.resolve_device` resolves them."""


def check_device_name(name: str) -> None:
    """Raise ``ValueError`` unless ``name`` is ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.

    Only the spelling is checked here: a configuration may be written on a machine without the GPU that the
    machine running it has; the device itself is resolved where the runs execute.
    """
    if not isinstance(name, str) or DEVICE_NAME.fullmatch(name) is None:
        raise ValueError(f"device is {name!r}; expected auto, cpu, cuda or cuda:N")


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
    device: str = "cpu"
    """Where models train: ``auto``, ``cpu``, ``cuda`` or ``cuda:N`` (:func:`training.device.resolve_device`; a CUDA
    device torch does not see is an error). On a cluster with GPUs, ``cuda`` gives each worker its own GPU."""
    embed_cache_gb: float = 4.0
    """Keep an encoder's train + val embeddings in memory when they fit in this many GB."""
    eval_every: int = 1
    """Record validation accuracy every this many epochs (the final epoch is always evaluated)."""
    threads: int = 0
    """CPU threads of OpenMP / BLAS and joblib, and of torch unless ``deterministic`` (0: the usable CPUs that other
    work leaves free, :func:`training.downstream.threads.decide_threads`)."""
    deterministic: bool = True
    """Results do not depend on the thread count for a fixed seed: torch runs one intra-op thread on CPU (its
    reductions otherwise sum in an order that depends on the count). ``false`` lets torch use ``threads``."""
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
    grid: str = "auto"
    """Task real: ``auto`` (the input's own step: dekadal for stamps 15 days apart or closer, monthly otherwise),
    ``monthly``, ``dekadal`` or comma-separated ``MM-DD`` stamps."""
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
    selection_folds: int = 0
    """``K`` >= 2: cross-validated selection instead of one selection split (:mod:`training.downstream.selection`):
    the runs train on every training sample, and once more per fold on the other ``K - 1`` folds; ``cropmap export
    best`` picks and calibrates on the out-of-fold predictions. 0: off."""
    selection_fold: int | None = None
    """The fold a pass of a cross-validated selection holds out (``0 .. K-1``; set by the command for each pass)."""
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
        check_device_name(self.device)
        if self.embed_cache_gb < 0 or self.threads < 0:
            raise ValueError("embed_cache_gb and threads must be >= 0")
        self.training_recipe()  # raises on an unknown name or a bad prior_correction
        from training.downstream.selection import check_folds, check_holdout
        from training.downstream.trees import check_trees

        check_holdout(self.selection_holdout)
        check_folds(self.selection_folds, self.selection_fold, self.selection_holdout)
        check_trees(self.trees or (), self.tree_trials, self.tree_budget_s)

    def training_recipe(self) -> Recipe:
        """The named recipe with this configuration's overrides."""
        if self.prior_correction is None:
            return get_recipe(self.recipe)
        return get_recipe(self.recipe, prior_correction=float(self.prior_correction))


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
