"""Tests for training.probe, and evidence that pre-training learns on a simulated scene."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from training.probe import knn_accuracy, linear_probe, random_encoder, series_features


def _blobs(n: int, d: int, k: int, sep: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(k, d, generator=g) * sep
    y = torch.arange(n) % k
    return centres[y] + torch.randn(n, d, generator=g), y


def test_linear_probe_separable_vs_shuffled_labels() -> None:
    x, y = _blobs(600, 20, 5, 3.0, 0)
    assert linear_probe(x[:400], y[:400], x[400:], y[400:]) > 0.95
    y_shuffled = y[torch.randperm(600, generator=torch.Generator().manual_seed(1))]
    assert linear_probe(x[:400], y_shuffled[:400], x[400:], y_shuffled[400:]) < 0.4


def test_knn_separable_vs_noise() -> None:
    x, y = _blobs(600, 20, 5, 3.0, 0)
    assert knn_accuracy(x[:400], y[:400], x[400:], y[400:], k=5) > 0.95
    noise = torch.randn(600, 20, generator=torch.Generator().manual_seed(2))
    assert knn_accuracy(noise[:400], y[:400], noise[400:], y[400:], k=5) < 0.4


def test_series_features_shapes() -> None:
    x = np.random.default_rng(0).random((6, 4, 12)).astype(np.float32) * 1000
    assert series_features(x).shape == (6, 48)
    assert series_features(x, pooling="mean").shape == (6, 12)
    enc = random_encoder(x, hidden=16, n_layers=2, out_dim=8)
    assert series_features(x, enc).shape == (6, 32)
    with pytest.raises(ValueError, match=r"expects \(N, T, C\)"):
        series_features(x[0])


@torch.no_grad()
def _alignment(model: torch.nn.Module, s2: torch.Tensor, ps: torch.Tensor, stamp: np.ndarray) -> tuple[float, float]:
    """Eq. 1 loss of held-out pairs (no corruption) and the share of S2 samples whose nearest PS
    projection (cosine) was observed on the same date."""
    from training.losses import bimodal_loss

    zs = torch.nn.functional.normalize(model.project_s2(s2), dim=1)
    zp = torch.nn.functional.normalize(model.project_ps(ps), dim=1)
    nearest = (zs @ zp.T).argmax(dim=1).numpy()
    return float(bimodal_loss(zs, zp, 0.07)), float((stamp[nearest] == stamp).mean())


def test_bimodal_pretraining_learns_cross_modal_alignment(tmp_path: Path) -> None:
    """On a simulated scene, a short bi-modal pre-training aligns S2 pixels with PlanetScope patches.

    Held-out pairs (another pixel draw from the pool) are scored with the Eq. 1 loss and by S2 -> PS
    nearest-neighbour retrieval among 256 candidates. Measured (tiny preset, 3 epochs): loss 6.0
    trained vs 20.4 untrained; same-date retrieval 20 % vs 2 %.
    """
    from training.checkpoint import load_checkpoint
    from training.config import PretrainConfig, config_from_dict
    from training.data.datasets import pointwise_pairs, scene_a_splits
    from training.data.denethor import read_scene
    from training.loop import ContrastiveModel
    from training.pretrain import main as pretrain_main
    from training.simulate import PRESETS, simulate

    simulate(tmp_path / "sim", PRESETS["tiny"])
    out = tmp_path / "run"
    small = ["--set", "encoder.hidden=32", "--set", "encoder.n_layers=2", "--set", "encoder.out_dim=32",
             "--set", "projector.hidden=32", "--set", "projector.out=32", "--set", "batch_size=256",
             "--set", "epochs=3", "--set", "data.pixels_per_stamp=400", "--no-progress"]
    assert pretrain_main(["--data", str(tmp_path / "sim"), "--out", str(out), *small]) == 0

    state = load_checkpoint(out / "checkpoints" / "last.pt", kind="pretrain_state")
    cfg = config_from_dict(PretrainConfig, state["config"])
    trained = ContrastiveModel(cfg, state["norm_stats"], state["ps_norm_stats"])
    trained.load_state_dict(state["state_dict"])
    torch.manual_seed(123)
    untrained = ContrastiveModel(cfg, state["norm_stats"], state["ps_norm_stats"])

    scene = read_scene(tmp_path / "sim" / "scene_a")
    pool = scene_a_splits(scene)["pretrain"]
    s2, ps, index = pointwise_pairs(scene, pool, n_per_stamp=400, seed=99, return_index=True)
    pick = np.random.default_rng(0).choice(len(s2), 256, replace=False)
    args = (torch.from_numpy(s2[pick]), torch.from_numpy(ps[pick]), index[pick, 0])
    loss_trained, date_trained = _alignment(trained.eval(), *args)
    loss_untrained, date_untrained = _alignment(untrained.eval(), *args)
    assert loss_trained < 0.6 * loss_untrained
    assert date_trained > 0.1 and date_trained > 3 * date_untrained
