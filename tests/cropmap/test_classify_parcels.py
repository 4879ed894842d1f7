"""A crop per parcel (`classify --parcels`), the declared-crop check, whole-stack mode and writing a DataArray."""

from __future__ import annotations

import json
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import rasterio
import shapely
from click.testing import CliRunner
from stackkit import CRS, HEIGHT, ORIGIN, RES, WIDTH, inside_mask, polygon_a, write_polygons

from cropmap.cli import main
from cropmap.parcels import CONFIRM_AT, CONTRADICT_BELOW, REASON_NO_MASK, REASON_NO_PIXEL, REASON_OUTSIDE
from cropmap.pipeline import classify_array, classify_parcels

X0, Y0 = ORIGIN


def _box(c0: float, r0: float, c1: float, r1: float) -> shapely.Polygon:
    """A box from pixel columns/rows (fractions allowed)."""
    return shapely.box(X0 + c0 * RES, Y0 - r1 * RES, X0 + c1 * RES, Y0 - r0 * RES)


def _fields() -> list[shapely.Geometry]:
    return [
        _box(3, 3, 14, 12),  # 0: a large field (typically of several predicted crops)
        _box(30, 10, 44, 20),  # 1: half outside the stack (the stack is 37 px wide)
        _box(20.1, 5.1, 20.4, 5.4),  # 2: a sliver that holds no pixel centre
        _box(100, 100, 110, 110),  # 3: outside the stack
        _box(16, 14, 28, 22),  # 4: a second field
    ]


@pytest.fixture
def fields(tmp_path: Path) -> Path:
    gdf = gpd.GeoDataFrame(
        {
            "field_id": [f"F{i}" for i in range(5)],
            "declared": ["maize", "winter wheat", "maize", "grassland", "potatoes"],
        },
        geometry=_fields(),
        crs=CRS,
    )
    path = tmp_path / "fields.gpkg"
    gdf.to_file(path, engine="pyogrio")
    return path


def _classify(*args: object) -> object:
    return CliRunner().invoke(main, ["classify", *map(str, args)])


def _zonal(geom: shapely.Geometry) -> np.ndarray:
    return inside_mask([geom])


def test_parcels_equal_zonal_computation_over_the_pixel_map(
    stack_desc: Path, fields: Path, bundle: Path, outdir: Path
) -> None:
    out = outdir / "map.tif"
    res = _classify(
        stack_desc,
        "--whole-stack",
        "--model",
        bundle,
        "-o",
        out,
        "--parcels",
        fields,
        "--probabilities",
        "--block-size",
        "16",
    )
    assert res.exit_code == 0, res.output
    assert "whole stack: no cropland mask" in res.output and "parcels:" in res.output
    table = gpd.read_file(outdir / "map_parcels.gpkg")
    assert (outdir / "map_parcels.qml").is_file()
    assert table["field_id"].tolist() == [f"F{i}" for i in range(5)]  # input columns kept, every row present
    with rasterio.open(out) as ds:
        classes = ds.read(1)
    with rasterio.open(outdir / "map_probabilities.tif") as ds:
        probs = ds.read().astype(float) / 100
        codes = [int(c) for c in ds.tags()["class_codes"].split(",")]
    two_crops = 0
    for i in (0, 1, 4):
        inside = _zonal(_fields()[i])
        done = inside & (classes > 0)
        row = table.iloc[i]
        assert row["pixels_in"] == inside.sum() and row["pixels_classified"] == done.sum()
        mean_p = probs[:, done].mean(axis=1)  # zonal mean of the pixel probabilities (rounded to 1 %)
        cols = [c for c in table.columns if c.startswith("p_")]
        assert np.allclose(row[cols].to_numpy(float), mean_p, atol=0.006)
        assert row["class_code"] == codes[int(np.argmax(mean_p))]
        assert np.isclose(row["agreement"], (classes[done] == row["class_code"]).mean(), atol=1e-4)
        assert np.isclose(row["confidence"], row[cols].max())
        two_crops += len(np.unique(classes[done])) > 1
    assert two_crops >= 1  # a field of (at least) two crops among them
    half = table.iloc[1]
    assert 0.45 < half["on_stack_share"] < 0.55 and half["pixels_in"] == 7 * 10 and pd.isna(half["reason"])
    assert table.iloc[2]["reason"] == REASON_NO_PIXEL and table.iloc[2]["pixels_in"] == 0
    assert table.iloc[3]["reason"] == REASON_OUTSIDE and np.isnan(table.iloc[3]["confidence"])
    summary = json.loads((outdir / "map_summary.json").read_text())
    assert summary["parcels"]["classified"] == 3 and summary["inputs"]["whole_stack"]
    assert summary["pixels"]["in_mask"] == HEIGHT * WIDTH


