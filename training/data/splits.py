"""Field-level splits: every pixel of a field lands in exactly one split.

Splitting by pixel would put neighbouring, near-identical pixels of one field on both sides of a split and
inflate validation scores; the method splits by field: 70 / 21 / 9 % of the training tile's fields for
pre-training / task-1 train / task-1 val, 70 / 30 % of the second tile's for task-2 train / val.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import numpy as np

logger = logging.getLogger(__name__)

SCENE_A_FRACTIONS: dict[str, float] = {"pretrain": 0.70, "train": 0.21, "val": 0.09}
"""Training tile (scene A): pre-training pool, downstream task 1 train and val."""
SCENE_B_FRACTIONS: dict[str, float] = {"train": 0.70, "val": 0.30}
"""Second tile (scene B): downstream task 2 train and val."""


def _allocate(n: int, fractions: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Integer counts summing to ``n`` closest to ``n * fractions`` (largest remainder, random ties)."""
    quota = n * fractions
    counts = np.floor(quota).astype(np.int64)
    rest = n - int(counts.sum())
    if rest:
        remainder = quota - counts
        order = np.lexsort((rng.random(fractions.size), -remainder))
        counts[order[:rest]] += 1
    return counts


def split_fields(
    field_ids: np.ndarray | list[int],
    fractions: Mapping[str, float],
    seed: int,
    *,
    strata: np.ndarray | list[int] | None = None,
) -> dict[str, np.ndarray]:
    """Split field ids into named, disjoint groups.

    Args:
        field_ids: (F,) field ids; duplicates are an error.
        fractions: Split name -> share of the fields, e.g. ``{"pretrain": 0.7, "train": 0.21, "val": 0.09}``.
            Shares must be positive and sum to 1.
        seed: Seed of the shuffle; the same ids, fractions and seed give the same split in any input order.
        strata: Optional (F,) label per field (e.g. its crop id). Each stratum is split on its own with the
            fractions, and a stratum with at least as many fields as splits puts at least one field in every
            split, so that small validation splits still see every class.

    Returns:
        Split name -> sorted array of field ids. Together they hold every id exactly once.

    Raises:
        ValueError: On duplicate ids, bad fractions or strata of the wrong length.
    """
    ids = np.asarray(field_ids, dtype=np.int64).ravel()
    if np.unique(ids).size != ids.size:
        raise ValueError("field_ids contains duplicates; pass each field once")
    names = list(fractions)
    if not names:
        raise ValueError("fractions is empty; expected e.g. {'train': 0.7, 'val': 0.3}")
    shares = np.array([fractions[n] for n in names], dtype=np.float64)
    if (shares <= 0).any() or abs(shares.sum() - 1.0) > 1e-6:
        raise ValueError(f"fractions must be positive and sum to 1, got {dict(fractions)}")
    if strata is None:
        labels = np.zeros(ids.size, dtype=np.int64)
    else:
        labels = np.asarray(strata).ravel()
        if labels.size != ids.size:
            raise ValueError(f"strata has {labels.size} entries; field_ids has {ids.size}")
    order = np.argsort(ids, kind="stable")  # input order must not matter
    ids, labels = ids[order], labels[order]
    rng = np.random.default_rng(seed)
    parts: dict[str, list[np.ndarray]] = {n: [] for n in names}
    for stratum in np.unique(labels):
        members = rng.permutation(ids[labels == stratum])
        counts = _allocate(members.size, shares, rng)
        if strata is not None and members.size >= len(names):
            for empty in np.flatnonzero(counts == 0):  # lend one field from the largest split
                counts[np.argmax(counts)] -= 1
                counts[empty] += 1
        bounds = np.concatenate([[0], np.cumsum(counts)])
        for k, name in enumerate(names):
            parts[name].append(members[bounds[k] : bounds[k + 1]])
    out = {name: np.sort(np.concatenate(chunks)) for name, chunks in parts.items()}
    logger.info("split %d fields: %s", ids.size, {n: int(v.size) for n, v in out.items()})
    return out
