"""The classification pipeline: stack -> mask -> blocks -> kernel -> outputs.

:func:`classify` writes the outputs and returns the run summary;
:func:`classify_array` returns the class map in memory as an xarray DataArray.
Both share the same preparation and per-block work, so their results are identical.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import json
import logging
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rasterio.windows import bounds as window_bounds

from cropmap.bundle import BundleMetadata
from cropmap.clouds import CloudMask, no_cloud_message, resolve_cloud_mask
from cropmap.errors import BundleError, InputRasterError
from cropmap.mask import Polygons, load_polygons
from cropmap.options import ClassifyOptions, auto_batch_size
from cropmap.postprocess import PostProcess
from cropmap.predict import (
    CONFIDENCE_NODATA,
    BlockItem,
    BlockJob,
    BlockResult,
    SessionPool,
    bundle_session,
    halo_window,
)
from cropmap.sanity import check_processing_level, check_reflectance, check_season
from cropmap.stack import Stack, bounded_gdal_cache, open_stack
from cropmap.tiling import Block, Executor, block_shape, make_executor, plan_blocks, run_blocks
from cropmap.timegrid import select_season

logger = logging.getLogger(__name__)

ProgressCallback = Callable[[int, int], None]
"""Called as ``progress(done, total)`` after each processed block."""


@dataclass
class _Plan:
    stack: Stack
    polygons: Polygons
    meta: BundleMetadata
    bundle_path: Path
    season: int
    obs: tuple[int, ...]
    positions: tuple[int, ...]
    min_valid: int
    blocks: list[Block]
    items: list[BlockItem]
    shape: tuple[int, int]
    executor: Executor
    job: BlockJob
    cloud: CloudMask | None = None
    coverage: dict[str, Any] | None = None
    l1c_evidence: tuple[str, ...] = ()
    parcels: Any = None  # parcels.ParcelSet | None
    whole_stack: bool = False


def _prepare(
    stack: str | Path,
    mask: str | Path | None,
    model: str | Path | None,
    options: ClassifyOptions,
    parcels: Any = None,
    declared_column: str | None = None,
    parcels_as_mask: bool = False,
) -> _Plan:
    """Check the inputs and plan the blocks.

    ``mask=None``: the whole stack (or, with ``parcels_as_mask``, the parcels); ``parcels``: a path or GeoDataFrame.
    """
    from cropmap.models import DEFAULT_BUNDLE

    bundle_path = Path(model) if model is not None else DEFAULT_BUNDLE
    if model is None and not bundle_path.is_file():
        raise BundleError(
            f"the sample model shipped with cropmap ({bundle_path}) is missing from this installation; "
            "expected it there, or pass --model BUNDLE"
        )
    # The driver opens the bundle on the provider the local workers will use (a provider that cannot start
    # stops the run here, in one line); the workers of a remote cluster check their own.
    with bundle_session(bundle_path, 1, options.provider if options.scheduler is None else "cpu") as bundle:
        meta = bundle.metadata
        # A remote cluster's workers open their own sessions: a GPU provider asked for runs there on a GPU.
        on_gpu = bundle.provider != "CPUExecutionProvider" or (
            options.scheduler is not None and options.provider in ("cuda", "tensorrt")
        )
    if options.embedding and meta.embedding is None:
        raise BundleError(f"--embedding was requested but bundle {bundle_path} has no embedding output")
    st = open_stack(_absolute(stack), reflectance_scale=options.reflectance_scale)
    st.check_bands(meta.bands)
    cloud = resolve_cloud_mask(
        st.bands,
        st.dtype,
        cloud_band=options.cloud_band,
        threshold=options.cloud_threshold,
        classes=options.cloud_classes,
        scale=options.cloud_scale,
        where=f"stack {st.path}",
    )
    idx, season = select_season(st.dates, meta.time_grid, options.season)
    obs = tuple(int(i) for i in idx)
    positions = tuple(meta.time_grid.position_of(st.dates[i]) for i in obs)
    min_valid = options.min_valid_steps or meta.min_valid_steps
    if min_valid > len(obs):
        raise InputRasterError(
            f"season {season} of stack {st.path} holds {len(obs)} dates but a pixel needs {min_valid} valid "
            f"observations; expected at least {min_valid} dates (lower --min-valid-steps or use a fuller stack)"
        )
    ignored = [str(st.dates[i]) for i in range(len(st.dates)) if i not in set(obs)]
    if ignored:
        logger.info("dates outside season %d are not used: %s", season, ignored)
    where = f"bundle {bundle_path}"
    coverage = check_season(st, obs, meta, season, allow_partial=options.allow_partial_season, where=where)
    l1c = check_processing_level(st, meta, allow_l1c=options.allow_l1c, where=where)
    left, top = st.transform @ (0, 0)
    right, bottom = st.transform @ (st.width, st.height)
    bounds = (min(left, right), min(top, bottom), max(left, right), max(top, bottom))
    import shapely

    parcel_set = None
    if parcels is not None:
        from cropmap.parcels import check_declared_column, load_parcels

        parcel_set = load_parcels(
            parcels if not isinstance(parcels, (str, Path)) else _absolute(parcels), st.crs
        )
        check_declared_column(parcel_set, declared_column)
    if mask is None and parcels_as_mask and parcel_set is not None:
        from cropmap.errors import MaskError

        stack_box = shapely.box(*bounds)
        geoms = tuple(g for g in parcel_set.geometries if not g.is_empty and g.intersects(stack_box))
        if not geoms:
            raise MaskError(f"no parcel overlaps stack {st.path}; expected parcels on the stack")
        polygons = Polygons(
            path=parcel_set.path or _absolute(st.path),
            geometries=geoms,
            crs=st.crs,
            source_crs=parcel_set.source_crs,
            layer=None,
        )
    elif mask is None:
        polygons = Polygons(
            path=_absolute(st.path),
            geometries=(shapely.box(*bounds),),
            crs=st.crs,
            source_crs=st.crs.to_string(),
            layer=None,
        )
        logger.info("no cropland mask: every pixel of the stack with enough valid observations is classified")
    else:
        polygons = load_polygons(_absolute(mask), st.crs, bounds, layer=options.mask_layer)
    # Inputs are valid: now say how clouds are handled (after any error, so errors stay one line).
    if cloud is not None:
        logger.info("cloud masking: %s (%s)", cloud.describe(), cloud.source)
    elif options.cloud_band is None:
        logger.warning(no_cloud_message(f"stack {st.path}", st.bands))
    else:
        logger.info("cloud masking is off (--cloud-band none)")
    # float32 read (S x C) + filled series (T x C) + the model's input copy, per pixel.
    bytes_per_pixel = (
        4 * (meta.n_bands + (cloud is not None)) * len(obs) + 8 * meta.n_bands * meta.n_timesteps
    )
    shape = block_shape(st.tile_shape, st.shape, options.block_size, bytes_per_pixel=bytes_per_pixel)
    blocks = plan_blocks(st.shape, shape)
    post = PostProcess(majority_filter=options.majority_filter, smooth_sigma=options.smooth_probabilities)
    items = []
    for b in blocks:
        in_block = parcel_set.select(b.bounds(st.transform)) if parcel_set is not None else ()
        if polygons.select(b.bounds(st.transform)) or in_block:
            # With post-processing, the polygons of the halo around the block count too.
            window, _ = halo_window(b, post.halo, st.shape)
            items.append(
                BlockItem(
                    block=b, geometries=polygons.select(window_bounds(window, st.transform)), parcels=in_block
                )
            )
    check_reflectance(st, obs, meta.bands, [item.block for item in items])
    executor = make_executor(len(items), options.workers, options.scheduler, threads=options.threads)
    logger.info(
        "%d blocks of %s px, %d touch cropland; running on %s",
        len(blocks),
        shape,
        len(items),
        executor.description,
    )
    job = BlockJob(
        stack=st,
        bundle_path=bundle_path.resolve(),
        metadata=meta,
        obs=obs,
        positions=positions,
        min_valid=min_valid,
        batch_size=options.batch_size or auto_batch_size(meta.n_timesteps, gpu=on_gpu),
        threads=executor.threads_per_worker,
        confidence=options.confidence,
        embedding=options.embedding,
        cloud=cloud,
        probabilities=options.probabilities,
        uncertainty=options.uncertainty,
        post=post if post.active else None,
        provider=options.provider,
    )
    return _Plan(
        stack=st,
        polygons=polygons,
        meta=meta,
        bundle_path=bundle_path,
        season=season,
        obs=obs,
        positions=positions,
        min_valid=min_valid,
        blocks=blocks,
        items=items,
        shape=shape,
        coverage=coverage,
        l1c_evidence=tuple(l1c),
        executor=executor,
        job=job,
        cloud=cloud,
        parcels=parcel_set,
        whole_stack=mask is None and not parcels_as_mask,
    )


def _absolute(path: str | Path) -> Path:
    return Path(path).expanduser().resolve()


def _results(plan: _Plan, progress: ProgressCallback | None) -> Iterator[BlockResult]:
    total = len(plan.items)
    with contextlib.ExitStack() as stack:
        job = plan.job
        if plan.executor.scheduler is None:  # local: every block's batches share the run's sessions
            ex = plan.executor
            pool = stack.enter_context(
                SessionPool(plan.bundle_path, job.provider, ex.workers * ex.threads_per_worker)
            )
            job = dataclasses.replace(job, pool=pool)
        for done, result in enumerate(run_blocks(job, plan.items, plan.executor), start=1):
            if progress is not None:
                progress(done, total)
            yield result


def _options(options: ClassifyOptions | None, kwargs: dict[str, Any]) -> ClassifyOptions:
    if options is not None and kwargs:
        raise TypeError(f"pass either options= or keyword options, not both (got {sorted(kwargs)})")
    return options if options is not None else ClassifyOptions.from_kwargs(**kwargs)


def pixel_area_m2(stack: Stack) -> np.ndarray:
    """Area of one pixel in m2 for each raster row, float64 ``(rows,)``.

    Projected grids have one area for every pixel (from the transform and the CRS's
    linear unit); geographic grids get the ellipsoidal area of each row's pixels.
    """
    tf = stack.transform
    if stack.crs.is_projected:
        factor = stack.crs.linear_units_factor[1]
        area = abs(tf.a * tf.e - tf.b * tf.d) * factor * factor
        return np.full(stack.height, area, dtype=np.float64)
    from pyproj import Geod

    geod = Geod(ellps="WGS84")
    out = np.empty(stack.height, dtype=np.float64)
    for r in range(stack.height):
        xs, ys = zip(*(tf @ (c, rr) for c, rr in ((0, r), (1, r), (1, r + 1), (0, r + 1))), strict=True)
        out[r] = abs(geod.polygon_area_perimeter(xs, ys)[0])
    return out


class _Tally:
    """Running per-class pixel counts and areas, and stage timings."""

    def __init__(self, plan: _Plan) -> None:
        self.codes = np.array([c.code for c in plan.meta.classes])
        self.row_area = pixel_area_m2(plan.stack)
        self.pixels = np.zeros(len(self.codes), dtype=np.int64)
        self.area_m2 = np.zeros(len(self.codes), dtype=np.float64)
        self.n_mask = self.n_classified = self.n_insufficient = 0
        self.n_observations = self.n_cloud_masked = 0
        self.timings = {"read": 0.0, "fill": 0.0, "model": 0.0}
        self.providers: set[str] = set()

    def add(self, result: BlockResult) -> None:
        p, b = result.prediction, result.block
        self.n_mask += p.n_mask
        self.n_classified += p.n_classified
        self.n_insufficient += p.n_insufficient
        self.n_observations += p.n_observations
        self.n_cloud_masked += p.n_cloud_masked
        for k, v in p.timings.items():
            self.timings[k] += v
        if p.provider is not None:
            self.providers.add(p.provider)
        if p.n_classified:
            area = self.row_area[b.row_off : b.row_off + b.height]
            for i, code in enumerate(self.codes):
                hit = p.classes == code
                self.pixels[i] += int(hit.sum())
                self.area_m2[i] += float(hit.sum(axis=1) @ area)


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
    **kwargs: Any,
) -> dict[str, Any]:
    """Classify the cropland of a Sentinel-2 stack and write the outputs.

    Args:
        stack: A time-major GeoTIFF stack or a folder of per-date GeoTIFFs.
        mask: Cropland polygons (any OGR format); ``None``: the whole stack (every pixel with
            enough valid observations is classified).
        parcels: Parcel polygons: also write ``<out stem>_parcels.gpkg`` (a crop per parcel,
            :mod:`cropmap.parcels`) and its QGIS style ``<out stem>_parcels.qml``.
        declared_column: Column of ``parcels`` holding each parcel's declared crop (checked
            against the parcel's probabilities).
        declared_classes: CSV mapping declared codes or names to the bundle's classes.
        model: A cropmap bundle; default the sample bundle shipped with cropmap.
        out: The class-map GeoTIFF to write; default ``<stack stem>_classified.tif``
            in the current directory. Other outputs are named after it.
        options: Runtime options; or pass them as keywords (``confidence=True``, ...).
        progress: Called as ``progress(done, total)`` after each block.
        **kwargs: Fields of :class:`~cropmap.options.ClassifyOptions`.

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
    from cropmap import __version__
    from cropmap.embedding import EmbeddingRaster
    from cropmap.quicklook import (
        MAX_SIDE_PX,
        STATUS_CLASSIFIED,
        STATUS_INSUFFICIENT,
        STATUS_OUTSIDE,
        write_quicklook,
    )
    from cropmap.stac import build_item
    from cropmap.writer import (
        MAP_NODATA,
        BlockRaster,
        check_outputs,
        class_tags,
        colormap,
        output_paths,
        write_aux_xml,
        write_qml,
    )

    t_start = time.perf_counter()
    opts = _options(options, kwargs)
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
    extra_inputs = {
        Path(p): what
        for p, what in ((parcels, "parcels"), (declared_classes, "declared-crop map"))
        if p is not None
    }
    _refuse_inputs_as_outputs(paths, stack, mask, model, extra=extra_inputs)
    from cropmap.safeio.commit import journal_path

    # A commit journal: a run was killed while moving its outputs into place; the set is repaired under the
    # lock (_claim_outputs) before the outputs are checked again, so only the kinds of path are checked here.
    try:
        torn = journal_path(paths.map).is_file()
    except OSError:  # e.g. a path too long: check_outputs names it
        torn = False
    check_outputs(paths, overwrite=opts.overwrite or torn)
    declared_map = None
    if declared_classes is not None:
        from cropmap.parcels import read_declared_map

        declared_map = read_declared_map(declared_classes)
    plan = _prepare(stack, mask, model, opts, parcels=parcels, declared_column=declared_column)
    _refuse_inputs_as_outputs(paths, stack, mask, model, plan.stack.files, extra=extra_inputs)
    meta, st = plan.meta, plan.stack
    tally = _Tally(plan)
    parcel_tally = None
    if plan.parcels is not None:
        from cropmap.parcels import ParcelTally

        parcel_tally = ParcelTally(len(plan.parcels), len(meta.classes))
    write_s = 0.0
    insufficient_m2 = 0.0
    status: BlockRaster | None = None
    grid = {"crs": st.crs, "transform": st.transform, "shape": st.shape}
    with _claim_outputs(paths, opts, plan) as staging:
        rasters: dict[str, BlockRaster] = {}
        try:
            legend_tags, band_legend = class_tags(meta.classes)
            rasters["map"] = _raster(
                staging,
                paths.map,
                count=1,
                dtype="uint8",
                nodata=MAP_NODATA,
                colormap=colormap(meta.classes),
                descriptions=["crop_class"],
                band_tags={1: band_legend},
                tags={"cropmap_model": meta.model_name, "cropmap_season": str(plan.season), **legend_tags},
                **grid,
            )
            prob_note = _probability_note(meta, opts)
            if paths.confidence is not None:
                rasters["confidence"] = _raster(
                    staging,
                    paths.confidence,
                    count=1,
                    dtype="uint8",
                    nodata=CONFIDENCE_NODATA,
                    descriptions=["confidence"],
                    tags={"confidence": f"max class probability x 100 (0..100); {prob_note}"},
                    **grid,
                )
            if paths.probabilities is not None:
                rasters["probabilities"] = _raster(
                    staging,
                    paths.probabilities,
                    count=len(meta.classes),
                    dtype="uint8",
                    nodata=CONFIDENCE_NODATA,
                    descriptions=[c.name for c in meta.classes],
                    tags={
                        "probabilities": f"class probability x 100 (0..100), one band per class; {prob_note}",
                        "class_codes": ",".join(str(c.code) for c in meta.classes),
                    },
                    **grid,
                )
            if paths.uncertainty is not None:
                how = {
                    "entropy": "Shannon entropy of the class probabilities / ln(number of classes)",
                    "margin": "1 - (highest - second highest class probability)",
                }[str(opts.uncertainty)]
                rasters["uncertainty"] = _raster(
                    staging,
                    paths.uncertainty,
                    count=1,
                    dtype="uint8",
                    nodata=CONFIDENCE_NODATA,
                    descriptions=[f"uncertainty_{opts.uncertainty}"],
                    tags={"uncertainty": f"{how}, x 100 (0 certain .. 100 uncertain); {prob_note}"},
                    **grid,
                )
            if paths.embedding is not None:
                assert meta.embedding is not None
                rasters["embedding"] = EmbeddingRaster(
                    staging.scratch(paths.embedding, ".tif"),
                    count=meta.embedding.dim,
                    dtype=opts.embedding_dtype,
                    scratch=lambda extra: staging.scratch(paths.embedding, ".tif" + extra),
                    descriptions=[f"embedding_{i:03d}" for i in range(meta.embedding.dim)],
                    tags={
                        "embedding": meta.embedding.description,
                        "embedding_output": meta.embedding.output_name,
                    },
                    **grid,
                )
            if (
                paths.quicklook is not None
            ):  # which unclassified pixels are outside the mask, for the quick-look
                status = _raster(
                    staging,
                    paths.map,
                    count=1,
                    suffix=".status.tif",
                    dtype="uint8",
                    nodata=STATUS_OUTSIDE,
                    **grid,
                )
            # Blocks without cropland are never written: their tiles stay empty (nodata) in the sparse outputs.
            for result in _results(plan, progress):
                tally.add(result)
                if parcel_tally is not None:
                    parcel_tally.add(result.prediction.parcel_stats)
                t0 = time.perf_counter()
                w, p = result.block.window, result.prediction
                rasters["map"].write(w, p.classes)
                if "confidence" in rasters:
                    rasters["confidence"].write(w, p.confidence)
                if "probabilities" in rasters:
                    rasters["probabilities"].write(w, p.probabilities)
                if "uncertainty" in rasters:
                    rasters["uncertainty"].write(w, p.uncertainty)
                if "embedding" in rasters:
                    rasters["embedding"].write(w, p.embedding)
                if p.insufficient is not None:
                    b = result.block
                    insufficient_m2 += float(
                        p.insufficient.sum(axis=1) @ tally.row_area[b.row_off : b.row_off + b.height]
                    )
                if status is not None:
                    st_block = np.where(p.classes != MAP_NODATA, STATUS_CLASSIFIED, STATUS_OUTSIDE).astype(
                        np.uint8
                    )
                    if p.insufficient is not None:
                        st_block[p.insufficient] = STATUS_INSUFFICIENT
                    status.write(w, st_block)
                write_s += time.perf_counter() - t0
            t0 = time.perf_counter()
            finals = {
                "map": paths.map,
                "confidence": paths.confidence,
                "embedding": paths.embedding,
                "probabilities": paths.probabilities,
                "uncertainty": paths.uncertainty,
            }
            for name, r in rasters.items():
                target = finals[name]
                assert target is not None
                r.to_cog(staging.temp_for(target))
            write_aux_xml(staging.temp_for(paths.aux), meta.classes)
            write_qml(staging.temp_for(paths.qml), meta.classes)
        except BaseException:
            if status is not None:
                status.close()
            raise
        finally:
            for r in rasters.values():
                r.close()
        area_ha = {int(c): float(a) / 1e4 for c, a in zip(tally.codes, tally.area_m2, strict=True)}
        if paths.quicklook is not None:
            cog_tmp = staging.staged(paths.map)
            try:
                with bounded_gdal_cache():
                    write_quicklook(
                        cog_tmp,
                        staging.temp_for(paths.quicklook),
                        meta.classes,
                        area_ha,
                        title=f"{meta.model_name} - {st.path.name} - season {plan.season}",
                        status_path=status.preview(MAX_SIDE_PX) if status is not None else None,
                        insufficient_ha=insufficient_m2 / 1e4,
                    )
            finally:
                if status is not None:
                    status.close()
        write_s += time.perf_counter() - t0
        total_s = time.perf_counter() - t_start
        summary = _summary(plan, tally, paths, opts, write_s, total_s, __version__)
        if parcel_tally is not None:
            assert paths.parcels is not None and paths.parcels_qml is not None
            table, summary["parcels"] = _parcel_table(plan, parcel_tally, declared_column, declared_map)
            table.to_file(staging.temp_for(paths.parcels), layer="parcels", driver="GPKG")
            from cropmap.parcels import write_qml as write_parcel_qml

            write_parcel_qml(
                staging.temp_for(paths.parcels_qml), meta.classes, by_status=declared_column is not None
            )
        if "embedding" in rasters:
            summary["embedding"] = rasters["embedding"].describe()  # type: ignore[attr-defined]
        summary["removed_outputs"] = [str(p) for p in staging.stale]
        summary_tmp = staging.temp_for(paths.summary)
        summary_tmp.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
        assert paths.stac is not None
        item = build_item(
            item_id=paths.map.stem,
            paths=paths,
            crs=st.crs,
            transform=st.transform,
            shape=st.shape,
            classes=meta.classes,
            dates=[st.dates[i] for i in plan.obs],
            season=plan.season,
            model_name=meta.model_name,
            calibrated=meta.calibration is not None,
            created=summary["created"],
            version=__version__,
            pixel_area_m2=float(tally.row_area.mean()),
            area_ha=area_ha,
            embedding_dim=meta.embedding.dim if meta.embedding is not None else None,
            embedding_bands=rasters["embedding"].stac_bands() if "embedding" in rasters else None,  # type: ignore[attr-defined]
        )
        staging.temp_for(paths.stac).write_text(json.dumps(item, indent=2) + "\n", encoding="utf-8")
        _refuse_empty_result(plan, tally.n_mask, tally.n_insufficient, tally.n_classified)
        staging.commit(remove=staging.stale, journal=staging.journal)
    logger.info(
        "classified %d of %d cropland pixels in %.2f s -> %s",
        tally.n_classified,
        tally.n_mask,
        total_s,
        paths.map,
    )
    return summary


