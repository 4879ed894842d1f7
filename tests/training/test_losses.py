"""Tests for training.pretrain.losses against direct loops over the paper's formulas."""

from __future__ import annotations

import math

import pytest
import torch

from training.pretrain.losses import bimodal_loss, nt_xent


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a @ b) / (a.norm() * b.norm()))


def _eq1_loop(zs: torch.Tensor, zp: torch.Tensor, tau: float, include_positive: bool = False) -> float:
    """Journal Eq. 1 written term by term in double precision."""
    zs, zp = zs.double(), zp.double()
    n = zs.shape[0]
    total = 0.0
    for i in range(n):
        pos = math.exp(_cos(zs[i], zp[i]) / tau)
        den = sum(math.exp(_cos(zs[i], zs[k]) / tau) for k in range(n) if k != i)
        den += sum(math.exp(_cos(zs[i], zp[m]) / tau) for m in range(n) if m != i)
        if include_positive:
            den += pos
        total += -math.log(pos / den)
    return total / n


def _nt_xent_loop(z1: torch.Tensor, z2: torch.Tensor, tau: float) -> float:
    z = torch.cat([z1, z2]).double()
    n2 = z.shape[0]
    n = n2 // 2
    total = 0.0
    for i in range(n2):
        j = (i + n) % n2
        pos = math.exp(_cos(z[i], z[j]) / tau)
        den = sum(math.exp(_cos(z[i], z[k]) / tau) for k in range(n2) if k != i)
        total += -math.log(pos / den)
    return total / n2


@pytest.mark.parametrize("tau", [0.07, 0.5])
@pytest.mark.parametrize("seed", [0, 1])
def test_bimodal_loss_matches_eq1_loop(tau: float, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    zs, zp = torch.randn(7, 5, generator=g), torch.randn(7, 5, generator=g)
    # float32 implementation vs float64 loop
    assert float(bimodal_loss(zs, zp, tau)) == pytest.approx(_eq1_loop(zs, zp, tau), rel=1e-5, abs=1e-5)
    got = float(bimodal_loss(zs, zp, tau, include_positive=True))
    assert got == pytest.approx(_eq1_loop(zs, zp, tau, include_positive=True), rel=1e-5, abs=1e-5)


def test_bimodal_loss_symmetric_is_mean_of_both_anchors() -> None:
    g = torch.Generator().manual_seed(3)
    zs, zp = torch.randn(6, 4, generator=g), torch.randn(6, 4, generator=g)
    expected = 0.5 * (_eq1_loop(zs, zp, 0.1) + _eq1_loop(zp, zs, 0.1))
    assert float(bimodal_loss(zs, zp, 0.1, symmetric=True)) == pytest.approx(expected, rel=1e-5)
    assert float(bimodal_loss(zs, zp, 0.1)) != pytest.approx(expected, rel=1e-3)


def test_bimodal_loss_excludes_positive_so_aligned_pairs_go_negative() -> None:
    # Identical, well separated pairs: the positive dwarfs every negative, and without the
    # positive in the denominator (Eq. 1 as written) the loss is far below zero.
    z = torch.eye(4) * 3
    assert float(bimodal_loss(z, z, 0.07)) < -10
    assert 0 < float(bimodal_loss(z, z, 0.07, include_positive=True)) < 1e-3


def test_bimodal_loss_is_scale_invariant_and_stable() -> None:
    g = torch.Generator().manual_seed(0)
    zs, zp = torch.randn(16, 8, generator=g), torch.randn(16, 8, generator=g)
    a = bimodal_loss(zs, zp, 0.01)
    b = bimodal_loss(zs * 1e3, zp * 1e-3, 0.01)
    assert torch.isfinite(a)
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_nt_xent_matches_loop() -> None:
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(5, 6, generator=g), torch.randn(5, 6, generator=g)
    assert float(nt_xent(z1, z2, 0.2)) == pytest.approx(_nt_xent_loop(z1, z2, 0.2), rel=1e-5)


def test_gradients_flow_to_both_modalities() -> None:
    g = torch.Generator().manual_seed(0)
    zs = torch.randn(8, 4, generator=g, requires_grad=True)
    zp = torch.randn(8, 4, generator=g, requires_grad=True)
    bimodal_loss(zs, zp, 0.07).backward()
    assert zs.grad is not None and zp.grad is not None
    assert zs.grad.abs().sum() > 0 and zp.grad.abs().sum() > 0
    z1 = torch.randn(8, 4, generator=g, requires_grad=True)
    nt_xent(z1, z1.detach() + 0.1 * torch.randn(8, 4, generator=g), 0.5).backward()
    assert z1.grad is not None and z1.grad.abs().sum() > 0


def test_gradient_step_lowers_loss() -> None:
    g = torch.Generator().manual_seed(0)
    zs = torch.randn(8, 4, generator=g, requires_grad=True)
    zp = torch.randn(8, 4, generator=g, requires_grad=True)
    opt = torch.optim.SGD([zs, zp], lr=0.05)
    before = bimodal_loss(zs, zp, 0.5).item()
    for _ in range(20):
        opt.zero_grad()
        bimodal_loss(zs, zp, 0.5).backward()
        opt.step()
    assert bimodal_loss(zs, zp, 0.5).item() < before - 0.1


def test_losses_reject_bad_input() -> None:
    with pytest.raises(ValueError, match="equal shape"):
        bimodal_loss(torch.randn(4, 3), torch.randn(4, 2))
    with pytest.raises(ValueError, match="at least 2 samples"):
        nt_xent(torch.randn(1, 3), torch.randn(1, 3))
    with pytest.raises(ValueError, match="tau must be > 0"):
        bimodal_loss(torch.randn(4, 3), torch.randn(4, 3), 0.0)


def test_bimodal_loss_in_float32_under_autocast() -> None:
    g = torch.Generator().manual_seed(0)
    zs, zp = torch.randn(32, 16, generator=g), torch.randn(32, 16, generator=g)
    ref = bimodal_loss(zs, zp, 0.07)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = bimodal_loss(zs, zp, 0.07)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, ref)


