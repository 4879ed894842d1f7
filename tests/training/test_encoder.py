"""Tests for training.models.encoder."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from training.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from training.models.encoder import (
    Normalize,
    NormalizedEncoder,
    Projector,
    ResMLP,
    TimeWiseEncoder,
    compute_norm_stats,
    count_parameters,
    load_frozen_encoder,
    resmlp_parameter_count,
    save_encoder,
)


def test_resmlp_parameter_count_paper_setting() -> None:
    model = ResMLP(12, hidden=256, n_layers=8, out_dim=256)
    # stem 13*256 + 4 blocks (8 Linear layers) * (2*256*256 + 4*256) + head BN 2*256 + 257*256
    assert count_parameters(model) == 598_016
    assert 540_000 <= count_parameters(model) <= 600_000  # the journal paper's "approximately 550K"
    assert resmlp_parameter_count(12) == 598_016
    assert len(model.blocks) == 4
    assert count_parameters(ResMLP(36)) == resmlp_parameter_count(36) == 604_160
    assert count_parameters(ResMLP(12, hidden=64, n_layers=6, out_dim=32)) == resmlp_parameter_count(
        12, 64, 6, 32
    )


def test_resmlp_rejects_odd_layer_count() -> None:
    with pytest.raises(ValueError, match="even"):
        ResMLP(12, n_layers=3)


def test_resmlp_structure_matches_spec() -> None:
    model = ResMLP(12, hidden=16, n_layers=4, out_dim=8, dropout=0.1)
    block = model.blocks[0].f
    assert [type(m).__name__ for m in block] == [
        "BatchNorm1d",
        "Linear",
        "ReLU",
        "Dropout",
        "Linear",
        "Dropout",
    ]
    assert [type(m).__name__ for m in model.head] == ["BatchNorm1d", "ReLU", "Linear"]
    assert model.stem.in_features == 12 and model.head[-1].out_features == 8
    assert len(model.blocks) == 2


def test_resmlp_flat_and_sequence_inputs_agree() -> None:
    torch.manual_seed(0)
    model = ResMLP(12, hidden=32, n_layers=2, out_dim=16).eval()
    x = torch.randn(4, 7, 12)
    seq = model(x)
    assert seq.shape == (4, 7, 16)
    torch.testing.assert_close(seq.reshape(-1, 16), model(x.reshape(-1, 12)))
    with pytest.raises(ValueError, match="expects 12 features"):
        model(torch.randn(3, 5))


def test_resmlp_residual_identity_when_blocks_zeroed() -> None:
    model = ResMLP(3, hidden=4, n_layers=2, out_dim=4).eval()
    for block in model.blocks:
        torch.nn.init.zeros_(block.f[4].weight)
        torch.nn.init.zeros_(block.f[4].bias)
    x = torch.randn(5, 3)
    expected = model.head(model.stem(x))
    torch.testing.assert_close(model(x), expected)


def test_projector_shapes() -> None:
    proj = Projector(256, 256, 128)
    assert proj(torch.randn(3, 256)).shape == (3, 128)
    assert count_parameters(proj) == 257 * 256 + 257 * 128


def test_normalize_and_stats() -> None:
    x = torch.tensor([[100.0, 5.0], [300.0, 5.0]])
    stats = compute_norm_stats(x)
    assert stats["mean"] == [200.0, 5.0]
    assert stats["std"] == [100.0, 1.0]  # constant feature clamped to min_scale
    norm = Normalize(stats["mean"], stats["std"])
    torch.testing.assert_close(norm(x), torch.tensor([[-1.0, 0.0], [1.0, 0.0]]))
    var_stats = compute_norm_stats(x, divisor="var")
    # (x/1e4 - m) / var(x/1e4) == (x - M) / (var(x)/1e4)
    assert var_stats["std"][0] == pytest.approx(100.0**2 / 10000.0)
    with pytest.raises(ValueError, match="expects 2 features"):
        norm(torch.randn(3, 3))


def test_timewise_encoder_shapes_and_pooling() -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 10, 12)
    for pooling in ("mean", "cls"):
        enc = TimeWiseEncoder(
            12, d_model=32, n_layers=2, n_heads=4, out_dim=16, max_len=20, pooling=pooling
        ).eval()
        assert enc(x).shape == (2, 10, 16)
        assert enc.pooled(x).shape == (2, 16)
    enc = TimeWiseEncoder(12, d_model=32, n_layers=2, n_heads=4, out_dim=16, max_len=20).eval()
    torch.testing.assert_close(enc.pooled(x), enc(x).mean(dim=1))
    with pytest.raises(ValueError, match="max_len=20"):
        enc(torch.randn(1, 21, 12))
    with pytest.raises(ValueError, match=r"expects \(B, T, 12\)"):
        enc(torch.randn(4, 12))


def test_timewise_encoder_uses_order_of_stamps() -> None:
    torch.manual_seed(0)
    enc = TimeWiseEncoder(3, d_model=16, n_layers=1, n_heads=2, out_dim=8, max_len=8).eval()
    x = torch.randn(1, 6, 3)
    assert not torch.allclose(enc.pooled(x), enc.pooled(x.flip(1)))


@pytest.mark.parametrize("kind", ["resmlp", "timewise"])
def test_save_and_load_frozen_encoder(tmp_path: Path, kind: str) -> None:
    torch.manual_seed(0)
    if kind == "resmlp":
        enc = ResMLP(12, hidden=32, n_layers=2, out_dim=16)
        x = torch.rand(3, 5, 12) * 3000
    else:
        enc = TimeWiseEncoder(12, d_model=32, n_layers=1, n_heads=4, out_dim=16, max_len=8)
        x = torch.rand(3, 5, 12) * 3000
    # a few training steps so BatchNorm running stats are not the defaults
    enc.train()
    enc(torch.randn(64, 5, 12))
    stats = compute_norm_stats(x)
    path = save_encoder(tmp_path / "encoder.pt", enc, stats, pretrain_mode="bimodal")
    frozen = load_frozen_encoder(path)
    assert isinstance(frozen, NormalizedEncoder)
    assert not frozen.training and all(not p.requires_grad for p in frozen.parameters())
    frozen.train()  # a parent calling .train() must not unfreeze BatchNorm / dropout
    assert not frozen.training and not frozen.encoder.training
    enc.eval()
    expected = enc(Normalize(stats["mean"], stats["std"])(x))
    torch.testing.assert_close(frozen(x), expected)
    assert frozen(x).shape == (3, 5, 16)
    payload = load_checkpoint(path)
    assert payload["pretrain_mode"] == "bimodal" and payload["model_name"] == kind


def test_load_frozen_encoder_errors(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path / "other.pt", kind="pretrain_state_x", state_dict={})
    with pytest.raises(CheckpointError, match="expected kind 'encoder'"):
        load_frozen_encoder(path)
    enc = ResMLP(4, hidden=8, n_layers=2, out_dim=8)
    with pytest.raises(CheckpointError, match="the model expects 4"):
        save_encoder(tmp_path / "e.pt", enc, {"mean": [0.0] * 3, "std": [1.0] * 3})
    path = save_encoder(tmp_path / "e.pt", enc, {"mean": [0.0] * 4, "std": [1.0] * 4})
    payload = load_checkpoint(path)
    payload["model_config"]["hidden"] = 16
    save_checkpoint(tmp_path / "bad.pt", payload)
    with pytest.raises(CheckpointError, match="do not match"):
        load_frozen_encoder(tmp_path / "bad.pt")
