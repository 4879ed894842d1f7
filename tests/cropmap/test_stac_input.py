"""A STAC item collection (one item per date, one COG per band) classifies to the same bytes as the GeoTIFF stack."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
import rasterio.shutil
from stackkit import DATES, STACK_BANDS, profile

import cropmap
from cropmap.errors import InputRasterError
from cropmap.stack import open_stack

pystac = pytest.importorskip("pystac")

# How the three bands are described: by key, by EO common name as key, by eo:bands name.
ASSET_STYLE = {"B02": ("B02", None), "B03": ("green", None), "B04": ("visual_red", [{"name": "B04"}])}


def _cog(values: np.ndarray, path: Path, tmp: Path) -> None:
    plain = tmp / (path.name + ".plain.tif")
    with rasterio.open(plain, "w", **profile(1)) as ds:
        ds.write(values[None])
    rasterio.shutil.copy(plain, path, driver="COG", BLOCKSIZE=16, COMPRESS="DEFLATE")
    plain.unlink()


def write_items(folder: Path, values: np.ndarray, *, scale_in_stac: bool = True) -> Path:
    """Per-band COGs of ``values`` and an item collection that references them by relative href."""
    (folder / "cogs").mkdir(parents=True)
    items = []
    for t, d in enumerate(DATES):
        item = pystac.Item(
            id=f"S2_{d:%Y%m%d}",
            geometry=None,
            bbox=None,
            datetime=dt.datetime(d.year, d.month, d.day, 10, 30, tzinfo=dt.timezone.utc),
            properties={},
        )
        for b, band in enumerate(STACK_BANDS):
            key, eo = ASSET_STYLE[band]
            href = f"cogs/{d:%Y%m%d}_{band}.tif"
            _cog(values[t, b], folder / href, folder)
            extra: dict = {}
            if eo:
                extra["eo:bands"] = eo
            if scale_in_stac:
                extra["raster:bands"] = [{"scale": 0.0001, "offset": 0.0, "nodata": 0}]
            item.add_asset(
                key,
                pystac.Asset(href=href, media_type=pystac.MediaType.COG, roles=["data"], extra_fields=extra),
            )
        item.add_asset(
            "thumbnail", pystac.Asset(href="thumb.png", media_type=pystac.MediaType.PNG, roles=["thumbnail"])
        )
        items.append(item)
    path = folder / "search.json"
    pystac.ItemCollection(items).save_object(dest_href=str(path))
    return path


def test_stac_items_classify_to_the_same_bytes(
    tmp_path: Path, values: np.ndarray, stack_desc: Path, polygons: Path, bundle: Path, outdir: Path
) -> None:
    items = write_items(tmp_path / "stac", values)
    st = open_stack(items)
    assert st.layout == "stac-items" and st.dates == DATES and set(st.bands) == set(STACK_BANDS)
    assert st.scale is not None and st.scale.source == "STAC raster:bands scale/offset"
    assert len(st.files) == len(DATES) * len(STACK_BANDS)
    opts = {"model": bundle, "block_size": 16, "confidence": True, "probabilities": True}
    a = cropmap.classify(stack_desc, polygons, out=outdir / "tif.tif", **opts).to_dict()
    b = cropmap.classify(items, polygons, out=outdir / "stac.tif", **opts).to_dict()
    assert b["inputs"]["stack_layout"] == "stac-items"
    assert a["pixels"] == b["pixels"] and a["pixels"]["classified"] > 0
    # (the quick-look PNGs differ by their title, which names the stack file)
    for name in ("{}.tif", "{}_confidence.tif", "{}_probabilities.tif", "{}.tif.aux.xml", "{}.qml"):
        assert (outdir / name.format("tif")).read_bytes() == (outdir / name.format("stac")).read_bytes(), name


def test_stac_items_read_window_by_window(tmp_path: Path, values: np.ndarray, stack_desc: Path) -> None:
    items = write_items(tmp_path / "stac", values, scale_in_stac=False)
    with pytest.raises(InputRasterError, match="does not declare its reflectance scale"):
        open_stack(items)  # neither the items nor the COGs declare it
    a, b = open_stack(stack_desc), open_stack(items, reflectance_scale=10000)
    assert b.scale is not None and b.scale.source == "--reflectance-scale"
    w = rasterio.windows.Window(5, 3, 17, 11)
    obs, bands = [3, 0, 2], ["B04", "B02"]
    np.testing.assert_array_equal(a.read(w, obs, bands), b.read(w, obs, bands))


def test_stac_items_errors(tmp_path: Path, values: np.ndarray) -> None:
    items = write_items(tmp_path / "stac", values)
    doc = json.loads(items.read_text())
    # Two items of one date.
    doc2 = json.loads(items.read_text())
    doc2["features"][1]["properties"]["datetime"] = doc2["features"][0]["properties"]["datetime"]
    (tmp_path / "dup.json").write_text(json.dumps(doc2))
    with pytest.raises(InputRasterError, match="are both dated 2021-01-05; expected one item per date"):
        open_stack(tmp_path / "dup.json")
    # A remote asset.
    doc3 = json.loads(items.read_text())
    doc3["features"][0]["assets"]["B02"]["href"] = "https://example.com/B02.tif"
    (tmp_path / "stac" / "remote.json").write_text(json.dumps(doc3))
    with pytest.raises(InputRasterError, match=r"is remote .*expected local files"):
        open_stack(tmp_path / "stac" / "remote.json")
    # An asset on another grid.
    with rasterio.open(tmp_path / "stac" / "off.tif", "w", **(profile(1) | {"width": 10})) as ds:
        ds.write(values[0, :1, :, :10])
    doc["features"][2]["assets"]["green"]["href"] = "off.tif"
    (tmp_path / "stac" / "offgrid.json").write_text(json.dumps(doc))
    with pytest.raises(InputRasterError, match=r"is on another grid .*expected every asset on one grid"):
        open_stack(tmp_path / "stac" / "offgrid.json")
    # Not an item collection.
    (tmp_path / "notstac.json").write_text('{"hello": 1}')
    with pytest.raises(InputRasterError, match="is not a STAC item collection"):
        open_stack(tmp_path / "notstac.json")