def _raster(staging: Any, final: Path, *, suffix: str = ".tif", **kwargs: Any) -> Any:  # writer.BlockRaster
    """A :class:`~cropmap.writer.BlockRaster` whose scratch files (and their overview levels) staging removes."""
    from cropmap.writer import BlockRaster

    return BlockRaster(
        staging.scratch(final, suffix), scratch=lambda extra: staging.scratch(final, suffix + extra), **kwargs
    )


def _probability_note(meta: BundleMetadata, opts: ClassifyOptions) -> str:
    """What the probabilities of this run are, for raster tags and the summary."""
    cal = meta.calibration
    note = (
        f"calibrated by temperature scaling (T = {cal.temperature:.4g}, fitted on {cal.n} validation samples; "
        f"ECE {cal.ece_before:.3f} -> {cal.ece_after:.3f})"
        if cal is not None
        else "UNCALIBRATED softmax of the model's logits (the bundle carries no calibration)"
    )
    if opts.smooth_probabilities is not None:
        note += f"; spatially smoothed (Gaussian sigma {opts.smooth_probabilities:g} px within the mask)"
    return note


def _summary(
    plan: _Plan,
    tally: _Tally,
    paths: Any,  # writer.OutputPaths
    opts: ClassifyOptions,
    write_s: float,
    total_s: float,
    version: str,
) -> dict[str, Any]:
    from cropmap.models import SAMPLE_NOTE, is_sample_bundle

    st, meta = plan.stack, plan.meta
    total = st.height * st.width
    classes = [
        {
            "code": c.code,
            "name": c.name,
            "color": c.color,
            "pixels": int(n),
            "area_ha": round(float(a) / 1e4, 4),
        }
        for c, n, a in zip(meta.classes, tally.pixels, tally.area_m2, strict=True)
    ]
    assert st.scale is not None
    nodata_note = (
        "declared nodata values are treated as missing observations"
        if st.has_nodata
        else "the stack declares no nodata value: every value was taken as valid (NaN excepted)"
    )
    return {
        "cropmap_version": version,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "inputs": {
            "stack": str(_absolute(st.path)),
            "stack_layout": st.layout,
            "mask": str(_absolute(plan.polygons.path)) if not plan.whole_stack else None,
            "mask_crs": plan.polygons.source_crs if not plan.whole_stack else None,
            "mask_layer": plan.polygons.layer,
            "mask_max_segment_m": plan.polygons.max_segment_m,
            "mask_dropped_parts": plan.polygons.dropped_parts,
            **(
                {
                    "whole_stack": "no cropland mask: every pixel of the stack with enough valid observations was "
                    "classified"
                }
                if plan.whole_stack
                else {}
            ),
            "model": str(_absolute(plan.bundle_path)),
            **({"model_note": SAMPLE_NOTE} if is_sample_bundle(plan.bundle_path) else {}),
        },
        "outputs": {
            k: (str(v) if v is not None else None)
            for k, v in dataclasses.asdict(paths).items()
            if v is not None or k not in ("parcels", "parcels_qml")
        },
        "bundle": {
            "model_name": meta.model_name,
            "schema_version": meta.schema_version,
            "bands": list(meta.bands),
            "classes": len(meta.classes),
            "provenance": dataclasses.asdict(meta.provenance),
            "calibration": dataclasses.asdict(meta.calibration) if meta.calibration is not None else None,
            "probabilities": _probability_note(meta, opts),
            "precision": dataclasses.asdict(meta.precision)
            if meta.precision is not None
            else {"dtype": "fp32"},
        },
        "postprocessing": {
            "majority_filter": opts.majority_filter,
            "smooth_probabilities_sigma_px": opts.smooth_probabilities,
            "halo_px": plan.job.post.halo if plan.job.post is not None else 0,
            "note": "filters act within the mask: pixels outside it or with too little data neither vote nor get a "
            "class; blocks overlap by halo_px so the result does not depend on the block size",
        },
        "grid": {
            "crs": st.crs.to_string(),
            "transform": list(st.transform)[:6],
            "height": st.height,
            "width": st.width,
            "pixel_area_m2": float(tally.row_area.mean()),
        },
        "stack": {
            "dtype": st.dtype,
            "nodata": [v if v is None or not np.isnan(v) else "mixed" for v in st.nodata],
            "nodata_note": nodata_note,
            "reflectance_scale": st.scale.reflectance_scale,
            "reflectance_offset": st.scale.offset,
            "reflectance_scale_source": st.scale.source,
            "model_reflectance_scale": meta.reflectance_scale,
            "l1c_evidence": list(plan.l1c_evidence),
        },
        "season": {
            "year": plan.season,
            "season_start": meta.time_grid.season_start,
            "dates_used": [str(st.dates[i]) for i in plan.obs],
            "positions_days": list(plan.positions),
            "dates_ignored": [str(d) for i, d in enumerate(st.dates) if i not in set(plan.obs)],
            "coverage": plan.coverage,
            "grid_days": list(meta.time_grid.day_of_season),
            "gap_fill": meta.gap_fill,
            "min_valid_steps": plan.min_valid,
        },
        "clouds": _cloud_summary(plan, tally, opts),
        "pixels": {
            "total": total,
            "in_mask": tally.n_mask,
            "classified": tally.n_classified,
            "skipped_outside_mask": total - tally.n_mask,
            "insufficient_data": tally.n_insufficient,
        },
        "blocks": {
            "block_shape": list(plan.shape),
            "total": len(plan.blocks),
            "processed": len(plan.items),
            "skipped": len(plan.blocks) - len(plan.items),
        },
        "classes": classes,
        "timings_s": {
            "read": round(tally.timings["read"], 4),
            "fill": round(tally.timings["fill"], 4),
            "model": round(tally.timings["model"], 4),
            "write": round(write_s, 4),
            "total": round(total_s, 4),
            "note": "read, fill and model are summed over blocks (parallel workers overlap); total is wall time",
        },
        "throughput_cropland_px_per_s": round(tally.n_mask / total_s, 1) if total_s > 0 else None,
        "executor": plan.executor.description,
        "runtime": {
            "provider_requested": opts.provider,
            "providers_used": sorted(tally.providers),
            "bundle_precision": meta.dtype,
            "batch_size": plan.job.batch_size,
            "note": "providers_used: the ONNX Runtime execution provider(s) that ran the model, as reported by "
            "the workers' sessions",
        },
        "options": dataclasses.asdict(opts),
    }


