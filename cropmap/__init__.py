"""cropmap: crop-type maps from Sentinel-2 time series with ONNX model bundles.

The public API::

    import cropmap
    summary = cropmap.classify("s2_stack.tif", "cropland.gpkg", out="map.tif", confidence=True)
    da = cropmap.classify_array("s2_stack.tif", "cropland.gpkg")
    batch = cropmap.classify_many("regions.csv", out_dir="maps", confidence=True)
    fields = cropmap.classify_parcels("s2_stack.tif", parcels_gdf)   # a crop per parcel (GeoDataFrame)
    cropmap.write_class_map(da, "map.tif")                           # legend + colour table, like classify
    from cropmap.assess import assess                                  # accuracy and areas (cropmap assess)

``mask=None`` classifies the whole stack.

``import cropmap`` stays light: heavy dependencies load when first used, and torch
is never imported.
"""

from __future__ import annotations

from importlib import metadata as _metadata
from typing import TYPE_CHECKING, Any

from cropmap.contract.metadata import BundleMetadata
from cropmap.errors import CropmapError
from cropmap.options import ClassifyOptions
from cropmap.runtime import load_bundle

if TYPE_CHECKING:
    from pathlib import Path

try:
    __version__ = _metadata.version("cropmap")
except _metadata.PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"

__all__ = [
    "BundleMetadata",
    "ClassifyOptions",
    "CropmapError",
    "__version__",
    "classify",
    "classify_array",
    "classify_many",
    "classify_parcels",
    "load_bundle",
    "write_class_map",
]


def classify(stack: str | Path, mask: str | Path | None, **kwargs: Any) -> dict[str, Any]:
    """Classify a stack's cropland and write the outputs; see :func:`cropmap.pipeline.classify`."""
    from cropmap.pipeline import classify as _classify

    return _classify(stack, mask, **kwargs)


def classify_array(stack: str | Path, mask: str | Path | None, **kwargs: Any) -> Any:
    """Classify in memory to an ``xarray.DataArray``; see :func:`cropmap.pipeline.classify_array`."""
    from cropmap.pipeline import classify_array as _classify_array

    return _classify_array(stack, mask, **kwargs)


def classify_many(regions: Any, **kwargs: Any) -> dict[str, Any]:
    """Classify many regions in parallel on dask.distributed, resumably; see :func:`cropmap.batch.classify_many`."""
    from cropmap.batch import classify_many as _classify_many

    return _classify_many(regions, **kwargs)


def classify_parcels(stack: str | Path, parcels: Any, **kwargs: Any) -> Any:
    """A crop per parcel as a GeoDataFrame; see :func:`cropmap.pipeline.classify_parcels`."""
    from cropmap.pipeline import classify_parcels as _classify_parcels

    return _classify_parcels(stack, parcels, **kwargs)


def write_class_map(data: Any, path: str | Path, **kwargs: Any) -> Any:
    """Write a class DataArray with legend and colour table; see :func:`cropmap.writer.write_class_map`."""
    from cropmap.writer import write_class_map as _write_class_map

    return _write_class_map(data, path, **kwargs)
