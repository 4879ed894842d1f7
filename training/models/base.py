"""What the three base-model families share: input checks, the dropout + linear head, config building.

A family subclasses :class:`SeriesClassifier`, builds its layers, calls :meth:`SeriesClassifier.add_head`
last (so parameter creation order, and with it seeded initialisation, stays that of the family's own
layers first) and implements :meth:`SeriesClassifier.features` and ``feature_dim``.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, TypeVar

import torch
from torch import nn

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

C = TypeVar("C", bound="DataclassInstance")


class SeriesClassifier(nn.Module):
    """Base of the classifiers ``(B, T, C)`` features -> ``(B, K)`` logits.

    Args:
        in_dim: Number of input features per stamp ``C`` (>= 1).
        n_classes: Number of output classes ``K`` (>= 2).

    Raises:
        ValueError: On ``in_dim < 1`` or ``n_classes < 2``.
    """

    def __init__(self, in_dim: int, n_classes: int) -> None:
        super().__init__()
        if in_dim < 1:
            raise ValueError(f"in_dim must be >= 1, got {in_dim}")
        if n_classes < 2:
            raise ValueError(f"n_classes must be >= 2, got {n_classes}")
        self.in_dim = in_dim
        self.n_classes = n_classes

    def add_head(self, feature_dim: int, dropout: float) -> None:
        """Create the dropout and the linear head over the ``feature_dim`` representation."""
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(feature_dim, self.n_classes)

    @property
    def feature_dim(self) -> int:
        """Size ``D`` of the representation returned by :meth:`features`; every family defines it."""
        raise NotImplementedError

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Representation ``(B, D)`` before the classifier; every family defines it."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Classify a batch of series.

        Args:
            x: Float tensor ``(B, T, C)``.

        Returns:
            Logits ``(B, K)``.
        """
        return self.head(self.dropout(self.features(x)))


def config_from_hp(cls: type[C], hp: dict[str, Any]) -> C:
    """Build a family's config dataclass from hyper-parameters, refusing unknown names.

    Raises:
        ValueError: On an unknown name, or an invalid value (the config's own check).
    """
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(hp) - known)
    if unknown:
        raise ValueError(
            f"unknown {cls.__name__} hyper-parameter(s) {unknown}; expected a subset of {sorted(known)}"
        )
    return cls(**hp)
