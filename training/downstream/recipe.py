"""How a downstream base model is trained: the papers' protocol and the default recipe for users.

Two named recipes (``--recipe``):

* ``papers``: what Table 1 reproduces (PAPER.md section 4): Adam, the variant's learning rate decayed
  linearly to 0 over all steps, plain cross-entropy, ``epochs`` epochs, the model after the last epoch.
* ``robust`` (default for users): the same base models trained the way a practitioner trains them on small
  labelled sets; each part's effect is measured in docs/results.md (``bench/recipe_ablation.py``):

  - at least ``min_steps`` optimiser steps (small data sets otherwise see a handful of steps) with a
    batch no larger than a sixteenth of the training set;
  - AdamW with weight decay, **linear warm-up then cosine decay** of the learning rate;
  - **class-balanced** cross-entropy (inverse-frequency weights) with label smoothing, then a
    **prior correction** after training: ``prior_correction x log(training class frequency)`` is added
    to the head's bias (logit adjustment). Balanced training scores the classes as if they were equally
    frequent, which favours the small ones; the correction makes the decisions for the training class
    mix again (1 is the exact correction for inverse-frequency weights) while the features keep what
    balancing taught them about the small classes. ``--set prior_correction=0`` keeps the balanced
    decisions: higher recall on the small classes, lower overall accuracy;
  - **augmentation along time**: a random shift of the series by up to ``shift`` stamps, dropped
    observations (replaced by the previous stamp, as gap filling would), and Gaussian band noise in
    units of each feature's standard deviation;
  - InceptionTime's kernel capped at the series length (40 suits the papers' 144 stamps, not 12 months);
  - an **ensemble** per family: the probabilities of all its runs (seeds of the defaults, ``repeats``,
    and sampled variants) averaged, saved and scored as ``<family>_ensemble``.

  A **selection split** carved out of the training samples (by parcel for task real; never the
  validation / test samples) with best-epoch selection and early stopping is available
  (``selection_fraction``, ``patience``); on the small real parcel sets it cost accuracy (fewer
  parcels to fit, a noisy choice of epoch), so the robust recipe trains on every training parcel for a
  fixed number of steps.

Augmentation acts on the model inputs (standardised bands, or per-stamp embeddings of a frozen encoder),
so it works with precomputed embeddings as well.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Literal

import numpy as np
import torch

__all__ = [
    "RECIPES",
    "Change",
    "Recipe",
    "augment_batch",
    "class_weights",
    "correct_prior",
    "get_recipe",
    "log_prior",
    "lr_lambda",
    "selection_split",
]


@dataclass(frozen=True)
class Change:
    """A setting the recipe uses with another value than the one asked for (said on the console, recorded)."""

    setting: str
    asked: int
    used: int
    why: str

    def __str__(self) -> str:
        return f"{self.setting} {self.asked} -> {self.used} ({self.why})"


@dataclass(frozen=True)
class Recipe:
    """Training settings of one downstream run (see the module docstring)."""

    name: str
    optimizer: Literal["adam", "adamw"] = "adam"
    weight_decay: float = 0.0
    schedule: Literal["linear", "warmup_cosine"] = "linear"
    """``linear``: decay from lr to 0; ``warmup_cosine``: linear warm-up then cosine decay to 0."""
    warmup: float = 0.0
    """Fraction of all steps spent warming up (``warmup_cosine``)."""
    min_steps: int = 0
    """Train for more epochs than asked when that gives fewer optimiser steps than this."""
    max_batch_fraction: float = 1.0
    """The batch is at most this fraction of the training set (at least 8 samples)."""
    balanced: bool = False
    """Weight the cross-entropy by inverse class frequency of the training set."""
    label_smoothing: float = 0.0
    prior_correction: float = 0.0
    """After training, add this x log(training class frequency) to the head's bias (0: none)."""
    shift: int = 0
    """Largest random shift of a series along time, in stamps (edges repeat the first / last stamp)."""
    drop: float = 0.0
    """Probability of dropping each observation (replaced by the previous stamp's values)."""
    noise: float = 0.0
    """Standard deviation of additive Gaussian noise, in units of each feature's standard deviation."""
    selection_fraction: float = 0.0
    """Fraction of the training samples held out (stratified) to select the best epoch (0: none)."""
    patience: int = 0
    """Stop after this many epochs without a better selection score (0: never stop early)."""
    fit_kernel: bool = False
    """Cap InceptionTime's kernel at the series length (the papers' 40 suits 144 stamps, not 12)."""
    ensemble: bool = False
    """After a method's runs, average the probabilities of all runs of each family (``<family>_ensemble``)."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.selection_fraction < 0.5:
            raise ValueError(f"selection_fraction must be in [0, 0.5), got {self.selection_fraction}")
        if not 0.0 <= self.drop < 1.0 or self.noise < 0 or self.shift < 0 or not 0.0 <= self.warmup < 1.0:
            raise ValueError(f"recipe {self.name!r}: drop and warmup must be in [0, 1), noise and shift >= 0")
        if not 0.0 <= self.prior_correction <= 1.0:
            raise ValueError(f"prior_correction must be in [0, 1], got {self.prior_correction}")
        if self.prior_correction and not self.balanced:
            raise ValueError(
                f"recipe {self.name!r} trains without class balancing: there is no prior to correct "
                "(prior_correction must be 0)"
            )
        if not 0.0 < self.max_batch_fraction <= 1.0:
            raise ValueError(f"max_batch_fraction must be in (0, 1], got {self.max_batch_fraction}")

    @property
    def augments(self) -> bool:
        return self.shift > 0 or self.drop > 0 or self.noise > 0

    def batch_size(self, requested: int, n_train: int) -> int:
        """The batch size used for ``n_train`` training samples when ``requested`` is configured."""
        cap = max(8, int(n_train * self.max_batch_fraction))
        return max(1, min(requested, cap))

    def settings(self, epochs: int, batch_size: int, n_train: int) -> tuple[int, int, list[Change]]:
        """The epochs and batch size used for ``n_train`` training samples, and what differs from those asked."""
        bs = self.batch_size(batch_size, n_train)
        n_epochs = self.epochs(epochs, n_train, bs)
        changes = []
        if bs != batch_size and bs < n_train:  # (a batch larger than the training set is that set: no change)
            changes.append(
                Change(
                    "batch size",
                    batch_size,
                    bs,
                    f"at most {_fraction(self.max_batch_fraction)} the {n_train} training samples, at least 8",
                )
            )
        if n_epochs != epochs:
            steps = max(1, math.ceil(n_train / bs))
            changes.append(
                Change(
                    "epochs",
                    epochs,
                    n_epochs,
                    f"at least {self.min_steps} optimiser steps, {steps} per epoch",
                )
            )
        return bs, n_epochs, changes

    def adapt_hp(self, family: str, hp: dict[str, Any], n_stamps: int) -> dict[str, Any]:
        """A family's hyper-parameters fitted to the series length (``fit_kernel``)."""
        if not self.fit_kernel or family != "inception_time":
            return hp
        from training.models.inception_time import InceptionTimeConfig

        kernel = int(hp.get("kernel", InceptionTimeConfig.kernel))
        return {**hp, "kernel": max(4, min(kernel, n_stamps))} if kernel > n_stamps else hp

    def epochs(self, requested: int, n_train: int, batch_size: int) -> int:
        """The number of epochs: ``requested``, or more to reach ``min_steps`` optimiser steps."""
        steps_per_epoch = max(1, math.ceil(n_train / batch_size))
        return max(requested, math.ceil(self.min_steps / steps_per_epoch))