def test_parcels_outside_mask_and_declared_check(
    stack_desc: Path, fields: Path, bundle: Path, outdir: Path, tmp_path: Path
) -> None:
    mask = write_polygons(tmp_path / "mask.gpkg", [_box(0, 0, 15, 13), _box(29, 9, 37, 21)], CRS)
    (tmp_path / "declared.csv").write_text(
        "declared,class\nmaize,2\nwinter wheat,winter wheat\ngrassland,5\n"
    )
    out = outdir / "map.tif"
    res = _classify(
        stack_desc,
        "--mask",
        mask,
        "--model",
        bundle,
        "-o",
        out,
        "--parcels",
        fields,
        "--declared-column",
        "declared",
        "--declared-classes",
        tmp_path / "declared.csv",
    )
    assert res.exit_code == 0, res.output
    assert "declared:" in res.output
    t = gpd.read_file(outdir / "map_parcels.gpkg")
    assert (
        t.iloc[4]["reason"] == REASON_NO_MASK
        and t.iloc[4]["pixels_in"] > 0
        and t.iloc[4]["pixels_in_mask"] == 0
    )
    assert t.iloc[4]["declared_status"] == "not checked"  # potatoes: no class of the bundle
    for i in (0, 1):
        p, status = t.iloc[i]["declared_probability"], t.iloc[i]["declared_status"]
        assert p == t.iloc[i][{2: "p_maize", 1: "p_winter_wheat"}[t.iloc[i]["declared_code"]]]
        want = "confirmed" if p >= CONFIRM_AT else "contradicted" if p < CONTRADICT_BELOW else "doubtful"
        assert status == want
    assert t.iloc[2]["declared_status"] == "not enough data"
    summary = json.loads((outdir / "map_summary.json").read_text())["parcels"]["declared"]
    assert summary["unmapped_declarations"] == {"potatoes": 1}
    assert sum(v["parcels"] for v in summary["statuses"].values()) == 5
    assert 'attr="declared_status"' in (outdir / "map_parcels.qml").read_text()


def test_classify_parcels_api_matches_cli(stack_desc: Path, fields: Path, bundle: Path, outdir: Path) -> None:
    gdf = gpd.read_file(fields).to_crs(4326)  # any CRS: reprojected to the stack's
    api = classify_parcels(stack_desc, gdf, model=bundle, block_size=16)
    assert isinstance(api, gpd.GeoDataFrame) and api.crs.to_epsg() == 4326 and len(api) == 5
    res = _classify(
        stack_desc, "--whole-stack", "--model", bundle, "-o", outdir / "m.tif", "--parcels", fields
    )
    assert res.exit_code == 0, res.output
    cli = gpd.read_file(outdir / "m_parcels.gpkg")
    assert api["class_code"].tolist()[:2] == cli["class_code"].tolist()[:2]
    assert api["reason"].tolist()[2:4] == [REASON_NO_PIXEL, REASON_OUTSIDE]


def test_classify_usage_errors(
    stack_desc: Path, polygons: Path, fields: Path, bundle: Path, outdir: Path
) -> None:
    res = _classify(stack_desc, "--model", bundle, "-o", outdir / "m.tif")
    assert res.exit_code == 2 and "--whole-stack" in res.output
    res = _classify(
        stack_desc, "--mask", polygons, "--whole-stack", "--model", bundle, "-o", outdir / "m.tif"
    )
    assert res.exit_code == 2
    res = _classify(
        stack_desc, "--mask", polygons, "--declared-column", "x", "--model", bundle, "-o", outdir / "m.tif"
    )
    assert res.exit_code == 2 and "--parcels" in res.output
    res = _classify(
        stack_desc,
        "--mask",
        polygons,
        "--parcels",
        fields,
        "--declared-column",
        "nope",
        "--model",
        bundle,
        "-o",
        outdir / "m.tif",
    )
    assert res.exit_code == 1 and "no column 'nope'" in res.output and not list(outdir.iterdir())


def test_write_class_map_from_dataarray(stack_desc: Path, polygons: Path, bundle: Path, outdir: Path) -> None:
    from cropmap.writer import read_class_names, write_class_map

    da = classify_array(stack_desc, polygons, model=bundle)
    path = write_class_map(da, outdir / "api.tif")
    assert (
        _classify(stack_desc, "--mask", polygons, "--model", bundle, "-o", outdir / "cli.tif").exit_code == 0
    )
    with rasterio.open(path) as a, rasterio.open(outdir / "cli.tif") as b:
        assert np.array_equal(a.read(), b.read()) and a.colormap(1) == b.colormap(1)
        assert a.crs == b.crs and a.transform == b.transform and a.nodata == 0
    assert read_class_names(path) == read_class_names(outdir / "cli.tif")
    assert (outdir / "api.tif.aux.xml").is_file() and (outdir / "api.qml").is_file()
    with pytest.raises(FileExistsError):
        write_class_map(da, outdir / "api.tif")


def test_mask_polygon_a_unchanged_by_new_options(
    stack_desc: Path, polygons: Path, bundle: Path, outdir: Path
) -> None:
    """With --parcels the class map is the same as without it."""
    assert _classify(stack_desc, "--mask", polygons, "--model", bundle, "-o", outdir / "a.tif").exit_code == 0
    res = _classify(
        stack_desc, "--mask", polygons, "--model", bundle, "-o", outdir / "b.tif", "--parcels", polygons
    )
    assert res.exit_code == 0, res.output
    with rasterio.open(outdir / "a.tif") as a, rasterio.open(outdir / "b.tif") as b:
        assert np.array_equal(a.read(), b.read())
    summary = json.loads((outdir / "a_summary.json").read_text())
    assert "parcels" not in summary["outputs"] and "whole_stack" not in summary["inputs"]
    _ = polygon_a
