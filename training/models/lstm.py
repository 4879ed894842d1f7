"""Bi-directional LSTM base model over per-stamp features.

The classifier reads the final hidden states of the last layer: the forward direction's
state after the last stamp and the backward direction's state after the first stamp
(i.e. after it has read the whole series backwards), concatenated to ``2 * hidden``.
That concatenation is the representation returned by :meth:`LSTMClassifier.features`.
Only standard :class:`torch.nn.LSTM` is used so the model exports to ONNX with a
dynamic batch axis.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from training.models.base import SeriesClassifier, config_from_hp

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LSTMConfig:
    """Hyper-parameters of :class:`LSTMClassifier`."""

    hidden: int = 128
    """Hidden size per direction (papers' space: 32, 64, 128, 256)."""
    layers: int = 2
    """Number of stacked bi-directional layers (papers' space: 2..6)."""
    dropout: float = 0.2
    """Dropout between LSTM layers and before the linear head."""

    def __post_init__(self) -> None:
        if self.hidden < 1:
            raise ValueError(f"LSTM hidden must be >= 1, got {self.hidden}")
        if self.layers < 1:
            raise ValueError(f"LSTM layers must be >= 1, got {self.layers}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"LSTM dropout must be in [0, 1), got {self.dropout}")


class LSTMClassifier(SeriesClassifier):
    """Bi-directional LSTM classifier: ``(B, T, C)`` features -> ``(B, K)`` logits.

    Args:
        in_dim: Number of input features per stamp ``C``.
        n_classes: Number of output classes ``K``.
        config: Architecture hyper-parameters.
    """

    def __init__(self, in_dim: int, n_classes: int, config: LSTMConfig) -> None:
        super().__init__(in_dim, n_classes)
        self.config = config
        self.lstm = nn.LSTM(
            input_size=in_dim,
            hidden_size=config.hidden,
            num_layers=config.layers,
            batch_first=True,
            bidirectional=True,
            # nn.LSTM applies dropout only between layers; with one layer it would warn.
            dropout=config.dropout if config.layers > 1 else 0.0,
        )
        self.add_head(2 * config.hidden, config.dropout)

    @property
    def feature_dim(self) -> int:
        """Size ``D`` of the representation returned by :meth:`features`."""
        return 2 * self.config.hidden

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Representation before the classifier.

        Args:
            x: Float tensor ``(B, T, C)``.

        Returns:
            ``(B, 2 * hidden)``: last-layer forward state at the last stamp concatenated
            with the last-layer backward state at the first stamp.
        """
        _, (h_n, _) = self.lstm(x)  # h_n: (layers * 2, B, hidden), last layer's pair at the end
        return torch.cat([h_n[-2], h_n[-1]], dim=-1)


def lstm(in_dim: int, n_classes: int, **hp: Any) -> LSTMClassifier:
    """Build a bi-directional LSTM classifier.

    Args:
        in_dim: Input features per stamp ``C``.
        n_classes: Number of classes ``K``.
        **hp: Fields of :class:`LSTMConfig` (``hidden``, ``layers``, ``dropout``).

    Returns:
        The model, in training mode.

    Raises:
        ValueError: On an unknown hyper-parameter name or an invalid value.
    """
    return LSTMClassifier(in_dim, n_classes, config_from_hp(LSTMConfig, hp))
