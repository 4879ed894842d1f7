"""Calibrated probabilities, uncertainty, and spatial post-processing within the mask (tiled == untiled)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
from stackkit import (
    CLASSES,
    DATES,
    GRID_DAYS,
    NODATA,
    STACK_BANDS,
    base_metadata,
    bundle_weights,
    inside_mask,
    read_json,
    write_bundle,
)

import cropmap
from cropmap.contract.metadata import BundleMetadata, Calibration
from cropmap.errors import BundleError
from cropmap.postprocess import PostProcess, majority_filter, smooth_probabilities, softmax, uncertainty

CAL = Calibration(
    method="temperature", temperature=3.0, ece_before=0.2, ece_after=0.05, n=100, n_bins=15, data="test"
)


def _read(path: Path) -> np.ndarray:
    with rasterio.open(path) as ds:
        return ds.read()


def _reference_logits(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """numpy logits ``(rows, cols, K)`` of the tiny bundle and the classified-pixel mask."""
    from cropmap.contract.timegrid import fill_gaps

    meta = base_metadata()
    w, b, _ = bundle_weights(meta)
    order = [STACK_BANDS.index(n) for n in meta.bands]
    v = values[:, order].astype(np.float32)
    v[values[:, order] == NODATA] = np.nan
    pos = np.array([(d - dt.date(2021, 1, 1)).days for d in DATES])
    inside = inside_mask()
    rr, cc = np.nonzero(inside)
    filled, _, ok = fill_gaps(v[:, :, rr, cc].transpose(2, 0, 1), pos, GRID_DAYS, min_valid=2)
    logits = np.zeros((*inside.shape, len(CLASSES)))
    logits[rr[ok], cc[ok]] = filled[ok].reshape(int(ok.sum()), -1) @ w + b
    valid = np.zeros(inside.shape, dtype=bool)
    valid[rr[ok], cc[ok]] = True
    return logits, valid


# --- the bundle field -------------------------------------------------------------------------------------------


def test_calibration_is_optional_and_round_trips() -> None:
    plain = base_metadata()
    doc = json.loads(plain.to_json())
    assert "calibration" not in doc  # older cropmap versions read bundles exported without calibration
    assert BundleMetadata.from_json(json.dumps(doc)).calibration is None
    assert plain.temperature == 1.0
    cal = base_metadata(calibration=CAL)
    back = BundleMetadata.from_json(cal.to_json())
    assert back == cal and back.temperature == 3.0


@pytest.mark.parametrize(
    "bad", [{"temperature": 0.0}, {"temperature": -1.0}, {"method": "isotonic"}, {"ece_after": 1.5}, {"n": 0}]
)
def test_calibration_rejects_bad_values(bad: dict) -> None:
    doc = json.loads(base_metadata(calibration=CAL).to_json())
    doc["calibration"].update(bad)
    with pytest.raises(BundleError, match="calibration"):
        BundleMetadata.from_json(json.dumps(doc))


# --- probabilities and uncertainty ----------------------------------------------------------------------------


def test_confidence_and_probabilities_use_the_bundle_temperature(
    stack_desc: Path, polygons: Path, tmp_path: Path, values: np.ndarray
) -> None:
    logits, valid = _reference_logits(values)
    results = {}
    for name, meta in (("plain", base_metadata()), ("calibrated", base_metadata(calibration=CAL))):
        bundle = write_bundle(tmp_path / f"{name}.onnx", meta)
        out = tmp_path / name / "map.tif"
        out.parent.mkdir()
        summary = cropmap.classify(
            stack_desc,
            polygons,
            model=bundle,
            out=out,
            block_size=16,
            confidence=True,
            probabilities=True,
            uncertainty="entropy",
        ).to_dict()
        t = meta.temperature
        p = softmax(logits[valid], t)
        conf = _read(out.with_name("map_confidence.tif"))[0]
        np.testing.assert_array_equal(conf[valid], np.rint(p.max(axis=1) * 100).astype(np.uint8))
        assert (conf[~valid] == 255).all()
        probs = _read(out.with_name("map_probabilities.tif"))
        assert probs.shape[0] == len(CLASSES)
        np.testing.assert_array_equal(probs[:, valid].T, np.rint(p * 100).astype(np.uint8))
        assert (probs[:, ~valid] == 255).all()
        unc = _read(out.with_name("map_uncertainty.tif"))[0]
        np.testing.assert_array_equal(
            unc[valid], np.rint(uncertainty(p, "entropy", axis=1) * 100).astype(np.uint8)
        )
        with rasterio.open(out.with_name("map_probabilities.tif")) as ds:
            assert list(ds.descriptions) == [c.name for c in CLASSES]
        with rasterio.open(out.with_name("map_confidence.tif")) as ds:
            assert ("UNCALIBRATED" in ds.tags()["confidence"]) == (name == "plain")
        assert (summary["bundle"]["calibration"] is None) == (name == "plain")
        results[name] = (_read(out)[0], conf)
    np.testing.assert_array_equal(results["plain"][0], results["calibrated"][0])  # the argmax does not change
    v = valid
    assert (
        results["calibrated"][1][v].mean() < results["plain"][1][v].mean()
    )  # T = 3 flattens the probabilities


def test_uncertainty_measures() -> None:
    p = np.array([[1.0, 0.0, 0.0], [1 / 3, 1 / 3, 1 / 3], [0.6, 0.3, 0.1]])
    np.testing.assert_allclose(uncertainty(p, "entropy", axis=1), [0.0, 1.0, 0.8173454], atol=1e-6)
    np.testing.assert_allclose(uncertainty(p, "margin", axis=1), [0.0, 1.0, 0.7], atol=1e-12)
    with pytest.raises(ValueError, match="entropy"):
        uncertainty(p, "least", axis=1)


def test_margin_uncertainty_output(
    stack_desc: Path, polygons: Path, bundle: Path, outdir: Path, values: np.ndarray
) -> None:
    logits, valid = _reference_logits(values)
    cropmap.classify(stack_desc, polygons, model=bundle, out=outdir / "map.tif", uncertainty="margin")
    unc = _read(outdir / "map_uncertainty.tif")[0]
    want = np.rint(uncertainty(softmax(logits[valid]), "margin", axis=1) * 100).astype(np.uint8)
    np.testing.assert_array_equal(unc[valid], want)
    with rasterio.open(outdir / "map_uncertainty.tif") as ds:
        assert ds.descriptions == ("uncertainty_margin",) and ds.nodata == 255


# --- spatial post-processing ------------------------------------------------------------------------------------


def test_majority_filter_ignores_pixels_outside_the_mask() -> None:
    index = np.array([[1, 1, 1], [1, 0, 1], [1, 1, 1]])
    valid = np.ones((3, 3), dtype=bool)
    assert majority_filter(index, valid, 3, 2)[1, 1] == 1  # eight neighbours of class 1 outvote the centre
    valid = np.zeros((3, 3), dtype=bool)
    valid[1, 1] = valid[0, 0] = (
        True  # the class-1 pixels outside the mask do not vote: 1 vs 1, the centre keeps 0
    )
    out = majority_filter(index, valid, 3, 2)
    assert out[1, 1] == 0 and out[0, 0] == 1
    index2 = np.array([[0, 1, 2]])
    np.testing.assert_array_equal(majority_filter(index2, np.array([[True, True, False]]), 3, 3), [[0, 1, 2]])


def test_smoothing_ignores_pixels_outside_the_mask() -> None:
    probs = np.zeros((2, 1, 5))
    probs[0, 0, :2] = 1.0  # class 0 on the two left pixels
    probs[1, 0, 2:] = 1.0  # class 1 on the right: one valid, two outside the mask
    valid = np.array([[True, True, True, False, False]])
    sm = smooth_probabilities(probs, valid, 1.0)
    assert np.all(sm[:, 0, 3:] == 0)  # outside pixels get nothing
    np.testing.assert_allclose(sm[:, valid].sum(axis=0), 1.0)
    w1, w2 = np.exp(-0.5), np.exp(-2.0)  # Gaussian weights at 1 and 2 px
    # Pixel 2: itself (class 1) and its two valid left neighbours (class 0); the two pixels outside the mask on its
    # right would lower class 0 to (w1 + w2) / (1 + 2 (w1 + w2)) if they voted.
    assert sm[0, 0, 2] == pytest.approx((w1 + w2) / (1 + w1 + w2))


@pytest.mark.parametrize(
    "post",
    [
        {"majority_filter": 3},
        {"majority_filter": 5},
        {"smooth_probabilities": 1.0},
        {"smooth_probabilities": 0.7, "majority_filter": 3},
    ],
)
def test_post_processing_tiled_equals_untiled(
    stack_desc: Path, polygons: Path, bundle: Path, outdir: Path, values: np.ndarray, post: dict
) -> None:
    plain = cropmap.classify_array(stack_desc, polygons, model=bundle, block_size=64).values
    whole = cropmap.classify_array(stack_desc, polygons, model=bundle, block_size=64, confidence=True, **post)
    out = outdir / "map.tif"
    summary = cropmap.classify(
        stack_desc, polygons, model=bundle, out=out, block_size=16, confidence=True, **post
    ).to_dict()
    assert summary["blocks"]["total"] == 6 and summary["postprocessing"]["halo_px"] > 0
    tiled = _read(out)[0]
    np.testing.assert_array_equal(tiled, whole.values)
    np.testing.assert_array_equal(_read(outdir / "map_confidence.tif")[0], whole.coords["confidence"].values)
    # The filter changed the map (the test can fail), but only inside the mask, and never on pixels with too
    # little data: the set of classified pixels is the one without post-processing.
    assert (tiled != plain).any()
    np.testing.assert_array_equal(tiled != 0, plain != 0)
    _, valid = _reference_logits(values)
    np.testing.assert_array_equal(tiled != 0, valid)


def test_post_processing_reference(
    stack_desc: Path, polygons: Path, bundle: Path, values: np.ndarray
) -> None:
    """The pipeline's smoothing + majority equals the filters applied to the whole reference probability map."""
    logits, valid = _reference_logits(values)
    probs = np.zeros((len(CLASSES), *valid.shape))
    probs[:, valid] = softmax(logits[valid]).T
    index = np.argmax(smooth_probabilities(probs, valid, 1.0), axis=0)
    index = majority_filter(index, valid, 3, len(CLASSES))
    codes = np.array([c.code for c in CLASSES])
    want = np.where(valid, codes[index], 0)
    got = cropmap.classify_array(
        stack_desc, polygons, model=bundle, block_size=16, smooth_probabilities=1.0, majority_filter=3
    ).values
    np.testing.assert_array_equal(got, want)


