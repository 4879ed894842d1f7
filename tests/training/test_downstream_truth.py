"""What a downstream run says and records: the recipe's changes, the grid chosen, threads and determinism."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from training.data.parcels import native_grid
from training.downstream.recipe import get_recipe
from training.downstream.run import DownstreamConfig, load_real_task, main, run_comparison
from training.downstream.tasks import TaskData
from training.downstream.threads import decide_threads

REPO = Path(__file__).resolve().parents[2]
FLANDERS = REPO / "sample_data" / "worldcereal" / "2021_BEL_LPIS-Flanders_POLY_110_monthly.parquet"


def _toy_task(n_per_class: int, t: int = 8, seed: int = 0) -> TaskData:
    """Three classes of raw-DN series (4 bands) that differ in the timing of a greenness peak."""
    rng = np.random.default_rng(seed)

    def make(n: int) -> tuple[np.ndarray, np.ndarray]:
        time = np.arange(t)[None, :, None]
        xs = [
            1500 + 2500 * np.exp(-((time - 1 - 3 * k) ** 2) / 2.0) + rng.normal(0, 150, (n, t, 4))
            for k in range(3)
        ]
        return np.concatenate(xs).astype(np.float32), np.repeat(np.arange(3), n).astype(np.int64)

    x_tr, y_tr = make(n_per_class)
    x_va, y_va = make(n_per_class // 2)
    return TaskData(x_tr, y_tr, x_va, y_va, class_names=("a", "b", "c"), bands=("B02", "B03", "B04", "B08"))


def _records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


def test_recipe_changes_are_said_and_recorded_as_used(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The robust recipe caps the batch at 1/16 of the training parcels and trains at least 800 steps: asked for
    # 2 epochs at batch 32, the LSTM runs more epochs at a smaller batch, and the record says so.
    out = tmp_path / "run"
    args = [
        "--task",
        "real",
        "--data",
        str(FLANDERS),
        "--families",
        "lstm",
        "--variants",
        "1",
        "--epochs",
        "2",
    ]
    args += ["--out", str(out), "--no-progress", "--no-baselines", "--recipe", "robust", "--threads", "1"]
    args += ["--set", "batch_size=32", "--set", "trees=[]", "--season", "2020", "--set", "min_valid=6"]
    assert main(args) == 0
    (rec,) = [r for r in _records(out) if r["family"] == "lstm"]
    bs, epochs, changes = get_recipe("robust").settings(2, 32, rec["n_train"])
    assert (rec["epochs_asked"], rec["batch_size_asked"]) == (2, 32)
    assert (
        (rec["epochs"], rec["batch_size"]) == (epochs, bs) == (rec["epochs_run"], rec["effective_batch_size"])
    )
    assert bs < 32 and epochs > 2 and len(changes) == 2
    err = capsys.readouterr().err
    line = next(x for x in err.splitlines() if "recipe robust changes" in x)
    assert (
        f"batch size 32 -> {bs}" in line and f"epochs 2 -> {epochs}" in line and "800 optimiser steps" in line
    )
    assert (
        "note: 2021_BEL_LPIS-Flanders_POLY_110_monthly.parquet: monthly grid (the input's step is 31 days"
        in err
    )
    assert "note: threads: 1 for OpenMP / BLAS and joblib (as asked); torch 1 per run" in err
    # The same command resumes (what was asked is what must agree), another batch size is refused.
    assert main(args) == 0
    assert main([*args, "--set", "batch_size=16"]) == 1
    assert "batch_size_asked: stored 32, now 16" in capsys.readouterr().err


def test_papers_recipe_changes_nothing_and_says_nothing(tmp_path: Path) -> None:
    assert get_recipe("papers").settings(20, 256, 100) == (100, 20, [])
    bs, epochs, changes = get_recipe("robust").settings(20, 256, 160)
    assert (bs, epochs) == (10, 50) and [c.setting for c in changes] == ["batch size", "epochs"]


def test_grid_follows_the_inputs_step() -> None:
    dekads = np.array(
        [f"2021-{m:02d}-{d:02d}" for m in range(1, 13) for d in (1, 11, 21)], dtype="datetime64[D]"
    )
    months = np.array([f"2021-{m:02d}-01" for m in range(1, 13)], dtype="datetime64[D]")
    for dates, grid in ((dekads, "dekadal"), (months, "monthly")):
        series = np.tile(dates, (3, 1))
        assert native_grid(series, np.ones(series.shape, bool))[0] == grid
    with pytest.raises(ValueError, match="fewer than 2 dates"):
        native_grid(months[None, :2], np.array([[True, False]]))
    data = load_real_task(FLANDERS, DownstreamConfig(task="real", season=2020, min_valid=6, top_classes=4))
    assert data.x_train.shape[1] == 12
    (note,) = data.notes
    assert (
        "monthly grid (the input's step is 31 days; --grid names another)" in note
        and "season 2020 from 11-01:" in note
    )
    assert "outside left out" in note
    asked = load_real_task(FLANDERS, DownstreamConfig(task="real", season=2020, min_valid=6, grid="dekadal"))
    assert asked.x_train.shape[1] == 36 and "dekadal grid (as asked)" in asked.notes[0]


def test_results_do_not_depend_on_the_thread_count(tmp_path: Path) -> None:
    # The same comparison (two families, the forest and the majority baselines) with 1 and 2 threads: every
    # record's scores and final loss are equal, bit for bit.
    data = _toy_task(30, t=8)
    recs = {}
    for n in (1, 2):
        cfg = DownstreamConfig(
            families=("lstm", "transformer"), variants=1, epochs=2, batch_size=16, recipe="papers", threads=n
        )
        out = run_comparison(cfg, data, [], tmp_path / f"t{n}", show_progress=False)
        recs[n] = {(r["family"], r["variant"]): r for r in _records(out.parent)}
    assert recs[1].keys() == recs[2].keys() and len(recs[1]) == 4
    for key, rec in recs[1].items():
        for field in ("val_accuracy", "macro_f1", "kappa", "confusion", "final_loss"):
            assert rec.get(field) == recs[2][key].get(field), (key, field)


def test_thread_default_fits_the_machine() -> None:
    choice = decide_threads(0)
    assert choice.threads >= 1 and choice.torch_threads == 1 and "usable CPUs" in choice.why
    assert decide_threads(3, deterministic=False).torch_threads == 3
    with pytest.raises(ValueError, match="threads must be >= 0"):
        decide_threads(-1)
