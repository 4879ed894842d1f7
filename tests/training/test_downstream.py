"""Tests for the downstream comparison: training, the frozen encoder, results and resume."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from training.data.parcels import stratified_split
from training.downstream.run import (
    DownstreamConfig,
    EncoderSpec,
    TaskData,
    load_real_task,
    main,
    run_comparison,
    train_run,
)
from training.models import build_model
from training.models.encoder import ResMLP, compute_norm_stats, save_encoder

REPO = Path(__file__).resolve().parents[2]
FLANDERS = REPO / "sample_data" / "worldcereal" / "2021_BEL_LPIS-Flanders_POLY_110_monthly.parquet"
BANDS = ("B02", "B03", "B04", "B08")


def _toy_task(n_per_class: int = 40, t: int = 8, seed: int = 0) -> TaskData:
    """Three classes of raw-DN series that differ in the timing of a greenness peak."""
    rng = np.random.default_rng(seed)

    def make(n: int) -> tuple[np.ndarray, np.ndarray]:
        xs, ys = [], []
        for k in range(3):
            peak = 1 + 3 * k
            time = np.arange(t)[None, :, None]
            base = 1500 + 2500 * np.exp(-((time - peak) ** 2) / 2.0)
            x = base + rng.normal(0, 150, size=(n, t, len(BANDS)))
            xs.append(x.astype(np.float32))
            ys.append(np.full(n, k))
        return np.concatenate(xs), np.concatenate(ys).astype(np.int64)

    x_tr, y_tr = make(n_per_class)
    x_va, y_va = make(n_per_class // 2)
    return TaskData(x_tr, y_tr, x_va, y_va, class_names=("a", "b", "c"), bands=BANDS)


def _encoder_file(path: Path, data: TaskData, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    enc = ResMLP(len(BANDS), hidden=16, n_layers=2, out_dim=8)
    stats = compute_norm_stats(data.x_train)
    # Move BatchNorm statistics away from their initial values so drift would be visible.
    enc.train()
    with torch.no_grad():
        enc((torch.from_numpy(data.x_train) - torch.tensor(stats["mean"])) / torch.tensor(stats["std"]))
    return save_encoder(path, enc, stats)


def test_encoder_spec_parse() -> None:
    spec = EncoderSpec.parse("bimodal_0.6=runs/b/encoder.pt")
    assert (spec.method, spec.corruption, spec.path) == ("bimodal", 0.6, Path("runs/b/encoder.pt"))
    for bad in (
        "bimodal=enc.pt",
        "trimodal_0.2=x.pt",
        "unimodal_0.2",
        "unimodal_1.5=x.pt",
        "unimodal_abc=x.pt",
    ):
        with pytest.raises(ValueError, match="<method>_<corruption>=PATH"):
            EncoderSpec.parse(bad)


def test_task_data_validates_shapes_and_labels() -> None:
    x = np.zeros((4, 3, 2), np.float32)
    with pytest.raises(ValueError, match=r"must be \(N, T, 3\)"):
        TaskData(x, np.zeros(4, np.int64), x, np.zeros(4, np.int64), ("a", "b"), ("B02", "B03", "B04"))
    with pytest.raises(ValueError, match="outside"):
        TaskData(x, np.full(4, 2), x, np.zeros(4, np.int64), ("a", "b"), ("B02", "B03"))
    x_nan = x.copy()
    x_nan[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        TaskData(x_nan, np.zeros(4, np.int64), x, np.zeros(4, np.int64), ("a", "b"), ("B02", "B03"))


@pytest.mark.parametrize("family", ["lstm", "inception_time", "transformer"])
def test_train_run_learns_a_separable_task(family: str) -> None:
    data = _toy_task()
    stats = compute_norm_stats(data.x_train)
    norm = lambda a: torch.from_numpy((a - np.array(stats["mean"])) / np.array(stats["std"])).float()
    hp = {
        "lstm": {"hidden": 16, "layers": 2},
        "inception_time": {"layers": 2, "hidden": 16, "kernel": 8},
        "transformer": {"d_model": 16, "heads": 2, "layers": 2},
    }[family]
    torch.manual_seed(0)
    model = build_model(family, len(BANDS), 3, **hp)
    res = train_run(
        model,
        norm(data.x_train),
        torch.from_numpy(data.y_train),
        norm(data.x_val),
        torch.from_numpy(data.y_val),
        lr=1e-2,
        epochs=8,
        batch_size=24,
        seed=0,
    )
    assert res["val_accuracy"] > 0.8, res["curve"]
    assert len(res["curve"]) == 8 and res["curve"][-1][0] == 8
    assert np.asarray(res["confusion"]).sum() == len(data.y_val)


def test_learning_rate_decays_linearly_to_zero() -> None:
    data = _toy_task(n_per_class=10)
    model = build_model("lstm", len(BANDS), 3, hidden=4, layers=2)
    seen: list[float] = []
    original = torch.optim.Adam.step

    def spy(self: torch.optim.Adam, *a: object, **k: object) -> object:
        seen.append(self.param_groups[0]["lr"])
        return original(self, *a, **k)

    torch.optim.Adam.step = spy  # type: ignore[method-assign]
    try:
        x = torch.from_numpy(data.x_train / 1000)
        train_run(
            model,
            x,
            torch.from_numpy(data.y_train),
            x,
            torch.from_numpy(data.y_train),
            lr=1e-3,
            epochs=3,
            batch_size=10,
            seed=0,
        )
    finally:
        torch.optim.Adam.step = original  # type: ignore[method-assign]
    steps = 3 * 3  # 30 samples / batch 10 x 3 epochs
    np.testing.assert_allclose(seen, [1e-3 * (1 - s / steps) for s in range(steps)], rtol=1e-6)


def test_frozen_encoder_keeps_batchnorm_statistics_and_gets_no_grads(tmp_path: Path) -> None:
    data = _toy_task(n_per_class=20)
    # A plain ResMLP left in TRAIN mode with requires_grad=True: train_run itself must keep it frozen.
    torch.manual_seed(0)
    enc = ResMLP(len(BANDS), hidden=16, n_layers=2, out_dim=8).train()
    with torch.no_grad():
        enc(torch.randn(64, len(BANDS)) * 3 + 1)  # non-default running statistics
    before = {k: v.clone() for k, v in enc.state_dict().items()}
    model = build_model("lstm", 8, 3, hidden=8, layers=2)
    x = torch.from_numpy(data.x_train / 3000).float()
    train_run(
        model,
        x,
        torch.from_numpy(data.y_train),
        x,
        torch.from_numpy(data.y_train),
        lr=1e-3,
        epochs=2,
        batch_size=8,
        seed=0,
        front=enc,
    )
    assert not enc.training
    for name, value in enc.state_dict().items():
        torch.testing.assert_close(value, before[name], rtol=0, atol=0, msg=f"{name} changed")
    assert all(p.grad is None for p in enc.parameters())
    assert any(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("cache_gb", [0.0, 4.0], ids=["per_batch", "precomputed"])
def test_run_comparison_writes_results_and_resumes(tmp_path: Path, cache_gb: float) -> None:
    data = _toy_task(n_per_class=12, t=6)
    enc_a = _encoder_file(tmp_path / "u.pt", data, seed=1)
    enc_b = _encoder_file(tmp_path / "b.pt", data, seed=2)
    state_before = torch.load(enc_a, weights_only=True)["state_dict"]
    encoders = [EncoderSpec("unimodal", 0.2, enc_a), EncoderSpec("bimodal", 0.2, enc_b)]
    cfg = DownstreamConfig(
        task="1",
        families=("lstm", "transformer"),
        variants=2,
        epochs=1,
        batch_size=16,
        embed_cache_gb=cache_gb,
        recipe="papers",
        baselines=False,
    )
    out = tmp_path / "run"
    results = run_comparison(cfg, data, encoders, out, show_progress=False)
    recs = [json.loads(line) for line in results.read_text().splitlines()]
    assert len(recs) == 2 * 2 * 3
    keys = {(r["family"], r["variant"], r["method"], r["corruption"]) for r in recs}
    assert ("lstm", 1, "supervised", None) in keys and ("transformer", 0, "bimodal", 0.2) in keys
    mode = "per_batch" if cache_gb == 0 else "precomputed"
    assert {r["embedding_mode"] for r in recs if r["method"] != "supervised"} == {mode}
    for r in recs:
        assert set(r) >= {
            "task",
            "family",
            "variant",
            "method",
            "corruption",
            "val_accuracy",
            "macro_f1",
            "kappa",
            "confusion",
            "epochs",
            "seconds",
            "hp",
            "lr",
        }
        assert r["in_dim"] == (len(BANDS) if r["method"] == "supervised" else 8)
    # The same variant carries the same hyper-parameters for every method.
    for fam in ("lstm", "transformer"):
        for v in range(2):
            hps = {json.dumps([r["hp"], r["lr"]]) for r in recs if r["family"] == fam and r["variant"] == v}
            assert len(hps) == 1
    # The encoder file is untouched.
    for k, v in torch.load(enc_a, weights_only=True)["state_dict"].items():
        assert torch.equal(v, state_before[k])
    # Resume: nothing left to do, nothing appended.
    text = results.read_text()
    run_comparison(cfg, data, encoders, out, show_progress=False)
    assert results.read_text() == text
    # Remove the last run: exactly that run is redone.
    lines = text.splitlines(keepends=True)
    results.write_text("".join(lines[:-1]))
    run_comparison(cfg, data, encoders, out, show_progress=False)
    redone = results.read_text().splitlines()
    assert len(redone) == len(lines)
    assert json.loads(redone[-1])["val_accuracy"] == json.loads(lines[-1])["val_accuracy"]  # seeded
    # Another set-up in the same file is refused.
    with pytest.raises(ValueError, match=r"another set-up.*epochs_asked: stored 1, now 2"):
        run_comparison(dataclass_replace(cfg, epochs=2), data, encoders, out, show_progress=False)


def dataclass_replace(cfg: DownstreamConfig, **kw: object) -> DownstreamConfig:
    import dataclasses

    return dataclasses.replace(cfg, **kw)  # type: ignore[arg-type]


def test_run_comparison_rejects_bad_encoders(tmp_path: Path) -> None:
    data = _toy_task(n_per_class=4, t=4)
    enc = _encoder_file(tmp_path / "e.pt", data)
    cfg = DownstreamConfig(task="real", families=("lstm",), variants=1, epochs=1)
    cfg1 = dataclass_replace(cfg, task="1")
    with pytest.raises(ValueError, match="repeat"):
        run_comparison(
            cfg1, data, [EncoderSpec("unimodal", 0.2, enc)] * 2, tmp_path / "o", show_progress=False
        )
    wide = TaskData(
        np.zeros((4, 4, 2), np.float32),
        np.array([0, 1, 0, 1]),
        np.zeros((2, 4, 2), np.float32),
        np.array([0, 1]),
        ("a", "b"),
        ("B02", "B03"),
    )
    with pytest.raises(ValueError, match="expects 4 input bands but task data has 2"):
        run_comparison(cfg1, wide, [EncoderSpec("unimodal", 0.2, enc)], tmp_path / "o2", show_progress=False)


def test_stratified_split_is_seeded_disjoint_and_keeps_every_class() -> None:
    labels = np.array([0] * 10 + [1] * 5 + [2] * 1)
    tr, va = stratified_split(labels, 0.3, seed=0)
    assert not set(tr) & set(va) and len(tr) + len(va) == len(labels)
    assert sorted(np.bincount(labels[va], minlength=3).tolist()) == [0, 2, 3]
    assert set(labels[tr]) == {0, 1, 2}
    np.testing.assert_array_equal(stratified_split(labels, 0.3, seed=0)[1], va)


def test_real_task_reads_flanders_parcels() -> None:
    cfg = DownstreamConfig(task="real", season=2020, min_valid=6, top_classes=4)
    data = load_real_task(FLANDERS, cfg)
    assert data.x_train.shape[1:] == (12, 9) and data.bands[0] == "B02"
    assert data.time_grid is not None and data.time_grid.reference_dates[0] == "2020-11-01"
    # The 4 most frequent ewoc codes, named from WorldCereal's legend.
    assert data.class_names[:2] == ("non_cropland_incl_perennial", "managed_grasslands")
    assert len(data.y_train) + len(data.y_val) == 81  # 30 + 28 + 12 + 12 parcels, one lacks 6 valid months
    assert set(data.y_val) == set(range(4))
    flanders_map = REPO / "training" / "configs" / "classes_flanders.csv"
    coarse = load_real_task(
        FLANDERS, DownstreamConfig(task="real", season=2020, min_valid=6, class_map=flanders_map)
    )
    assert coarse.class_names == ("grassland", "maize", "other arable crops", "non-cropland and perennial")
    assert len(coarse.y_train) + len(coarse.y_val) == 99


def test_cli_real_task(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "real"
    rc = main(
        [
            "--task",
            "real",
            "--data",
            str(FLANDERS),
            "--families",
            "transformer",
            "--variants",
            "1",
            "--epochs",
            "1",
            "--out",
            str(out),
            "--no-progress",
            "--set",
            "batch_size=32",
            "--recipe",
            "papers",
            "--set",
            "trees=[]",
        ]
    )
    assert rc == 0
    recs = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    (rec,) = [r for r in recs if r["family"] == "transformer"]
    assert rec["task"] == "real" and rec["method"] == "supervised" and rec["batch_size"] == 32
    assert rec["recipe"] == "papers"
    assert sorted(r["family"] for r in recs if r["hp_source"] == "baseline") == ["majority", "random_forest"]
    assert "results:" in capsys.readouterr().out


def test_cli_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Usage errors (a bad encoder, a missing encoder file, an unknown config field, a device torch cannot see)
    # exit 2 with click's message naming the option; bad input exits 1 with one Error: line.
    for args, flag in (
        (["--encoders", "bimodal=x.pt"], "--encoder"),
        (["--encoder", "unimodal_0.2=missing.pt"], "--encoder"),
        (["--set", "epochz=3"], "--config / --set"),
    ):
        assert main(["--task", "1", "--out", str(tmp_path), *args]) == 2, args
        err = capsys.readouterr().err
        assert f"Invalid value for {flag}" in err and "Traceback" not in err, err
    assert main(["--task", "1", "--device", "cuda:7", "--out", str(tmp_path)]) == 1  # the machine's: one line
    err = capsys.readouterr().err
    assert err.startswith("Error: --device cuda:7") and err.count("\n") == 1, err
    assert main(["--task", "1", "--device", "gpu", "--out", str(tmp_path)]) == 2
    assert "'gpu' is not a device" in capsys.readouterr().err
    assert main(["--task", "1", "--out", str(tmp_path), "--no-progress"]) == 1  # no --data: one line
    err = capsys.readouterr().err
    assert err.startswith("Error: task 1 needs data") and err.count("\n") == 1, err
    assert list(tmp_path.iterdir()) == []  # nothing written
    assert main(["--task", "1", "--out", str(tmp_path), "--workers", "2", "--scheduler", "tcp://x:1"]) == 2
    assert main(["--task", "1", "--out", str(tmp_path), "--queue", "gpu"]) == 2
    assert "expected --cluster with it" in capsys.readouterr().err


def test_old_encoders_spelling_takes_several_values() -> None:
    from training.downstream.cli import rewrite_encoders

    assert rewrite_encoders(["--encoders", "a=1", "b=2", "--epochs", "3"]) == [
        "--encoder",
        "a=1",
        "--encoder",
        "b=2",
        "--epochs",
        "3",
    ]


def test_cli_choices_match_the_registries() -> None:
    from cropmap.batch import CLUSTER_KINDS
    from cropmap.cli_common import CLUSTER_CHOICES
    from training.downstream.cli import RECIPES
    from training.downstream.recipe import RECIPES as REGISTERED

    assert tuple(sorted(CLUSTER_KINDS)) == CLUSTER_CHOICES and tuple(sorted(REGISTERED)) == RECIPES


TINY_PRETRAIN = [
    "--set",
    "epochs=1",
    "--set",
    "encoder.hidden=32",
    "--set",
    "encoder.n_layers=2",
    "--set",
    "encoder.out_dim=16",
    "--set",
    "projector.hidden=32",
    "--set",
    "projector.out=16",
    "--set",
    "data.pixels_per_stamp=100",
    "--set",
    "batch_size=256",
    "--no-progress",
]


def test_pipeline_simulate_pretrain_downstream_evaluate(sim_scene_dir: Path, tmp_path: Path) -> None:
    from training.evaluate import run as evaluate
    from training.pretrain import run as pretrain

    config = REPO / "training" / "configs" / "pretrain_pointwise.toml"
    encoders = []
    for mode in ("unimodal", "bimodal"):
        out = tmp_path / f"{mode}_0.2"
        rc = pretrain.main(
            [
                "--mode",
                mode,
                "--alignment",
                "point",
                "--corruption",
                "0.2",
                "--data",
                str(sim_scene_dir),
                "--out",
                str(out),
                "--config",
                str(config),
                *TINY_PRETRAIN,
            ]
        )
        assert rc == 0
        encoders.append(f"{mode}_0.2={out / 'encoder.pt'}")
    ds = tmp_path / "downstream"
    rc = main(
        [
            "--task",
            "1",
            "--data",
            str(sim_scene_dir),
            "--config",
            str(REPO / "training/configs/downstream_ci.toml"),
            "--families",
            "transformer",
            "--encoders",
            *encoders,
            "--out",
            str(ds),
            "--no-progress",
        ]
    )
    assert rc == 0
    all_recs = [json.loads(line) for line in (ds / "results.jsonl").read_text().splitlines()]
    recs = [r for r in all_recs if r["family"] == "transformer"]
    assert len(recs) == 3
    assert {r["method"] for r in recs} == {"supervised", "unimodal", "bimodal"}
    # The RandomForest on each method's inputs, and the majority class once.
    base = sorted((r["family"], r["method"]) for r in all_recs if r["hp_source"] == "baseline")
    assert base == [
        ("majority", "supervised"),
        ("random_forest", "bimodal"),
        ("random_forest", "supervised"),
        ("random_forest", "unimodal"),
    ]
    assert all(r["in_dim"] == (12 if r["method"] == "supervised" else 16) for r in recs)
    assert all(len(r["class_names"]) == 9 and r["n_train"] == 9 * 8 for r in recs)
    assert evaluate.main(["--results", str(ds / "results.jsonl"), "--out", str(tmp_path / "report")]) == 0
    for name in ("report.md", "table1.md", "win_1_transformer.png", "gain_1.png"):
        assert (tmp_path / "report" / name).is_file()
    table = (tmp_path / "report" / "table1.md").read_text()
    assert "baseline: RandomForest" in table and "baseline: majority" in table


@pytest.mark.slow
def test_comparison_all_families_two_rates(sim_scene_dir: Path, tmp_path: Path) -> None:
    """Every family, 2 variants, 2 corruption rates per method: each win-matrix cell holds 4 comparisons."""
    from training.evaluate import run as evaluate
    from training.pretrain import run as pretrain

    config = REPO / "training" / "configs" / "pretrain_pointwise.toml"
    encoders = []
    for mode in ("unimodal", "bimodal"):
        for rate in ("0.2", "0.6"):
            out = tmp_path / f"{mode}_{rate}"
            assert (
                pretrain.main(
                    [
                        "--mode",
                        mode,
                        "--alignment",
                        "point",
                        "--corruption",
                        rate,
                        "--data",
                        str(sim_scene_dir),
                        "--out",
                        str(out),
                        "--config",
                        str(config),
                        *TINY_PRETRAIN,
                    ]
                )
                == 0
            )
            encoders.append(f"{mode}_{rate}={out / 'encoder.pt'}")
    ds = tmp_path / "downstream"
    assert (
        main(
            [
                "--task",
                "2",
                "--data",
                str(sim_scene_dir),
                "--config",
                str(REPO / "training/configs/downstream_ci.toml"),
                "--variants",
                "2",
                "--epochs",
                "2",
                "--encoders",
                *encoders,
                "--out",
                str(ds),
                "--no-progress",
            ]
        )
        == 0
    )
    summary = evaluate.write_report(ds / "results.jsonl", tmp_path / "report")
    for family in ("lstm", "inception_time", "transformer"):
        entry = summary[f"2/{family}"]
        assert entry["methods"] == ["supervised", "unimodal", "bimodal", "random_forest", "majority"]
        counts = np.asarray(entry["win_counts"])[:3, :3]
        off_diagonal = [n for i, row in enumerate(counts) for j, n in enumerate(row) if i != j]
        assert off_diagonal == [4] * 6
        assert len(entry["gains"]["bimodal"]["values"]) == 4
