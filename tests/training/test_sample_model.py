"""The shipped sample bundle and the script that makes it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cropmap.contract.timegrid import fill_gaps
from cropmap.runtime import load_bundle
from training.downstream.sample_model import main, make_time_grid, read_stack_pixels, split_by_parcel

ROOT = Path(__file__).resolve().parents[2]
BUNDLE = ROOT / "cropmap" / "models" / "flanders_sample.onnx"
STACK = ROOT / "sample_data" / "belgium_2021" / "s2_stack.tif"


def _stack_series(min_valid: int) -> tuple[np.ndarray, object]:
    values, dates, bands = read_stack_pixels(STACK)
    grid = make_time_grid(dates, "11-01")
    filled, _, ok = fill_gaps(
        values.transpose(2, 0, 1), np.array(grid.day_of_season), grid.day_of_season, min_valid=min_valid
    )
    return filled[ok], (grid, bands)


def test_read_stack_pixels_layout() -> None:
    values, dates, bands = read_stack_pixels(STACK)
    assert values.shape == (12, 9, 10000)
    assert bands == ("B02", "B03", "B04", "B05", "B06", "B07", "B08", "B11", "B12")
    assert [d.isoformat() for d in dates[:2]] == ["2020-11-01", "2020-12-01"]
    assert np.isnan(values[1]).all() and np.isnan(values[2]).all()  # Dec and Jan are nodata in the source
    assert np.isfinite(values[5]).mean() > 0.9


def test_split_by_parcel_is_disjoint_stratified_and_seeded() -> None:
    labels = np.array([1] * 28 + [2] * 12 + [3] * 20 + [4] * 40)
    tr, va = split_by_parcel(labels, 0.3, seed=0)
    assert not set(tr) & set(va) and len(tr) + len(va) == 100
    assert {int(c): int((labels[va] == c).sum()) for c in (1, 2, 3, 4)} == {1: 8, 2: 4, 3: 6, 4: 12}
    _tr2, va2 = split_by_parcel(labels, 0.3, seed=0)
    assert np.array_equal(va, va2)
    assert not np.array_equal(va, split_by_parcel(labels, 0.3, seed=1)[1])


def test_shipped_bundle_classifies_real_stack_pixels() -> None:
    bundle = load_bundle(BUNDLE)
    meta = bundle.metadata
    assert BUNDLE.stat().st_size < 8e6
    assert meta.bands == ("B02", "B03", "B04", "B05", "B06", "B07", "B08", "B11", "B12")
    assert meta.reflectance_scale == 10000 and meta.nodata == 65535
    assert meta.time_grid.season_start == "11-01" and len(meta.time_grid.day_of_season) == 12
    assert meta.time_grid.reference_dates[0] == "2020-11-01"
    assert meta.provenance.encoder == "resmlp-8x256" and meta.provenance.base_model == "lstm"
    assert meta.provenance.pretraining.startswith("unimodal-scarf-")
    assert 0.0 <= meta.provenance.metrics["val_accuracy"] <= 1.0
    x, (grid, bands) = _stack_series(meta.min_valid_steps)
    assert grid.day_of_season == meta.time_grid.day_of_season and bands == meta.bands
    logits, emb = bundle.run(x[:257], embedding=True)
    codes = np.array([c.code for c in meta.classes])[logits.argmax(axis=1)]
    assert set(codes.tolist()) <= {c.code for c in meta.classes}
    assert np.isfinite(logits).all() and emb.shape == (257, meta.embedding.dim)


def test_training_never_imports_exporters_and_writes_to_a_run_directory() -> None:
    import subprocess
    import sys

    code = (
        "import sys, pkgutil, importlib, training; "
        "[importlib.import_module(m.name) for m in pkgutil.walk_packages(training.__path__, 'training.') "
        "if not m.name.endswith('.__main__')]; "  # a __main__ module runs its program when imported
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'exporters'))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"
    from training.downstream.cli import sample_model

    default = next(p for p in sample_model.params if p.name == "output").default
    assert not default.is_absolute() and default.parts[0] == "runs"


@pytest.mark.slow
def test_sample_model_script_reduced(tmp_path: Path) -> None:
    from exporters.__main__ import main as export_main

    work = tmp_path / "work"
    rc = main(
        [
            "--out",
            str(work),
            "--no-progress",
            "--set",
            "pretrain_pixels=2048",
            "--set",
            "pretrain_epochs=1",
            "--set",
            "pretrain_batch_size=256",
            "--set",
            "epochs=5",
            "--set",
            "parity_pixels=300",
        ]
    )
    assert rc == 0
    out = tmp_path / "sample.onnx"
    assert export_main([str(work / "classifier.pt"), "-o", str(out)]) == 0
    bundle = load_bundle(out)
    summary = json.loads((work / "summary.json").read_text())
    m = summary["metrics"]
    assert m["n_val_parcels"] + m["n_calibration_parcels"] + m["n_train_parcels"] == 99
    assert m["n_calibration_parcels"] >= 4  # every class gives some of its training parcels
    assert bundle.metadata.provenance.metrics == summary["metrics"]
    # the temperature is fitted on the held-out calibration parcels, never on the validation parcels
    cal = bundle.metadata.calibration
    assert cal is not None and cal.n == m["n_calibration_parcels"] and "calibration parcels" in cal.data
    x, _ = _stack_series(bundle.metadata.min_valid_steps)
    assert bundle.run(x[:5]).shape == (5, 4)
