"""Tests for the downstream training recipes and the baselines."""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from training.downstream import recipe as recipe_mod
from training.downstream.baselines import majority, random_forest
from training.downstream.recipe import (
    Recipe,
    augment_batch,
    class_weights,
    get_recipe,
    lr_lambda,
    selection_split,
)
from training.downstream.run import DownstreamConfig, TaskData, run_comparison, train_run
from training.evaluate.run import summarise, table1_markdown
from training.models import build_model

BANDS = ("B02", "B03", "B04", "B08")


def _toy(n_per_class: int = 30, t: int = 8, seed: int = 0, counts: tuple[int, ...] | None = None) -> TaskData:
    rng = np.random.default_rng(seed)

    def make(ns: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
        xs, ys = [], []
        for k, n in enumerate(ns):
            base = 1500 + 2500 * np.exp(-((np.arange(t)[None, :, None] - (1 + 3 * k)) ** 2) / 2.0)
            xs.append((base + rng.normal(0, 150, size=(n, t, len(BANDS)))).astype(np.float32))
            ys.append(np.full(n, k))
        return np.concatenate(xs), np.concatenate(ys).astype(np.int64)

    x_tr, y_tr = make(counts or (n_per_class,) * 3)
    x_va, y_va = make((n_per_class // 2,) * 3)
    return TaskData(x_tr, y_tr, x_va, y_va, class_names=("a", "b", "c"), bands=BANDS)


def test_named_recipes_and_overrides() -> None:
    assert get_recipe("papers") == Recipe("papers")
    robust = get_recipe("robust")
    assert (
        robust.optimizer == "adamw"
        and robust.schedule == "warmup_cosine"
        and robust.balanced
        and robust.augments
    )
    assert get_recipe("robust", noise=0.0).noise == 0.0
    with pytest.raises(ValueError, match="unknown recipe 'fast'"):
        get_recipe("fast")
    with pytest.raises(ValueError, match="selection_fraction"):
        Recipe("x", selection_fraction=0.6)
    with pytest.raises(ValueError, match="unknown recipe"):
        DownstreamConfig(recipe="fast")


def test_batch_and_epochs_follow_the_data_size() -> None:
    r = Recipe("r", min_steps=100, max_batch_fraction=1 / 16)
    assert r.batch_size(256, 320) == 20  # a sixteenth of the training set
    assert r.batch_size(256, 40) == 8  # never below 8
    assert r.batch_size(16, 100_000) == 16  # the requested size when the set is large
    assert r.epochs(20, 320, 20) == 20  # 16 steps per epoch x 20 epochs >= 100 steps
    assert r.epochs(2, 320, 20) == 7  # ceil(100 / 16)
    papers = get_recipe("papers")
    assert papers.batch_size(256, 50) == 50 and papers.epochs(3, 50, 50) == 3


def test_warmup_cosine_schedule() -> None:
    f = lr_lambda(Recipe("r", schedule="warmup_cosine", warmup=0.1), 100)
    values = [f(s) for s in range(100)]
    assert values[0] == pytest.approx(0.1) and values[9] == pytest.approx(1.0)  # linear warm-up over 10 steps
    assert all(a >= b for a, b in itertools.pairwise(values[9:]))  # then only decays
    assert values[-1] < 0.01
    linear = lr_lambda(get_recipe("papers"), 10)
    assert [linear(s) for s in (0, 5, 10)] == [1.0, 0.5, 0.0]


def test_class_weights_are_inverse_frequency() -> None:
    w = class_weights(np.array([0] * 6 + [1] * 2 + [2] * 4), 4)
    assert w[3] == 0  # absent class
    np.testing.assert_allclose((w[:3] * torch.tensor([6.0, 2.0, 4.0])).numpy(), [w[0] * 6] * 3, rtol=1e-6)
    assert float(w[:3].mean()) == pytest.approx(1.0)


def test_selection_split_is_stratified_disjoint_and_seeded() -> None:
    y = np.array([0] * 20 + [1] * 10 + [2] * 1)
    fit, sel = selection_split(y, 0.2, seed=3)
    assert not set(fit) & set(sel) and len(fit) + len(sel) == len(y)
    assert np.bincount(y[sel], minlength=3).tolist() == [4, 2, 0]  # the lone class-2 sample stays in fit
    np.testing.assert_array_equal(sel, selection_split(y, 0.2, seed=3)[1])
    assert not np.array_equal(sel, selection_split(y, 0.2, seed=4)[1])


def test_augmentation_shifts_drops_and_adds_noise() -> None:
    x = torch.arange(2 * 6 * 1, dtype=torch.float32).reshape(2, 6, 1)
    gen = torch.Generator().manual_seed(0)
    shifted = augment_batch(x, Recipe("s", shift=2), torch.ones(1), gen)
    for b in range(2):
        row = shifted[b, :, 0].tolist()
        assert set(row) <= set(x[b, :, 0].tolist())  # values come from the same series
        assert row == sorted(row)  # order kept, edges repeated
    dropped = augment_batch(x, Recipe("d", drop=0.5), torch.ones(1), torch.Generator().manual_seed(1))
    assert torch.equal(dropped[:, 0], x[:, 0])  # the first stamp is never dropped
    assert (dropped[:, 1:] - dropped[:, :-1] >= 0).all() and (dropped != x).any()  # forward fill
    noisy = augment_batch(
        torch.zeros(64, 10, 3),
        Recipe("n", noise=0.5),
        torch.tensor([1.0, 2.0, 4.0]),
        torch.Generator().manual_seed(2),
    )
    np.testing.assert_allclose(noisy.std(dim=(0, 1)).numpy(), [0.5, 1.0, 2.0], rtol=0.15)


def test_best_epoch_is_chosen_on_the_selection_split_never_on_validation() -> None:
    data = _toy()
    x, y = torch.from_numpy(data.x_train / 3000).float(), torch.from_numpy(data.y_train)
    fit, sel = (torch.from_numpy(i) for i in selection_split(data.y_train, 0.2, 0))
    xv, yv = torch.from_numpy(data.x_val / 3000).float(), torch.from_numpy(data.y_val)
    r = get_recipe("robust", min_steps=60)
    runs = []
    for labels in (yv, yv[torch.randperm(len(yv), generator=torch.Generator().manual_seed(0))]):
        torch.manual_seed(0)
        model = build_model("lstm", len(BANDS), 3, hidden=8, layers=1)
        runs.append(
            train_run(
                model,
                x[fit],
                y[fit],
                xv,
                labels,
                lr=1e-2,
                epochs=2,
                batch_size=64,
                seed=0,
                recipe=r,
                x_sel=x[sel],
                y_sel=y[sel],
            )
        )
    a, b = runs
    assert a["best_epoch"] == b["best_epoch"] and a["selection_f1"] == b["selection_f1"]
    assert 1 <= a["best_epoch"] <= a["epochs_run"] and a["steps"] >= 60
    assert a["effective_batch_size"] == 8  # a sixteenth of 72 samples, floored at 8
    assert a["val_accuracy"] > 0.8


def test_patience_stops_early() -> None:
    data = _toy(n_per_class=10)
    x, y = torch.from_numpy(data.x_train / 3000).float(), torch.from_numpy(data.y_train)
    model = build_model("lstm", len(BANDS), 3, hidden=4, layers=1)
    r = Recipe("p", patience=2)
    res = train_run(model, x, y, x, y, lr=0.0, epochs=50, batch_size=8, seed=0, recipe=r, x_sel=x, y_sel=y)
    assert res["epochs_run"] == 3 and res["best_epoch"] == 1  # lr 0: nothing improves after epoch 1


def test_ensemble_averages_member_logits() -> None:
    from training.models.ensemble import EnsembleClassifier

    torch.manual_seed(0)
    spec = [
        {"family": "lstm", "hp": {"hidden": 4, "layers": 1}},
        {"family": "transformer", "hp": {"d_model": 8, "heads": 2, "layers": 1}},
    ]
    ens = build_model("ensemble", 3, 4, members=spec).eval()
    assert isinstance(ens, EnsembleClassifier)
    x = torch.randn(5, 6, 3)
    with torch.no_grad():
        expected = torch.stack([m(x) for m in ens.members]).mean(0)
        torch.testing.assert_close(ens(x), expected)
        torch.testing.assert_close(ens.head(ens.features(x)), expected)  # the bundles' contract
    assert ens.features(x).shape == (5, ens.feature_dim) and ens.feature_dim == sum(
        m.feature_dim for m in ens.members
    )
    assert not any(k.startswith("head") for k in ens.state_dict())
    rebuilt = build_model("ensemble", 3, 4, members=spec)
    rebuilt.load_state_dict(ens.state_dict())  # checkpoints rebuild it from the spec
    with pytest.raises(ValueError, match="at least 2 members"):
        build_model("ensemble", 3, 4, members=spec[:1])
    with pytest.raises(ValueError, match="must name a base-model family"):
        build_model("ensemble", 3, 4, members=[{"hp": {}}, {"family": "ensemble"}])
    with pytest.raises(ValueError, match="variants must be >= 1"):
        DownstreamConfig(variants=0)


def test_inception_kernel_fits_the_series_length() -> None:
    r = get_recipe("robust")
    assert r.adapt_hp("inception_time", {}, 12) == {"kernel": 12}
    assert r.adapt_hp("inception_time", {"kernel": 8}, 12) == {"kernel": 8}
    assert r.adapt_hp("inception_time", {}, 144) == {}
    assert r.adapt_hp("lstm", {"hidden": 4}, 3) == {"hidden": 4}
    assert get_recipe("papers").adapt_hp("inception_time", {}, 12) == {}


def test_baselines_score_like_base_models() -> None:
    data = _toy()
    rf = random_forest(data.x_train, data.y_train, data.x_val, data.y_val, 3, seed=0, n_estimators=50)
    assert rf["val_accuracy"] > 0.9 and rf["n_features"] == 8 * len(BANDS)
    assert np.asarray(rf["confusion"]).sum() == len(data.y_val)
    skewed = _toy(counts=(30, 5, 5))
    maj = majority(skewed.y_train, skewed.y_val, 3)
    assert maj["val_accuracy"] == pytest.approx(1 / 3) and maj["per_class_recall"] == [1.0, 0.0, 0.0]


def test_run_comparison_default_recipe_with_baselines(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The default (robust) recipe end to end, shortened so that it runs in a moment.
    monkeypatch.setitem(
        recipe_mod.RECIPES, "robust", dataclasses.replace(recipe_mod.RECIPES["robust"], min_steps=40)
    )
    data = _toy(n_per_class=12, t=6)
    cfg = DownstreamConfig(
        task="1", families=("lstm",), variants=0, default_variant=True, repeats=2, epochs=1, batch_size=16
    )
    assert cfg.recipe == "robust" and cfg.baselines
    results = run_comparison(cfg, data, [], tmp_path / "run", show_progress=False)
    recs = [json.loads(line) for line in results.read_text().splitlines()]
    assert sorted((r["family"], r["variant"]) for r in recs) == [
        ("lstm", -2),
        ("lstm", -1),
        ("lstm_ensemble", 0),
        ("majority", 0),
        ("random_forest", 0),
    ]
    runs = [r for r in recs if r["family"] == "lstm"]
    assert (
        runs[0]["val_accuracy"] != runs[1]["val_accuracy"] or runs[0]["final_loss"] != runs[1]["final_loss"]
    )
    for run in runs:
        assert run["recipe"] == "robust" and run["lr_schedule"] == "warmup-cosine" and run["steps"] >= 40
    (ens,) = [r for r in recs if r["family"] == "lstm_ensemble"]
    assert [m["variant"] for m in ens["hp"]["members"]] == [-1, -2] and ens["hp_source"] == "ensemble"
    assert np.asarray(ens["confusion"]).sum() == len(data.y_val)
    text = results.read_text()
    run_comparison(cfg, data, [], tmp_path / "run", show_progress=False)  # resume: nothing to redo
    assert results.read_text() == text
    # More seeds into the same folder: the recorded ensemble would not hold them, so it is refused before any run.
    with pytest.raises(
        ValueError,
        match=r"the lstm ensemble \(supervised\) of runs default seed 1, default seed 2; "
        r"this comparison adds runs default seed 3, .*another --out",
    ):
        run_comparison(dataclasses.replace(cfg, repeats=3), data, [], tmp_path / "run", show_progress=False)
    assert results.read_text() == text
    summary = summarise(recs)
    entry = summary["1/lstm"]
    assert entry["methods"] == ["supervised", "random_forest", "majority"] and entry["n_variants"] == 2
    assert math.isfinite(entry["win_matrix"][0][1])
    table = table1_markdown(summary)
    assert (
        table.index("| 1 | lstm |")
        < table.index("baseline: RandomForest")
        < table.index("baseline: majority")
    )


def test_check_ensembles_refuses_only_runs_a_recorded_ensemble_would_miss(tmp_path: Path) -> None:
    from training.downstream.protocol import check_ensembles

    def ens(family: str, variants: list[int]) -> dict[str, object]:
        return {"hp": {"members": [{"family": family, "variant": v} for v in variants]}}

    done: dict[tuple[str, str, int, str, float | None], dict[str, object]] = {
        ("real", "inception_time", -1, "supervised", None): {},
        ("real", "inception_time", -2, "supervised", None): {},
        ("real", "inception_time", -3, "supervised", None): {},
        ("real", "inception_time_ensemble", 0, "supervised", None): ens("inception_time", [-1, -2, -3]),
    }
    path = tmp_path / "results.jsonl"
    check_ensembles(done, "real", ["inception_time"], [-1, -2, -3], path)  # a resume
    check_ensembles(done, "real", ["inception_time"], [-1, -2], path)  # fewer seeds: the ensemble holds them
    check_ensembles(done, "real", ["lstm"], [-1, -2, -3, -4, -5], path)  # another family's seeds
    check_ensembles(done, "1", ["inception_time"], [-1, -2, -3, -4], path)  # another task
    with pytest.raises(
        ValueError,
        match=r"inception_time ensemble \(supervised\) of runs default seed 1, default "
        r"seed 2, default seed 3; this comparison adds runs default seed 4, v0",
    ):
        check_ensembles(done, "real", ["lstm", "inception_time"], [-1, -2, -3, -4, 0], path)


def test_prior_correction_shifts_the_head_bias_by_the_log_class_frequency() -> None:
    from training.downstream.recipe import correct_prior, log_prior

    y = np.array([0] * 6 + [1] * 2 + [2] * 4)
    lp = log_prior(y, 4)
    np.testing.assert_allclose(lp[:3].numpy(), np.log([6 / 12, 2 / 12, 4 / 12]), rtol=1e-6)
    assert float(lp[3]) == pytest.approx(math.log(0.5 / 12))  # an absent class: half a sample
    torch.manual_seed(0)
    model = build_model("lstm", 4, 4, hidden=8, layers=1)
    model.eval()
    x = torch.randn(5, 6, 4)
    before = model(x).detach()
    correct_prior(model, y, 0.5)
    after = model(x).detach()
    torch.testing.assert_close(after - before, (0.5 * lp).expand(5, 4))
    assert torch.equal(model.head(model.features(x)), model(x))  # still forward == head(features)
    with pytest.raises(TypeError, match="no linear head"):
        correct_prior(torch.nn.Sequential(torch.nn.Linear(2, 2)), y, 1.0)


def test_prior_correction_needs_balanced_training_and_is_settable() -> None:
    assert get_recipe("robust").prior_correction == 1.0 and get_recipe("papers").prior_correction == 0.0
    with pytest.raises(ValueError, match="without class balancing"):
        get_recipe("papers", prior_correction=1.0)
    with pytest.raises(ValueError, match=r"prior_correction must be in \[0, 1\]"):
        get_recipe("robust", prior_correction=2.0)
    assert DownstreamConfig(prior_correction=0.0).training_recipe().prior_correction == 0.0
    with pytest.raises(ValueError, match="without class balancing"):
        DownstreamConfig(recipe="papers", prior_correction=0.5)


def test_train_run_applies_the_prior_correction_after_training() -> None:
    # Same seed, same training: the corrected model differs from the uncorrected one by exactly
    # log(training class frequency) on the head's bias, and its scores are made with it.
    data = _toy(counts=(40, 8, 8), seed=3)
    xt, yt = torch.from_numpy(data.x_train), torch.from_numpy(data.y_train)
    xv, yv = torch.from_numpy(data.x_val), torch.from_numpy(data.y_val)
    xt, xv = (xt - 2500) / 1000, (xv - 2500) / 1000
    models, results = {}, {}
    for tau in (0.0, 1.0):
        torch.manual_seed(0)
        models[tau] = build_model("lstm", 4, 3, hidden=8, layers=1)
        r = get_recipe("robust", prior_correction=tau, min_steps=20)
        results[tau] = train_run(
            models[tau], xt, yt, xv, yv, lr=1e-2, epochs=2, batch_size=16, seed=0, recipe=r
        )
    from training.downstream.recipe import log_prior

    torch.testing.assert_close(models[1.0].head.bias - models[0.0].head.bias, log_prior(yt, 3))
    torch.testing.assert_close(models[1.0].head.weight, models[0.0].head.weight)
    models[1.0].eval()
    with torch.no_grad():
        acc = float((models[1.0](xv).argmax(-1) == yv).float().mean())
    assert results[1.0]["val_accuracy"] == pytest.approx(acc)


def test_a_run_directory_keeps_its_prior_correction(tmp_path: Path) -> None:
    # Records written before the correction existed (no key) count as 0; resuming with another value is refused.
    from training.downstream.run import _check_setup

    setup = {
        "task": "real",
        "epochs": 20,
        "batch_size": 256,
        "n_train": 10,
        "n_val": 5,
        "seed": 0,
        "lr_schedule": "warmup-cosine",
        "fill": "linear",
        "recipe": "robust",
    }
    old = {("real", "lstm", -1, "supervised", None): {**setup}}  # no prior_correction key
    _check_setup(old, {**setup, "prior_correction": 0.0}, tmp_path / "results.jsonl")
    with pytest.raises(ValueError, match=r"prior_correction: stored 0\.0, now 1\.0\); use another --out"):
        _check_setup(old, {**setup, "prior_correction": 1.0}, tmp_path / "results.jsonl")
