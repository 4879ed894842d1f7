"""``cropmap export best RUN_DIR --refit REFIT_DIR``: chosen on the selection split, exported as refit on every
training sample, calibrated with the temperature of the models that never saw the selection series."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from test_ensemble import _cfg
from test_trees import _task

from cropmap.runtime import load_bundle
from exporters.__main__ import main as exporters_main
from exporters.ensemble import ENSEMBLE_FAMILY
from exporters.parity import softmax
from exporters.score import main as score_main
from training.downstream.run import run_comparison

FLANDERS = (
    Path(__file__).resolve().parents[1]
    / "data"
    / "worldcereal"
    / "2021_BEL_LPIS-Flanders_POLY_110_monthly.parquet"
)


def flanders_lstm(out: Path) -> list[str]:
    """``training.downstream`` arguments: the Flanders parcels, one LSTM run of one epoch, no baselines."""
    return [
        *(
            "--task",
            "real",
            "--data",
            str(FLANDERS),
            "--season",
            "2020",
            "--classes",
            "4",
            "--families",
            "lstm",
        ),
        *("--variants", "0", "--default-variant", "--epochs", "1", "--recipe", "papers", "--no-baselines"),
        *("--out", str(out), "--no-progress"),
    ]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The same downstream command twice: with the selection split (default for task real) and without it."""
    root = tmp_path_factory.mktemp("refit")
    run, refit = root / "run", root / "refit"
    run_comparison(_cfg(epochs=2), _task(), [], run, show_progress=False)
    run_comparison(_cfg(epochs=2, selection_holdout=0.0), _task(), [], refit, show_progress=False)
    return run, refit


def _records(run: Path) -> list[dict]:  # type: ignore[type-arg]
    return [json.loads(line) for line in (run / "results.jsonl").read_text().splitlines()]


def _probabilities(bundle: Path, x: np.ndarray) -> np.ndarray:
    """The bundle's probabilities before its temperature (``run`` gives the graph's logits)."""
    return softmax(load_bundle(bundle).run(x))


def test_the_refit_runs_trained_on_the_selection_samples_too(runs: tuple[Path, Path]) -> None:
    run, refit = runs
    rec, ref = _records(run)[0], _records(refit)[0]
    assert rec["n_select"] > 0 and not ref.get("n_select")
    assert ref["n_train"] == rec["n_train"] + rec["n_select"]


def test_ensemble_refit_holds_the_refit_members_and_the_original_temperature(
    runs: tuple[Path, Path], tmp_path: Path, capsys
) -> None:  # type: ignore[no-untyped-def]
    run, refit = runs
    plain, refitted = tmp_path / "plain.onnx", tmp_path / "refit.onnx"
    assert exporters_main(["--best", str(run), "-o", str(plain), "--ensemble", "always"]) == 0
    capsys.readouterr()
    args = ["--best", str(run), "-o", str(refitted), "--ensemble", "always", "--refit", str(refit)]
    assert exporters_main(args) == 0
    printed = capsys.readouterr().out
    n = _records(refit)[0]["n_train"]
    assert f"exported as refit on all {n} training samples" in printed
    with np.load(run / "validation-taskreal.npz") as val:
        x, y = val["x"], val["y"]
    # the members are the refit runs: their separately exported bundles average to the refit bundle
    members = [r for r in _records(refit) if r["model"] and not r["family"].endswith("_ensemble")]
    singles = []
    for i, r in enumerate(members):
        one = tmp_path / f"m{i}.onnx"
        assert exporters_main([str(refit / r["model"]), "-o", str(one)]) == 0
        singles.append(_probabilities(one, x))
    np.testing.assert_allclose(_probabilities(refitted, x), np.mean(singles, axis=0), atol=1e-5)
    assert not np.allclose(_probabilities(plain, x), _probabilities(refitted, x), atol=1e-3)
    # the temperature is the one the original members give on the selection series, said so
    cal, cal0 = load_bundle(refitted).metadata.calibration, load_bundle(plain).metadata.calibration
    assert cal is not None and cal0 is not None
    assert cal.temperature == pytest.approx(cal0.temperature, rel=1e-3)
    assert cal.n == cal0.n and f"applied to the same runs refit on all {n}" in cal.data
    # the recorded test scores are the refit bundle's own
    meta = load_bundle(refitted).metadata
    assert meta.model_name == ENSEMBLE_FAMILY
    s = tmp_path / "s.json"
    assert score_main([str(refitted), "--data", str(run / "validation-taskreal.npz"), "--json", str(s)]) == 0
    scored = json.loads(s.read_text())
    assert scored["accuracy"] == pytest.approx(meta.provenance.metrics["test_accuracy"])
    assert scored["accuracy"] == pytest.approx(float((_probabilities(refitted, x).argmax(1) == y).mean()))


