"""Calibration of the shipped Flanders sample bundle, measured on its validation parcels.

``python bench/calibrate_sample.py [OUT_DIR] [BUNDLE]`` rebuilds the sample model's parcel split
(training/configs/sample_model.toml, seed 0), runs the bundle (default the shipped
``cropmap/models/flanders_sample.onnx``) with ONNX Runtime on the 30 validation parcels and on the cropland pixels of
the sample stack, and writes ``OUT_DIR/flanders_sample.reliability.png`` and ``OUT_DIR/calibration.json``:
accuracy, expected calibration error and mean confidence with the raw logits (temperature 1) and with the bundle's
own temperature, and on the stack pixels the mean confidence and the share of pixels at 99.9 % or more.

The bundle's temperature was fitted at export on calibration parcels held out of training (``cropmap train
sample-model``, ``calibration_fraction``), so the validation parcels score it honestly. A bundle without a stored
temperature is reported with a temperature fitted on the validation parcels themselves, which is optimistic.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

import cropmap
from cropmap.models import DEFAULT_BUNDLE
from cropmap.postprocess import softmax
from exporters.calibration import calibrate, expected_calibration_error, fit_temperature, reliability_diagram
from training.config import load_config
from training.data.worldcereal import coarse_labels, on_time_grid, read_long
from training.downstream.sample_model import DEFAULT_CONFIG, SampleModelConfig, _resolve, split_by_parcel


def main(out_dir: str, bundle_path: str | None = None) -> int:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_classify import prefilled_pixels

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg = load_config(SampleModelConfig, DEFAULT_CONFIG, [])
    path = Path(bundle_path) if bundle_path else DEFAULT_BUNDLE
    bundle = cropmap.load_bundle(path)
    meta = bundle.metadata
    series = read_long(_resolve(cfg.parcels), bands=meta.bands)
    gridded = on_time_grid(series, meta.time_grid, season=cfg.season, min_valid=cfg.min_valid_steps)
    usable = np.flatnonzero(gridded.ok)
    y_all = coarse_labels(series.labels[usable])
    x_all = gridded.x[usable].astype(np.float32)
    _tr, va = split_by_parcel(y_all, cfg.val_fraction, cfg.seed)
    codes = [c.code for c in meta.classes]
    logits = np.asarray(bundle.run(x_all[va]), dtype=np.float64)
    y = np.array([codes.index(int(c)) for c in y_all[va]])
    stored = meta.calibration is not None
    cal = (
        meta.calibration
        if stored
        else calibrate(
            logits, y, data=f"{len(va)} Flanders validation parcels of the sample model (optimistic)"
        )
    )
    png = reliability_diagram(
        logits,
        y,
        cal,
        out / "flanders_sample.reliability.png",
        title=f"{path.name} on its 30 validation parcels",
    )
    root = Path(__file__).resolve().parents[1] / "sample_data/belgium_2021"
    px = prefilled_pixels(root / "s2_stack.tif", root / "cropland.gpkg", path)
    z = np.asarray(bundle.run(px), dtype=np.float64)
    conf_raw, conf_cal = softmax(z).max(1), softmax(z, cal.temperature).max(1)
    result = {
        "bundle": str(path),
        "temperature": cal.temperature,
        "temperature_from": cal.data,
        "accuracy": float((logits.argmax(1) == y).mean()),
        "validation_ece_before": expected_calibration_error(softmax(logits), y),
        "validation_ece_after": expected_calibration_error(softmax(logits, cal.temperature), y),
        "validation_mean_confidence_before": float(softmax(logits).max(1).mean()),
        "validation_mean_confidence_after": float(softmax(logits, cal.temperature).max(1).mean()),
        "stack_pixels": len(px),
        "stack_mean_confidence_before": float(conf_raw.mean()),
        "stack_mean_confidence_after": float(conf_cal.mean()),
        "stack_share_at_999_before": float((conf_raw >= 0.999).mean()),
        "stack_share_at_999_after": float((conf_cal >= 0.999).mean()),
        "reliability_diagram": str(png),
    }
    if not stored:  # leave-one-out: fit T without parcel i, score parcel i
        loo = np.empty_like(logits)
        for i in range(len(y)):
            keep = np.arange(len(y)) != i
            loo[i] = softmax(logits[i : i + 1], fit_temperature(logits[keep], y[keep]))[0]
        result["ece_leave_one_out"] = expected_calibration_error(loo, y)
    (out / "calibration.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(
        main(
            sys.argv[1] if len(sys.argv) > 1 else "runs/calibration",
            sys.argv[2] if len(sys.argv) > 2 else None,
        )
    )
