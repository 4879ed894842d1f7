"""An ensemble of trained base models, deployable as one base model.

``EnsembleClassifier`` averages the logits of its members (any registered family, each with its own
hyper-parameters). It keeps the base-model contract of bundles (``forward(x) == head(features(x))``):
its features are the members' features side by side (the bundle's embedding output), and its head
applies each member's linear head to its part and averages, which is linear too. It is built like any
base model, ``build_model("ensemble", in_dim, n_classes, members=[{"family": ..., "hp": {...}}, ...])``, so
classifier checkpoints and ONNX exports treat it as one model.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, cast

import torch
from torch import nn

from training.models.base import SeriesClassifier

__all__ = ["EnsembleClassifier", "ensemble"]


class _MeanHead(nn.Module):
    """The members' heads on their slices of the concatenated features, averaged."""

    def __init__(self, heads: Sequence[nn.Module], dims: Sequence[int]) -> None:
        super().__init__()
        self.heads = list(heads)  # plain list: the weights belong to (and are saved with) the members
        self.dims = [int(d) for d in dims]

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        parts = torch.split(z, self.dims, dim=-1)
        return torch.stack([h(p) for h, p in zip(self.heads, parts, strict=True)]).mean(dim=0)


class EnsembleClassifier(nn.Module):
    """Mean-logit ensemble ``(B, T, C) -> (B, K)``.

    Args:
        members: The trained base models (same ``in_dim`` and ``n_classes``).
        spec: ``[{"family": name, "hp": {...}}, ...]`` describing the members (kept for rebuilding).
    """

    head: _MeanHead
    """The members' heads averaged (set with ``object.__setattr__``: not a submodule of the ensemble)."""

    def __init__(self, members: Sequence[SeriesClassifier], spec: Sequence[Mapping[str, Any]]) -> None:
        super().__init__()
        if len(members) < 2:
            raise ValueError(f"an ensemble needs at least 2 members, got {len(members)}")
        dims = {(int(m.in_dim), int(m.n_classes)) for m in members}
        if len(dims) != 1:
            raise ValueError(f"ensemble members disagree on (in_dim, n_classes): {sorted(dims)}")
        ((self.in_dim, self.n_classes),) = dims
        self.members = nn.ModuleList(members)
        self.spec = [dict(s) for s in spec]
        widths = [int(m.feature_dim) for m in members]
        self.feature_dim = sum(widths)
        object.__setattr__(self, "head", _MeanHead([m.head for m in members], widths))  # not a submodule

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The members' features side by side ``(B, sum D_k)``."""
        # nn.ModuleList yields plain modules; its items are the SeriesClassifier members given above.
        return torch.cat([cast(SeriesClassifier, m).features(x) for m in self.members], dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Eval mode: each member's forward is head(features) (its dropout is the identity).
        if not self.training:
            return self.head(self.features(x))
        return torch.stack([m(x) for m in self.members]).mean(dim=0)


def ensemble(in_dim: int, n_classes: int, *, members: Sequence[Mapping[str, Any]]) -> EnsembleClassifier:
    """Build an (untrained) ensemble from member specs ``{"family": name, "hp": {...}}``."""
    from training.models import build_base_model

    built = []
    for k, spec in enumerate(members):
        family = spec.get("family")
        if family == "ensemble" or family is None:
            raise ValueError(f"ensemble member {k} must name a base-model family, got {family!r}")
        built.append(build_base_model(str(family), in_dim, n_classes, **dict(spec.get("hp", {}))))
    return EnsembleClassifier(built, members)
