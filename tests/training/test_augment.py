"""Tests for training.pretrain.augment (SCARF corruption)."""

from __future__ import annotations

import pytest
import torch

from training.pretrain.augment import n_corrupted, scarf_corrupt


def _batch(n: int = 64, f: int = 12, seed: int = 0) -> torch.Tensor:
    # column j holds values in [1000 j, 1000 j + 1): columns never share values, rows never repeat
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, f, generator=g, dtype=torch.float64) + 1000 * torch.arange(f, dtype=torch.float64)


@pytest.mark.parametrize(("rate", "expected"), [(0.2, 2), (0.6, 7), (0.0, 0), (1.0, 12)])
def test_scarf_exact_fraction_per_row(rate: float, expected: int) -> None:
    x = _batch()
    out, mask = scarf_corrupt(x, rate, generator=torch.Generator().manual_seed(1), return_mask=True)
    assert n_corrupted(12, rate) == expected
    assert (mask.sum(dim=1) == expected).all()
    assert ((out != x) == mask).all()  # exactly the masked positions changed


def test_scarf_values_come_from_same_column_of_other_rows() -> None:
    x = _batch()
    out, mask = scarf_corrupt(x, 0.6, generator=torch.Generator().manual_seed(2), return_mask=True)
    for i, j in mask.nonzero().tolist():
        column = x[:, j]
        hits = (column == out[i, j]).nonzero().flatten().tolist()
        assert len(hits) == 1 and hits[0] != i


def test_scarf_positions_independent_per_sample() -> None:
    _, mask = scarf_corrupt(_batch(256), 0.2, generator=torch.Generator().manual_seed(3), return_mask=True)
    assert len({tuple(row.tolist()) for row in mask}) > 30
    # every column gets corrupted about equally often (256 * 2 / 12 ~ 43)
    per_col = mask.sum(dim=0)
    assert per_col.min() > 20 and per_col.max() < 70


def test_scarf_per_batch_variant() -> None:
    x = _batch()
    applied = 0
    for seed in range(40):
        out, mask = scarf_corrupt(
            x, 0.2, per_batch=True, generator=torch.Generator().manual_seed(seed), return_mask=True
        )
        if mask.any():
            applied += 1
            assert (mask == mask[0]).all() and int(mask[0].sum()) == 2
        else:
            assert torch.equal(out, x)
    assert 10 < applied < 30  # applied with probability 0.5


def test_scarf_sequence_input_and_reproducibility() -> None:
    x = torch.rand(8, 5, 3)
    a = scarf_corrupt(x, 0.4, generator=torch.Generator().manual_seed(0))
    b = scarf_corrupt(x, 0.4, generator=torch.Generator().manual_seed(0))
    assert a.shape == x.shape and torch.equal(a, b)
    assert int((a != x).reshape(8, -1).sum(dim=1).max()) <= 6


def test_scarf_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        scarf_corrupt(torch.rand(4, 3), 1.5)
    with pytest.raises(ValueError, match="at least 2 samples"):
        scarf_corrupt(torch.rand(1, 3), 0.5)
    with pytest.raises(ValueError, match="expects a batch"):
        scarf_corrupt(torch.rand(3), 0.5)
