"""Fixtures for the cropmap tests; the builders behind them live in ``stackkit``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
from click.testing import CliRunner
from stackkit import (
    CRS,
    DATES,
    HEIGHT,
    STACK_BANDS,
    WIDTH,
    make_values,
    polygon_a,
    polygon_b,
    profile,
    write_bundle,
    write_polygons,
    write_stack_descriptions,
)


@pytest.fixture
def values() -> np.ndarray:
    return make_values()


@pytest.fixture
def stack_desc(tmp_path: Path, values: np.ndarray) -> Path:
    return write_stack_descriptions(tmp_path / "stack_desc.tif", values)


@pytest.fixture
def stack_tags(tmp_path: Path, values: np.ndarray) -> Path:
    """Same data; dates and bands in dataset tags, scale as GDAL band scale 0.0001."""
    path = tmp_path / "stack_tags.tif"
    s, c = values.shape[:2]
    with rasterio.open(path, "w", **profile(s * c)) as ds:
        ds.write(values.reshape(s * c, HEIGHT, WIDTH))
        ds.update_tags(dates=",".join(d.isoformat() for d in DATES), bands=",".join(STACK_BANDS))
        ds.scales = [0.0001] * (s * c)
    return path


@pytest.fixture
def stack_folder(tmp_path: Path, values: np.ndarray) -> Path:
    """One GeoTIFF per date (date in the file name), band names as descriptions."""
    folder = tmp_path / "per_date"
    folder.mkdir()
    for t, d in enumerate(DATES):
        name = f"S2_{d.isoformat()}.tif" if t % 2 else f"S2_{d.strftime('%Y%m%d')}_L2A.tif"
        with rasterio.open(folder / name, "w", **profile(len(STACK_BANDS))) as ds:
            ds.write(values[t])
            ds.descriptions = STACK_BANDS
            ds.update_tags(reflectance_scale="10000")
    return folder


@pytest.fixture
def polygons(tmp_path: Path) -> Path:
    return write_polygons(tmp_path / "cropland.gpkg", [polygon_a(), polygon_b()], CRS)


@pytest.fixture
def polygons_4326(tmp_path: Path) -> Path:
    """The same polygons stored in EPSG:4326 (densified so the reprojection stays close)."""
    import geopandas as gpd

    gdf = gpd.GeoDataFrame(geometry=[polygon_a().segmentize(5), polygon_b().segmentize(5)], crs=CRS).to_crs(
        4326
    )
    path = tmp_path / "cropland_4326.gpkg"
    gdf.to_file(path, engine="pyogrio")
    return path


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    return write_bundle(tmp_path / "tiny.onnx")


@pytest.fixture
def bundle_no_embedding(tmp_path: Path) -> Path:
    return write_bundle(tmp_path / "tiny_noemb.onnx", with_embedding=False)


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture
def outdir(tmp_path: Path) -> Path:
    d = tmp_path / "out"
    d.mkdir()
    return d


@pytest.fixture(autouse=True)
def _reset_cropmap_logging() -> Any:
    """The CLI configures the `cropmap` logger for its process; undo it between tests."""
    import logging

    yield
    log = logging.getLogger("cropmap")
    log.handlers[:] = []
    log.propagate = True
    log.setLevel(logging.NOTSET)