def _cloud_summary(plan: _Plan, tally: _Tally, opts: ClassifyOptions) -> dict[str, Any]:
    """The ``clouds`` section of the summary: the masking rule and how many observations it masked."""
    if plan.cloud is None:
        off = opts.cloud_band is not None
        return {
            "masking": "off" if off else "no cloud information",
            "band": None,
            "masked_observations": 0,
            "note": "--cloud-band none: the stack was declared cloud-free"
            if off
            else no_cloud_message(f"stack {_absolute(plan.stack.path)}", plan.stack.bands),
        }
    n_obs, n_masked = tally.n_observations, tally.n_cloud_masked
    return {
        "masking": "on",
        **plan.cloud.as_dict(),
        "rule": plan.cloud.describe(),
        "observations_in_mask": n_obs,
        "masked_observations": n_masked,
        "masked_share": round(n_masked / n_obs, 4) if n_obs else 0.0,
        "note": "observations of cropland pixels with valid reflectance that the cloud band marked invalid; "
        "they were filled along time like nodata",
    }


def classify_array(
    stack: str | Path,
    mask: str | Path,
    *,
    model: str | Path | None = None,
    options: ClassifyOptions | None = None,
    progress: ProgressCallback | None = None,
    **kwargs: Any,
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
        **kwargs: Fields of :class:`~cropmap.options.ClassifyOptions`.
    """
    import xarray as xr

    opts = _options(options, kwargs)
    opts = dataclasses.replace(opts, embedding=False)
    plan = _prepare(stack, mask, model, opts)
    st, meta = plan.stack, plan.meta
    classes = np.zeros(st.shape, dtype=np.uint8)
    conf = np.full(st.shape, CONFIDENCE_NODATA, dtype=np.uint8) if opts.confidence else None
    for result in _results(plan, progress):
        b = result.block
        sl = (slice(b.row_off, b.row_off + b.height), slice(b.col_off, b.col_off + b.width))
        classes[sl] = result.prediction.classes
        if conf is not None:
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


def _refuse_inputs_as_outputs(
    paths: Any,  # writer.OutputPaths
    stack: str | Path,
    mask: str | Path | None,
    model: str | Path | None,
    sources: tuple[Path, ...] = (),
    extra: dict[Path, str] | None = None,
) -> None:
    """Refuse a run that would write over one of its inputs (with or without ``overwrite``)."""
    from cropmap.models import DEFAULT_BUNDLE
    from cropmap.safeio.locks import lock_path
    from cropmap.safeio.overlap import mask_files, refuse_overlap

    inputs: dict[Path, str] = {Path(stack): "stack"}
    inputs.update({s: "stack file" for s in sources})
    if mask is not None:
        inputs.update({m: "mask" for m in mask_files(Path(mask))})
    for p, what in (extra or {}).items():
        inputs.update({m: what for m in mask_files(p)})
    inputs[Path(model) if model is not None else DEFAULT_BUNDLE] = "model bundle"
    refuse_overlap([*paths.all(), lock_path(paths.map)], inputs)


@contextlib.contextmanager
def _claim_outputs(paths: Any, opts: ClassifyOptions, plan: _Plan) -> Iterator[Any]:  # writer.Staging
    """Make the output folder, lock the output, re-check it, tidy up after killed runs, check the space; stage.

    On failure the temporaries, the lock file and any folder made here (if empty)
    are removed again; an ``OSError`` from writing becomes one line naming the path,
    the operation and the cause.
    """
    from cropmap.errors import CropmapError
    from cropmap.safeio.commit import journal_path, recover_commit
    from cropmap.safeio.folders import check_free_space, output_folder
    from cropmap.safeio.locks import RunLock
    from cropmap.safeio.oserrors import file_system_error
    from cropmap.safeio.temporaries import remove_stale
    from cropmap.writer import Staging, check_outputs, possible_outputs, stale_outputs

    folder = paths.map.parent
    with output_folder(folder), RunLock(paths.map, "output"):
        journal = journal_path(paths.map)
        recover_commit(journal)  # a torn set of a run killed while committing: finish or undo it first
        check_outputs(paths, overwrite=opts.overwrite)  # again: no other run can write them now
        remove_stale(folder, {p.name for p in possible_outputs(paths.map).all()} | {journal.name})
        check_free_space(
            folder, _least_output_bytes(paths, plan, opts.embedding_dtype), f"the outputs of {paths.map.name}"
        )
        with Staging() as staging:
            staging.journal = journal
            staging.stale = stale_outputs(paths)  # side outputs of an earlier run: removed with the commit
            for p in staging.stale:
                logger.warning(
                    "--overwrite: %s, an output of an earlier run that this run does not write, is "
                    "removed with the commit",
                    p,
                )
            try:
                yield staging
            except OSError as err:
                if isinstance(err, CropmapError):
                    raise
                # A write outside the steps that name themselves (PNG, JSON): the file being written is the newest.
                newest = staging.newest()
                where = err.filename if err.filename else (newest if newest is not None else folder)
                raise file_system_error(err, "write", where) from err


def _least_output_bytes(paths: Any, plan: _Plan, embedding_dtype: str = "float32") -> int:
    """A low estimate of the bytes the output rasters take, for the free-space check.

    Only blocks that touch cropland hold data (the rest is nodata and compresses to
    almost nothing). Deflate was measured at about 2.5:1 on float32 embeddings and 3:1
    on uint8 rasters of the sample data; the estimate assumes 3:1 and 20:1, so that a
    run is refused only when its outputs clearly cannot fit.
    """
    px = sum(item.block.height * item.block.width for item in plan.items)
    uint8_bands = 1 + (paths.confidence is not None) + (getattr(paths, "uncertainty", None) is not None)
    if getattr(paths, "probabilities", None) is not None:
        uint8_bands += len(plan.meta.classes)
    from cropmap.embedding import BYTES_PER_VALUE

    float_bands = (
        plan.meta.embedding.dim if paths.embedding is not None and plan.meta.embedding is not None else 0
    )
    return int(px * (uint8_bands / 20 + BYTES_PER_VALUE[embedding_dtype] * float_bands / 3))


def _parcel_table(
    plan: _Plan, tally: Any, declared_column: str | None, declared_map: Any
) -> tuple[Any, dict]:
    """The per-parcel GeoDataFrame and its summary section."""
    from cropmap.parcels import parcel_table

    st = plan.stack
    left, top = st.transform @ (0, 0)
    right, bottom = st.transform @ (st.width, st.height)
    bounds = (min(left, right), min(top, bottom), max(left, right), max(top, bottom))
    table, summary = parcel_table(
        plan.parcels,
        tally,
        plan.meta.classes,
        bounds,
        st.crs,
        declared_column=declared_column,
        declared_map=declared_map,
    )
    if plan.parcels.path is not None:
        summary["input"] = str(_absolute(plan.parcels.path))
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
    **kwargs: Any,
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

    opts = dataclasses.replace(_options(options, kwargs), embedding=False)
    table_map = (
        read_declared_map(declared_classes) if isinstance(declared_classes, (str, Path)) else declared_classes
    )
    # Without a mask only the parcels need pixels: they serve as the mask.
    plan = _prepare(
        stack,
        mask,
        model,
        opts,
        parcels=parcels,
        declared_column=declared_column,
        parcels_as_mask=mask is None,
    )
    tally = ParcelTally(len(plan.parcels), len(plan.meta.classes))
    for result in _results(plan, progress):
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
    plan: _Plan, n_mask: int | None, n_insufficient: int | None, n_classified: int
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
