"""Cross-validated selection: ``cropmap train downstream --selection-folds K`` trains the runs on every training
sample and once per fold; ``cropmap export best`` picks and calibrates on the out-of-fold predictions and exports
the runs trained on every training sample."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from test_ensemble import _cfg
from test_refit import _probabilities, _records, flanders_lstm
from test_trees import _task

from cropmap.runtime import load_bundle
from exporters.__main__ import main as exporters_main
from exporters.crossval import open_folds
from exporters.ensemble import ENSEMBLE_FAMILY
from exporters.refit import calibration_from
from exporters.score import main as score_main
from training.downstream.run import fold_dir, run_comparison, training_passes
from training.downstream.selection import fold_split

FOLDS = 3


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One LSTM run and the feature forest with a 3-fold cross-validated selection."""
    out = tmp_path_factory.mktemp("cv") / "run"
    cfg = _cfg(epochs=2, selection_folds=FOLDS, selection_holdout=0.0)
    for pass_cfg, pass_out, _ in training_passes(cfg, out):
        run_comparison(pass_cfg, _task(), [], pass_out, show_progress=False)
    return out


def _oof(run: Path, model: str, tmp: Path) -> tuple[np.ndarray, np.ndarray]:
    """Out-of-fold probabilities of one run, each fold's counterpart exported on its own, and their labels."""
    probs, labels = [], []
    for k in range(FOLDS):
        bundle = tmp / f"fold{k}.onnx"
        assert exporters_main([str(fold_dir(run, k) / model), "-o", str(bundle), "--overwrite"]) == 0
        with np.load(fold_dir(run, k) / "selection-taskreal.npz") as held:
            probs.append(_probabilities(bundle, np.asarray(held["x"], np.float32)))
            labels.append(held["y"])
    return np.concatenate(probs), np.concatenate(labels)


@pytest.mark.parametrize("pixels", [1, 2])
def test_folds_cover_every_training_unit_once_stratified(pixels: int) -> None:
    units = np.repeat([0, 1, 2, 3], [40, 25, 9, 1])  # class of each parcel; class 3 has a single parcel
    y = np.repeat(units, pixels)
    parcel = np.repeat(np.arange(len(units)), pixels) if pixels > 1 else None
    held = [fold_split(y, k, 5, seed=3, groups=parcel)[1] for k in range(5)]
    every = np.concatenate(held)
    assert len(every) == len(np.unique(every)) == len(y) - pixels  # each sample once; the lone parcel never
    assert 3 not in y[every]
    for k, idx in enumerate(held):
        fit = fold_split(y, k, 5, seed=3, groups=parcel)[0]
        assert set(fit) == set(range(len(y))) - set(idx)
        assert set(y[fit]) == {0, 1, 2, 3}  # every class keeps fitting samples
        assert int((y[idx] == 0).sum()) == 8 * pixels and int((y[idx] == 1).sum()) == 5 * pixels
        if parcel is not None:
            assert not set(parcel[idx]) & set(parcel[fit])  # whole parcels on one side


def test_each_fold_holds_its_own_part_out(run: Path) -> None:
    (main,) = [r for r in _records(run) if r["family"] == "lstm"]
    assert main["n_select"] == 0 and main["selection_folds"] == FOLDS and main["selection_fold"] is None
    held = 0
    for k in range(FOLDS):
        (rec,) = [r for r in _records(fold_dir(run, k)) if r["family"] == "lstm"]
        assert rec["selection_fold"] == k and rec["n_train"] + rec["n_select"] == main["n_train"]
        assert rec["model"] == main["model"]
        held += rec["n_select"]
    assert held == main["n_train"]


def test_single_choice_is_the_all_sample_run_calibrated_out_of_fold(
    run: Path, tmp_path: Path, capsys
) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "cv.onnx"
    assert exporters_main(["--best", str(run), "-o", str(out), "--ensemble", "never"]) == 0
    chosen = Path(capsys.readouterr().out.split("chose ", 1)[1].split(": ", 1)[0])
    assert chosen.parent == run / "models"  # the run trained on every training sample, not a fold's
    (rec,) = [r for r in _records(run) if r.get("model") == f"models/{chosen.name}"]
    meta = load_bundle(out).metadata
    assert "by cross-validation macro_f1" in meta.provenance.training_data
    alone = tmp_path / "alone.onnx"
    assert exporters_main([str(chosen), "-o", str(alone)]) == 0
    with np.load(run / "validation-taskreal.npz") as test:
        x_test = np.asarray(test["x"], np.float32)
    np.testing.assert_allclose(_probabilities(out, x_test), _probabilities(alone, x_test), atol=1e-6)
    probs, labels = _oof(run, rec["model"], tmp_path)
    want = calibration_from(probs, labels, "")[0]
    assert meta.calibration is not None and "out-of-fold predictions of 3-fold" in meta.calibration.data
    assert meta.calibration.n == len(labels) == rec["n_train"]
    assert meta.calibration.temperature == pytest.approx(want.temperature, rel=1e-3)
    assert meta.provenance.metrics["test_accuracy"] == pytest.approx(rec["val_accuracy"])


