"""Transformer-encoder base model with sinusoidal position encoding.

``(B, T, C)`` -> linear input projection to ``d_model`` -> + sinusoidal position
encoding (Vaswani et al., 2017) -> ``layers`` pre-norm encoder layers -> LayerNorm ->
mean over time -> linear head. The encoder layers are built one by one rather than
by :class:`torch.nn.TransformerEncoder`, which deep-copies one layer and so starts
every layer from identical weights (that also makes ONNX exporters de-duplicate the
initialisers, which breaks dynamic quantisation of a freshly built model).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from training.models.base import SeriesClassifier, config_from_hp

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TransformerConfig:
    """Hyper-parameters of :class:`TransformerClassifier`."""

    d_model: int = 64
    """Model width (papers' space: 32, 64, 128)."""
    heads: int = 4
    """Attention heads; must divide ``d_model`` (papers' space: 2, 4, 8)."""
    layers: int = 3
    """Encoder layers (papers' space: 2..6)."""
    ff_factor: int = 4
    """Feed-forward width as a multiple of ``d_model``."""
    dropout: float = 0.1
    """Dropout inside the encoder layers and before the head."""
    max_len: int = 1024
    """Longest series the position encoding covers."""

    def __post_init__(self) -> None:
        if self.d_model < 1 or self.heads < 1 or self.d_model % self.heads:
            raise ValueError(
                f"Transformer d_model must be a positive multiple of heads, got d_model={self.d_model}, "
                f"heads={self.heads}"
            )
        if self.d_model % 2:
            raise ValueError(
                f"Transformer d_model must be even for the sinusoidal encoding, got {self.d_model}"
            )
        if self.layers < 1:
            raise ValueError(f"Transformer layers must be >= 1, got {self.layers}")
        if self.ff_factor < 1:
            raise ValueError(f"Transformer ff_factor must be >= 1, got {self.ff_factor}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"Transformer dropout must be in [0, 1), got {self.dropout}")
        if self.max_len < 1:
            raise ValueError(f"Transformer max_len must be >= 1, got {self.max_len}")


def sinusoidal_encoding(length: int, d_model: int) -> torch.Tensor:
    """Sinusoidal position encoding.

    Args:
        length: Number of positions ``T``.
        d_model: Encoding width (even).

    Returns:
        ``(T, d_model)``: ``sin`` on even and ``cos`` on odd columns, wavelengths from
        ``2 pi`` to ``10000 * 2 pi``.
    """
    position = torch.arange(length, dtype=torch.float32)[:, None]
    inv_freq = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float32) * (-math.log(10000.0) / d_model))
    pe = torch.zeros(length, d_model)
    pe[:, 0::2] = torch.sin(position * inv_freq)
    pe[:, 1::2] = torch.cos(position * inv_freq)
    return pe


class TransformerClassifier(SeriesClassifier):
    """Transformer-encoder classifier: ``(B, T, C)`` features -> ``(B, K)`` logits.

    Args:
        in_dim: Number of input features per stamp ``C``.
        n_classes: Number of output classes ``K``.
        config: Architecture hyper-parameters.
    """

    position: torch.Tensor
    """``(max_len, d_model)`` buffer: the sinusoidal position encoding."""

    def __init__(self, in_dim: int, n_classes: int, config: TransformerConfig) -> None:
        super().__init__(in_dim, n_classes)
        self.config = config
        self.input_proj = nn.Linear(in_dim, config.d_model)
        self.register_buffer(
            "position", sinusoidal_encoding(config.max_len, config.d_model), persistent=False
        )
        self.encoder_layers = nn.ModuleList(
            nn.TransformerEncoderLayer(
                d_model=config.d_model,
                nhead=config.heads,
                dim_feedforward=config.ff_factor * config.d_model,
                dropout=config.dropout,
                batch_first=True,
                norm_first=True,
            )
            for _ in range(config.layers)
        )
        self.norm = nn.LayerNorm(config.d_model)
        self.add_head(config.d_model, config.dropout)

    @property
    def feature_dim(self) -> int:
        """Size ``D`` of the representation returned by :meth:`features`."""
        return self.config.d_model

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Representation before the classifier.

        Args:
            x: Float tensor ``(B, T, C)`` with ``T <= max_len``.

        Returns:
            ``(B, d_model)``: the normalised encoder output averaged over time.
        """
        z = self.input_proj(x) + self.position[: x.shape[1]]  # (B, T, d_model)
        for layer in self.encoder_layers:
            z = layer(z)
        return self.norm(z).mean(dim=1)


def transformer(in_dim: int, n_classes: int, **hp: Any) -> TransformerClassifier:
    """Build a Transformer-encoder classifier.

    Args:
        in_dim: Input features per stamp ``C``.
        n_classes: Number of classes ``K``.
        **hp: Fields of :class:`TransformerConfig`.

    Returns:
        The model, in training mode.

    Raises:
        ValueError: On an unknown hyper-parameter name or an invalid value.
    """
    return TransformerClassifier(in_dim, n_classes, config_from_hp(TransformerConfig, hp))