RECIPES: dict[str, Recipe] = {
    "papers": Recipe("papers"),
    "robust": Recipe(
        "robust",
        optimizer="adamw",
        weight_decay=1e-2,
        schedule="warmup_cosine",
        warmup=0.05,
        min_steps=800,
        max_batch_fraction=1 / 16,
        balanced=True,
        label_smoothing=0.1,
        prior_correction=1.0,
        shift=1,
        drop=0.1,
        noise=0.1,
        fit_kernel=True,
        ensemble=True,
    ),
}
"""The named recipes (``--recipe``)."""


def _fraction(f: float) -> str:
    """``1/16 of`` for 0.0625, ``all of`` for 1."""
    return (
        "all of" if f >= 1.0 else f"1/{round(1 / f)} of" if abs(1 / f - round(1 / f)) < 1e-9 else f"{f:g} of"
    )


def get_recipe(name: str, **overrides: Any) -> Recipe:
    """A named recipe, optionally with some fields replaced."""
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; choose from {sorted(RECIPES)}")
    return replace(RECIPES[name], **overrides) if overrides else RECIPES[name]


def lr_lambda(recipe: Recipe, total_steps: int) -> Callable[[int], float]:
    """The learning-rate factor per step for ``torch.optim.lr_scheduler.LambdaLR``."""
    total = max(1, total_steps)
    if recipe.schedule == "linear":
        return lambda step: max(0.0, 1.0 - step / total)
    warm = max(1, round(recipe.warmup * total)) if recipe.warmup > 0 else 0

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        progress = min(1.0, (step - warm) / max(1, total - warm))
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def class_weights(y: np.ndarray | torch.Tensor, n_classes: int) -> torch.Tensor:
    """Inverse-frequency weights normalised to mean 1 over the classes present (absent classes: 0)."""
    counts = torch.bincount(torch.as_tensor(y, dtype=torch.long), minlength=n_classes).float()
    w = torch.where(counts > 0, counts.sum() / counts.clamp(min=1), torch.zeros_like(counts))
    present = counts > 0
    return w / w[present].mean()


