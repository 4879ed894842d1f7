"""``python -m exporters.score``: a bundle scored on labelled parcels gives the numbers the training run recorded."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from test_refit import flanders_lstm

from cropmap.runtime import load_bundle
from exporters.__main__ import main as exporters_main
from exporters.best import select_best
from exporters.score import main as score_main
from training.downstream.run import main as downstream_main

pytestmark = (
    pytest.mark.slow
)  # a real downstream run (about 30 s); tests/exporters/test_trees.py scores a toy one


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("score") / "run"
    rc = downstream_main([*flanders_lstm(out), "--set", "trees=boosting", "--set", "tree_trials=0"])
    assert rc == 0
    return out


def test_refit_by_default_trains_the_same_runs_on_every_training_parcel_for_export_best(
    run: Path, tmp_path: Path, capsys
) -> None:  # type: ignore[no-untyped-def]
    recs = [json.loads(line) for line in (run / "results.jsonl").read_text().splitlines()]
    refit = [json.loads(line) for line in (run / "refit" / "results.jsonl").read_text().splitlines()]
    assert sorted(r["model"] for r in refit) == sorted(r["model"] for r in recs)
    assert {r["n_train"] for r in refit} == {recs[0]["n_train"] + recs[0]["n_select"]}
    assert not any(r["n_select"] for r in refit)
    out = tmp_path / "refit.onnx"
    assert exporters_main(["--best", str(run), "-o", str(out), "--refit", str(run / "refit")]) == 0
    assert "exported as refit on all" in capsys.readouterr().out
    assert load_bundle(out).metadata.calibration is not None
    # RUN_DIR/refit is used by default, said on the console; --no-refit exports the runs as chosen
    auto, plain = tmp_path / "auto.onnx", tmp_path / "plain.onnx"
    assert exporters_main(["--best", str(run), "-o", str(auto)]) == 0
    printed = capsys.readouterr()
    assert "exported as refit on all" in printed.out and "--no-refit" in printed.err
    assert auto.read_bytes() != b"" and load_bundle(auto).metadata.provenance.training_data == (
        load_bundle(out).metadata.provenance.training_data
    )
    assert exporters_main(["--best", str(run), "-o", str(plain), "--no-refit"]) == 0
    assert "exported as refit" not in capsys.readouterr().out
    args = ["--best", str(run), "-o", str(tmp_path / "x.onnx"), "--no-refit", "--refit", str(run / "refit")]
    assert exporters_main(args) == 2


def test_score_equals_the_runs_record_on_its_test_parcels(run: Path, tmp_path: Path, capsys) -> None:
    recs = {r["family"]: r for r in map(json.loads, (run / "results.jsonl").read_text().splitlines())}
    assert set(recs) == {"lstm", "boosting"}
    for family, rec in recs.items():
        bundle = tmp_path / f"{family}.onnx"
        assert exporters_main([str(run / rec["model"]), "-o", str(bundle)]) == 0
        out = tmp_path / f"{family}.json"
        assert score_main([str(bundle), "--run", str(run), "--json", str(out)]) == 0
        got = json.loads(out.read_text())
        assert got["n"] == rec["n_val"]
        assert got["accuracy"] == pytest.approx(rec["val_accuracy"]) and got["macro_f1"] == pytest.approx(
            rec["macro_f1"]
        )
        assert got["confusion"] == rec["confusion"]
        # the stored test series give the same numbers; the selection split the record's select_* ones
        assert score_main([str(bundle), "--data", str(run / "validation-taskreal.npz")]) == 0
        sel = tmp_path / f"{family}-sel.json"
        assert score_main([str(bundle), "--run", str(run), "--split", "selection", "--json", str(sel)]) == 0
        assert json.loads(sel.read_text())["macro_f1"] == pytest.approx(rec["select_macro_f1"])
    printed = capsys.readouterr().out
    assert "| code | class | n | precision | recall | F1 |" in printed
    # the --best bundle reports the test score of what it chose
    best = tmp_path / "best.onnx"
    assert exporters_main(["--best", str(run), "-o", str(best)]) == 0
    assert score_main([str(best), "--run", str(run), "--json", str(tmp_path / "b.json")]) == 0
    recorded = load_bundle(best).metadata.provenance.metrics["test_accuracy"]
    assert json.loads((tmp_path / "b.json").read_text())["accuracy"] == pytest.approx(recorded)
    # the best single run (--ensemble never) scores what its record says
    single = tmp_path / "single.onnx"
    assert exporters_main(["--best", str(run), "-o", str(single), "--ensemble", "never", "--no-refit"]) == 0
    assert score_main([str(single), "--run", str(run), "--json", str(tmp_path / "s.json")]) == 0
    assert json.loads((tmp_path / "s.json").read_text())["accuracy"] == pytest.approx(
        select_best(run).record["val_accuracy"]
    )


def test_score_errors_are_one_line(run: Path, tmp_path: Path, capsys) -> None:
    assert score_main([str(tmp_path / "missing.onnx"), "--data", str(run / "validation-taskreal.npz")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("Error: ") and err.count("\n") == 1 and "does not exist" in err
    rec = json.loads((run / "results.jsonl").read_text().splitlines()[0])
    bundle = tmp_path / "m.onnx"
    assert exporters_main([str(run / rec["model"]), "-o", str(bundle)]) == 0
    bad = tmp_path / "bad.npz"
    np.savez(bad, x=np.zeros((2, 3, 4), np.float32), y=np.zeros(2, np.int64))
    assert score_main([str(bundle), "--data", str(bad)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("Error: series have shape (2, 3, 4)") and err.count("\n") == 1
