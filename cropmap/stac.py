"""A STAC Item describing a run's outputs, so that a catalogue can index the map.

The Item (STAC 1.0.0) uses the projection (v2.0.0: ``proj:code``, ``proj:shape``,
``proj:transform``, ``proj:bbox``), raster (v1.1.0: ``raster:bands``) and
classification (v2.0.0: ``classification:classes`` with ``value``, ``name``,
``color_hint``) extensions. Asset ``href``s are relative to the Item's folder (the
outputs sit beside it), so the folder can be moved as a whole.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from affine import Affine
from rasterio.crs import CRS

from cropmap.contract.metadata import ClassInfo

if TYPE_CHECKING:
    from cropmap.summary import RunSummary
    from cropmap.writer import OutputPaths

STAC_VERSION = "1.0.0"
PROJECTION_EXT = "https://stac-extensions.github.io/projection/v2.0.0/schema.json"
RASTER_EXT = "https://stac-extensions.github.io/raster/v1.1.0/schema.json"
CLASSIFICATION_EXT = "https://stac-extensions.github.io/classification/v2.0.0/schema.json"
COG_TYPE = "image/tiff; application=geotiff; profile=cloud-optimized"


def _footprint(
    crs: CRS, transform: Affine, shape: tuple[int, int]
) -> tuple[list[float], dict[str, Any], list[float]]:
    """WGS84 bbox, GeoJSON polygon footprint, and the native-CRS bbox of the grid."""
    from pyproj import Transformer

    h, w = shape
    corners = [transform @ (c, r) for c, r in ((0, 0), (w, 0), (w, h), (0, h))]
    xs, ys = [p[0] for p in corners], [p[1] for p in corners]
    native = [min(xs), min(ys), max(xs), max(ys)]
    # Densify the edges so the lon/lat footprint follows the projected outline.
    edge = []
    n = 16
    for (x0, y0), (x1, y1) in zip(corners, corners[1:] + corners[:1], strict=True):
        edge += [(x0 + (x1 - x0) * i / n, y0 + (y1 - y0) * i / n) for i in range(n)]
    tf = Transformer.from_crs(crs, "EPSG:4326", always_xy=True)
    lon, lat = tf.transform([p[0] for p in edge], [p[1] for p in edge])
    ring = [[round(float(a), 7), round(float(b), 7)] for a, b in zip(lon, lat, strict=True)]
    ring.append(ring[0])
    bbox = [
        min(p[0] for p in ring),
        min(p[1] for p in ring),
        max(p[0] for p in ring),
        max(p[1] for p in ring),
    ]
    return bbox, {"type": "Polygon", "coordinates": [ring]}, native


def _proj_code(crs: CRS) -> dict[str, Any]:
    epsg = crs.to_epsg()
    if epsg is not None:
        return {"proj:code": f"EPSG:{epsg}"}
    return {"proj:code": None, "proj:wkt2": crs.to_wkt()}


def build_item(
    summary: RunSummary,
    *,
    paths: OutputPaths,
    classes: Sequence[ClassInfo],
    embedding_bands: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The STAC Item of a run (a JSON-serialisable dict), read from its run summary.

    Args:
        summary: The run summary: grid, season and dates, model, areas, creation time and version.
        paths: The run's output paths (asset ``href``s are relative to the map's folder).
        classes: The bundle's classes (codes, names, colours), for ``classification:classes``.
        embedding_bands: The embedding raster's ``raster:bands`` (its storage type, scale and offset).
    """
    grid, season = summary.grid, summary.season
    crs = CRS.from_user_input(grid.crs)
    transform = Affine(*grid.transform)
    shape = (grid.height, grid.width)
    dates = [dt.date.fromisoformat(d) for d in season.dates_used]
    model_name = summary.bundle.model_name
    calibrated = summary.bundle.calibration is not None
    area_ha = summary.area_ha()
    bbox, geometry, native = _footprint(crs, transform, shape)
    folder = paths.map.parent
    res = abs(transform.a)

    def href(p: Path) -> str:
        return "./" + p.relative_to(folder).as_posix()

    class_list = [
        {
            "value": c.code,
            "name": c.name,
            "color_hint": c.color[1:].upper(),
            "description": f"{area_ha.get(c.code, 0.0):.4f} ha mapped",
        }
        for c in sorted(classes, key=lambda c: c.code)
    ]
    class_list.insert(
        0,
        {
            "value": 0,
            "name": "not_classified",
            "nodata": True,
            "description": "outside the cropland mask, or too few valid observations",
        },
    )
    percent = {"data_type": "uint8", "nodata": 255, "scale": 0.01, "offset": 0.0, "spatial_resolution": res}
    prob_note = "calibrated (temperature scaling)" if calibrated else "uncalibrated softmax"
    assets: dict[str, Any] = {
        "map": {
            "href": href(paths.map),
            "type": COG_TYPE,
            "title": "crop-type class map",
            "roles": ["data"],
            "raster:bands": [
                {"data_type": "uint8", "nodata": 0, "spatial_resolution": res, "sampling": "area"}
            ],
            "classification:classes": class_list,
        },
        "legend_aux": {
            "href": href(paths.aux),
            "type": "application/xml",
            "title": "GDAL PAM sidecar: category names, RAT",
            "roles": ["metadata"],
        },
        "qgis_style": {
            "href": href(paths.qml),
            "type": "application/xml",
            "title": "QGIS style (paletted, labelled)",
            "roles": ["style"],
        },
        "summary": {
            "href": href(paths.summary),
            "type": "application/json",
            "title": "cropmap run summary",
            "roles": ["metadata"],
        },
    }
    if paths.confidence is not None:
        assets["confidence"] = {
            "href": href(paths.confidence),
            "type": COG_TYPE,
            "roles": ["data", "confidence"],
            "title": f"max class probability x 100 ({prob_note})",
            "raster:bands": [percent | {"unit": "percent"}],
        }
    if paths.probabilities is not None:
        assets["probabilities"] = {
            "href": href(paths.probabilities),
            "type": COG_TYPE,
            "roles": ["data"],
            "title": f"class probabilities x 100, one band per class ({prob_note})",
            "raster:bands": [percent | {"unit": "percent", "name": c.name} for c in classes],
        }
    if paths.uncertainty is not None:
        assets["uncertainty"] = {
            "href": href(paths.uncertainty),
            "type": COG_TYPE,
            "roles": ["data"],
            "title": "uncertainty x 100 (0 certain .. 100 uncertain)",
            "raster:bands": [percent],
        }
    if paths.embedding is not None:
        if embedding_bands is None:
            raise ValueError("the run wrote an embedding raster; expected its embedding_bands")
        bands = [b | {"spatial_resolution": res} for b in embedding_bands]
        assets["embedding"] = {
            "href": href(paths.embedding),
            "type": COG_TYPE,
            "roles": ["data"],
            "title": "per-pixel embedding",
            "raster:bands": bands,
        }
    if paths.quicklook is not None:
        assets["quicklook"] = {
            "href": href(paths.quicklook),
            "type": "image/png",
            "title": "quick-look with legend",
            "roles": ["overview"],
        }
    start = min(dates).isoformat() + "T00:00:00Z"
    end = max(dates).isoformat() + "T23:59:59Z"
    return {
        "type": "Feature",
        "stac_version": STAC_VERSION,
        "stac_extensions": [PROJECTION_EXT, RASTER_EXT, CLASSIFICATION_EXT],
        "id": paths.map.stem,
        "bbox": bbox,
        "geometry": geometry,
        "properties": {
            "datetime": None,
            "start_datetime": start,
            "end_datetime": end,
            "created": summary.created,
            "title": f"crop types, season {season.year} ({model_name})",
            **_proj_code(crs),
            "proj:shape": [int(shape[0]), int(shape[1])],
            "proj:transform": [float(v) for v in list(transform)[:6]],
            "proj:bbox": [float(v) for v in native],
            **({"gsd": res} if crs.is_projected else {}),
            "cropmap:version": summary.cropmap_version,
            "cropmap:model": model_name,
            "cropmap:season": season.year,
            "cropmap:calibrated": calibrated,
            "cropmap:pixel_area_m2": grid.pixel_area_m2,
        },
        "links": [],
        "assets": assets,
    }
