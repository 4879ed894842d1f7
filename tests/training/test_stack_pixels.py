"""Tests for ``cropmap data stack-pixels`` (``python -m training.data.stack_pixels``) on the shipped stack."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from training.data.stack_pixels import main

ROOT = Path(__file__).resolve().parents[2]
STACK = ROOT / "sample_data" / "belgium_2021" / "s2_stack.tif"


def test_writes_valid_observations_and_refuses_an_existing_output(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "pixels.npz"
    assert main([str(STACK), str(out), "--n", "50", "--seed", "1"]) == 0  # OUT as the second argument
    assert "50 of" in capsys.readouterr().out
    with np.load(out) as npz:
        assert npz["s2"].shape[0] == 50 and np.isfinite(npz["s2"]).all()
        assert npz["s2"].shape[1] == len(npz["bands"])
    assert [p.name for p in tmp_path.iterdir()] == ["pixels.npz"]  # no temporary left behind
    stamp = out.stat().st_mtime_ns
    assert main([str(STACK), "-o", str(out), "--n", "50"]) == 1
    assert capsys.readouterr().err == f"Error: --output {out} exists; pass --overwrite to replace it\n"
    assert out.stat().st_mtime_ns == stamp
    assert main([str(STACK), "-o", str(out), "--n", "20", "--overwrite"]) == 0
    with np.load(out) as npz:
        assert npz["s2"].shape[0] == 20


def test_bad_input_is_one_line_and_usage_errors_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "pixels.npz"
    not_a_stack = tmp_path / "stack.tif"
    not_a_stack.write_text("not a GeoTIFF")
    assert main([str(not_a_stack), str(out)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("Error: ") and err.count("\n") == 1 and "stack.tif" in err, err
    assert main([str(STACK)]) == 2  # no output
    assert "give the output once" in capsys.readouterr().err
    assert main([str(STACK), str(out), "-o", str(out)]) == 2  # the output twice
    assert main([str(STACK), str(out), "--n", "0"]) == 2
    assert "Invalid value for '--n'" in capsys.readouterr().err
    assert not out.exists()
