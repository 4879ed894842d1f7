"""Tests for the metrics, the win-matrix maths and the report files."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from training.evaluate.run import (
    confusion_matrix,
    experiment_scores,
    main,
    metrics_from_confusion,
    read_results,
    relative_gains,
    win_matrix,
    write_report,
)


def _rec(
    task: str, family: str, variant: int, method: str, corruption: float | None, acc: float
) -> dict[str, Any]:
    # A 2-class confusion matrix of 100 samples with the given accuracy.
    correct = round(acc * 100)
    cm = [[correct // 2, 50 - correct // 2], [50 - (correct - correct // 2), correct - correct // 2]]
    return {
        "task": task,
        "family": family,
        "variant": variant,
        "method": method,
        "corruption": corruption,
        "val_accuracy": acc,
        "macro_f1": acc,
        "kappa": 2 * acc - 1,
        "confusion": cm,
        "class_names": ["wheat", "maize"],
    }


def test_confusion_and_metrics_match_hand_computation() -> None:
    y_true = np.array([0, 0, 0, 1, 1, 2])
    y_pred = np.array([0, 0, 1, 1, 2, 2])
    cm = confusion_matrix(y_true, y_pred, 3)
    np.testing.assert_array_equal(cm, [[2, 1, 0], [0, 1, 1], [0, 0, 1]])
    m = metrics_from_confusion(cm)
    assert m.accuracy == pytest.approx(4 / 6)
    # F1 per class: 2*2/(3+2)=0.8, 2*1/(2+2)=0.5, 2*1/(1+2)=2/3.
    assert m.f1 == pytest.approx((0.8, 0.5, 2 / 3))
    assert m.macro_f1 == pytest.approx((0.8 + 0.5 + 2 / 3) / 3)
    assert m.recall == pytest.approx((2 / 3, 0.5, 1.0))
    # kappa: p_o = 4/6, p_e = (3*2 + 2*2 + 1*2) / 36 = 12/36.
    assert m.kappa == pytest.approx((4 / 6 - 1 / 3) / (1 - 1 / 3))


def test_metrics_edge_cases() -> None:
    m = metrics_from_confusion([[5, 0, 0], [0, 5, 0], [0, 0, 0]])
    assert m.accuracy == 1.0 and m.kappa == 1.0 and m.macro_f1 == 1.0
    assert math.isnan(m.recall[2]) and math.isnan(m.f1[2])
    with pytest.raises(ValueError, match="outside"):
        confusion_matrix(np.array([0, 3]), np.array([0, 1]), 3)
    with pytest.raises(ValueError, match="empty"):
        metrics_from_confusion(np.zeros((2, 2)))


def test_win_matrix_counts_strict_wins_per_variant_and_rate() -> None:
    recs = []
    # Variant 0: sup 0.50; uni 0.40 / 0.60 at rates 0.2 / 0.6; bi 0.70 / 0.50 (tie with sup at 0.6).
    # Variant 1: sup 0.80; uni 0.90 / 0.70; bi 0.85 / 0.75.
    for v, sup, uni, bi in [(0, 0.5, (0.4, 0.6), (0.7, 0.5)), (1, 0.8, (0.9, 0.7), (0.85, 0.75))]:
        recs.append(_rec("1", "lstm", v, "supervised", None, sup))
        for c, u, b in zip((0.2, 0.6), uni, bi, strict=True):
            recs.append(_rec("1", "lstm", v, "unimodal", c, u))
            recs.append(_rec("1", "lstm", v, "bimodal", c, b))
    scores = experiment_scores(recs)
    assert set(scores["supervised"]) == {(0, 0.2), (0, 0.6), (1, 0.2), (1, 0.6)}
    methods = ["supervised", "unimodal", "bimodal"]
    w, n = win_matrix(scores, methods)
    assert (n[~np.eye(3, dtype=bool)] == 4).all()
    assert np.isnan(np.diag(w)).all()
    # bi > sup: (0,.2) .7>.5 yes, (0,.6) .5>.5 no (tie), (1,.2) .85>.8 yes, (1,.6) .75>.8 no -> 2/4.
    assert w[2, 0] == pytest.approx(0.5)
    # sup > bi: only (1,.6) -> 1/4; the tie counts for neither.
    assert w[0, 2] == pytest.approx(0.25)
    # uni > sup: (0,.6) and (1,.2) -> 2/4; bi > uni: (0,.2) .7>.4, (1,.6) .75>.7 -> 2/4.
    assert w[1, 0] == pytest.approx(0.5)
    assert w[2, 1] == pytest.approx(0.5)
    assert w[1, 2] == pytest.approx(0.5)
    gains = relative_gains(scores, "bimodal")
    assert sorted(gains) == pytest.approx(sorted([0.4, 0.0, 0.05 / 0.8, -0.05 / 0.8]))


def test_duplicate_results_are_rejected() -> None:
    recs = [_rec("1", "lstm", 0, "supervised", None, 0.5)] * 2
    with pytest.raises(ValueError, match="duplicate result"):
        experiment_scores(recs)


def test_read_results_rejects_bad_records(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    path.write_text(json.dumps({"task": "1"}) + "\n")
    with pytest.raises(ValueError, match="lacks keys"):
        read_results(path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_results(tmp_path / "missing.jsonl")


def test_report_files_are_written(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    recs = []
    for family in ("lstm", "transformer"):
        for v in range(10):
            sup = float(rng.uniform(0.5, 0.7))
            recs.append(_rec("1", family, v, "supervised", None, round(sup, 2)))
            for c in (0.2, 0.6):
                recs.append(_rec("1", family, v, "unimodal", c, round(sup - 0.05, 2)))
                recs.append(_rec("1", family, v, "bimodal", c, round(sup + 0.05, 2)))
    # The real task has no bi-modal runs.
    recs.append(_rec("real", "lstm", 0, "supervised", None, 0.6))
    recs.append(_rec("real", "lstm", 0, "unimodal", 0.2, 0.62))
    path = tmp_path / "results.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    summary = write_report(path, tmp_path / "report")
    out = tmp_path / "report"
    for name in (
        "report.md",
        "table1.md",
        "per_class.md",
        "summary.json",
        "gain_1.png",
        "gain_real.png",
        "win_1_lstm.png",
        "win_1_transformer.png",
        "win_real_lstm.png",
    ):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert (out / "win_1_lstm.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    entry = summary["1/lstm"]
    assert entry["bimodal_vs_supervised_wins"] == [20, 20]
    assert entry["win_counts"][0][1] == 20
    assert entry["gains"]["unimodal"]["mean"] < 0 < entry["gains"]["bimodal"]["mean"]
    assert summary["real/lstm"]["methods"] == ["supervised", "unimodal"]
    table = (out / "table1.md").read_text()
    assert "| 1 | lstm | 10 |" in table and "20/20" in table
    assert json.loads((out / "summary.json").read_text())["1/lstm"]["n_variants"] == 10


def test_cli_writes_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "results.jsonl"
    recs = [_rec("2", "lstm", 0, "supervised", None, 0.5), _rec("2", "lstm", 0, "bimodal", 0.2, 0.6)]
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    assert main(["--results", str(path), "--out", str(tmp_path / "rep")]) == 0
    assert "| 2 | lstm | 1 |" in capsys.readouterr().out
    assert (tmp_path / "rep" / "win_2_lstm.png").is_file()
    written = sorted(p.name for p in (tmp_path / "rep").iterdir())
    assert written == [
        "gain_2.png",
        "per_class.md",
        "report.md",
        "summary.json",
        "table1.md",
        "win_2_lstm.png",
    ]
    assert main(["--results", str(path), "-o", str(tmp_path / "rep")]) == 1
    err = capsys.readouterr().err
    assert err == (
        f"Error: {tmp_path / 'rep'} holds a report already (report.md, table1.md, per_class.md, summary.json); "
        "pass --overwrite to replace its files\n"
    )
    # The report beside its results (as docs/results/ holds them): only the report's files are replaced.
    report = (tmp_path / "rep" / "report.md").read_text()
    (tmp_path / "rep" / "report.md").write_text("older")
    assert main(["--results", str(path), "-o", str(tmp_path), "--overwrite"]) == 0
    assert "report written to" in capsys.readouterr().out
    assert json.loads(path.read_text().splitlines()[0]) == recs[0]  # the input stays
    assert (tmp_path / "report.md").read_text() == report
    assert main(["--results", str(path), "-o", str(tmp_path / "rep"), "--overwrite"]) == 0
    assert (tmp_path / "rep" / "report.md").read_text() == report
    assert not [p for p in tmp_path.rglob(".*")]  # no temporary left behind


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "does not exist"),
        ("", "holds no records"),
        ("{not json\n", "not valid JSON"),
        ('{"task": "1"}\n', "record lacks keys"),
    ],
)
def test_cli_bad_results_are_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str | None, message: str
) -> None:
    path = tmp_path / "results.jsonl"
    if content is not None:
        path.write_text(content)
    assert main(["--results", str(path), "-o", str(tmp_path / "rep")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("Error: ") and err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "rep").exists()  # nothing written, the folder made for it removed again
    assert [p.name for p in tmp_path.iterdir()] == (["results.jsonl"] if content is not None else [])
    assert main(["--results", str(path)]) == 2
    assert "Missing option '-o' / '--output'" in capsys.readouterr().err
