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

Both losses take ``rows``: a slice of the anchors. The result is then those anchors' share of the loss (their
terms summed and divided by the number of all anchors), so the shares of disjoint slices that cover the batch
add up to the loss of the whole batch. Data-parallel pre-training (:mod:`training.pretrain.distributed`) gives
each rank its own rows' share: the similarity rows are where the loss's compute is.
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


def _anchor_rows(n: int, rows: slice | None) -> slice:
    if rows is None:
        return slice(0, n)
    start, stop, step = rows.indices(n)
    if step != 1 or start >= stop:
        raise ValueError(f"rows must be a non-empty contiguous slice of the {n} anchors, got {rows}")
    return slice(start, stop)


def nt_xent(
    z1: torch.Tensor, z2: torch.Tensor, tau: float = 0.07, *, rows: slice | None = None
) -> torch.Tensor:
    """SimCLR NT-Xent over ``2N`` views.

    For each of the ``2N`` views the positive is the other view of the same sample and the
    denominator holds the ``2N - 1`` other views (positive included); the loss is the mean over all
    ``2N`` anchors.

    Args:
        z1: ``(N, D)`` projections of the first views.
        z2: ``(N, D)`` projections of the second views.
        tau: Temperature.
        rows: Only the anchors of these samples (both of their views): their share of the loss.

    Returns:
        Scalar loss.
    """
    _check_pair(z1, z2, tau)
    n = z1.shape[0]
    own = _anchor_rows(n, rows)
    with torch.autocast(device_type=z1.device.type, enabled=False):
        z = F.normalize(torch.cat([z1, z2]).float(), dim=1)
        anchors = torch.cat([torch.arange(own.start, own.stop), torch.arange(own.start + n, own.stop + n)])
        anchors = anchors.to(z.device)
        logits = z[anchors] @ z.T / tau
        logits[torch.arange(len(anchors), device=z.device), anchors] = float("-inf")
        target = (anchors + n) % (2 * n)
        return F.cross_entropy(logits, target, reduction="sum") / (2 * n)


def _anchored(
    za: torch.Tensor, zb: torch.Tensor, tau: float, include_positive: bool, rows: slice
) -> torch.Tensor:
    """Eq. 1 terms of the anchors ``rows`` with modality ``a`` as the anchor, shape ``(len(rows),)``."""
    n = za.shape[0]
    own = torch.arange(rows.start, rows.stop, device=za.device)
    eye = own[:, None] == torch.arange(n, device=za.device)[None, :]
    aa = (za[rows] @ za.T / tau).masked_fill(eye, float("-inf"))
    ab = za[rows] @ zb.T / tau
    pos = ab[torch.arange(len(own), device=za.device), own]
    ab_neg = ab if include_positive else ab.masked_fill(eye, float("-inf"))
    return torch.logsumexp(torch.cat([aa, ab_neg], dim=1), dim=1) - pos


def bimodal_loss(
    z_s: torch.Tensor,
    z_p: torch.Tensor,
    tau: float = 0.07,
    *,
    symmetric: bool = False,
    include_positive: bool = False,
    rows: slice | None = None,
) -> torch.Tensor:
    """The bi-modal SimCLR loss of the journal paper, Eq. 1 (see the module docstring).

    Args:
        z_s: ``(N, D)`` Sentinel-2 projections (the anchors).
        z_p: ``(N, D)`` PlanetScope projections; row ``i`` is the positive of ``z_s[i]``.
        tau: Temperature.
        symmetric: Average with the PlanetScope-anchored loss.
        include_positive: Add ``r_ii^sp`` to the denominator (InfoNCE form; not in Eq. 1).
        rows: Only these anchors (and, when symmetric, the same rows' PlanetScope anchors): their share.

    Returns:
        Scalar loss (mean over anchors).
    """
    _check_pair(z_s, z_p, tau)
    n = z_s.shape[0]
    own = _anchor_rows(n, rows)
    # float32 even under autocast: logits reach 1 / tau and bf16 keeps only ~3 significant digits.
    with torch.autocast(device_type=z_s.device.type, enabled=False):
        zs = F.normalize(z_s.float(), dim=1)
        zp = F.normalize(z_p.float(), dim=1)
        loss = _anchored(zs, zp, tau, include_positive, own).sum() / n
        if symmetric:
            loss = 0.5 * (loss + _anchored(zp, zs, tau, include_positive, own).sum() / n)
        return loss
