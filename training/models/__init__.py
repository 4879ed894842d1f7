"""Models: the base-model registry (LSTM, InceptionTime, Transformer) and the encoder module.

Every base model maps ``(B, T, C)`` float32 features (already normalised bands or
per-stamp embeddings) to ``(B, K)`` logits and exposes ``features(x) -> (B, D)``, the
representation before its linear head. A registry key, its builder's ``__name__`` and
``BundleMetadata.model_name`` are the same string.
"""

from __future__ import annotations

from typing import Any

from training.models.base import SeriesClassifier
from training.models.ensemble import EnsembleClassifier
from training.models.inception_time import inception_time
from training.models.lstm import lstm
from training.models.transformer import transformer

MODELS = {
    "lstm": lstm,
    "inception_time": inception_time,
    "transformer": transformer,
}
"""Registry of base-model builders: ``name -> builder(in_dim, n_classes, **hp)``."""

BaseModel = SeriesClassifier | EnsembleClassifier
"""What :func:`build_model` builds: one family's model or an ensemble of them."""


def list_models() -> list[str]:
    """Registered base-model names, sorted."""
    return sorted(MODELS)


def build_model(name: str, in_dim: int, n_classes: int, **hp: Any) -> BaseModel:
    """Build a registered base model.

    Args:
        name: Registry key (see :func:`list_models`), or ``"ensemble"`` with ``members=[{"family", "hp"}]``
            (:mod:`training.models.ensemble`).
        in_dim: Input features per stamp ``C``.
        n_classes: Number of classes ``K``.
        **hp: The model's ``<Name>Config`` fields.

    Returns:
        The model, mapping ``(B, T, C)`` -> ``(B, K)``.

    Raises:
        ValueError: On an unknown name or unknown / invalid hyper-parameters.
    """
    if name == "ensemble":
        from training.models.ensemble import ensemble

        return ensemble(in_dim, n_classes, **hp)
    return build_base_model(name, in_dim, n_classes, **hp)


def build_base_model(name: str, in_dim: int, n_classes: int, **hp: Any) -> SeriesClassifier:
    """Build one registered family's model (no ensemble); arguments and errors as :func:`build_model`."""
    try:
        builder = MODELS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; choose from {sorted(MODELS)}") from None
    return builder(in_dim, n_classes, **hp)


__all__ = ["MODELS", "BaseModel", "build_base_model", "build_model", "list_models"]
