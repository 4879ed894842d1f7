"""Pre-training backbones: the point-wise ResMLP, the time-wise transformer, projectors and normalisation.

Shapes: point-wise encoders map ``(..., C) -> (..., D)`` (any number of leading axes, e.g. ``(N, C)``
pixels or ``(B, T, C)`` time series encoded stamp by stamp); the time-wise encoder maps
``(B, T, C) -> (B, T, D)`` (per-stamp embeddings, the representation used downstream) and
``(B, T, C) -> (B, D)`` through :meth:`TimeWiseEncoder.pooled` (the vector used by the contrastive
loss). Inputs of a :class:`NormalizedEncoder` are raw digital numbers (reflectance x 10000).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from training.checkpoint import CheckpointError, load_checkpoint, save_checkpoint, validate_norm_stats

logger = logging.getLogger(__name__)

__all__ = [
    "ENCODERS",
    "Encoder",
    "Normalize",
    "NormalizedEncoder",
    "Projector",
    "ResMLP",
    "TimeWiseEncoder",
    "build_encoder",
    "compute_norm_stats",
    "load_frozen_encoder",
    "save_encoder",
]


class Normalize(nn.Module):
    """Per-feature standardisation ``(x - mean) / std`` of raw digital numbers, held as buffers.

    Args:
        mean: ``(C,)`` per-feature means of the raw values.
        std: ``(C,)`` per-feature scales (> 0).
    """

    mean: torch.Tensor
    """``(C,)`` buffer: the per-feature means."""
    std: torch.Tensor
    """``(C,)`` buffer: the per-feature scales."""

    def __init__(self, mean: Sequence[float] | torch.Tensor, std: Sequence[float] | torch.Tensor) -> None:
        super().__init__()
        stats = validate_norm_stats({"mean": mean, "std": std})
        self.register_buffer("mean", torch.tensor(stats["mean"], dtype=torch.float32))
        self.register_buffer("std", torch.tensor(stats["std"], dtype=torch.float32))

    @property
    def n_features(self) -> int:
        """Number of input features ``C``."""
        return int(self.mean.numel())

    def norm_stats(self) -> dict[str, list[float]]:
        """The statistics as ``{"mean": [...], "std": [...]}`` (the checkpoint format)."""
        return {"mean": self.mean.tolist(), "std": self.std.tolist()}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Standardise ``x`` of shape ``(..., C)``."""
        if x.shape[-1] != self.n_features:
            raise ValueError(
                f"Normalize expects {self.n_features} features on the last axis, got shape {tuple(x.shape)}"
            )
        return (x - self.mean) / self.std


def compute_norm_stats(
    x: np.ndarray | torch.Tensor, *, divisor: Literal["std", "var"] = "std", min_scale: float = 1.0
) -> dict[str, list[float]]:
    """Per-feature statistics of raw digital numbers over every axis but the last.

    Args:
        x: ``(..., C)`` raw values (reflectance x 10000). Non-finite values are ignored.
        divisor: ``"std"`` (default): scale = standard deviation. ``"var"``: the authors' variant
            ``(x / 10000 - m) / var(x / 10000)``, expressed on raw values as scale = ``var(x) / 10000``.
        min_scale: Lower bound on the scale, so a constant feature does not divide by zero.

    Returns:
        ``{"mean": [...], "std": [...]}`` of length ``C`` (``std`` holds the scale used).
    """
    arr = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    if arr.ndim < 1 or arr.shape[-1] == 0 or arr.size == 0:
        raise ValueError(f"compute_norm_stats needs a non-empty (..., C) array, got shape {arr.shape}")
    flat = arr.reshape(-1, arr.shape[-1]).astype(np.float64)
    finite = np.isfinite(flat)
    counts = finite.sum(axis=0)
    if (counts == 0).any():
        raise ValueError(f"features {np.flatnonzero(counts == 0).tolist()} have no finite values")
    vals = np.where(finite, flat, 0.0)
    mean = vals.sum(axis=0) / counts
    var = np.where(finite, (flat - mean) ** 2, 0.0).sum(axis=0) / counts
    if divisor == "std":
        scale = np.sqrt(var)
    elif divisor == "var":
        scale = var / 10000.0
    else:
        raise ValueError(f"divisor must be 'std' or 'var', got {divisor!r}")
    scale = np.maximum(scale, min_scale)
    return {"mean": mean.tolist(), "std": scale.tolist()}


