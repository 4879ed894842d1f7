"""Tests for training.pretrain.run and training.pretrain.loop."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from training.checkpoint import load_checkpoint
from training.config import PretrainConfig, load_config
from training.models.encoder import compute_norm_stats, load_frozen_encoder
from training.pretrain.augment import scarf_corrupt
from training.pretrain.loop import ContrastiveModel
from training.pretrain.run import main

REPO = Path(__file__).resolve().parents[2]
_TINY = [
    "--set",
    "encoder.hidden=16",
    "--set",
    "encoder.n_layers=2",
    "--set",
    "encoder.out_dim=8",
    "--set",
    "projector.hidden=16",
    "--set",
    "projector.out=8",
    "--set",
    "batch_size=32",
    "--no-progress",
]


@pytest.fixture
def tiny_npz(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    path = tmp_path / "pairs.npz"
    np.savez(
        path,
        s2=(rng.random((100, 12)) * 3000).astype(np.float32),
        ps=(rng.random((100, 36)) * 3000).astype(np.float32),
        bands=np.array([f"B{i}" for i in range(12)]),
    )
    return path


def _eq1(zs: torch.Tensor, zp: torch.Tensor, tau: float) -> float:
    zs, zp = (
        torch.nn.functional.normalize(zs.double(), dim=1),
        torch.nn.functional.normalize(zp.double(), dim=1),
    )
    n = zs.shape[0]
    total = 0.0
    for i in range(n):
        num = torch.exp(zs[i] @ zp[i] / tau)
        den = sum(torch.exp(zs[i] @ zs[k] / tau) for k in range(n) if k != i)
        den = den + sum(torch.exp(zs[i] @ zp[m] / tau) for m in range(n) if m != i)
        total += float(-torch.log(num / den))
    return total / n


def test_model_loss_matches_manual_loop() -> None:
    cfg = load_config(
        PretrainConfig,
        None,
        [
            "encoder.hidden=16",
            "encoder.n_layers=2",
            "encoder.out_dim=8",
            "projector.hidden=8",
            "projector.out=4",
            "corruption=0.4",
        ],
    )
    rng = np.random.default_rng(1)
    s2 = torch.from_numpy((rng.random((10, 12)) * 1000).astype(np.float32))
    ps = torch.from_numpy((rng.random((10, 36)) * 1000).astype(np.float32))
    torch.manual_seed(0)
    model = ContrastiveModel(cfg, compute_norm_stats(s2), compute_norm_stats(ps)).eval()
    got = model.loss(s2, ps, cfg, torch.Generator().manual_seed(5)).item()
    g = torch.Generator().manual_seed(5)
    s2c = scarf_corrupt(s2, 0.4, generator=g)
    psc = scarf_corrupt(ps, 0.4, generator=g)
    with torch.no_grad():
        zs = model.s2_projector(
            model.s2_encoder.encoder((s2c - model.s2_encoder.normalize.mean) / model.s2_encoder.normalize.std)
        )
        zp = model.ps_projector(
            model.ps_encoder.encoder((psc - model.ps_encoder.normalize.mean) / model.ps_encoder.normalize.std)
        )
    assert got == pytest.approx(_eq1(zs, zp, cfg.tau), rel=1e-5)


def test_cli_bimodal_smoke_writes_outputs(tiny_npz: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert (
        main(
            ["--data", str(tiny_npz), "--out", str(out), "--set", "epochs=2", "--set", "log_every=1", *_TINY]
        )
        == 0
    )
    lines = [json.loads(ln) for ln in (out / "loss_log.jsonl").read_text().splitlines()]
    assert [ln["epoch"] for ln in lines if ln["step"] is None] == [1, 2]
    assert sum(ln["step"] is not None for ln in lines) == 6  # 3 steps of 32 per epoch
    enc = load_frozen_encoder(out / "encoder.pt")
    x = torch.rand(4, 7, 12) * 3000
    assert enc(x).shape == (4, 7, 8)
    payload = load_checkpoint(out / "encoder.pt")
    assert payload["pretrain_mode"] == "bimodal" and payload["bands"] == [f"B{i}" for i in range(12)]
    raw = np.load(tiny_npz)["s2"]
    np.testing.assert_allclose(payload["norm_stats"]["mean"], raw.mean(axis=0), rtol=1e-4)
    state = load_checkpoint(out / "checkpoints" / "last.pt", kind="pretrain_state")
    assert state["epoch"] == 2 and "ps_encoder.encoder.stem.weight" in state["state_dict"]


def test_cli_resume_is_exact(tiny_npz: Path, tmp_path: Path) -> None:
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert main(["--data", str(tiny_npz), "--out", str(straight), "--set", "epochs=3", *_TINY]) == 0
    assert main(["--data", str(tiny_npz), "--out", str(split), "--set", "epochs=1", *_TINY]) == 0
    assert (
        main(
            [
                "--data",
                str(tiny_npz),
                "--out",
                str(split),
                "--set",
                "epochs=3",
                *_TINY,
                "--resume",
                str(split / "checkpoints" / "last.pt"),
            ]
        )
        == 0
    )
    a = load_checkpoint(straight / "encoder.pt")["state_dict"]
    b = load_checkpoint(split / "encoder.pt")["state_dict"]
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)
    log_a = [json.loads(ln)["loss"] for ln in (straight / "loss_log.jsonl").read_text().splitlines()]
    log_b = [json.loads(ln)["loss"] for ln in (split / "loss_log.jsonl").read_text().splitlines()]
    assert log_a == log_b


def test_cli_resume_rejects_changed_config(
    tiny_npz: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    assert main(["--data", str(tiny_npz), "--out", str(out), "--set", "epochs=1", *_TINY]) == 0
    rc = main(
        [
            "--data",
            str(tiny_npz),
            "--out",
            str(out),
            "--set",
            "epochs=2",
            "--set",
            "lr=0.01",
            *_TINY,
            "--resume",
            str(out / "checkpoints" / "last.pt"),
        ]
    )
    assert rc == 1
    assert "lr: checkpoint 0.001 vs now 0.01" in capsys.readouterr().err


def test_cli_unimodal_and_timewise(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    path = tmp_path / "series.npz"
    np.savez(path, s2=(rng.random((24, 5, 12)) * 3000).astype(np.float32))
    out = tmp_path / "run"
    rc = main(
        [
            "--data",
            str(path),
            "--out",
            str(out),
            "--mode",
            "unimodal",
            "--alignment",
            "time",
            "--set",
            "epochs=1",
            "--set",
            "batch_size=8",
            "--set",
            "timewise.d_model=16",
            "--set",
            "timewise.n_heads=2",
            "--set",
            "timewise.n_layers=1",
            "--set",
            "timewise.out_dim=8",
            "--set",
            "projector.hidden=8",
            "--set",
            "projector.out=8",
            "--no-progress",
        ]
    )
    assert rc == 0
    enc = load_frozen_encoder(out / "encoder.pt")
    assert enc(torch.rand(2, 5, 12) * 3000).shape == (2, 5, 8)


def test_cli_user_errors(tiny_npz: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rng = np.random.default_rng(0)
    only_s2 = tmp_path / "s2.npz"
    np.savez(only_s2, s2=rng.random((10, 12)).astype(np.float32))
    assert main(["--data", str(only_s2), "--out", str(tmp_path / "a"), *_TINY]) == 1
    assert "bi-modal pre-training needs an array 'ps'" in capsys.readouterr().err
    nan = tmp_path / "nan.npz"
    s2 = rng.random((10, 12)).astype(np.float32)
    s2[3, 4] = np.nan
    np.savez(nan, s2=s2)
    assert main(["--data", str(nan), "--out", str(tmp_path / "b"), "--mode", "unimodal", *_TINY]) == 1
    assert "1 non-finite values" in capsys.readouterr().err
    assert main(["--data", str(tiny_npz), "--out", str(tmp_path / "c"), "--alignment", "time", *_TINY]) == 1
    assert "expects s2 (N, T, C)" in capsys.readouterr().err
    assert main(["--data", str(tiny_npz), "--out", str(tmp_path / "d"), "--set", "epoch=3"]) == 2
    err = capsys.readouterr().err
    assert "Invalid value for --config / --set" in err and "unknown config key 'epoch'" in err
    assert "Traceback" not in err and not (tmp_path / "d").exists()


def test_cli_refuses_existing_output(
    tiny_npz: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    assert main(["--data", str(tiny_npz), "--out", str(out), "--set", "epochs=1", *_TINY]) == 0
    capsys.readouterr()
    assert main(["--data", str(tiny_npz), "--out", str(out), "--set", "epochs=1", *_TINY]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("Error: ") and "--overwrite or --resume" in err


def test_pretrain_help_smoke() -> None:
    res = subprocess.run(
        [sys.executable, "-m", "training.pretrain", "--help"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert res.returncode == 0 and "--alignment" in res.stdout and "--resume" in res.stdout


@pytest.mark.parametrize("name", ["pretrain_pointwise", "pretrain_timewise"])
def test_shipped_configs_load(name: str) -> None:
    cfg = load_config(PretrainConfig, REPO / "training" / "configs" / f"{name}.toml", [])
    assert cfg.tau == 0.07 and cfg.lr == 1e-3 and cfg.epochs == 100
    assert cfg.batch_size == (1024 if cfg.alignment == "point" else 256)
