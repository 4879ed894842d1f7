"""cropmap: crop-type maps from Sentinel-2 time series with ONNX model bundles.

The public API::

    import cropmap
    summary = cropmap.classify("s2_stack.tif", "cropland.gpkg", out="map.tif", confidence=True)
    summary.pixels.classified, summary.outputs.map                   # the run summary, a typed record
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

from collections.abc import Callable, Iterable, Mapping
from importlib import metadata as _metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from typing_extensions import Unpack

from cropmap.contract.metadata import BundleMetadata
from cropmap.errors import CropmapError
from cropmap.options import ClassifyOptions, ClassifyOptionsKw, RegionOptionsKw
from cropmap.runtime import load_bundle
from cropmap.summary import RunSummary

if TYPE_CHECKING:
    from cropmap.batch import HPCCluster
    from cropmap.regions import Region

try:
    __version__ = _metadata.version("cropmap")
except _metadata.PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"

__all__ = [
    "BundleMetadata",
    "ClassifyOptions",
    "CropmapError",
    "RunSummary",
    "__version__",
    "classify",
    "classify_array",
    "classify_many",
    "classify_parcels",
    "load_bundle",
    "write_class_map",
]


def classify(
    stack: str | Path,
    mask: str | Path | None,
    *,
    model: str | Path | None = None,
    out: str | Path | None = None,
    options: ClassifyOptions | None = None,
    progress: Callable[[int, int], None] | None = None,
    parcels: str | Path | None = None,
    declared_column: str | None = None,
    declared_classes: str | Path | None = None,
    **option_kw: Unpack[ClassifyOptionsKw],
) -> RunSummary:
    """Classify a stack's cropland and write the outputs; see :func:`cropmap.pipeline.classify`."""
    from cropmap.pipeline import classify as _classify

    return _classify(
        stack,
        mask,
        model=model,
        out=out,
        options=options,
        progress=progress,
        parcels=parcels,
        declared_column=declared_column,
        declared_classes=declared_classes,
        **option_kw,
    )


def classify_array(
    stack: str | Path,
    mask: str | Path,
    *,
    model: str | Path | None = None,
    options: ClassifyOptions | None = None,
    progress: Callable[[int, int], None] | None = None,
    **option_kw: Unpack[ClassifyOptionsKw],
) -> Any:  # xarray.DataArray (xarray is imported when first used)
    """Classify in memory to an ``xarray.DataArray``; see :func:`cropmap.pipeline.classify_array`."""
    from cropmap.pipeline import classify_array as _classify_array

    return _classify_array(stack, mask, model=model, options=options, progress=progress, **option_kw)


def classify_many(
    regions: str | Path | Iterable[Region | Mapping[str, Any]],
    *,
    out_dir: str | Path,
    model: str | Path | None = None,
    scheduler: str | None = None,
    workers: int | None = None,
    options: ClassifyOptions | None = None,
    progress: Callable[[int, int], None] | None = None,
    cluster: HPCCluster | None = None,
    dashboard: str | None = None,
    worker_timeout: float | None = None,
    pending_timeout: float | None = None,
    **option_kw: Unpack[RegionOptionsKw],
) -> dict[str, Any]:
    """Classify many regions in parallel on dask.distributed, resumably; see :func:`cropmap.batch.classify_many`.

    ``worker_timeout`` / ``pending_timeout``: ``None`` keeps :func:`cropmap.batch.classify_many`'s defaults.
    """
    from cropmap.batch import classify_many as _classify_many

    timeouts = {
        k: v
        for k, v in (("worker_timeout", worker_timeout), ("pending_timeout", pending_timeout))
        if v is not None
    }
    return _classify_many(
        regions,
        out_dir=out_dir,
        model=model,
        scheduler=scheduler,
        workers=workers,
        options=options,
        progress=progress,
        cluster=cluster,
        dashboard=dashboard,
        **timeouts,
        **option_kw,
    )


def classify_parcels(
    stack: str | Path,
    parcels: Any,
    *,
    mask: str | Path | None = None,
    model: str | Path | None = None,
    declared_column: str | None = None,
    declared_classes: str | Path | Mapping[str, str] | None = None,
    options: ClassifyOptions | None = None,
    progress: Callable[[int, int], None] | None = None,
    **option_kw: Unpack[ClassifyOptionsKw],
) -> Any:  # geopandas.GeoDataFrame
    """A crop per parcel as a GeoDataFrame; see :func:`cropmap.pipeline.classify_parcels`."""
    from cropmap.pipeline import classify_parcels as _classify_parcels

    return _classify_parcels(
        stack,
        parcels,
        mask=mask,
        model=model,
        declared_column=declared_column,
        declared_classes=declared_classes,
        options=options,
        progress=progress,
        **option_kw,
    )


def write_class_map(data: Any, path: str | Path, *, overwrite: bool = False) -> Path:
    """Write a class DataArray with legend and colour table; see :func:`cropmap.writer.write_class_map`."""
    from cropmap.writer import write_class_map as _write_class_map

    return _write_class_map(data, path, overwrite=overwrite)
