"""bench/gpu_check.py --multi-gpu on its CPU path: two gloo ranks under torchrun and the protocol on two workers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_multi_gpu_mode_runs_on_the_cpu(tmp_path: Path) -> None:
    out, figures = tmp_path / "multi.md", tmp_path / "multi.json"
    res = subprocess.run(
        [
            sys.executable,
            "bench/gpu_check.py",
            "--device",
            "cpu",
            "--tiny",
            "--multi-gpu",
            "--out",
            str(out),
            "--json",
            str(figures),
        ],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        check=False,
        timeout=1200,
    )
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-4000:]
    text = out.read_text()
    assert "Data-parallel pre-training" in text and "one worker per GPU" in text
    assert "failed" not in text and "not run" not in text
    doc = json.loads(figures.read_text())
    assert doc, "no figures written"
