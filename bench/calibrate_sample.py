"""Temperature scaling of the shipped Flanders sample bundle, measured on its validation parcels.

``python bench/calibrate_sample.py OUT_DIR`` rebuilds the sample model's parcel split
(training/configs/sample_model.toml, seed 0), runs the shipped bundle
(``cropmap/models/flanders_sample.onnx``) with ONNX Runtime on the validation parcels,
fits a temperature with :func:`exporters.calibration.calibrate`, and writes
``OUT_DIR/flanders_sample.reliability.png`` and ``OUT_DIR/calibration.json``.

It does not change the shipped bundle. With 30 validation parcels the temperature is
fitted and scored on the same 30 samples (no separate test split exists), so ECE after
is optimistic; a leave-one-out figure is reported beside it.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np

import cropmap
from cropmap.models import DEFAULT_BUNDLE
from cropmap.postprocess import softmax
from exporters.calibration import calibrate, expected_calibration_error, fit_temperature, reliability_diagram
from training.config import load_config
from training.data.worldcereal import coarse_labels, on_time_grid, read_long
from training.downstream.sample_model import DEFAULT_CONFIG, SampleModelConfig, _resolve, split_by_parcel


def main(out_dir: str) -> int:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg = load_config(SampleModelConfig, DEFAULT_CONFIG, [])
    bundle = cropmap.load_bundle(DEFAULT_BUNDLE)
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
    cal = calibrate(
        logits, y, data=f"{len(va)} Flanders validation parcels of the sample model (seed {cfg.seed})"
    )
    png = reliability_diagram(
        logits,
        y,
        cal,
        out / "flanders_sample.reliability.png",
        title="flanders_sample.onnx on its 30 validation parcels",
    )
    # Leave-one-out: fit T without parcel i, score parcel i.
    loo = np.empty_like(logits)
    for i in range(len(y)):
        keep = np.arange(len(y)) != i
        loo[i] = softmax(logits[i : i + 1], fit_temperature(logits[keep], y[keep]))[0]
    result = {
        "calibration": asdict(cal),
        "accuracy": float((logits.argmax(1) == y).mean()),
        "mean_confidence_before": float(softmax(logits).max(1).mean()),
        "mean_confidence_after": float(softmax(logits, cal.temperature).max(1).mean()),
        "ece_leave_one_out": expected_calibration_error(loo, y),
        "reliability_diagram": str(png),
    }
    (out / "calibration.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "runs/calibration"))