@pytest.mark.parametrize(
    "loss",
    [
        lambda a, b, rows: nt_xent(a, b, 0.2, rows=rows),
        lambda a, b, rows: bimodal_loss(a, b, 0.07, rows=rows),
        lambda a, b, rows: bimodal_loss(a, b, 0.07, symmetric=True, include_positive=True, rows=rows),
    ],
    ids=["nt_xent", "eq1", "eq1-symmetric-infonce"],
)
def test_row_shares_add_up_to_the_whole_loss_and_its_gradient(loss) -> None:  # type: ignore[no-untyped-def]
    """Data-parallel ranks each take a slice of the anchors: the shares and their gradients sum to the whole."""
    g = torch.Generator().manual_seed(3)
    a = torch.randn(10, 6, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(10, 6, generator=g, dtype=torch.float64, requires_grad=True)
    whole = loss(a, b, None)
    ga, gb = torch.autograd.grad(whole, [a, b])
    shares = [loss(a, b, rows) for rows in (slice(0, 4), slice(4, 7), slice(7, 10))]
    total_a, total_b = torch.zeros_like(a), torch.zeros_like(b)
    for share in shares:
        sa, sb = torch.autograd.grad(share, [a, b])
        total_a += sa
        total_b += sb
    # the losses compute in float32 whatever the input: sums in another order agree to float32 rounding
    assert float(sum(s.detach() for s in shares)) == pytest.approx(float(whole.detach()), rel=1e-6)
    torch.testing.assert_close(total_a, ga, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(total_b, gb, rtol=1e-5, atol=1e-7)
    assert float(shares[0].detach()) != pytest.approx(float(whole.detach()), rel=1e-3)


def test_rows_must_be_a_contiguous_slice() -> None:
    z = torch.randn(6, 4)
    with pytest.raises(ValueError, match="contiguous slice"):
        bimodal_loss(z, z, 0.1, rows=slice(0, 6, 2))
    with pytest.raises(ValueError, match="contiguous slice"):
        nt_xent(z, z, 0.1, rows=slice(3, 3))
