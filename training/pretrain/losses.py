"""Contrastive losses: SimCLR NT-Xent (uni-modal) and the bi-modal loss of the journal paper (Eq. 1).

Bi-modal loss (Patnala et al., Front. Remote Sens. 2024, Eq. 1a/1b), for a batch of ``N`` pairs of
projections ``z_is`` (Sentinel-2) and ``z_ip`` (PlanetScope)::

    l_i = -log( r_ii^sp / ( sum_{k != i} r_ik^ss + sum_{m != i} r_im^sp ) )
    r_ij^ab = exp( cos(z_ia, z_jb) / tau ),        loss = mean_i l_i

As written in the paper the denominator holds only negatives: the S2 anchor against the other S2
samples and against the other PlanetScope samples; the positive ``r_ii^sp`` is not in it (unlike
SimCLR / InfoNCE). :func:`bimodal_loss` implements exactly that by default, so the loss can go
below zero; ``include_positive=True`` gives the InfoNCE form with the positive added to the
denominator. ``symmetric=True`` averages with the PlanetScope-anchored version (swap s and p).

Everything is computed in float32 with ``logsumexp`` (stable for tau = 0.07, where
``exp(1 / tau) ~ 1.6e6``), also under bf16 autocast.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)

__all__ = ["bimodal_loss", "nt_xent"]


def _check_pair(a: torch.Tensor, b: torch.Tensor, tau: float) -> None:
    if a.ndim != 2 or a.shape != b.shape:
        raise ValueError(
            f"expected two (N, D) tensors of equal shape, got {tuple(a.shape)} and {tuple(b.shape)}"
        )
    if a.shape[0] < 2:
        raise ValueError(f"contrastive losses need at least 2 samples per batch, got {a.shape[0]}")
    if not tau > 0:
        raise ValueError(f"temperature tau must be > 0, got {tau}")


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, tau: float = 0.07) -> torch.Tensor:
    """SimCLR NT-Xent over ``2N`` views.

    For each of the ``2N`` views the positive is the other view of the same sample and the
    denominator holds the ``2N - 1`` other views (positive included); the loss is the mean over all
    ``2N`` anchors.

    Args:
        z1: ``(N, D)`` projections of the first views.
        z2: ``(N, D)`` projections of the second views.
        tau: Temperature.

    Returns:
        Scalar loss.
    """
    _check_pair(z1, z2, tau)
    n = z1.shape[0]
    with torch.autocast(device_type=z1.device.type, enabled=False):
        z = F.normalize(torch.cat([z1, z2]).float(), dim=1)
        logits = z @ z.T / tau
        eye = torch.eye(2 * n, dtype=torch.bool, device=z.device)
        logits = logits.masked_fill(eye, float("-inf"))
        target = torch.cat([torch.arange(n, 2 * n, device=z.device), torch.arange(0, n, device=z.device)])
        return F.cross_entropy(logits, target)


def _anchored(za: torch.Tensor, zb: torch.Tensor, tau: float, include_positive: bool) -> torch.Tensor:
    """Per-anchor Eq. 1 terms with modality ``a`` as the anchor, shape ``(N,)``."""
    n = za.shape[0]
    eye = torch.eye(n, dtype=torch.bool, device=za.device)
    aa = (za @ za.T / tau).masked_fill(eye, float("-inf"))
    ab = za @ zb.T / tau
    pos = ab.diagonal()
    ab_neg = ab if include_positive else ab.masked_fill(eye, float("-inf"))
    return torch.logsumexp(torch.cat([aa, ab_neg], dim=1), dim=1) - pos


def bimodal_loss(
    z_s: torch.Tensor,
    z_p: torch.Tensor,
    tau: float = 0.07,
    *,
    symmetric: bool = False,
    include_positive: bool = False,
) -> torch.Tensor:
    """The bi-modal SimCLR loss of the journal paper, Eq. 1 (see the module docstring).

    Args:
        z_s: ``(N, D)`` Sentinel-2 projections (the anchors).
        z_p: ``(N, D)`` PlanetScope projections; row ``i`` is the positive of ``z_s[i]``.
        tau: Temperature.
        symmetric: Average with the PlanetScope-anchored loss.
        include_positive: Add ``r_ii^sp`` to the denominator (InfoNCE form; not in Eq. 1).

    Returns:
        Scalar loss (mean over anchors).
    """
    _check_pair(z_s, z_p, tau)
    # float32 even under autocast: logits reach 1 / tau and bf16 keeps only ~3 significant digits.
    with torch.autocast(device_type=z_s.device.type, enabled=False):
        zs = F.normalize(z_s.float(), dim=1)
        zp = F.normalize(z_p.float(), dim=1)
        loss = _anchored(zs, zp, tau, include_positive).mean()
        if symmetric:
            loss = 0.5 * (loss + _anchored(zp, zs, tau, include_positive).mean())
        return loss
