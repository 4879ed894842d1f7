"""A user's own files, end to end at tiny size (scripts/demo_own_data.sh, as docs/retrain.md shows it): an S2 stack,
labelled parcel polygons and PlanetScope scenes as delivered -> pairs -> bi-modal pre-training -> downstream on the
stack + polygons -> exporters --best -> cropmap classify on another region -> cropmap assess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import rasterio

ROOT = Path(__file__).resolve().parents[1]


def test_own_data_chain_tiny(tmp_path: Path) -> None:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    out = tmp_path / "own"
    proc = subprocess.run(
        ["bash", str(ROOT / "scripts" / "demo_own_data.sh"), str(out), "tiny", "2"],
        cwd=ROOT,
        env=env,
        check=False,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    stages = [line.split()[0] for line in (out / "stage_seconds.txt").read_text().splitlines()]
    assert stages == ["simulate", "pairs", "pretrain", "downstream", "export", "classify", "assess"]
    manifest = json.loads((out / "pairs" / "pairs.json").read_text())
    assert manifest["counts"]["point_pairs"] > 1000
    assert json.loads((out / "bimodal" / "config.json").read_text())["mode"] == "bimodal"
    results = [json.loads(line) for line in (out / "runs" / "results.jsonl").read_text().splitlines()]
    assert {r["method"] for r in results} >= {"supervised", "bimodal"}
    assert list(
        (out / "runs" / "extractions").glob("extract-*.parquet")
    )  # extracted once from stack + polygons
    with rasterio.open(out / "map_b.tif") as ds:
        codes = set(ds.read(1).ravel().tolist()) - {ds.nodata}
    assert codes and codes <= set(range(1, 10))  # the simulator's crop ids, kept by name through the chain
    report = json.loads((out / "assess_b.json").read_text())
    assert report["sample"]["polygons"] == 27 and 0.0 <= report["overall_accuracy"]["estimate"] <= 1.0
    assert (out / "assess_b.md").is_file() and (out / "assess_b.png").is_file()
