"""The documented chain runs end to end at tiny size: simulate -> pretrain -> downstream -> exporters --best ->
cropmap classify on the other scene -> map accuracy (scripts/demo_chain.sh, as docs/retrain.md shows it)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import rasterio

ROOT = Path(__file__).resolve().parents[1]


def test_demo_chain_tiny(tmp_path: Path) -> None:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    out = tmp_path / "demo"
    proc = subprocess.run(
        ["bash", str(ROOT / "scripts" / "demo_chain.sh"), str(out), "tiny", "3"],
        cwd=ROOT,
        env=env,
        check=False,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    stages = [line.split()[0] for line in (out / "stage_seconds.txt").read_text().splitlines()]
    assert stages == ["simulate", "pretrain", "downstream", "export", "classify", "score"]
    assert "best of 12 runs by validation macro_f1" in proc.stdout  # 3 families x 2 variants x 2 methods
    score = json.loads((out / "score.json").read_text())
    assert score["n_pixels"] > 500 and 0.0 <= score["overall_accuracy"] <= 1.0
    with rasterio.open(out / "scene_b_map.tif") as ds:
        codes = set(ds.read(1).ravel().tolist()) - {0}
    assert codes and codes <= set(range(1, 10))  # the simulator's crop ids
