"""Tests for the across-seeds table."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from training.evaluate.seedtable import main, seed_table


def _run(path: Path, rf: float, it: list[float]) -> Path:
    path.mkdir()
    recs = [
        {
            "family": "random_forest",
            "variant": 0,
            "method": "supervised",
            "corruption": None,
            "hp_source": "baseline",
            "val_accuracy": rf,
            "macro_f1": rf - 0.1,
            "seconds": 1.0,
        }
    ]
    recs += [
        {
            "family": "inception_time",
            "variant": -k - 1,
            "method": "supervised",
            "corruption": None,
            "hp_source": "defaults",
            "val_accuracy": a,
            "macro_f1": a - 0.1,
            "seconds": 10.0,
        }
        for k, a in enumerate(it)
    ]
    (path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    return path


def test_seed_table_pairs_models_with_the_forest_of_the_same_split(tmp_path: Path) -> None:
    a = _run(tmp_path / "s0", 0.60, [0.62, 0.66])  # seeds of the defaults average to 0.64
    b = _run(tmp_path / "s1", 0.70, [0.71, 0.73])  # 0.72
    table, stats = seed_table([a, b], "toy")
    it = stats["inception_time (one run: mean over its seeds)|supervised"]
    # Sample standard deviations (ddof=1) over the two seeds.
    assert it["oa_mean"] == pytest.approx(0.68) and it["oa_std"] == pytest.approx(0.08 / 2**0.5)
    assert it["oa_gap"] == pytest.approx(0.03) and it["oa_gap_std"] == pytest.approx(
        0.02 / 2**0.5
    )  # +4 and +2 points
    assert (
        "**+3.0 +- 1.4**" in table and "**RandomForest (500 trees)**" in table
    )  # bold: the gap exceeds its std
    c = _run(tmp_path / "s2", 0.60, [0.58, 0.66])  # +2 points
    d = _run(tmp_path / "s3", 0.70, [0.64, 0.70])  # -3 points
    table, stats = seed_table([c, d], "toy")
    assert "| -0.5 +- 3.5 |" in table  # not bold


def test_cli_prints_writes_and_reports_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = _run(tmp_path / "s0", 0.60, [0.62, 0.66])
    b = _run(tmp_path / "s1", 0.70, [0.71, 0.73])
    out = tmp_path / "tables" / "table.md"
    assert main([str(a), str(b), "--title", "toy", "--out", str(out)]) == 0  # --out: the old spelling of -o
    printed = capsys.readouterr().out
    assert printed.startswith("**toy** (2 split seeds") and out.read_text() + "\n" == printed
    stats = json.loads(out.with_suffix(".json").read_text())
    assert stats["random_forest|supervised"]["runs"] == 2
    assert main([str(a), str(b), "-o", str(out)]) == 1
    assert capsys.readouterr().err == f"Error: --output {out} exists; pass --overwrite to replace it\n"
    assert main([str(a), str(b), "-o", str(out), "--overwrite", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == stats
    assert main([str(tmp_path / "missing")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("Error: ") and err.count("\n") == 1 and "results.jsonl does not exist" in err, err
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "results.jsonl").write_text('{"family": "lstm"}\n')
    assert main([str(bad)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("Error: ") and err.count("\n") == 1 and "lacks the key 'corruption'" in err, err
    (bad / "results.jsonl").write_text("{not json\n")
    assert main([str(bad)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("Error: ") and err.count("\n") == 1, err
    assert main([]) == 2
