"""A STAC item collection as a Sentinel-2 stack: one item per date, one Cloud-Optimised GeoTIFF asset per band.

This is what a STAC API search returns (``pystac_client``'s ``item_collection().save_object(...)``, or the
``FeatureCollection`` JSON of the ``/search`` endpoint) saved to a file. The JSON is read with pystac,
the reference STAC library; pixels are read lazily, block by block, from the assets with rasterio, exactly
as the other stack layouts are (:meth:`cropmap.stack.Stack.read`), so an item collection classifies to
the same bytes as the equivalent GeoTIFF stack.

Nothing is guessed (docs/input-formats.md):

* the date of an item is its ``datetime`` (UTC calendar date); two items of one date are an error;
* the band of an asset is, in this order, the name in its ``eo:bands`` (STAC 1.0) or ``bands`` (STAC 1.1)
  when that is a Sentinel-2 band, its key when that is one (``B02``, ``b8a``), or the Sentinel-2 band of
  its EO common name as STAC catalogues of Sentinel-2 L2A name them (``blue`` = B02, ..., ``nir08`` = B8A,
  ``scl`` = SCL); other assets (thumbnails, metadata, previews) are not used;
* nodata comes from each file (as for GeoTIFF stacks); the reflectance scale from the asset's
  ``raster:bands`` ``scale``/``offset`` when it declares them (STAC catalogues of L2A products do,
  their COGs often do not), else from the file;
* every asset must lie on one grid (CRS, transform, size): bands of other resolutions must be resampled
  first.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from cropmap.contract.bands import canonical_band
from cropmap.errors import InputRasterError

logger = logging.getLogger(__name__)

COMMON_NAMES = {
    "coastal": "B01",
    "blue": "B02",
    "green": "B03",
    "red": "B04",
    "rededge1": "B05",
    "rededge2": "B06",
    "rededge3": "B07",
    "nir": "B08",
    "nir08": "B8A",
    "nir09": "B09",
    "cirrus": "B10",
    "swir16": "B11",
    "swir22": "B12",
}
"""EO common names (and Earth Search asset keys) of the Sentinel-2 MSI bands."""
EXTRA_BANDS = {"scl": "SCL", "clp": "CLP", "cld": "CLD"}
"""Asset keys of cloud information used as the bands of the same name (:mod:`cropmap.contract.clouds`)."""
_RASTER_TYPES = ("image/tiff", "image/vnd.stac.geotiff")


def open_stac_items(path: Path) -> Any:  # cropmap.stack.Stack
    """Open a STAC item collection file as a stack (headers only: every asset's header is checked).

    Raises:
        InputRasterError: If the file is not an item collection, an item has no date or two share one,
            an asset is remote or missing, not a GeoTIFF, or off the grid of the others, or the assets
            declare different reflectance scales.
    """
    import pystac

    from cropmap.stack import (
        ReflectanceScale,
        Stack,
        _check_complete,
        _common_bands,
        _declared_scale,
        _open_dataset,
        _same_grid,
    )

    try:
        collection = pystac.ItemCollection.from_file(str(path))
    except Exception as err:
        raise InputRasterError(
            f"{path} is not a STAC item collection ({type(err).__name__}: {' '.join(str(err).split())[:200]}); "
            "expected a GeoJSON FeatureCollection of STAC items, as a STAC API search returns"
        ) from err
    items = list(collection)
    if not items:
        raise InputRasterError(f"{path} holds no STAC items; expected one item per date")
    by_date: dict[dt.date, Any] = {}
    for item in items:
        when = item.datetime or _start(item)
        if when is None:
            raise InputRasterError(f"STAC item {item.id!r} in {path} has no datetime; expected one per item")
        day = (when.astimezone(dt.timezone.utc) if when.tzinfo else when).date()
        if day in by_date:
            raise InputRasterError(
                f"STAC items {by_date[day].id!r} and {item.id!r} in {path} are both dated {day}; expected one item "
                "per date (one tile, or mosaic the tiles of a day first)"
            )
        by_date[day] = item
    dates = tuple(sorted(by_date))
    ref: dict[str, Any] | None = None
    band_files: list[dict[str, Path]] = []
    band_index: list[dict[str, int]] = []
    nodata: list[float | None] = []
    scales: dict[Path, ReflectanceScale | None] = {}
    for d in dates:
        item = by_date[d]
        files: dict[str, Path] = {}
        for key, asset in item.assets.items():
            band = _asset_band(key, asset)
            if band is None:
                continue
            if band in files:
                raise InputRasterError(
                    f"STAC item {item.id!r} in {path}: band {band} appears in two assets; "
                    "expected one asset per band"
                )
            f = _local_file(asset.href, path, item.id, key)
            with _open_dataset(f) as src:
                _check_complete(src, f)
                ref = _same_grid(
                    src,
                    f,
                    ref,
                    label=f"asset {key!r} of STAC item {item.id!r} ({f.name})",
                    expected="every asset on one grid (resample bands of other resolutions first)",
                )
                declared = _raster_bands(asset.extra_fields)
                nodata.append(_file_nodata(src))
                if band.startswith("B"):  # reflectance bands carry the scale; cloud bands have none
                    scales[f] = _asset_scale(declared) or _declared_scale(src, f)
            files[band] = f
        band_files.append(files)
        band_index.append(dict.fromkeys(files, 1))
    bands = _common_bands(path, [list(f) for f in band_files], [str(d) for d in dates])
    if ref is None or not bands:
        raise InputRasterError(
            f"{path}: no asset names a Sentinel-2 band; expected assets keyed or described by band (B02, blue, ...)"
        )
    found = {(s.gain, s.offset) for s in scales.values() if s is not None}
    if len(found) > 1 or (found and any(s is None for s in scales.values())):
        raise InputRasterError(
            f"the assets of {path} declare different reflectance scales ({sorted(found)}, some none); "
            "expected one scale for every band"
        )
    scale = next((s for s in scales.values() if s is not None), None)
    return Stack(
        path=path,
        layout="stac-items",
        dates=dates,
        sources=tuple(next(iter(f.values())) for f in band_files),
        band_index=tuple(band_index),
        bands=bands,
        crs=ref["crs"],
        transform=ref["transform"],
        height=ref["shape"][0],
        width=ref["shape"][1],
        dtype=str(ref["dtype"]),
        nodata=tuple(nodata),
        tile_shape=ref["tile"],
        scale=scale,
        band_files=tuple(band_files),
    )


def _start(item: Any) -> dt.datetime | None:
    start = item.properties.get("start_datetime")
    return dt.datetime.fromisoformat(start.replace("Z", "+00:00")) if start else None


def _asset_band(key: str, asset: Any) -> str | None:
    """The band an asset holds, or ``None`` for assets that are not raster bands of the stack."""
    media = (asset.media_type or "").split(";")[0].strip().lower()
    if media and media not in _RASTER_TYPES:
        return None
    if asset.roles and "data" not in asset.roles:
        return None
    described = asset.extra_fields.get("eo:bands") or asset.extra_fields.get("bands") or []
    fields = [b for b in described if isinstance(b, dict)]
    names: list[str] = [b["name"] for b in fields if isinstance(b.get("name"), str) and b["name"]]
    commons: list[str] = [
        b["common_name"] for b in fields if isinstance(b.get("common_name"), str) and b["common_name"]
    ]
    for name in [*names, key]:
        try:
            return canonical_band(name)
        except ValueError:
            pass
    for name in [*commons, key]:
        if name.lower() in COMMON_NAMES:
            return COMMON_NAMES[name.lower()]
    if key.lower() in EXTRA_BANDS:
        return EXTRA_BANDS[key.lower()]
    logger.debug("asset %r (%s) is not a band of the stack; not used", key, media or "no media type")
    return None


def _local_file(href: str, collection: Path, item_id: str, key: str) -> Path:
    url = urlparse(href)
    if url.scheme in ("", "file"):
        p = Path(unquote(url.path) if url.scheme == "file" else href).expanduser()
        p = p if p.is_absolute() else (collection.parent / p)
        if not p.is_file():
            raise InputRasterError(
                f"asset {key!r} of STAC item {item_id!r}: {p} does not exist; expected a COG there"
            )
        return p.resolve()
    raise InputRasterError(
        f"asset {key!r} of STAC item {item_id!r} is remote ({href}); expected local files (download the COGs and "
        "point the hrefs at them)"
    )


def _raster_bands(fields: dict[str, Any]) -> dict[str, Any]:
    declared = fields.get("raster:bands") or []
    return declared[0] if declared and isinstance(declared[0], dict) else {}


def _file_nodata(src: Any) -> float | None:
    vals = {v for v in src.nodatavals if v is not None}
    return float(next(iter(vals))) if len(vals) == 1 else (float("nan") if vals else None)


def _asset_scale(declared: dict[str, Any]) -> Any:  # ReflectanceScale | None
    from cropmap.stack import ReflectanceScale

    if "scale" not in declared and "offset" not in declared:
        return None
    gain, offset = float(declared.get("scale", 1.0)), float(declared.get("offset", 0.0))
    if not math.isfinite(gain) or gain <= 0 or not math.isfinite(offset):
        raise InputRasterError(f"raster:bands scale {gain} / offset {offset}; expected a positive scale")
    return ReflectanceScale(gain=gain, offset=offset, source="STAC raster:bands scale/offset")
