"""Blocks without cropland cost nothing: sparse scratch rasters and COGs, overviews sampled per written block."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin
from rasterio.windows import Window
from stackkit import CLASSES, CRS

from cropmap.writer import COG_BLOCK_SIZE_PX, BlockRaster, colormap, overview_factors


def _tile_written(ds: rasterio.io.DatasetReader, row: int, col: int) -> bool:
    off = ds.get_tag_item(f"BLOCK_OFFSET_{col}_{row}", "TIFF", bidx=1)
    return off is not None and int(off) != 0


def test_overview_factors_follow_the_cog_rule() -> None:
    assert overview_factors((100, 100)) == []
    assert overview_factors((600, 600)) == [2]
    assert overview_factors((100_000, 100_000)) == [2, 4, 8, 16, 32, 64, 128, 256]


@pytest.mark.parametrize("count", [1, 3])
def test_sparse_cog_with_sampled_overviews(tmp_path: Path, count: int) -> None:
    shape = (2300, 1700)
    r = BlockRaster(
        tmp_path / "scratch.tif",
        crs=rasterio.crs.CRS.from_string(CRS),
        transform=from_origin(0, 5000, 1, 1),
        shape=shape,
        count=count,
        dtype="uint8",
        nodata=0,
        colormap=colormap(CLASSES) if count == 1 else None,
    )
    rng = np.random.default_rng(3)
    full = np.zeros((count, *shape), dtype=np.uint8)
    for row, col, h, w in (
        (1040, 530, 208, 144),
        (1248, 530, 48, 144),
        (2288, 1696, 12, 4),
    ):  # two touch, one corner
        block = rng.choice(np.array([1, 2, 5], dtype=np.uint8), size=(count, h, w))
        r.write(Window(col, row, w, h), block if count > 1 else block[0])
        full[:, row : row + h, col : col + w] = block
    r.to_cog(tmp_path / "cog.tif")
    r.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cog.tif", "scratch.tif"]  # overview levels removed
    with rasterio.open(tmp_path / "cog.tif") as ds:
        assert ds.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
        np.testing.assert_array_equal(ds.read(), full)
        assert ds.overviews(1) == [2, 4, 8]
        # Only the tiles that hold written pixels are in the file.
        tiles = {
            (i, j)
            for i in range(-(-shape[0] // COG_BLOCK_SIZE_PX))
            for j in range(-(-shape[1] // COG_BLOCK_SIZE_PX))
            if _tile_written(ds, i, j)
        }
        assert tiles == {(2, 1), (4, 3)}
    for level, f in enumerate([2, 4, 8]):
        with rasterio.open(tmp_path / "cog.tif", overview_level=level) as ov:
            rows = np.minimum(np.arange(ov.height) * f + f // 2, shape[0] - 1)
            cols = np.minimum(np.arange(ov.width) * f + f // 2, shape[1] - 1)
            np.testing.assert_array_equal(ov.read(), full[:, rows][:, :, cols])


def test_huge_stack_with_one_cropland_block(tmp_path: Path, bundle: Path) -> None:
    """A 6144 x 6144 px stack (sparse file) with cropland in one 64 px block: one block is read and written."""
    import shapely
    from stackkit import DATES, MODEL_BANDS, TILE, write_polygons

    import cropmap

    side, row, col = 6144, 3008, 4096
    prof = {
        "driver": "GTiff",
        "width": side,
        "height": side,
        "count": len(DATES) * 3,
        "dtype": "uint16",
        "crs": CRS,
        "nodata": 0,
        "transform": from_origin(600000, 5600000, 10, 10),
        "tiled": True,
        "blockxsize": TILE,
        "blockysize": TILE,
        "interleave": "pixel",
        "SPARSE_OK": "TRUE",
    }
    values = np.random.default_rng(0).integers(2000, 4000, size=(len(DATES) * 3, TILE, TILE), dtype=np.uint16)
    with rasterio.open(tmp_path / "huge.tif", "w", **prof) as ds:
        ds.write(values, window=Window(col, row, TILE, TILE))
        ds.descriptions = [f"{d.isoformat()}_{b}" for d in DATES for b in MODEL_BANDS]
        ds.update_tags(reflectance_scale="10000")
    x, y = 600000 + col * 10, 5600000 - row * 10
    write_polygons(tmp_path / "field.gpkg", [shapely.box(x + 20, y - 140, x + 140, y - 20)], CRS)
    s = cropmap.classify(
        tmp_path / "huge.tif",
        tmp_path / "field.gpkg",
        model=bundle,
        out=tmp_path / "o" / "m.tif",
        block_size=64,
        confidence=True,
    ).to_dict()
    assert s["blocks"]["total"] == (side // 64) ** 2 and s["blocks"]["processed"] == 1
    assert s["pixels"]["classified"] == 144
    with rasterio.open(tmp_path / "o" / "m.tif") as ds:
        assert ds.shape == (side, side) and ds.overviews(1) == [2, 4, 8, 16]
        assert int((ds.read(1, window=Window(col, row, TILE, TILE)) > 0).sum()) == 144
        assert ds.read(1, window=Window(0, 0, 512, 512)).max() == 0
    assert (tmp_path / "o" / "m.tif").stat().st_size < 200_000
    assert sorted(p.name for p in (tmp_path / "o").iterdir() if p.name.startswith(".")) == []