def log_prior(y: np.ndarray | torch.Tensor, n_classes: int) -> torch.Tensor:
    """Log of each class's frequency in ``y``; a class absent from ``y`` gets the log of half a sample."""
    counts = torch.bincount(torch.as_tensor(y, dtype=torch.long), minlength=n_classes).double()
    return torch.log(counts.clamp(min=0.5) / counts.sum()).float()


def correct_prior(model: torch.nn.Module, y_train: np.ndarray | torch.Tensor, strength: float) -> None:
    """Add ``strength x log(training class frequency)`` to the bias of ``model.head`` (a linear layer).

    The model keeps the base-model contract (``forward == head(features)``), so a bundle exported from it
    makes the corrected decisions; an ensemble of corrected members is corrected by the same amount.
    """
    head = getattr(model, "head", None)
    if not isinstance(head, torch.nn.Linear) or head.bias is None:
        raise TypeError(f"{type(model).__name__} has no linear head with a bias to correct")
    with torch.no_grad():
        head.bias.add_(strength * log_prior(y_train, head.out_features).to(head.bias.device))


def selection_split(
    y: np.ndarray, fraction: float, seed: int, groups: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Stratified (fit, selection) indices of the training samples.

    Every class keeps at least one fitting sample; a class with a single sample gives none to selection. With
    ``groups`` (the parcel of each sample, where a parcel has several samples: its pixels) whole parcels go to one
    side, ``fraction`` of each class's parcels to selection: neighbouring pixels of a field are near-duplicates, and
    a selection score on pixels of fields the model was fitted on would be optimistic.
    """
    rng = np.random.default_rng(seed)
    fit, sel = [], []
    for k in np.unique(y):
        idx = np.flatnonzero(y == k)
        if groups is None:
            rng.shuffle(idx)
            n_sel = min(len(idx) - 1, round(fraction * len(idx)))
            sel.append(idx[:n_sel])
            fit.append(idx[n_sel:])
            continue
        units = np.unique(groups[idx])
        rng.shuffle(units)
        chosen = units[: min(len(units) - 1, round(fraction * len(units)))]
        to_sel = np.isin(groups[idx], chosen)
        sel.append(idx[to_sel])
        fit.append(idx[~to_sel])
    return np.sort(np.concatenate(fit)), np.sort(np.concatenate(sel))


def augment_batch(
    x: torch.Tensor, recipe: Recipe, scale: torch.Tensor, generator: torch.Generator
) -> torch.Tensor:
    """Augmented copy of a batch ``(B, T, D)`` of model inputs.

    Args:
        x: The batch.
        recipe: Its ``shift``, ``drop`` and ``noise`` settings.
        scale: ``(D,)`` standard deviation of each feature over the training set (noise unit).
        generator: A CPU generator (reproducible augmentation).
    """
    b, t, d = x.shape
    dev = x.device
    out = x
    if recipe.shift > 0 and t > 1:
        shifts = torch.randint(-recipe.shift, recipe.shift + 1, (b,), generator=generator).to(dev)
        src = (torch.arange(t, device=dev)[None, :] - shifts[:, None]).clamp(0, t - 1)
        out = torch.gather(out, 1, src[:, :, None].expand(b, t, d))
    if recipe.drop > 0 and t > 1:
        drop = (torch.rand(b, t, generator=generator) < recipe.drop).to(dev)
        drop[:, 0] = False
        # Each dropped stamp takes the last kept stamp's values (forward fill).
        pos = torch.arange(t, device=dev)[None, :].expand(b, t)
        last_kept = torch.where(drop, torch.zeros_like(pos), pos).cummax(dim=1).values
        out = torch.gather(out, 1, last_kept[:, :, None].expand(b, t, d))
    if recipe.noise > 0:
        noise = torch.randn(b, t, d, generator=generator).to(dev)
        out = out + noise * (recipe.noise * scale.to(dev))
    return out