def test_single_refit_exports_the_counterpart_with_the_original_temperature(
    runs: tuple[Path, Path], tmp_path: Path, capsys
) -> None:  # type: ignore[no-untyped-def]
    run, refit = runs
    plain, refitted = tmp_path / "plain.onnx", tmp_path / "refit.onnx"
    assert exporters_main(["--best", str(run), "-o", str(plain), "--ensemble", "never"]) == 0
    chose = capsys.readouterr().out.split("chose ", 1)[1].split(":", 1)[0]
    args = ["--best", str(run), "-o", str(refitted), "--ensemble", "never", "--refit", str(refit)]
    assert exporters_main(args) == 0
    printed = capsys.readouterr().out
    model = Path(chose).relative_to(run)
    assert f"chose {refit / model}" in printed
    with np.load(run / "validation-taskreal.npz") as val:
        x = val["x"]
    alone = tmp_path / "alone.onnx"
    assert exporters_main([str(refit / model), "-o", str(alone)]) == 0
    np.testing.assert_allclose(_probabilities(refitted, x), _probabilities(alone, x), atol=1e-5)
    cal, cal0 = load_bundle(refitted).metadata.calibration, load_bundle(plain).metadata.calibration
    assert cal is not None and cal0 is not None
    assert cal.temperature == pytest.approx(cal0.temperature, rel=1e-3)
    rec = next(r for r in _records(refit) if r["model"] == str(model))
    assert load_bundle(refitted).metadata.provenance.metrics["test_accuracy"] == pytest.approx(
        rec["val_accuracy"]
    )


def test_refit_folders_that_do_not_refit_the_runs_are_refused(
    runs: tuple[Path, Path], tmp_path: Path, capsys
) -> None:  # type: ignore[no-untyped-def]
    run = runs[0]
    other = tmp_path / "other"
    run_comparison(_cfg(epochs=1, selection_holdout=0.0, trees=()), _task(), [], other, show_progress=False)
    shifted = tmp_path / "shifted"
    run_comparison(_cfg(epochs=1, selection_holdout=0.0), _task(24), [], shifted, show_progress=False)
    cases = {
        str(run): "is the run directory itself",
        str(tmp_path / "missing"): "holds no results.jsonl",
        str(shutil.copytree(run, tmp_path / "carved")): "set a selection split aside",
        str(shifted): "are not those of",
        str(other): "has no counterpart of",
    }
    for folder, said in cases.items():
        out = tmp_path / "x.onnx"
        status = exporters_main(
            ["--best", str(run), "-o", str(out), "--ensemble", "always", "--refit", folder]
        )
        err = capsys.readouterr().err
        assert status == 1 and not out.exists(), folder
        assert said in err and len(err.strip().splitlines()) == 1, err


def test_downstream_refit_needs_a_selection_split(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    from training.downstream.run import main as downstream_main

    args = [
        "--task",
        "real",
        "--data",
        str(FLANDERS),
        "--set",
        "selection_holdout=0",
        "--refit",
        "--out",
        str(tmp_path / "o"),
    ]
    assert downstream_main(args) == 2
    err = capsys.readouterr().err
    assert "--refit" in err and "selection_holdout 0" in err
    assert not (tmp_path / "o").exists()


def test_downstream_refits_by_default_when_it_sets_a_selection_split_aside(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    from training.downstream.run import main as downstream_main

    out = tmp_path / "o"
    args = [*flanders_lstm(out), "--set", "trees=[]"]
    assert downstream_main([*args, "--no-refit"]) == 0
    assert not (out / "refit").exists() and "note: refit" not in capsys.readouterr().err
    assert downstream_main(args) == 0  # the runs are recorded: only the refit pass trains
    printed = capsys.readouterr()
    assert "note: refit: the same runs again on every training sample" in printed.err
    assert f"--refit {out / 'refit'}" in printed.out
    (ref,) = [json.loads(line) for line in (out / "refit" / "results.jsonl").read_text().splitlines()]
    (rec,) = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert ref["model"] == rec["model"] and ref["n_train"] == rec["n_train"] + rec["n_select"]
