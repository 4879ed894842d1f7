"""Tests for the hyper-parameter spaces and the resumable variant sampling."""

from __future__ import annotations

import math
import sqlite3
from pathlib import Path

import optuna
import pytest
import torch

from training.downstream.tune import LR_RANGE, SPACES, main, sample_variants, split_lr, suggest
from training.models import build_model


@pytest.mark.parametrize("family", sorted(SPACES))
def test_variants_lie_in_the_papers_space_and_build(family: str) -> None:
    variants = sample_variants(family, 10, seed=3)
    assert len(variants) == 10
    for v in variants:
        lr, hp = split_lr(v)
        assert LR_RANGE[0] <= lr <= LR_RANGE[1]
        assert set(hp) == set(SPACES[family])
        for key, value in hp.items():
            assert value in SPACES[family][key]
    # Variants differ (random sampling over >= 12 combinations and a continuous lr).
    assert len({tuple(sorted(v.items())) for v in variants}) == 10
    # The first variant builds a model that runs (small input, default non-searched fields).
    model = build_model(family, 3, 2, **split_lr(variants[0])[1]).eval()
    assert model(torch.randn(2, 16, 3)).shape == (2, 2)


def test_paper_spaces() -> None:
    assert SPACES["lstm"] == {"hidden": (32, 64, 128, 256), "layers": (2, 3, 4, 5, 6)}
    assert SPACES["inception_time"] == {
        "layers": (2, 4, 8),
        "hidden": (128, 256, 512, 1024),
        "kernel": (40, 80, 120, 136),
    }
    assert SPACES["transformer"] == {"d_model": (32, 64, 128), "heads": (2, 4, 8), "layers": (2, 3, 4, 5, 6)}
    assert LR_RANGE == (1e-5, 1e-3)


def test_lr_is_sampled_log_uniformly() -> None:
    lrs = [v["lr"] for v in sample_variants("lstm", 60, seed=0)]
    logs = [math.log10(lr) for lr in lrs]
    # Log-uniform on [-5, -3]: about half the draws fall below 1e-4 (uniform would put ~9 % there).
    below = sum(x < -4 for x in logs) / len(logs)
    assert 0.3 < below < 0.7


def test_sampling_is_seeded() -> None:
    a = sample_variants("transformer", 5, seed=1)
    assert a == sample_variants("transformer", 5, seed=1)
    assert a != sample_variants("transformer", 5, seed=2)


def test_interrupted_sampling_resumes_to_the_same_variants(tmp_path: Path) -> None:
    db = tmp_path / "studies" / "variants.db"
    first = sample_variants("inception_time", 4, seed=0, storage=db)
    assert db.is_file()
    resumed = sample_variants("inception_time", 10, seed=0, storage=db)
    assert resumed[:4] == first
    assert resumed == sample_variants("inception_time", 10, seed=0)  # uninterrupted, in memory
    # A rerun reads the stored trials instead of sampling new ones.
    assert sample_variants("inception_time", 10, seed=0, storage=db) == resumed
    with sqlite3.connect(db) as con:
        (n_trials,) = con.execute("select count(*) from trials").fetchone()
    assert n_trials == 10


def test_unknown_family_and_bad_count_raise() -> None:
    with pytest.raises(ValueError, match=r"unknown model family 'gru'; choose from"):
        sample_variants("gru")
    with pytest.raises(ValueError, match="number of variants must be >= 1, got 0"):
        sample_variants("lstm", 0)
    with pytest.raises(ValueError, match="unknown model family"):
        suggest(optuna.create_study().ask(), "resnet")


def test_cli_prints_variants(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--family", "lstm", "--variants", "2"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and '"variant": 1' in lines[1]


def test_families_do_not_share_learning_rates() -> None:
    lrs = {f: [v["lr"] for v in sample_variants(f, 5, seed=0)] for f in SPACES}
    assert not set(lrs["lstm"]) & set(lrs["transformer"])
    assert not set(lrs["inception_time"]) & set(lrs["transformer"])
