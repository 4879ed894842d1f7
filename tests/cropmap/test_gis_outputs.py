"""Outputs a GIS user trusts: class names inside the .tif, STAC Item, quick-look legend, multi-layer masks."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import rasterio
from click.testing import CliRunner
from stackkit import CLASSES, CRS, HEIGHT, TRANSFORM, WIDTH, polygon_a, polygon_b, read_json, write_polygons

import cropmap
from cropmap.cli import main
from cropmap.errors import MaskError
from cropmap.writer import read_class_names


def test_class_names_survive_copying_the_tif_alone(
    stack_desc: Path, polygons: Path, bundle: Path, outdir: Path, tmp_path: Path
) -> None:
    cropmap.classify(stack_desc, polygons, model=bundle, out=outdir / "map.tif")
    alone = tmp_path / "elsewhere"
    alone.mkdir()
    shutil.copy(outdir / "map.tif", alone / "map.tif")
    assert sorted(p.name for p in alone.iterdir()) == ["map.tif"]  # no .aux.xml, no .qml
    assert read_class_names(alone / "map.tif") == {c.code: c.name for c in CLASSES}
    with rasterio.open(alone / "map.tif") as ds:
        legend = {
            c["value"]: (c["name"], c["color"])
            for c in __import__("json").loads(ds.tags()["cropmap_classes"])
        }
        assert legend == {c.code: (c.name, c.color) for c in CLASSES}
        assert ds.descriptions == ("crop_class",)
        cmap = ds.colormap(1)
        assert all(cmap[c.code][:3] == c.rgb() for c in CLASSES)
        assert ds.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
    assert sorted(p.name for p in alone.iterdir()) == ["map.tif"]  # reading wrote no sidecar either


def test_stac_item(stack_desc: Path, polygons: Path, bundle: Path, outdir: Path) -> None:
    summary = cropmap.classify(
        stack_desc,
        polygons,
        model=bundle,
        out=outdir / "map.tif",
        confidence=True,
        probabilities=True,
        uncertainty="margin",
    ).to_dict()
    path = outdir / "map_stac.json"
    assert summary["outputs"]["stac"] == str(path)
    item = read_json(path)
    assert item["type"] == "Feature" and item["stac_version"] == "1.0.0" and item["id"] == "map"
    exts = " ".join(item["stac_extensions"])
    assert "projection" in exts and "raster" in exts and "classification" in exts
    props = item["properties"]
    assert props["proj:code"] == CRS
    assert props["proj:shape"] == [HEIGHT, WIDTH]
    assert props["proj:transform"] == list(TRANSFORM)[:6]
    assert props["datetime"] is None and props["start_datetime"] <= props["end_datetime"]
    lon0, lat0, lon1, lat1 = item["bbox"]
    assert (
        lon0 < lon1 and lat0 < lat1 and 0 < lon0 < 10 and 45 < lat0 < 55
    )  # UTM 31N near x=600 km, y=5600 km
    assert item["geometry"]["type"] == "Polygon"
    for name, asset in item["assets"].items():
        assert (outdir / asset["href"]).is_file(), name  # hrefs are relative to the item's folder
    m = item["assets"]["map"]
    assert m["raster:bands"][0]["data_type"] == "uint8" and m["raster:bands"][0]["nodata"] == 0
    classes = {c["value"]: c for c in m["classification:classes"]}
    for c in CLASSES:
        assert classes[c.code]["name"] == c.name and classes[c.code]["color_hint"] == c.color[1:].upper()
    assert classes[0]["nodata"] is True
    probs = item["assets"]["probabilities"]["raster:bands"]
    assert [b["name"] for b in probs] == [c.name for c in CLASSES] and probs[0]["scale"] == 0.01
    assert not list(outdir.glob(".*"))  # written atomically: no temporary left


def test_quicklook_tells_outside_mask_from_too_little_data(
    stack_desc: Path, polygons: Path, bundle: Path, outdir: Path
) -> None:
    import matplotlib.image as mpimg

    from cropmap.quicklook import INSUFFICIENT_RGBA, OUTSIDE_RGBA

    summary = cropmap.classify(stack_desc, polygons, model=bundle, out=outdir / "map.tif").to_dict()
    assert summary["pixels"]["insufficient_data"] > 0
    img = (mpimg.imread(outdir / "map_quicklook.png")[..., :3] * 255).round().astype(int)

    def count(rgba: tuple[float, ...]) -> int:
        want = np.round(np.array(rgba[:3]) * 255).astype(int)
        return int((np.abs(img - want).max(axis=-1) <= 1).sum())

    with_corner = count(INSUFFICIENT_RGBA)
    assert count(OUTSIDE_RGBA) > 500
    # Without pixels lacking data, the dark colour appears only in the legend patch.
    poly_a_only = write_polygons(outdir.parent / "a.gpkg", [polygon_a()], CRS)
    s2 = cropmap.classify(
        stack_desc, poly_a_only, model=bundle, out=outdir / "a.tif", min_valid_steps=1
    ).to_dict()
    assert s2["pixels"]["insufficient_data"] <= 1
    img = (mpimg.imread(outdir / "a_quicklook.png")[..., :3] * 255).round().astype(int)
    legend_only = count(INSUFFICIENT_RGBA)
    assert 0 < legend_only < 1000  # the legend patch (and at most one map pixel)
    assert with_corner > 3 * legend_only  # the too-little-data corner is drawn in its own colour


@pytest.fixture
def two_layers(tmp_path: Path) -> Path:
    path = tmp_path / "layers.gpkg"
    write_polygons(path, [polygon_a(), polygon_b()], CRS, layer="cropland")
    write_polygons(path, [polygon_b()], CRS, layer="roads")
    return path


def test_mask_layer(stack_desc: Path, polygons: Path, bundle: Path, two_layers: Path) -> None:
    with pytest.raises(
        MaskError, match=r"2 layers \(cropland, roads\); name the cropland one with --mask-layer"
    ):
        cropmap.classify_array(stack_desc, two_layers, model=bundle)
    with pytest.raises(MaskError, match=r"no layer 'fields'; its layers are cropland, roads"):
        cropmap.classify_array(stack_desc, two_layers, model=bundle, mask_layer="fields")
    chosen = cropmap.classify_array(stack_desc, two_layers, model=bundle, mask_layer="cropland")
    single = cropmap.classify_array(stack_desc, polygons, model=bundle)
    np.testing.assert_array_equal(chosen.values, single.values)
    roads = cropmap.classify_array(stack_desc, two_layers, model=bundle, mask_layer="roads")
    assert (roads.values != 0).sum() < (chosen.values != 0).sum()


def test_cli_new_flags(stack_desc: Path, bundle: Path, two_layers: Path, outdir: Path) -> None:
    runner = CliRunner()
    out = outdir / "map.tif"
    args = ["classify", str(stack_desc), "--mask", str(two_layers), "--model", str(bundle), "-o", str(out)]
    res = runner.invoke(main, args)
    assert res.exit_code == 1 and "--mask-layer" in res.output.strip().splitlines()[-1]
    assert len([ln for ln in res.output.splitlines() if ln.startswith("Error:")]) == 1
    res = runner.invoke(
        main,
        [
            *args,
            "--mask-layer",
            "cropland",
            "--probabilities",
            "--uncertainty",
            "entropy",
            "--majority-filter",
            "3",
            "--smooth-probabilities",
            "0.8",
            "--confidence",
        ],
    )
    assert res.exit_code == 0, res.output
    assert "probabilities: UNCALIBRATED" in res.output
    for name in ("map_probabilities.tif", "map_uncertainty.tif", "map_confidence.tif", "map_stac.json"):
        assert (outdir / name).is_file()
    s = read_json(outdir / "map_summary.json")
    assert (
        s["inputs"]["mask_layer"] == "cropland"
        and s["postprocessing"]["smooth_probabilities_sigma_px"] == 0.8
    )
    for bad in (["--majority-filter", "4"], ["--smooth-probabilities", "0"], ["--uncertainty", "least"]):
        res = runner.invoke(main, [*args, "--mask-layer", "cropland", "--overwrite", *bad])
        assert res.exit_code == 2, (bad, res.output)


@pytest.mark.parametrize("crs, shape", [("EPSG:4326", (3, 400)), ("EPSG:32631", (300, 2))])
def test_quicklook_of_a_thin_map_in_any_crs_shows_every_class_and_its_legend(
    tmp_path: Path, crs: str, shape: tuple[int, int]
) -> None:
    from PIL import Image
    from rasterio.transform import from_origin

    from cropmap.quicklook import write_quicklook

    res = 0.0001 if crs == "EPSG:4326" else 10.0
    codes = np.zeros(shape, dtype=np.uint8)
    codes.flat[: codes.size // 2] = CLASSES[0].code
    codes.flat[codes.size // 2 :] = CLASSES[1].code
    path = tmp_path / "map.tif"
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=shape[1],
        height=shape[0],
        count=1,
        dtype="uint8",
        crs=crs,
        transform=from_origin(4.5, 51.0, res, res) if crs == "EPSG:4326" else TRANSFORM,
    ) as ds:
        ds.write(codes, 1)
    write_quicklook(path, tmp_path / "q.png", CLASSES, {c.code: 1.0 for c in CLASSES}, title="thin")
    img = np.asarray(Image.open(tmp_path / "q.png").convert("RGB")).astype(int)
    for c in CLASSES:  # the map's two classes fill pixels; the third appears only as its legend swatch
        n = int((np.abs(img - np.array(c.rgb())).max(axis=-1) == 0).sum())
        assert n > (1000 if c.code != CLASSES[2].code else 100), (c.name, n)
