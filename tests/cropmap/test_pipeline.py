"""End-to-end classification on tiny stacks: correctness, tiling, layouts, masks, summary."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
from stackkit import (
    CLASSES,
    HEIGHT,
    NODATA,
    STACK_BANDS,
    TRANSFORM,
    WIDTH,
    base_metadata,
    expected_classes,
    inside_mask,
    read_json,
    write_bundle,
    write_stack_descriptions,
)

import cropmap
from cropmap.errors import InputRasterError


def _read(path: Path) -> np.ndarray:
    with rasterio.open(path) as ds:
        return ds.read(1)


def test_classify_matches_numpy_reference(
    stack_desc: Path, polygons: Path, bundle: Path, outdir: Path, values: np.ndarray
) -> None:
    out = outdir / "map.tif"
    summary = cropmap.classify(stack_desc, polygons, model=bundle, out=out, block_size=16).to_dict()
    expected, insufficient = expected_classes(values, inside_mask())
    got = _read(out)
    np.testing.assert_array_equal(got, expected)
    assert set(np.unique(got)) == {
        0,
        *(c.code for c in CLASSES),
    }  # every class occurs: the test can tell them apart
    assert summary["pixels"]["insufficient_data"] == int(insufficient.sum()) > 0


@pytest.mark.parametrize("block_size", [16, 32, None])
def test_classify_tiled_equals_untiled(
    stack_desc: Path, polygons: Path, bundle: Path, outdir: Path, block_size: int | None
) -> None:
    whole = cropmap.classify_array(stack_desc, polygons, model=bundle, block_size=64, confidence=True)
    out = outdir / "map.tif"
    summary = cropmap.classify(
        stack_desc, polygons, model=bundle, out=out, block_size=block_size, confidence=True
    ).to_dict()
    np.testing.assert_array_equal(_read(out), whole.values)
    np.testing.assert_array_equal(_read(outdir / "map_confidence.tif"), whole.coords["confidence"].values)
    expected_blocks = {16: 6, 32: 2, None: 1}[block_size]
    assert summary["blocks"]["total"] == expected_blocks


def test_classify_outside_mask_is_nodata_and_skipped_blocks(
    stack_desc: Path, tmp_path: Path, bundle: Path, outdir: Path
) -> None:
    from stackkit import polygon_b, write_polygons

    only_b = write_polygons(tmp_path / "b.gpkg", [polygon_b()], "EPSG:32631")
    out = outdir / "map.tif"
    summary = cropmap.classify(
        stack_desc, only_b, model=bundle, out=out, block_size=16, confidence=True
    ).to_dict()
    got = _read(out)
    inside = inside_mask([polygon_b()])
    assert (got[~inside] == 0).all()
    assert (_read(outdir / "map_confidence.tif")[~inside] == 255).all()
    assert summary["blocks"] == {"block_shape": [16, 16], "total": 6, "processed": 2, "skipped": 4}


def test_classify_gap_filling_and_insufficient_data(
    stack_desc: Path, polygons: Path, bundle: Path, outdir: Path, values: np.ndarray
) -> None:
    summary = cropmap.classify(
        stack_desc, polygons, model=bundle, out=outdir / "m.tif", quicklook=False
    ).to_dict()
    got = _read(outdir / "m.tif")
    # rows 0-2, cols 30-36 keep one valid date: below the bundle's min_valid_steps = 2.
    corner = inside_mask()[0:3, 30:37]
    assert corner.any() and (got[0:3, 30:37][corner] == 0).all()
    _, insufficient = expected_classes(values, inside_mask())
    assert insufficient[0:3, 30:37][corner].all()
    assert summary["pixels"]["insufficient_data"] == int(insufficient.sum()) > int(corner.sum())
    assert (got[insufficient] == 0).all()
    # With min_valid_steps 1 the corner is classified (from its single observation, held constant).
    summary1 = cropmap.classify(
        stack_desc, polygons, model=bundle, out=outdir / "m1.tif", min_valid_steps=1, quicklook=False
    ).to_dict()
    expected1, insufficient1 = expected_classes(values, inside_mask(), min_valid=1)
    assert summary1["pixels"]["insufficient_data"] == int(insufficient1.sum()) < int(insufficient.sum())
    got1 = _read(outdir / "m1.tif")
    assert (got1[0:3, 30:37][corner] > 0).all()
    np.testing.assert_array_equal(got1, expected1)


@pytest.mark.parametrize("layout", ["stack_tags", "stack_folder"])
def test_classify_layouts_agree(
    layout: str, stack_desc: Path, polygons: Path, bundle: Path, request: pytest.FixtureRequest
) -> None:
    ref = cropmap.classify_array(stack_desc, polygons, model=bundle)
    other = cropmap.classify_array(request.getfixturevalue(layout), polygons, model=bundle, block_size=32)
    np.testing.assert_array_equal(other.values, ref.values)


def test_classify_reprojects_mask(
    stack_desc: Path, polygons: Path, polygons_4326: Path, bundle: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ref = cropmap.classify_array(stack_desc, polygons, model=bundle)
    with caplog.at_level("INFO", logger="cropmap"):
        got = cropmap.classify_array(stack_desc, polygons_4326, model=bundle)
    assert "reprojecting mask" in caplog.text and "EPSG:4326" in caplog.text
    np.testing.assert_array_equal(got.values, ref.values)


def test_classify_rescales_to_bundle_units(
    tmp_path: Path, polygons: Path, bundle: Path, values: np.ndarray
) -> None:
    """A float reflectance stack (scale 1) gives the same map as the DN stack."""
    ref = cropmap.classify_array(
        write_stack_descriptions(tmp_path / "dn.tif", values), polygons, model=bundle
    )
    refl = values.astype(np.float32) / 10000.0
    refl[values == NODATA] = np.nan
    path = write_stack_descriptions(
        tmp_path / "refl.tif", refl, tags={"reflectance_scale": "1"}, dtype="float32", nodata=None
    )
    got = cropmap.classify_array(path, polygons, model=bundle)
    np.testing.assert_array_equal(got.values, ref.values)


def test_classify_array_coords_and_attrs(stack_desc: Path, polygons: Path, bundle: Path) -> None:
    da = cropmap.classify_array(stack_desc, polygons, model=bundle)
    assert da.dims == ("y", "x") and da.shape == (HEIGHT, WIDTH)
    assert da.x.values[0] == TRANSFORM.c + 5.0 and da.y.values[0] == TRANSFORM.f - 5.0
    assert "32631" in da.attrs["crs"]
    assert da.attrs["class_names"] == [c.name for c in CLASSES]
    assert da.attrs["class_colors"] == [c.color for c in CLASSES]


def test_classify_summary_consistent_with_raster(
    stack_desc: Path, polygons: Path, bundle: Path, outdir: Path
) -> None:
    out = outdir / "map.tif"
    summary = cropmap.classify(stack_desc, polygons, model=bundle, out=out, block_size=16).to_dict()
    assert read_json(outdir / "map_summary.json") == summary
    got = _read(out)
    px = summary["pixels"]
    assert px["total"] == HEIGHT * WIDTH
    assert px["classified"] == int((got > 0).sum())
    assert px["in_mask"] == int(inside_mask().sum())
    assert px["classified"] + px["insufficient_data"] == px["in_mask"]
    assert px["skipped_outside_mask"] == px["total"] - px["in_mask"]
    for c in summary["classes"]:
        n = int((got == c["code"]).sum())
        assert c["pixels"] == n
        assert c["area_ha"] == pytest.approx(n * 100.0 / 1e4)
    assert summary["season"]["year"] == 2021
    assert summary["season"]["dates_used"] == ["2021-01-05", "2021-02-10", "2021-03-01", "2021-04-15"]
    assert summary["bundle"]["provenance"]["metrics"] == {"val_accuracy": 0.5}
    assert set(summary["timings_s"]) >= {"read", "fill", "model", "write", "total"}
    assert summary["throughput_cropland_px_per_s"] > 0


def test_classify_season_choice(tmp_path: Path, polygons: Path, bundle: Path, values: np.ndarray) -> None:
    """Two seasons in one stack: an error without --season, each season alone with it."""
    import datetime as dt

    two = np.concatenate([values, values[::-1]], axis=0)
    path = tmp_path / "two.tif"
    dates = [
        dt.date(2021, 1, 5),
        dt.date(2021, 2, 10),
        dt.date(2021, 3, 1),
        dt.date(2021, 4, 15),
        dt.date(2022, 1, 5),
        dt.date(2022, 2, 10),
        dt.date(2022, 3, 1),
        dt.date(2022, 4, 15),
    ]
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=WIDTH,
        height=HEIGHT,
        count=two.shape[0] * 3,
        dtype="uint16",
        crs="EPSG:32631",
        transform=TRANSFORM,
        nodata=NODATA,
    ) as ds:
        ds.write(two.reshape(-1, HEIGHT, WIDTH))
        ds.update_tags(
            dates=",".join(d.isoformat() for d in dates),
            bands=",".join(STACK_BANDS),
            reflectance_scale="10000",
        )
    with pytest.raises(InputRasterError, match="span 2 seasons"):
        cropmap.classify_array(path, polygons, model=bundle)
    a = cropmap.classify_array(path, polygons, model=bundle, season=2021)
    ref = cropmap.classify_array(
        write_stack_descriptions(tmp_path / "one.tif", values), polygons, model=bundle
    )
    np.testing.assert_array_equal(a.values, ref.values)
    b = cropmap.classify_array(path, polygons, model=bundle, season=2022)
    assert not np.array_equal(a.values, b.values)


def test_classify_extra_bands_ignored(
    tmp_path: Path, polygons: Path, bundle: Path, values: np.ndarray, caplog: pytest.LogCaptureFixture
) -> None:
    """A stack with an extra band (B08) gives the same map; the extra band is logged."""
    extra = np.concatenate([values, values[:, :1]], axis=1)
    path = write_stack_descriptions(tmp_path / "extra.tif", extra, bands=(*STACK_BANDS, "B08"))
    ref = cropmap.classify_array(
        write_stack_descriptions(tmp_path / "ref.tif", values), polygons, model=bundle
    )
    with caplog.at_level("INFO", logger="cropmap"):
        got = cropmap.classify_array(path, polygons, model=bundle)
    assert "['B08'] are not used" in caplog.text
    np.testing.assert_array_equal(got.values, ref.values)


def test_classify_embedding_matches_bundle(
    stack_desc: Path, polygons: Path, bundle: Path, outdir: Path, values: np.ndarray
) -> None:
    cropmap.classify(
        stack_desc,
        polygons,
        model=bundle,
        out=outdir / "m.tif",
        embedding=True,
        quicklook=False,
        embedding_dtype="float32",
    )
    with rasterio.open(outdir / "m_embedding.tif") as ds:
        emb = ds.read()
        assert ds.count == 4 and ds.dtypes[0] == "float32"
    classes = _read(outdir / "m.tif")
    assert np.isfinite(emb[:, classes > 0]).all()
    assert np.isnan(emb[:, classes == 0]).all()
    # Reference: tanh(filled series @ W2), the tiny bundle's embedding branch, in numpy.
    import datetime as dt

    from stackkit import DATES, GRID_DAYS, bundle_weights

    from cropmap.contract.timegrid import fill_gaps

    meta = base_metadata()
    order = [STACK_BANDS.index(n) for n in meta.bands]
    v = values[:, order].astype(np.float32)
    v[values[:, order] == NODATA] = np.nan
    rr, cc = np.nonzero(classes > 0)
    pos = np.array([(d - dt.date(2021, 1, 1)).days for d in DATES])
    filled, _, ok = fill_gaps(v[:, :, rr, cc].transpose(2, 0, 1), pos, GRID_DAYS, min_valid=2)
    assert ok.all()
    ref = np.tanh(filled.reshape(len(rr), -1) @ bundle_weights(meta)[2])
    assert 0.05 < np.abs(ref).mean() < 0.95  # not saturated: the comparison is informative
    np.testing.assert_allclose(emb[:, rr, cc].T, ref, atol=2e-5)


def test_bundle_metadata_roundtrip(bundle: Path) -> None:
    meta = cropmap.load_bundle(bundle).metadata
    assert meta == base_metadata()
    assert isinstance(meta, cropmap.BundleMetadata)
    assert write_bundle  # the fixture builder is importable without torch


def test_the_automatic_batch_follows_the_stamps_and_the_summary_records_it(
    stack_desc: Path, polygons: Path, bundle: Path, tmp_path: Path
) -> None:
    from cropmap.options import DEFAULT_BATCH_SIZE, auto_batch_size
    from cropmap.runtime import load_bundle

    assert [auto_batch_size(t) for t in (1, 12, 24, 73, 144, 1000)] == [256, 128, 64, 32, 16, 8]
    assert auto_batch_size(144, gpu=True) == DEFAULT_BATCH_SIZE
    t = load_bundle(bundle).metadata.n_timesteps
    auto = cropmap.classify(stack_desc, polygons, model=bundle, out=tmp_path / "a.tif").to_dict()
    fixed = cropmap.classify(
        stack_desc, polygons, model=bundle, out=tmp_path / "b.tif", batch_size=3
    ).to_dict()
    assert auto["runtime"]["batch_size"] == auto_batch_size(t) and fixed["runtime"]["batch_size"] == 3
    assert auto["classes"] == fixed["classes"]  # the batch changes the speed, not the map
