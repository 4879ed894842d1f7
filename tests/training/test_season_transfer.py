"""Tests for the out-of-season check."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from training.evaluate.season_transfer import main, resample_days


def test_resample_days_interpolates_linearly_and_holds_edges() -> None:
    x = np.array([[[0.0], [10.0], [30.0]]], dtype=np.float32)  # (1, 3, 1) on days 10, 20, 40
    out = resample_days(x, np.array([10, 20, 40]), np.array([5, 10, 15, 30, 40, 50]))
    np.testing.assert_allclose(out[0, :, 0], [0.0, 0.0, 5.0, 20.0, 30.0, 30.0])


def test_cli_reports_in_and_out_of_season(
    sim_scene_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import dataclasses

    from training.downstream import recipe

    monkeypatch.setitem(recipe.RECIPES, "robust", dataclasses.replace(recipe.RECIPES["robust"], min_steps=20))
    out = tmp_path / "season.md"
    assert (
        main(
            [
                "--data",
                str(sim_scene_dir),
                "--family",
                "lstm",
                "--repeats",
                "2",
                "--n-train",
                "6",
                "--n-val",
                "3",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    table = out.read_text()
    rows = [line for line in table.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert [r.split(" | ")[0] for r in rows] == [
        "| lstm (defaults, seed 1)",
        "| lstm (defaults, seed 2)",
        "| lstm ensemble of 2",
        "| RandomForest (500 trees)",
    ]
    for r in rows:
        values = [float(v) for v in r.strip("| ").split(" | ")[1:5]]
        assert all(0.0 <= v <= 100.0 for v in values)
    capsys.readouterr()
    assert main(["--data", str(sim_scene_dir), "--repeats", "1", "--out", str(out)]) == 1  # --out: old -o
    assert capsys.readouterr().err == f"Error: --output {out} exists; pass --overwrite to replace it\n"
    assert main(["--data", str(tmp_path / "missing"), "--repeats", "1"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("Error: ") and err.count("\n") == 1 and "missing" in err, err
    assert main(["--data", str(sim_scene_dir), "--repeats", "0"]) == 2
    assert "Invalid value for '--repeats'" in capsys.readouterr().err