def test_ensemble_is_weighed_and_calibrated_out_of_fold(run: Path, tmp_path: Path) -> None:
    from training.downstream.baselines import score

    out = tmp_path / "ens.onnx"
    assert exporters_main(["--best", str(run), "-o", str(out), "--ensemble", "always"]) == 0
    meta = load_bundle(out).metadata
    assert meta.model_name == ENSEMBLE_FAMILY and "out-of-fold macro_f1" in meta.provenance.training_data
    members = [r["model"] for r in _records(run) if r.get("model")]
    assert len(members) == 2
    oof = []
    for m in members:
        (tmp_path / Path(m).stem).mkdir()
        oof.append(_oof(run, m, tmp_path / Path(m).stem))
    mean, labels = np.mean([p for p, _ in oof], axis=0), oof[0][1]
    want = calibration_from(mean, labels, "")[0]
    assert meta.calibration is not None and meta.calibration.temperature == pytest.approx(
        want.temperature, rel=1e-3
    )
    want_f1 = score(labels, mean.argmax(1), len(meta.classes))["macro_f1"]
    assert meta.provenance.metrics["selected_by_cv_macro_f1"] == pytest.approx(want_f1)


def test_folds_that_do_not_fit_are_refused(run: Path, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    assert open_folds(run, "real") is not None
    out = tmp_path / "m.onnx"
    missing = tmp_path / "missing"
    shutil.copytree(run, missing)
    shutil.rmtree(fold_dir(missing, 1))
    other = tmp_path / "other"
    shutil.copytree(run, other)
    np.savez(fold_dir(other, 2) / "validation-taskreal.npz", x=np.zeros((2, 3, 4), np.float32), y=np.zeros(2))
    plain = tmp_path / "plain"
    shutil.copytree(run, plain)
    shutil.rmtree(plain / "cv")
    cases = {
        (str(missing),): "fold 1 of 3",
        (str(other),): "the test series of",
        (str(run), "--refit", str(run)): "chosen by cross-validation",
        (str(plain), "--select-on", "cv"): "holds no cv/ folder",
    }
    for args, expected in cases.items():
        status = exporters_main(["--best", *args, "-o", str(out)])
        err = capsys.readouterr().err
        assert status == 1, (args, err)
        assert expected in err and "Traceback" not in err and err.count("\n") == 1, err
        assert not out.exists()


def test_downstream_trains_the_folds(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    from training.downstream.run import main as downstream_main

    out = tmp_path / "o"
    args = [*flanders_lstm(out), "--set", 'trees=["forest"]', "--set", "tree_trials=0"]
    assert downstream_main([*args, "--selection-folds", "3", "--refit"]) == 2
    assert "--refit" in capsys.readouterr().err and not out.exists()
    assert downstream_main([*args, "--selection-folds", "1"]) == 2
    capsys.readouterr()
    assert downstream_main([*args, "--selection-folds", "3"]) == 0
    printed = capsys.readouterr()
    assert printed.err.count("note: cross-validated selection") == 3 and not (out / "refit").exists()
    # other folds into the same folder would mix two cuts of the training samples: refused, nothing trained
    assert downstream_main([*args, "--selection-folds", "2"]) == 1
    err = capsys.readouterr().err
    assert "selection_folds: stored 3, now 2" in err and "Traceback" not in err
    assert f"cropmap export best {out} -o" in printed.out and "--refit" not in printed.out

    def forest(run: Path) -> dict:  # type: ignore[type-arg]
        (rec,) = [r for r in _records(run) if r["family"] == "forest"]
        return rec

    rec, folds = forest(out), [forest(fold_dir(out, k)) for k in range(3)]
    assert rec["n_select"] == 0 and sum(f["n_select"] for f in folds) == rec["n_train"]
    assert exporters_main(["--best", str(out), "-o", str(tmp_path / "m.onnx")]) == 0
    printed = capsys.readouterr()
    # a single run names the split it was ranked on, the cross-family ensemble its out-of-fold score
    assert "by cross-validation macro_f1" in printed.out or "out-of-fold macro_f1 =" in printed.out
    assert "the temperature is fitted on the out-of-fold predictions" in printed.out
    # export score reads a fold's held-out part as that pass made it (the stored series give the same numbers)
    fold = tmp_path / "fold1.onnx"
    assert exporters_main([str(fold_dir(out, 1) / folds[1]["model"]), "-o", str(fold)]) == 0
    sel, stored = tmp_path / "sel.json", tmp_path / "stored.json"
    assert (
        score_main([str(fold), "--run", str(fold_dir(out, 1)), "--split", "selection", "--json", str(sel)])
        == 0
    )
    assert (
        score_main(
            [str(fold), "--data", str(fold_dir(out, 1) / "selection-taskreal.npz"), "--json", str(stored)]
        )
        == 0
    )
    got, want = json.loads(sel.read_text()), json.loads(stored.read_text())
    assert got["n"] == folds[1]["n_select"] and got["confusion"] == want["confusion"]
    assert got["macro_f1"] == pytest.approx(folds[1]["select_macro_f1"])
