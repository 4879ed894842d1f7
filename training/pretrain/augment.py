"""SCARF random feature corruption, the augmentation behind the contrastive views.

SCARF (Bahri et al., 2021, https://arxiv.org/abs/2106.15147) builds a view of a tabular sample by
replacing a fraction ``c`` of its features with draws from each feature's empirical marginal. Here
the marginal draw is the value of the same feature in another row of the batch, chosen uniformly
among the other rows. Inputs of shape ``(B, T, C)`` are treated as ``T * C`` features per sample.
"""

from __future__ import annotations

import logging
from typing import Literal, overload

import torch

logger = logging.getLogger(__name__)

__all__ = ["n_corrupted", "scarf_corrupt"]


def n_corrupted(n_features: int, rate: float) -> int:
    """Number of features replaced per sample: ``round(rate * n_features)`` (e.g. 2 of 12 at 20 %)."""
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"corruption rate must be in [0, 1], got {rate}")
    return round(rate * n_features)


@overload
def scarf_corrupt(
    x: torch.Tensor,
    rate: float,
    *,
    per_batch: bool = ...,
    p_apply: float = ...,
    generator: torch.Generator | None = ...,
    return_mask: Literal[False] = ...,
) -> torch.Tensor: ...


@overload
def scarf_corrupt(
    x: torch.Tensor,
    rate: float,
    *,
    per_batch: bool = ...,
    p_apply: float = ...,
    generator: torch.Generator | None = ...,
    return_mask: Literal[True],
) -> tuple[torch.Tensor, torch.Tensor]: ...


def scarf_corrupt(
    x: torch.Tensor,
    rate: float,
    *,
    per_batch: bool = False,
    p_apply: float = 0.5,
    generator: torch.Generator | None = None,
    return_mask: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Corrupt a batch with SCARF.

    Args:
        x: ``(N, F)`` or ``(N, ...)`` batch; every non-batch element is one feature.
        rate: Fraction ``c`` of features replaced per sample (``round(c * F)`` of them exactly).
        per_batch: ``False`` (default, the paper): positions are chosen independently for every
            sample. ``True`` (the authors' code): the same columns for the whole batch, and the batch
            is corrupted only with probability ``p_apply``.
        p_apply: Probability of corrupting the batch when ``per_batch`` is true.
        generator: Random generator on ``x``'s device, for reproducible views.
        return_mask: Also return the boolean mask of replaced positions (shape of ``x``).

    Returns:
        The corrupted copy of ``x`` (and the mask when ``return_mask``).

    Raises:
        ValueError: For a rate outside ``[0, 1]`` or a batch of one sample with a non-zero rate.
    """
    if x.ndim < 2:
        raise ValueError(f"scarf_corrupt expects a batch (N, F) or (N, ...), got shape {tuple(x.shape)}")
    n = x.shape[0]
    flat = x.reshape(n, -1)
    f = flat.shape[1]
    k = n_corrupted(f, rate)
    if not 0.0 <= p_apply <= 1.0:
        raise ValueError(f"p_apply must be in [0, 1], got {p_apply}")
    mask = torch.zeros(n, f, dtype=torch.bool, device=x.device)
    if k > 0 and n > 1:
        if per_batch:
            apply = torch.rand((), generator=generator, device=x.device) < p_apply
            cols = torch.rand(f, generator=generator, device=x.device).argsort()[:k]
            mask[:, cols] = apply
        else:
            order = torch.rand(n, f, generator=generator, device=x.device).argsort(dim=1)
            mask.scatter_(1, order[:, :k], True)
    elif k > 0:
        raise ValueError("SCARF needs at least 2 samples in the batch to draw from the feature marginals")
    # Source row for every element: uniformly one of the other n - 1 rows.
    shift = torch.randint(1, max(n, 2), (n, f), generator=generator, device=x.device)
    rows = (torch.arange(n, device=x.device).unsqueeze(1) + shift) % n
    donors = torch.gather(flat, 0, rows)
    out = torch.where(mask, donors, flat).reshape(x.shape)
    if return_mask:
        return out, mask.reshape(x.shape)
    return out
