"""InceptionTime base model (Ismail Fawaz et al., 2020) over per-stamp features.

Every submodule is registered (``nn.ModuleList`` / ``nn.Sequential``), so every
parameter trains. The BreizhCrops implementation used by the reference papers kept
its inception modules in plain Python lists, so only the final linear layer was
trained; that explains the papers' ~20-26 % InceptionTime accuracies. Nothing here
imitates that behaviour.

Architecture, for ``layers`` inception modules of ``hidden`` output channels:

* each module: a 1x1 bottleneck convolution (``bottleneck`` channels, skipped when the
  input is narrower than the bottleneck), three parallel convolutions with kernel
  sizes ``k``, ``k // 2``, ``k // 4`` and a max-pool (3, stride 1) followed by a 1x1
  convolution; the four branches (``hidden // 4`` channels each) are concatenated,
  then BatchNorm and ReLU.
* a residual shortcut (1x1 convolution + BatchNorm) around every block of three
  modules; a trailing block shorter than three modules gets its own shortcut.
* global average pooling over time and a linear head.

Even kernel sizes are reduced by one (40 -> 39, 20 -> 19, 10 -> 9), as in the
original implementation, so that symmetric "same" padding keeps the series length.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from training.models.base import SeriesClassifier, config_from_hp

logger = logging.getLogger(__name__)

RESIDUAL_EVERY = 3
"""A residual shortcut wraps every block of this many inception modules."""


@dataclass(frozen=True)
class InceptionTimeConfig:
    """Hyper-parameters of :class:`InceptionTimeClassifier`."""

    layers: int = 4
    """Number of inception modules (papers' space: 2, 4, 8)."""
    hidden: int = 128
    """Output channels of each module, split over its 4 branches (papers' space: 128..1024)."""
    kernel: int = 40
    """Largest kernel size; the others are ``kernel // 2`` and ``kernel // 4`` (papers' space: 40..136)."""
    bottleneck: int = 32
    """Channels of the 1x1 bottleneck in front of the long convolutions."""
    dropout: float = 0.0
    """Dropout before the linear head."""

    def __post_init__(self) -> None:
        if self.layers < 1:
            raise ValueError(f"InceptionTime layers must be >= 1, got {self.layers}")
        if self.hidden < 4 or self.hidden % 4:
            raise ValueError(f"InceptionTime hidden must be a positive multiple of 4, got {self.hidden}")
        if self.kernel < 4:
            raise ValueError(f"InceptionTime kernel must be >= 4, got {self.kernel}")
        if self.bottleneck < 1:
            raise ValueError(f"InceptionTime bottleneck must be >= 1, got {self.bottleneck}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"InceptionTime dropout must be in [0, 1), got {self.dropout}")

    def kernel_sizes(self) -> tuple[int, int, int]:
        """The three odd kernel sizes actually used."""
        large, medium, small = (
            s - 1 if s % 2 == 0 else s for s in (self.kernel, self.kernel // 2, self.kernel // 4)
        )
        return large, medium, small


class InceptionModule(nn.Module):
    """One inception module: ``(B, C_in, T)`` -> ``(B, hidden, T)``.

    Args:
        in_channels: Input channels.
        config: Architecture hyper-parameters.
    """

    def __init__(self, in_channels: int, config: InceptionTimeConfig) -> None:
        super().__init__()
        branch = config.hidden // 4
        if in_channels > config.bottleneck:
            self.bottleneck: nn.Module = nn.Conv1d(in_channels, config.bottleneck, 1, bias=False)
            conv_in = config.bottleneck
        else:
            self.bottleneck = nn.Identity()
            conv_in = in_channels
        self.convs = nn.ModuleList(
            nn.Conv1d(conv_in, branch, k, padding=(k - 1) // 2, bias=False) for k in config.kernel_sizes()
        )
        self.pool_branch = nn.Sequential(
            nn.MaxPool1d(3, stride=1, padding=1),
            nn.Conv1d(in_channels, branch, 1, bias=False),
        )
        self.norm = nn.BatchNorm1d(4 * branch)
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the module to ``(B, C_in, T)``; returns ``(B, hidden, T)``."""
        z = self.bottleneck(x)
        branches = [conv(z) for conv in self.convs]
        branches.append(self.pool_branch(x))
        return self.act(self.norm(torch.cat(branches, dim=1)))


class InceptionBlock(nn.Module):
    """Up to :data:`RESIDUAL_EVERY` inception modules wrapped by one residual shortcut.

    Args:
        in_channels: Input channels of the first module.
        n_modules: Number of modules in the block.
        config: Architecture hyper-parameters.
    """

    def __init__(self, in_channels: int, n_modules: int, config: InceptionTimeConfig) -> None:
        super().__init__()
        self.modules_seq = nn.Sequential(
            *(InceptionModule(in_channels if i == 0 else config.hidden, config) for i in range(n_modules))
        )
        self.shortcut = nn.Sequential(
            nn.Conv1d(in_channels, config.hidden, 1, bias=False),
            nn.BatchNorm1d(config.hidden),
        )
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the block to ``(B, C_in, T)``; returns ``(B, hidden, T)``."""
        return self.act(self.modules_seq(x) + self.shortcut(x))


class InceptionTimeClassifier(SeriesClassifier):
    """InceptionTime classifier: ``(B, T, C)`` features -> ``(B, K)`` logits.

    Args:
        in_dim: Number of input features per stamp ``C``.
        n_classes: Number of output classes ``K``.
        config: Architecture hyper-parameters.
    """

    def __init__(self, in_dim: int, n_classes: int, config: InceptionTimeConfig) -> None:
        super().__init__(in_dim, n_classes)
        self.config = config
        blocks = []
        channels = in_dim
        remaining = config.layers
        while remaining > 0:
            n = min(RESIDUAL_EVERY, remaining)
            blocks.append(InceptionBlock(channels, n, config))
            channels = config.hidden
            remaining -= n
        self.blocks = nn.Sequential(*blocks)
        self.add_head(config.hidden, config.dropout)

    @property
    def feature_dim(self) -> int:
        """Size ``D`` of the representation returned by :meth:`features`."""
        return self.config.hidden

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Representation before the classifier.

        Args:
            x: Float tensor ``(B, T, C)``.

        Returns:
            ``(B, hidden)``: the last block's output averaged over time.
        """
        z = self.blocks(x.transpose(1, 2))  # (B, hidden, T)
        return z.mean(dim=-1)


def inception_time(in_dim: int, n_classes: int, **hp: Any) -> InceptionTimeClassifier:
    """Build an InceptionTime classifier.

    Args:
        in_dim: Input features per stamp ``C``.
        n_classes: Number of classes ``K``.
        **hp: Fields of :class:`InceptionTimeConfig`.

    Returns:
        The model, in training mode.

    Raises:
        ValueError: On an unknown hyper-parameter name or an invalid value.
    """
    return InceptionTimeClassifier(in_dim, n_classes, config_from_hp(InceptionTimeConfig, hp))