def test_post_process_halo() -> None:
    assert PostProcess().halo == 0 and not PostProcess().active
    assert PostProcess(majority_filter=5).halo == 2
    assert PostProcess(smooth_sigma=1.0).halo == 3
    assert PostProcess(majority_filter=3, smooth_sigma=0.5).halo == 3


def test_summary_records_post_processing(
    stack_desc: Path, polygons: Path, bundle: Path, outdir: Path
) -> None:
    cropmap.classify(stack_desc, polygons, model=bundle, out=outdir / "map.tif", majority_filter=3)
    s = read_json(outdir / "map_summary.json")
    assert s["postprocessing"]["majority_filter"] == 3 and s["postprocessing"]["halo_px"] == 1
    assert s["options"]["majority_filter"] == 3


def test_shipped_sample_bundle_is_calibrated_on_parcels_it_was_not_trained_or_scored_on() -> None:
    from cropmap.models import DEFAULT_BUNDLE

    meta = cropmap.load_bundle(DEFAULT_BUNDLE).metadata
    cal = meta.calibration
    assert cal is not None and cal.temperature > 1.0  # the raw network is over-confident
    assert cal.n == meta.provenance.metrics["n_calibration_parcels"] and "calibration parcels" in cal.data
    assert "validation" not in cal.data.split("(")[0]


def test_bundle_without_calibration_key_still_loads(tmp_path: Path) -> None:
    doc = json.loads(base_metadata().to_json())
    doc.pop("calibration", None)
    path = write_bundle(tmp_path / "old.onnx", metadata_json=json.dumps(doc))
    assert cropmap.load_bundle(path).metadata == dataclasses.replace(base_metadata(), calibration=None)
