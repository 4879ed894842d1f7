"""Outputs: valid COGs, colour table, class names GDAL reads back, QGIS style, atomic writes."""

from __future__ import annotations

import ctypes
import glob
import os
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import rasterio
from stackkit import CLASSES

import cropmap
from cropmap.writer import Staging, check_cog


def _gdal_category_names(path: Path) -> dict[int, str]:
    """Category names as `gdalinfo` reports them (GDALInfo from the libgdal that rasterio ships)."""
    libs = sorted(
        glob.glob(os.path.join(os.path.dirname(rasterio.__file__), os.pardir, "rasterio.libs", "libgdal*"))
    )
    if not libs:
        pytest.fail("libgdal shipped with rasterio not found; cannot ask GDAL for category names")
    gdal = ctypes.CDLL(libs[0])
    gdal.GDALAllRegister()
    gdal.GDALOpen.restype = ctypes.c_void_p
    gdal.GDALOpen.argtypes = [ctypes.c_char_p, ctypes.c_int]
    gdal.GDALInfo.restype = ctypes.c_char_p
    gdal.GDALInfo.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
    gdal.GDALClose.argtypes = [ctypes.c_void_p]
    ds = gdal.GDALOpen(str(path).encode(), 0)
    assert ds, f"GDAL could not open {path}"
    try:
        info = gdal.GDALInfo(ds, None).decode()
    finally:
        gdal.GDALClose(ds)
    assert "Categories:" in info, info
    names = {}
    for line in info.split("Categories:", 1)[1].splitlines()[1:]:
        key, sep, name = line.strip().partition(":")
        if not sep or not key.isdigit():
            break
        names[int(key)] = name.strip()
    return names


@pytest.fixture
def outputs(stack_desc: Path, polygons: Path, bundle: Path, outdir: Path) -> Path:
    cropmap.classify(
        stack_desc, polygons, model=bundle, out=outdir / "map.tif", confidence=True, embedding=True
    )
    return outdir


def test_writer_outputs_are_cogs(outputs: Path) -> None:
    for name in ("map.tif", "map_confidence.tif", "map_embedding.tif"):
        check_cog(outputs / name)
        with rasterio.open(outputs / name) as ds:
            assert ds.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
            assert ds.profile["tiled"]
    with rasterio.open(outputs / "map_confidence.tif") as ds:
        assert ds.nodata == 255 and ds.dtypes[0] == "uint8"
        v = ds.read(1)
        assert v[v != 255].max() <= 100


def test_writer_check_cog_rejects_plain_gtiff(stack_desc: Path) -> None:
    with pytest.raises(RuntimeError, match="not a Cloud-Optimised GeoTIFF"):
        check_cog(stack_desc)


def test_writer_colour_table_and_class_names(outputs: Path) -> None:
    with rasterio.open(outputs / "map.tif") as ds:
        cmap = ds.colormap(1)
        for c in CLASSES:
            assert cmap[c.code] == (*c.rgb(), 255)
        assert cmap[0][3] == 0  # nodata transparent
    names = _gdal_category_names(outputs / "map.tif")
    for c in CLASSES:
        assert names[c.code] == c.name
    assert names[0] == ""
    rat = ET.parse(outputs / "map.tif.aux.xml").getroot().find(".//GDALRasterAttributeTable")
    rows = [[f.text for f in row.findall("F")] for row in rat.findall("Row")]
    assert rows == [[str(c.code), c.name, *map(str, c.rgb()), "255"] for c in CLASSES]


def test_writer_qml_legend(outputs: Path) -> None:
    root = ET.parse(outputs / "map.qml").getroot()
    entries = root.findall(".//rasterrenderer[@type='paletted']/colorPalette/paletteEntry")
    assert [(e.get("value"), e.get("label"), e.get("color")) for e in entries] == [
        (str(c.code), c.name, c.color) for c in CLASSES
    ]


def test_writer_quicklook_png(outputs: Path) -> None:
    data = (outputs / "map_quicklook.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000


def test_writer_staging_is_all_or_nothing(tmp_path: Path) -> None:
    finals = [tmp_path / "a.tif", tmp_path / "b.json"]
    with Staging() as st:
        for f in finals:
            st.temp_for(f).write_text("x")
        assert not any(f.exists() for f in finals)
    assert list(tmp_path.iterdir()) == []  # failure path: temps removed, finals never created
    with Staging() as st:
        for f in finals:
            st.temp_for(f).write_text("y")
        st.commit()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.tif", "b.json"]


def test_writer_large_map_has_nearest_overviews(tmp_path: Path, bundle: Path) -> None:
    """A map larger than one COG block gets overviews, built without mixing class codes."""
    import shapely
    from stackkit import CRS, write_polygons

    from cropmap.writer import BlockRaster, colormap

    tmp = tmp_path / "scratch.tif"
    from rasterio.transform import from_origin

    r = BlockRaster(
        tmp,
        crs=rasterio.crs.CRS.from_string(CRS),
        transform=from_origin(0, 1200, 1, 1),
        shape=(1200, 1100),
        count=1,
        dtype="uint8",
        nodata=0,
        colormap=colormap(CLASSES),
    )
    codes = np.random.default_rng(0).choice([0, 1, 2, 5], size=(1200, 1100)).astype(np.uint8)
    r.write(rasterio.windows.Window(0, 0, 1100, 1200), codes)
    r.to_cog(tmp_path / "cog.tif")
    with rasterio.open(tmp_path / "cog.tif") as ds:
        assert ds.overviews(1), "expected overviews"
        ovr = ds.read(1, out_shape=(600, 550))
        assert set(np.unique(ovr)) <= {0, 1, 2, 5}
        assert ds.colormap(1)[5] == (*CLASSES[2].rgb(), 255)
    assert write_polygons and shapely  # helpers importable