class _ResidualBlock(nn.Module):
    """``x + f(x)``, ``f = BN -> Linear -> ReLU -> Dropout -> Linear -> Dropout``."""

    def __init__(self, hidden: int, dropout: float) -> None:
        super().__init__()
        self.f = nn.Sequential(
            nn.BatchNorm1d(hidden),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, hidden),
            nn.Dropout(dropout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.f(x)


class ResMLP(nn.Module):
    """Residual MLP point-wise encoder (PAPER.md section 2).

    ``Linear(in -> h)``, then ``n_layers / 2`` residual blocks ``x + f(x)`` with
    ``f = BN -> Linear -> ReLU -> Dropout -> Linear -> Dropout``, then ``BN -> ReLU -> Linear(h -> out)``.

    ``n_layers`` counts the Linear layers of the residual trunk (two per block). The
    journal paper's "8-layer network with approximately 550K parameters" fits this
    reading: 8 layers = 4 blocks = 598,016 parameters on 12 inputs, whereas 8 *blocks*
    would be 1,126,400 (``n_layers=16`` here; see docs/pretraining.md).

    Parameter count: ``(in + 1) h + (n_layers / 2) (2 h^2 + 4 h) + 2 h + (h + 1) out``.

    Args:
        in_dim: Input features ``C`` (12 for S2, 36 for the 3 x 3 x 4 PlanetScope neighbourhood).
        hidden: Width ``h``.
        n_layers: Linear layers in the residual trunk (even; two per residual block).
        out_dim: Embedding size ``D``.
        dropout: Dropout probability inside the blocks.
    """

    def __init__(
        self, in_dim: int, hidden: int = 256, n_layers: int = 8, out_dim: int = 256, dropout: float = 0.0
    ) -> None:
        super().__init__()
        if min(in_dim, hidden, out_dim) < 1 or n_layers < 0 or n_layers % 2 or not 0.0 <= dropout < 1.0:
            raise ValueError(
                f"invalid ResMLP sizes: in_dim={in_dim}, hidden={hidden}, n_layers={n_layers} (even), "
                f"out_dim={out_dim}, dropout={dropout}"
            )
        self.config: dict[str, Any] = {
            "in_dim": in_dim,
            "hidden": hidden,
            "n_layers": n_layers,
            "out_dim": out_dim,
            "dropout": dropout,
        }
        self.in_dim = in_dim
        self.out_dim = out_dim
        self.stem = nn.Linear(in_dim, hidden)
        self.blocks = nn.Sequential(*(_ResidualBlock(hidden, dropout) for _ in range(n_layers // 2)))
        self.head = nn.Sequential(nn.BatchNorm1d(hidden), nn.ReLU(), nn.Linear(hidden, out_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Encode ``(..., C)`` -> ``(..., D)``; leading axes are flattened so BatchNorm sees features."""
        if x.shape[-1] != self.in_dim:
            raise ValueError(
                f"ResMLP expects {self.in_dim} features on the last axis, got shape {tuple(x.shape)}"
            )
        lead = x.shape[:-1]
        h = self.stem(x.reshape(-1, self.in_dim))
        h = self.head(self.blocks(h))
        return h.reshape(*lead, self.out_dim)


class Projector(nn.Module):
    """Two-layer MLP projection head ``Linear -> ReLU -> Linear`` used only during pre-training.

    Args:
        dim: Input size (the encoder's ``D``).
        hidden: Hidden width.
        out: Output size (the space where the contrastive loss is computed).
    """

    def __init__(self, dim: int = 256, hidden: int = 256, out: int = 256) -> None:
        super().__init__()
        self.config: dict[str, Any] = {"dim": dim, "hidden": hidden, "out": out}
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Project ``(..., dim)`` -> ``(..., out)``."""
        return self.net(x)


class TimeWiseEncoder(nn.Module):
    """DeiT-style transformer over a time series (the short paper's time-wise encoder).

    The image patch embedding of DeiT is replaced by a 1-D convolution over time with ``d_model``
    (256) kernels, stride 1 and "same" padding, so every time stamp keeps its own token. A learned
    position embedding (DeiT) is added, a learned CLS token is prepended, ``n_layers`` (4) pre-norm
    transformer encoder layers follow, then LayerNorm and ``Linear(d_model -> out_dim)`` (128).

    Outputs: :meth:`forward` returns the per-stamp embeddings ``(B, T, out_dim)`` (the representation
    fed to downstream models); :meth:`pooled` returns one vector per series ``(B, out_dim)`` for the
    contrastive loss: the mean of the per-stamp embeddings (``pooling="mean"``, default, so every
    stamp's output is trained directly) or the CLS token's output (``pooling="cls"``, DeiT's choice).

    Args:
        in_dim: Features per stamp ``C``.
        d_model: Convolution kernels / transformer width.
        n_layers: Transformer encoder layers.
        n_heads: Attention heads.
        out_dim: Output embedding size.
        kernel_size: Temporal kernel of the embedding convolution (odd).
        max_len: Longest series the position embedding covers.
        ff_mult: Feed-forward width as a multiple of ``d_model``.
        dropout: Dropout in the transformer layers.
        pooling: ``"mean"`` or ``"cls"``.
    """

    def __init__(
        self,
        in_dim: int,
        d_model: int = 256,
        n_layers: int = 4,
        n_heads: int = 8,
        out_dim: int = 128,
        kernel_size: int = 3,
        max_len: int = 366,
        ff_mult: int = 2,
        dropout: float = 0.0,
        pooling: Literal["mean", "cls"] = "mean",
    ) -> None:
        super().__init__()
        if pooling not in ("mean", "cls"):
            raise ValueError(f"pooling must be 'mean' or 'cls', got {pooling!r}")
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be a positive odd number, got {kernel_size}")
        if d_model % n_heads:
            raise ValueError(f"d_model ({d_model}) must be divisible by n_heads ({n_heads})")
        self.config: dict[str, Any] = {
            "in_dim": in_dim,
            "d_model": d_model,
            "n_layers": n_layers,
            "n_heads": n_heads,
            "out_dim": out_dim,
            "kernel_size": kernel_size,
            "max_len": max_len,
            "ff_mult": ff_mult,
            "dropout": dropout,
            "pooling": pooling,
        }
        self.in_dim = in_dim
        self.out_dim = out_dim
        self.max_len = max_len
        self.pooling = pooling
        self.embed = nn.Conv1d(in_dim, d_model, kernel_size, padding=kernel_size // 2)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d_model))
        self.pos_embed = nn.Parameter(torch.zeros(1, max_len + 1, d_model))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        layer = nn.TransformerEncoderLayer(
            d_model,
            n_heads,
            dim_feedforward=ff_mult * d_model,
            dropout=dropout,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        self.transformer = nn.TransformerEncoder(layer, n_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d_model)
        self.out = nn.Linear(d_model, out_dim)

    def _tokens(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 3 or x.shape[-1] != self.in_dim:
            raise ValueError(f"TimeWiseEncoder expects (B, T, {self.in_dim}), got shape {tuple(x.shape)}")
        t = x.shape[1]
        if t > self.max_len:
            raise ValueError(f"series has {t} stamps, the position embedding covers max_len={self.max_len}")
        h = self.embed(x.transpose(1, 2)).transpose(1, 2)  # (B, T, d_model)
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        h = torch.cat([cls, h], dim=1) + self.pos_embed[:, : t + 1]
        h = self.norm(self.transformer(h))
        return self.out(h)  # (B, 1 + T, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Per-stamp embeddings ``(B, T, C) -> (B, T, out_dim)``."""
        return self._tokens(x)[:, 1:]

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        """One embedding per series ``(B, T, C) -> (B, out_dim)`` (mean of stamps or CLS output)."""
        tokens = self._tokens(x)
        return tokens[:, 0] if self.pooling == "cls" else tokens[:, 1:].mean(dim=1)


Encoder = ResMLP | TimeWiseEncoder
"""The pixel encoders a checkpoint can hold."""

ENCODERS: dict[str, Callable[..., Encoder]] = {"resmlp": ResMLP, "timewise": TimeWiseEncoder}
"""Encoder builders by the ``model_name`` stored in checkpoints."""


def build_encoder(name: str, **config: Any) -> Encoder:
    """Build an encoder by name from its keyword configuration.

    Raises:
        ValueError: For an unknown name.
    """
    if name not in ENCODERS:
        raise ValueError(f"unknown encoder {name!r}; choose from {sorted(ENCODERS)}")
    return ENCODERS[name](**config)


def _encoder_name(encoder: nn.Module) -> str:
    for name, builder in ENCODERS.items():
        if type(encoder) is builder:
            return name
    raise TypeError(f"{type(encoder).__name__} is not a known encoder; expected one of {sorted(ENCODERS)}")


class NormalizedEncoder(nn.Module):
    """Raw digital numbers ``(..., C)`` -> embeddings ``(..., D)``: :class:`Normalize` then the encoder.

    Args:
        normalize: The input standardisation.
        encoder: A :class:`ResMLP` or :class:`TimeWiseEncoder`.
        frozen: If true, parameters do not require grad and the module stays in eval mode even when
            a parent calls ``.train()`` (so BatchNorm statistics and dropout never change downstream).
    """

    def __init__(self, normalize: Normalize, encoder: Encoder, *, frozen: bool = False) -> None:
        super().__init__()
        in_dim = int(encoder.in_dim)
        if normalize.n_features != in_dim:
            raise ValueError(
                f"Normalize has {normalize.n_features} features but the encoder expects {in_dim}"
            )
        self.normalize = normalize
        self.encoder = encoder
        self.in_dim = in_dim
        self.out_dim = int(encoder.out_dim)
        self.frozen = frozen
        if frozen:
            self.requires_grad_(False)
            self.eval()

    def train(self, mode: bool = True) -> NormalizedEncoder:
        """Set training mode; a frozen encoder always stays in eval mode."""
        return super().train(False if self.frozen else mode)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Embed raw values ``(..., C)`` -> ``(..., D)``."""
        return self.encoder(self.normalize(x))


def save_encoder(
    path: str | Path,
    encoder: Encoder | NormalizedEncoder,
    norm_stats: dict[str, Sequence[float]],
    **provenance: Any,
) -> Path:
    """Save an encoder as an ``"encoder"`` checkpoint readable by :func:`load_frozen_encoder`.

    Args:
        path: Destination file.
        encoder: A :class:`ResMLP` or :class:`TimeWiseEncoder` (or a :class:`NormalizedEncoder`,
            whose own statistics must then equal ``norm_stats``).
        norm_stats: ``{"mean": [...], "std": [...]}`` on raw digital numbers, length ``in_dim``.
        **provenance: Extra payload keys (``config``, ``pretrain_mode``, ``data``, ``bands``, ...).

    Returns:
        The path written.
    """
    if isinstance(encoder, NormalizedEncoder):
        encoder = encoder.encoder
    name = _encoder_name(encoder)
    stats = validate_norm_stats(norm_stats, n_features=int(encoder.in_dim))
    state = {k: v.detach().cpu() for k, v in encoder.state_dict().items()}
    payload = {
        "kind": "encoder",
        "model_name": name,
        "model_config": dict(encoder.config),
        "state_dict": state,
        "norm_stats": stats,
        "in_dim": int(encoder.in_dim),
        "out_dim": int(encoder.out_dim),
    }
    clash = sorted(set(payload) & set(provenance))
    if clash:
        raise ValueError(f"provenance keys {clash} would overwrite encoder checkpoint fields")
    payload.update(provenance)
    return save_checkpoint(path, payload)


def load_frozen_encoder(path: str | Path, *, map_location: str | torch.device = "cpu") -> NormalizedEncoder:
    """Rebuild a frozen encoder from an ``"encoder"`` checkpoint.

    Args:
        path: File written by :func:`save_encoder` (or by ``python -m training.pretrain``).
        map_location: Device for the weights.

    Returns:
        A :class:`NormalizedEncoder` in eval mode with ``requires_grad=False`` mapping raw digital
        numbers ``(..., C)`` to embeddings ``(..., D)`` (for a time-wise encoder: ``(B, T, C) -> (B, T, D)``).

    Raises:
        CheckpointError: If the file is not an encoder checkpoint or its weights do not fit the model.
    """
    ckpt = load_checkpoint(path, kind="encoder", map_location=map_location)
    try:
        encoder = build_encoder(ckpt["model_name"], **ckpt["model_config"])
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"cannot rebuild encoder from {str(path)!r}: {err}") from err
    try:
        encoder.load_state_dict(ckpt["state_dict"])
    except RuntimeError as err:
        raise CheckpointError(f"weights in {str(path)!r} do not match {ckpt['model_name']!r}: {err}") from err
    stats = validate_norm_stats(ckpt["norm_stats"], n_features=int(encoder.in_dim))
    model = NormalizedEncoder(Normalize(stats["mean"], stats["std"]), encoder, frozen=True)
    model.to(map_location)
    logger.info(
        "loaded frozen %s encoder (%d -> %d) from %s", ckpt["model_name"], model.in_dim, model.out_dim, path
    )
    return model


def count_parameters(module: nn.Module) -> int:
    """Number of trainable-or-frozen parameters (buffers excluded)."""
    return sum(p.numel() for p in module.parameters())


def resmlp_parameter_count(in_dim: int, hidden: int = 256, n_layers: int = 8, out_dim: int = 256) -> int:
    """Closed-form :class:`ResMLP` parameter count (see the class docstring)."""
    blocks = n_layers // 2
    return (
        (in_dim + 1) * hidden
        + blocks * (2 * hidden * hidden + 4 * hidden)
        + 2 * hidden
        + (hidden + 1) * out_dim
    )
