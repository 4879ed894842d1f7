"""Temperature scaling at export: the fit, ECE, the reliability diagram and the bundle field cropmap applies."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from cropmap.contract.metadata import BundleMetadata, ClassInfo, Provenance, TimeGrid
from cropmap.postprocess import softmax
from cropmap.runtime import load_bundle
from exporters.calibration import (
    CalibrationError,
    calibrate,
    expected_calibration_error,
    fit_temperature,
    reliability_diagram,
)
from exporters.to_onnx import ExportError, build_graph, export_bundle
from training.models import build_model

BANDS = ("B02", "B03", "B04", "B08")
T, C, K = 5, len(BANDS), 3


def _overconfident(n: int = 4000, scale: float = 3.0, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Labels drawn from softmax(z); the model reports ``scale * z`` (overconfident by ``scale``)."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 1.5, (n, 4))
    p = softmax(z)
    y = np.array([rng.choice(4, p=row) for row in p])
    return z * scale, y


def test_fit_recovers_the_temperature() -> None:
    logits, y = _overconfident()
    t = fit_temperature(logits, y)
    assert t == pytest.approx(3.0, rel=0.1)
    cal = calibrate(logits, y, data="synthetic")
    assert cal.ece_after < 0.03 < cal.ece_before
    assert cal.n == len(y) and cal.method == "temperature" and cal.data == "synthetic"
    # Scaling never changes the argmax.
    assert (softmax(logits, t).argmax(1) == logits.argmax(1)).all()


def test_underconfident_model_gets_t_below_one() -> None:
    logits, y = _overconfident(scale=0.4, seed=1)
    assert fit_temperature(logits, y) == pytest.approx(0.4, rel=0.15)


def test_ece_of_a_perfectly_calibrated_toy() -> None:
    probs = np.array([[0.75, 0.25]] * 4)
    y = np.array([0, 0, 0, 1])
    assert expected_calibration_error(probs, y) == pytest.approx(0.0)
    assert expected_calibration_error(probs, np.array([1, 1, 1, 1])) == pytest.approx(0.75)


@pytest.mark.parametrize(
    "labels,match",
    [
        (np.array([0, 1, 5]), "column indices"),
        (np.array([0.0, 1, 1]), "integer"),
        (np.array([0, 1]), "one per row"),
    ],
)
def test_bad_labels(labels: np.ndarray, match: str) -> None:
    with pytest.raises(CalibrationError, match=match):
        calibrate(np.zeros((3, 3)), labels)


def test_reliability_diagram(tmp_path: Path) -> None:
    logits, y = _overconfident(n=500)
    cal = calibrate(logits, y)
    png = reliability_diagram(logits, y, cal, tmp_path / "r.png", title="synthetic")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def _meta() -> BundleMetadata:
    return BundleMetadata(
        schema_version=1,
        model_name="lstm",
        input_name="s2",
        output_name="logits",
        bands=BANDS,
        reflectance_scale=10000.0,
        nodata=65535.0,
        time_grid=TimeGrid("11-01", (0, 61, 120, 181, 242), ("2020-11-01",) * 5),
        min_valid_steps=3,
        gap_fill="linear",
        classes=tuple(ClassInfo(i + 1, f"class {i + 1}", "#10a0c0") for i in range(K)),
        embedding=None,
        provenance=Provenance("none", "lstm", "none", "random test data", "test", "2026-01-01T00:00:00"),
    )


def test_export_bundle_with_calibration_data(tmp_path: Path) -> None:
    torch.manual_seed(0)
    base = build_model("lstm", C, K, hidden=6, layers=1, dropout=0.0)
    base.eval()
    rng = np.random.default_rng(0)
    x = rng.uniform(100, 6000, (40, T, C)).astype(np.float32)
    stats = {"mean": x.reshape(-1, C).mean(0).tolist(), "std": x.reshape(-1, C).std(0).tolist()}
    # Labels from a 3x-sharpened version of the model's own probabilities: the model is underconfident, T < 1.
    graph = build_graph(encoder=None, base_model=base, norm_stats=stats)
    x_val = rng.uniform(100, 6000, (600, T, C)).astype(np.float32)
    with torch.no_grad():
        z = graph(torch.from_numpy(x_val))[0].double().numpy()
    p = softmax(z, 1 / 3)
    y_val = np.array([rng.choice(K, p=row) for row in p])
    out = tmp_path / "m.onnx"
    report = export_bundle(
        encoder=None,
        base_model=base,
        norm_stats=stats,
        metadata=_meta(),
        out=out,
        example=x,
        calibration_data=(x_val, y_val),
        calibration_note="synthetic validation",
    )
    assert report.passed
    cal = report.calibration
    assert cal is not None and cal.temperature < 1 and cal.ece_after < cal.ece_before and cal.n == 600
    assert load_bundle(out).metadata.calibration == cal
    assert sorted(q.name for q in tmp_path.iterdir()) == ["m.onnx", "m.reliability.png"]
    # Without calibration data the metadata is exported as given.
    plain = export_bundle(
        encoder=None, base_model=base, norm_stats=stats, metadata=_meta(), out=tmp_path / "p.onnx", example=x
    )
    assert plain.calibration is None and load_bundle(tmp_path / "p.onnx").metadata.calibration is None
    assert not (tmp_path / "p.reliability.png").exists()
    with pytest.raises(ExportError, match="column indices"):
        export_bundle(
            encoder=None,
            base_model=base,
            norm_stats=stats,
            metadata=_meta(),
            out=tmp_path / "q.onnx",
            example=x,
            calibration_data=(x_val, y_val + 1),
        )
    with pytest.raises(ExportError, match="x_val has shape"):
        export_bundle(
            encoder=None,
            base_model=base,
            norm_stats=stats,
            metadata=_meta(),
            out=tmp_path / "q.onnx",
            example=x,
            calibration_data=(x_val[:, :2], y_val),
        )
    assert dataclasses.replace(_meta(), calibration=cal).temperature == cal.temperature
