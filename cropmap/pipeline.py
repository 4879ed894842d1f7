"""The classification pipeline: stack -> mask -> blocks -> kernel -> outputs.

:func:`classify` writes the outputs and returns the run summary (:class:`~cropmap.summary.RunSummary`);
:func:`classify_array` returns the class map in memory as an xarray DataArray; :func:`classify_parcels` a crop
per parcel as a GeoDataFrame. All three share the preparation and per-block work of :mod:`cropmap.plan`, so their
results are identical; the outputs are declared in :mod:`cropmap.outputs`.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from typing_extensions import Unpack

from cropmap.contract.clouds import no_cloud_message
from cropmap.errors import InputRasterError
from cropmap.options import ClassifyOptions, ClassifyOptionsKw
from cropmap.outputs import (
    RasterGrid,
    RasterOutput,
    claim_outputs,
    least_output_bytes,
    probability_note,
    raster_outputs,
    refuse_inputs_as_outputs,
    scratch_raster,
)
from cropmap.plan import (
    Plan,
    ProgressCallback,
    Tally,
    absolute,
    block_results,
    options_from,
    prepare,
    stack_bounds,
)
from cropmap.predict import CONFIDENCE_NODATA
from cropmap.summary import (
    Blocks,
    BundleInfo,
    ClassArea,
    Clouds,
    Grid,
    Inputs,
    Outputs,
    Pixels,
    PostProcessing,
    RunSummary,
    Runtime,
    Season,
    StackInfo,
    Timings,
)

if TYPE_CHECKING:
    from cropmap.writer import BlockRaster, OutputPaths, Staging

logger = logging.getLogger(__name__)

__all__ = ["ProgressCallback", "classify", "classify_array", "classify_parcels"]


def classify(
    stack: str | Path,
    mask: str | Path | None,
    *,
    model: str | Path | None = None,
    out: str | Path | None = None,
    options: ClassifyOptions | None = None,
    progress: ProgressCallback | None = None,
    parcels: str | Path | None = None,
    declared_column: str | None = None,
    declared_classes: str | Path | None = None,
    **option_kw: Unpack[ClassifyOptionsKw],
) -> RunSummary:
    """Classify the cropland of a Sentinel-2 stack and write the outputs.

    Args:
        stack: A time-major GeoTIFF stack or a folder of per-date GeoTIFFs.
        mask: Cropland polygons (any OGR format); ``None``: the whole stack (every pixel with
            enough valid observations is classified).
        model: A cropmap bundle; default the sample bundle shipped with cropmap.
        out: The class-map GeoTIFF to write; default ``<stack stem>_classified.tif``
            in the current directory. Other outputs are named after it.
        options: Runtime options; or pass them as keywords (``confidence=True``, ...).
        progress: Called as ``progress(done, total)`` after each block.
        parcels: Parcel polygons: also write ``<out stem>_parcels.gpkg`` (a crop per parcel,
            :mod:`cropmap.parcels`) and its QGIS style ``<out stem>_parcels.qml``.
        declared_column: Column of ``parcels`` holding each parcel's declared crop (checked
            against the parcel's probabilities).
        declared_classes: CSV mapping declared codes or names to the bundle's classes.
        **option_kw: Fields of :class:`~cropmap.options.ClassifyOptions`.

    Returns:
        The run summary (also written to ``<out stem>_summary.json``).

    Raises:
        CropmapError: For bad inputs, an incompatible bundle or existing outputs; an
            output that is an input (:class:`~cropmap.errors.InputOverwriteError`), an
            output another run is writing (:class:`~cropmap.errors.RunLockedError`), an
            I/O fault (:class:`~cropmap.errors.FileSystemError`), or a run that
            classified no pixel (:class:`~cropmap.errors.NothingClassifiedError`).
            Nothing is then left at the final paths (docs/faults.md).
    """
    t_start = time.perf_counter()
    opts = options_from(options, dict(option_kw))
    paths = _request(stack, mask, model, out, opts, parcels, declared_column, declared_classes)
    declared_map = None
    if declared_classes is not None:
        from cropmap.parcels import read_declared_map

        declared_map = read_declared_map(declared_classes)
    plan = prepare(stack, mask, model, opts, parcels=parcels, declared_column=declared_column)
    inputs_extra = _extra_inputs(parcels, declared_classes)
    refuse_inputs_as_outputs(paths, stack, mask, model, plan.stack.files, extra=inputs_extra)
    rasters = raster_outputs(plan.meta, opts, paths, plan.season)
    least = least_output_bytes(rasters, sum(i.block.height * i.block.width for i in plan.items))
    with claim_outputs(paths, opts, least) as staging:
        run = _write_rasters(plan, paths, rasters, staging, progress)
        summary = _summarise(
            plan, run, paths, opts, total_s=time.perf_counter() - t_start, removed=staging.stale
        )
        if run.parcels is not None:
            summary = _write_parcels(plan, run, paths, staging, summary, declared_column, declared_map)
        staging.temp_for(paths.summary).write_text(summary.to_json(), encoding="utf-8")
        _write_stac(plan, run, paths, staging, summary)
        _refuse_empty_result(plan, run.tally.n_mask, run.tally.n_insufficient, run.tally.n_classified)
        staging.commit(remove=staging.stale, journal=staging.journal)
    logger.info(
        "classified %d of %d cropland pixels in %.2f s -> %s",
        run.tally.n_classified,
        run.tally.n_mask,
        summary.timings_s.total,
        paths.map,
    )
    return summary


def _extra_inputs(parcels: str | Path | None, declared_classes: str | Path | None) -> dict[Path, str]:
    """The inputs besides stack, mask and model that no output may be."""
    named = ((parcels, "parcels"), (declared_classes, "declared-crop map"))
    return {Path(p): what for p, what in named if p is not None}


def _request(
    stack: str | Path,
    mask: str | Path | None,
    model: str | Path | None,
    out: str | Path | None,
    opts: ClassifyOptions,
    parcels: str | Path | None,
    declared_column: str | None,
    declared_classes: str | Path | None,
) -> OutputPaths:
    """The output paths of the request, after the checks that need no input opened.

    The output must be a GeoTIFF, no output may be an input, and existing outputs need ``overwrite``.
    """
    from cropmap.safeio.commit import journal_path
    from cropmap.writer import check_outputs, output_paths

    stack_path = Path(stack)
    out_path = (
        Path(out) if out is not None else Path.cwd() / f"{stack_path.with_suffix('').name}_classified.tif"
    )
    if out_path.suffix.lower() not in (".tif", ".tiff"):
        raise InputRasterError(f"output {out_path} must end in .tif or .tiff (it is a GeoTIFF)")
    paths = output_paths(
        out_path,
        confidence=opts.confidence,
        embedding=opts.embedding,
        quicklook=opts.quicklook,
        probabilities=opts.probabilities,
        uncertainty=opts.uncertainty is not None,
        parcels=parcels is not None,
    )
    if parcels is None and (declared_column is not None or declared_classes is not None):
        raise InputRasterError("a declared-crop check (declared_column / declared_classes) needs parcels")
    if declared_classes is not None and declared_column is None:
        raise InputRasterError(
            "declared_classes maps the declared crops of declared_column; name that column too"
        )
    refuse_inputs_as_outputs(paths, stack, mask, model, extra=_extra_inputs(parcels, declared_classes))
    # A commit journal: a run was killed while moving its outputs into place; the set is repaired under the
    # lock (claim_outputs) before the outputs are checked again, so only the kinds of path are checked here.
    try:
        torn = journal_path(paths.map).is_file()
    except OSError:  # e.g. a path too long: check_outputs names it
        torn = False
    check_outputs(paths, overwrite=opts.overwrite or torn)
    return paths


@dataclass
class _Written:
    """What writing the rasters left for the summary, the parcels and the STAC item."""

    tally: Tally
    parcels: Any = None  # parcels.ParcelTally | None
    rasters: dict[str, BlockRaster] = field(default_factory=dict)
    write_s: float = 0.0
    insufficient_m2: float = 0.0


def _write_rasters(
    plan: Plan,
    paths: OutputPaths,
    outputs: list[RasterOutput],
    staging: Staging,
    progress: ProgressCallback | None,
) -> _Written:
    """Run the blocks, write each block to every output raster, and finish the rasters, legend and quick-look.

    Blocks without cropland are never written: their tiles stay empty (nodata) in the sparse outputs.
    """
    from cropmap.writer import write_aux_xml, write_qml

    run = _Written(tally=Tally(plan))
    if plan.parcels is not None:
        from cropmap.parcels import ParcelTally

        run.parcels = ParcelTally(len(plan.parcels), len(plan.meta.classes))
    st = plan.stack
    grid = RasterGrid(crs=st.crs, transform=st.transform, shape=st.shape)
    status = _Status(staging, paths.map, grid) if paths.quicklook is not None else None
    try:
        try:
            for o in outputs:
                run.rasters[o.name] = o.open(staging, grid)
            for result in block_results(plan, progress):
                run.tally.add(result)
                if run.parcels is not None:
                    run.parcels.add(result.prediction.parcel_stats)
                t0 = time.perf_counter()
                w, p = result.block.window, result.prediction
                for o in outputs:
                    run.rasters[o.name].write(w, o.block(p))
                if p.insufficient is not None:
                    b = result.block
                    rows = run.tally.row_area[b.row_off : b.row_off + b.height]
                    run.insufficient_m2 += float(p.insufficient.sum(axis=1) @ rows)
                if status is not None:
                    status.write(w, p.classes, p.insufficient)
                run.write_s += time.perf_counter() - t0
            t0 = time.perf_counter()
            for o in outputs:
                run.rasters[o.name].to_cog(staging.temp_for(o.final))
            write_aux_xml(staging.temp_for(paths.aux), plan.meta.classes)
            write_qml(staging.temp_for(paths.qml), plan.meta.classes)
        finally:
            for r in run.rasters.values():
                r.close()
        if status is not None:
            _write_quicklook(plan, run, paths, staging, status)
    finally:
        if status is not None:
            status.raster.close()
    run.write_s += time.perf_counter() - t0
    return run


class _Status:
    """Which unclassified pixels are outside the mask and which have too little data, for the quick-look."""

    def __init__(self, staging: Staging, final: Path, grid: RasterGrid) -> None:
        from cropmap.quicklook import STATUS_OUTSIDE

        self.raster = scratch_raster(
            staging,
            final,
            suffix=".status.tif",
            count=1,
            dtype="uint8",
            nodata=STATUS_OUTSIDE,
            crs=grid.crs,
            transform=grid.transform,
            shape=grid.shape,
        )

    def write(self, window: Any, classes: np.ndarray, insufficient: np.ndarray | None) -> None:
        from cropmap.quicklook import STATUS_CLASSIFIED, STATUS_INSUFFICIENT, STATUS_OUTSIDE
        from cropmap.writer import MAP_NODATA

        block = np.where(classes != MAP_NODATA, STATUS_CLASSIFIED, STATUS_OUTSIDE).astype(np.uint8)
        if insufficient is not None:
            block[insufficient] = STATUS_INSUFFICIENT
        self.raster.write(window, block)


def _write_quicklook(
    plan: Plan, run: _Written, paths: OutputPaths, staging: Staging, status: _Status
) -> None:
    """The PNG quick-look of the finished class map (read from its staged COG)."""
    from cropmap.quicklook import MAX_SIDE_PX, write_quicklook
    from cropmap.stack import bounded_gdal_cache

    assert paths.quicklook is not None
    meta, tally = plan.meta, run.tally
    with bounded_gdal_cache():
        write_quicklook(
            staging.staged(paths.map),
            staging.temp_for(paths.quicklook),
            meta.classes,
            {int(c): float(a) / 1e4 for c, a in zip(tally.codes, tally.area_m2, strict=True)},
            title=f"{meta.model_name} - {plan.stack.path.name} - season {plan.season}",
            status_path=status.raster.preview(MAX_SIDE_PX),
            insufficient_ha=run.insufficient_m2 / 1e4,
        )


def _write_parcels(
    plan: Plan,
    run: _Written,
    paths: OutputPaths,
    staging: Staging,
    summary: RunSummary,
    declared_column: str | None,
    declared_map: Any,
) -> RunSummary:
    """Write the per-parcel GeoPackage and its style; the summary with its ``parcels`` section."""
    from cropmap.parcels import write_qml as write_parcel_qml

    assert paths.parcels is not None and paths.parcels_qml is not None
    table, section = _parcel_table(plan, run.parcels, declared_column, declared_map)
    table.to_file(staging.temp_for(paths.parcels), layer="parcels", driver="GPKG")
    write_parcel_qml(
        staging.temp_for(paths.parcels_qml), plan.meta.classes, by_status=declared_column is not None
    )
    return dataclasses.replace(summary, parcels=section)


def _write_stac(plan: Plan, run: _Written, paths: OutputPaths, staging: Staging, summary: RunSummary) -> None:
    """The STAC item of the outputs, from the run summary."""
    import json

    from cropmap.stac import build_item

    assert paths.stac is not None
    embedding = run.rasters.get("embedding")
    item = build_item(
        summary,
        paths=paths,
        classes=plan.meta.classes,
        embedding_bands=embedding.stac_bands() if embedding is not None else None,  # type: ignore[attr-defined]
    )
    staging.temp_for(paths.stac).write_text(json.dumps(item, indent=2) + "\n", encoding="utf-8")


def _summarise(
    plan: Plan,
    run: _Written,
    paths: OutputPaths,
    opts: ClassifyOptions,
    *,
    total_s: float,
    removed: list[Path],
) -> RunSummary:
    """The run summary of a finished run (without its ``parcels`` section)."""
    from cropmap import __version__

    st, meta, tally = plan.stack, plan.meta, run.tally
    total = st.height * st.width
    embedding = run.rasters.get("embedding")
    return RunSummary(
        cropmap_version=__version__,
        created=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        inputs=_inputs(plan),
        outputs=Outputs.of(paths),
        bundle=BundleInfo(
            model_name=meta.model_name,
            schema_version=meta.schema_version,
            bands=list(meta.bands),
            classes=len(meta.classes),
            provenance=dataclasses.asdict(meta.provenance),
            calibration=dataclasses.asdict(meta.calibration) if meta.calibration is not None else None,
            probabilities=probability_note(meta, opts),
            precision=dataclasses.asdict(meta.precision) if meta.precision is not None else {"dtype": "fp32"},
        ),
        postprocessing=PostProcessing(
            majority_filter=opts.majority_filter,
            smooth_probabilities_sigma_px=opts.smooth_probabilities,
            halo_px=plan.job.post.halo if plan.job.post is not None else 0,
        ),
        grid=Grid(
            crs=st.crs.to_string(),
            transform=list(st.transform)[:6],
            height=st.height,
            width=st.width,
            pixel_area_m2=float(tally.row_area.mean()),
        ),
        stack=_stack(plan),
        season=_season(plan),
        clouds=_clouds(plan, tally, opts),
        pixels=Pixels(
            total=total,
            in_mask=tally.n_mask,
            classified=tally.n_classified,
            skipped_outside_mask=total - tally.n_mask,
            insufficient_data=tally.n_insufficient,
        ),
        blocks=Blocks(
            block_shape=list(plan.shape),
            total=len(plan.blocks),
            processed=len(plan.items),
            skipped=len(plan.blocks) - len(plan.items),
        ),
        classes=[
            ClassArea(
                code=c.code, name=c.name, color=c.color, pixels=int(n), area_ha=round(float(a) / 1e4, 4)
            )
            for c, n, a in zip(meta.classes, tally.pixels, tally.area_m2, strict=True)
        ],
        timings_s=Timings(
            read=round(tally.timings["read"], 4),
            fill=round(tally.timings["fill"], 4),
            model=round(tally.timings["model"], 4),
            write=round(run.write_s, 4),
            total=round(total_s, 4),
        ),
        throughput_cropland_px_per_s=round(tally.n_mask / total_s, 1) if total_s > 0 else None,
        executor=plan.executor.description,
        runtime=Runtime(
            provider_requested=opts.provider,
            providers_used=sorted(tally.providers),
            bundle_precision=meta.dtype,
            batch_size=plan.job.batch_size,
        ),
        options=dataclasses.asdict(opts),
        embedding=embedding.describe() if embedding is not None else None,  # type: ignore[attr-defined]
        removed_outputs=[str(p) for p in removed],
    )


def _inputs(plan: Plan) -> Inputs:
    """The ``inputs`` section: absolute paths of what the run read, and how the mask was read."""
    from cropmap.models import SAMPLE_NOTE, is_sample_bundle

    st, whole = plan.stack, plan.whole_stack
    return Inputs(
        stack=str(absolute(st.path)),
        stack_layout=st.layout,
        mask=None if whole else str(absolute(plan.polygons.path)),
        mask_crs=None if whole else plan.polygons.source_crs,
        mask_layer=plan.polygons.layer,
        mask_max_segment_m=plan.polygons.max_segment_m,
        mask_dropped_parts=plan.polygons.dropped_parts,
        whole_stack="no cropland mask: every pixel of the stack with enough valid observations was classified"
        if whole
        else None,
        model=str(absolute(plan.bundle_path)),
        model_note=SAMPLE_NOTE if is_sample_bundle(plan.bundle_path) else None,
    )


def _stack(plan: Plan) -> StackInfo:
    """The ``stack`` section: pixel type, nodata, reflectance scale and L1C evidence."""
    st, meta = plan.stack, plan.meta
    assert st.scale is not None
    return StackInfo(
        dtype=st.dtype,
        nodata=[v if v is None or not np.isnan(v) else "mixed" for v in st.nodata],
        nodata_note="declared nodata values are treated as missing observations"
        if st.has_nodata
        else "the stack declares no nodata value: every value was taken as valid (NaN excepted)",
        reflectance_scale=st.scale.reflectance_scale,
        reflectance_offset=st.scale.offset,
        reflectance_scale_source=st.scale.source,
        model_reflectance_scale=meta.reflectance_scale,
        l1c_evidence=list(plan.l1c_evidence),
    )


def _season(plan: Plan) -> Season:
    """The ``season`` section: the year, the dates used and ignored, the grid, the coverage."""
    st, meta = plan.stack, plan.meta
    used = set(plan.obs)
    return Season(
        year=plan.season,
        season_start=meta.time_grid.season_start,
        dates_used=[str(st.dates[i]) for i in plan.obs],
        positions_days=list(plan.positions),
        dates_ignored=[str(d) for i, d in enumerate(st.dates) if i not in used],
        coverage=plan.coverage,
        grid_days=list(meta.time_grid.day_of_season),
        gap_fill=meta.gap_fill,
        min_valid_steps=plan.min_valid,
    )


def _clouds(plan: Plan, tally: Tally, opts: ClassifyOptions) -> Clouds:
    """The ``clouds`` section of the summary: the masking rule and how many observations it masked."""
    if plan.cloud is None:
        off = opts.cloud_band is not None
        return Clouds(
            masking="off" if off else "no cloud information",
            band=None,
            masked_observations=0,
            note="--cloud-band none: the stack was declared cloud-free"
            if off
            else no_cloud_message(f"stack {absolute(plan.stack.path)}", plan.stack.bands),
        )
    n_obs, n_masked = tally.n_observations, tally.n_cloud_masked
    return Clouds(
        masking="on",
        **plan.cloud.as_dict(),  # type: ignore[arg-type]
        rule=plan.cloud.describe(),
        observations_in_mask=n_obs,
        masked_observations=n_masked,
        masked_share=round(n_masked / n_obs, 4) if n_obs else 0.0,
        note="observations of cropland pixels with valid reflectance that the cloud band marked invalid; "
        "they were filled along time like nodata",
    )


def classify_array(
    stack: str | Path,
    mask: str | Path,
    *,
    model: str | Path | None = None,
    options: ClassifyOptions | None = None,
    progress: ProgressCallback | None = None,
    **option_kw: Unpack[ClassifyOptionsKw],
) -> Any:  # xarray.DataArray (xarray is imported lazily)
    """Classify in memory and return the class map as an ``xarray.DataArray``.

    The result has dims ``("y", "x")`` with pixel-centre coordinates, uint8 class
    codes (0 = not classified), and attrs ``crs`` (WKT), ``transform``, ``nodata``,
    ``class_codes``, ``class_names``, ``class_colors`` and ``season``. With
    ``confidence=True`` a ``confidence`` coordinate (uint8, 255 = none) is attached.
    The whole map is held in memory; use :func:`classify` for large rasters, and
    :func:`cropmap.writer.write_class_map` to write the result as ``classify`` writes its map.

    Args:
        stack: A time-major GeoTIFF stack or a folder of per-date GeoTIFFs.
        mask: Cropland polygons (any OGR format); ``None``: the whole stack.
        model: A cropmap bundle; default the sample bundle shipped with cropmap.
        options: Runtime options; or pass them as keywords. ``embedding``, ``overwrite``
            and ``quicklook`` have no effect here.
        progress: Called as ``progress(done, total)`` after each block.
        **option_kw: Fields of :class:`~cropmap.options.ClassifyOptions`.
    """
    import xarray as xr

    opts = options_from(options, dict(option_kw))
    opts = dataclasses.replace(opts, embedding=False)
    plan = prepare(stack, mask, model, opts)
    st, meta = plan.stack, plan.meta
    classes = np.zeros(st.shape, dtype=np.uint8)
    conf = np.full(st.shape, CONFIDENCE_NODATA, dtype=np.uint8) if opts.confidence else None
    for result in block_results(plan, progress):
        b = result.block
        sl = (slice(b.row_off, b.row_off + b.height), slice(b.col_off, b.col_off + b.width))
        classes[sl] = result.prediction.classes
        if conf is not None and result.prediction.confidence is not None:
            conf[sl] = result.prediction.confidence
    if not classes.any():
        _refuse_empty_result(plan, None, None, 0)
    tf = st.transform
    xs = np.array([(tf @ (c + 0.5, 0.5))[0] for c in range(st.width)])
    ys = np.array([(tf @ (0.5, r + 0.5))[1] for r in range(st.height)])
    coords: dict[str, Any] = {"y": ys, "x": xs}
    if conf is not None:
        coords["confidence"] = (("y", "x"), conf)
    return xr.DataArray(
        classes,
        dims=("y", "x"),
        coords=coords,
        name="crop_class",
        attrs={
            "crs": st.crs.to_wkt(),
            "transform": list(tf)[:6],
            "nodata": 0,
            "season": plan.season,
            "class_codes": [c.code for c in meta.classes],
            "class_names": [c.name for c in meta.classes],
            "class_colors": [c.color for c in meta.classes],
            "model": meta.model_name,
        },
    )


def _parcel_table(plan: Plan, tally: Any, declared_column: str | None, declared_map: Any) -> tuple[Any, dict]:
    """The per-parcel GeoDataFrame and its summary section."""
    from cropmap.parcels import parcel_table

    table, summary = parcel_table(
        plan.parcels,
        tally,
        plan.meta.classes,
        stack_bounds(plan.stack),
        plan.stack.crs,
        declared_column=declared_column,
        declared_map=declared_map,
    )
    if plan.parcels.path is not None:
        summary["input"] = str(absolute(plan.parcels.path))
    summary["crs"] = plan.parcels.source_crs
    return table, summary


def classify_parcels(
    stack: str | Path,
    parcels: Any,
    *,
    mask: str | Path | None = None,
    model: str | Path | None = None,
    declared_column: str | None = None,
    declared_classes: str | Path | Mapping[str, str] | None = None,
    options: ClassifyOptions | None = None,
    progress: ProgressCallback | None = None,
    **option_kw: Unpack[ClassifyOptionsKw],
) -> Any:  # geopandas.GeoDataFrame
    """A crop per parcel, in memory: the parcels GeoDataFrame with the columns of ``<out>_parcels.gpkg``.

    Args:
        stack: A time-major GeoTIFF stack or a folder of per-date GeoTIFFs.
        parcels: A GeoDataFrame of parcel polygons (any CRS) or a vector file.
        mask: Cropland polygons; ``None`` (default): every pixel of the parcels is classified.
        model: A cropmap bundle; default the sample bundle shipped with cropmap.
        declared_column: Column holding the declared crop; adds ``declared_*`` columns.
        declared_classes: CSV path or ``{declared (case-folded): class code or name}``.
        options: Runtime options; or pass them as keywords.
        progress: Called as ``progress(done, total)`` after each block.

    Only blocks that hold parcels (or cropland) are read and classified.
    """
    from cropmap.parcels import ParcelTally, read_declared_map

    opts = dataclasses.replace(options_from(options, dict(option_kw)), embedding=False)
    table_map = (
        read_declared_map(declared_classes) if isinstance(declared_classes, (str, Path)) else declared_classes
    )
    # Without a mask only the parcels need pixels: they serve as the mask.
    plan = prepare(
        stack,
        mask,
        model,
        opts,
        parcels=parcels,
        declared_column=declared_column,
        parcels_as_mask=mask is None,
    )
    tally = ParcelTally(len(plan.parcels), len(plan.meta.classes))
    for result in block_results(plan, progress):
        tally.add(result.prediction.parcel_stats)
    table, _ = _parcel_table(
        plan,
        tally,
        declared_column,
        {str(k).strip().casefold(): str(v) for k, v in table_map.items()} if table_map else None,
    )
    if mask is None:
        # The parcels were their own mask: "outside the cropland mask" cannot happen, pixels_in_mask = pixels_in.
        table = table.drop(columns=["pixels_in_mask"])
    return table


def _refuse_empty_result(
    plan: Plan, n_mask: int | None, n_insufficient: int | None, n_classified: int
) -> None:
    """Raise :class:`~cropmap.errors.NothingClassifiedError` when no pixel was classified (nothing is written)."""
    from cropmap.errors import NothingClassifiedError

    if n_classified:
        return
    if n_mask == 0:
        why = f"no pixel centre of stack {plan.stack.path} lies inside the polygons of mask {plan.polygons.path}"
    elif n_mask is not None:
        why = (
            f"all {n_mask:,} cropland pixels have fewer than {plan.min_valid} valid observations in season "
            f"{plan.season} ({n_insufficient:,} insufficient; is the stack nodata or clouded there?)"
        )
    else:
        why = f"no cropland pixel has {plan.min_valid} valid observations in season {plan.season}"
    raise NothingClassifiedError(
        f"no pixel was classified: {why}; expected at least one classified pixel (nothing was written)"
    )
