"""Planning a classification: inputs checked, blocks planned, and the blocks run and tallied.

:func:`prepare` checks the stack, mask, bundle, season and reflectance and plans the blocks (a :class:`Plan`);
:func:`block_results` runs them on the plan's executor; :class:`Tally` sums what the blocks classified. The
pipeline's entry points (:mod:`cropmap.pipeline`) share them, so their results are identical.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rasterio.windows import bounds as window_bounds

from cropmap.contract.clouds import CloudMask, no_cloud_message, resolve_cloud_mask
from cropmap.contract.metadata import BundleMetadata
from cropmap.contract.timegrid import select_season
from cropmap.errors import BundleError, InputRasterError
from cropmap.mask import Polygons, load_polygons
from cropmap.options import ClassifyOptions, auto_batch_size
from cropmap.postprocess import PostProcess
from cropmap.predict import BlockItem, BlockJob, BlockResult, SessionPool, bundle_session, halo_window
from cropmap.sanity import check_processing_level, check_reflectance, check_season
from cropmap.stack import Stack, open_stack
from cropmap.tiling import Block, Executor, block_shape, make_executor, plan_blocks, run_blocks

logger = logging.getLogger(__name__)

ProgressCallback = Callable[[int, int], None]
"""Called as ``progress(done, total)`` after each processed block."""


@dataclass
class Plan:
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


def prepare(
    stack: str | Path,
    mask: str | Path | None,
    model: str | Path | None,
    options: ClassifyOptions,
    parcels: Any = None,
    declared_column: str | None = None,
    parcels_as_mask: bool = False,
) -> Plan:
    """Check the inputs and plan the blocks.

    The checks run in the order a user fixes them: bundle, stack bands, cloud band, season, coverage and
    processing level, polygons, reflectance; only then does the run say how it handles clouds.
    ``mask=None``: the whole stack (or, with ``parcels_as_mask``, the parcels); ``parcels``: a path or GeoDataFrame.
    """
    bundle_path, meta, on_gpu = _open_bundle(model, options)
    st = open_stack(absolute(stack), reflectance_scale=options.reflectance_scale)
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
    season, obs, positions, min_valid = _season(st, meta, options)
    where = f"bundle {bundle_path}"
    coverage = check_season(st, obs, meta, season, allow_partial=options.allow_partial_season, where=where)
    l1c = check_processing_level(st, meta, allow_l1c=options.allow_l1c, where=where)
    polygons, parcel_set = _polygons(st, mask, options, parcels, declared_column, parcels_as_mask)
    _say_how_clouds_are_handled(st, cloud, options)  # inputs are valid: errors stay one line
    shape, blocks, items, post = _block_items(st, meta, cloud, len(obs), options, polygons, parcel_set)
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
    return Plan(
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


def _open_bundle(model: str | Path | None, options: ClassifyOptions) -> tuple[Path, BundleMetadata, bool]:
    """``(bundle path, metadata, whether the model runs on a GPU)``; the sample bundle when ``model`` is ``None``.

    The driver opens the bundle on the provider the local workers will use (a provider that cannot start stops
    the run here, in one line); the workers of a remote cluster check their own.
    """
    from cropmap.models import DEFAULT_BUNDLE

    bundle_path = Path(model) if model is not None else DEFAULT_BUNDLE
    if model is None and not bundle_path.is_file():
        raise BundleError(
            f"the sample model shipped with cropmap ({bundle_path}) is missing from this installation; "
            "expected it there, or pass --model BUNDLE"
        )
    with bundle_session(bundle_path, 1, options.provider if options.scheduler is None else "cpu") as bundle:
        meta = bundle.metadata
        # A remote cluster's workers open their own sessions: a GPU provider asked for runs there on a GPU.
        on_gpu = bundle.provider != "CPUExecutionProvider" or (
            options.scheduler is not None and options.provider in ("cuda", "tensorrt")
        )
    if options.embedding and meta.embedding is None:
        raise BundleError(f"--embedding was requested but bundle {bundle_path} has no embedding output")
    return bundle_path, meta, on_gpu


def _season(
    st: Stack, meta: BundleMetadata, options: ClassifyOptions
) -> tuple[int, tuple[int, ...], tuple[int, ...], int]:
    """``(season year, the stack's date indices in it, their days on the bundle's grid, fewest valid steps)``."""
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
    return season, obs, positions, min_valid


def stack_bounds(st: Stack) -> tuple[float, float, float, float]:
    """``(left, bottom, right, top)`` of the stack's grid in its CRS."""
    left, top = st.transform @ (0, 0)
    right, bottom = st.transform @ (st.width, st.height)
    return (min(left, right), min(top, bottom), max(left, right), max(top, bottom))


def _polygons(
    st: Stack,
    mask: str | Path | None,
    options: ClassifyOptions,
    parcels: Any,
    declared_column: str | None,
    parcels_as_mask: bool,
) -> tuple[Polygons, Any]:
    """The polygons whose pixels are classified (the mask, the parcels, or the stack's box), and the parcels."""
    import shapely

    bounds = stack_bounds(st)
    parcel_set = None
    if parcels is not None:
        from cropmap.parcels import check_declared_column, load_parcels

        parcel_set = load_parcels(
            parcels if not isinstance(parcels, (str, Path)) else absolute(parcels), st.crs
        )
        check_declared_column(parcel_set, declared_column)
    if mask is None and parcels_as_mask and parcel_set is not None:
        from cropmap.errors import MaskError

        stack_box = shapely.box(*bounds)
        geoms = tuple(g for g in parcel_set.geometries if not g.is_empty and g.intersects(stack_box))
        if not geoms:
            raise MaskError(f"no parcel overlaps stack {st.path}; expected parcels on the stack")
        polygons = Polygons(
            path=parcel_set.path or absolute(st.path),
            geometries=geoms,
            crs=st.crs,
            source_crs=parcel_set.source_crs,
            layer=None,
        )
    elif mask is None:
        polygons = Polygons(
            path=absolute(st.path),
            geometries=(shapely.box(*bounds),),
            crs=st.crs,
            source_crs=st.crs.to_string(),
            layer=None,
        )
        logger.info("no cropland mask: every pixel of the stack with enough valid observations is classified")
    else:
        polygons = load_polygons(absolute(mask), st.crs, bounds, layer=options.mask_layer)
    return polygons, parcel_set


def _say_how_clouds_are_handled(st: Stack, cloud: CloudMask | None, options: ClassifyOptions) -> None:
    if cloud is not None:
        logger.info("cloud masking: %s (%s)", cloud.describe(), cloud.source)
    elif options.cloud_band is None:
        logger.warning(no_cloud_message(f"stack {st.path}", st.bands))
    else:
        logger.info("cloud masking is off (--cloud-band none)")


def _block_items(
    st: Stack,
    meta: BundleMetadata,
    cloud: CloudMask | None,
    n_obs: int,
    options: ClassifyOptions,
    polygons: Polygons,
    parcel_set: Any,
) -> tuple[tuple[int, int], list[Block], list[BlockItem], PostProcess]:
    """``(block shape, every block, the blocks that touch the polygons or parcels, the post-processing)``."""
    # float32 read (S x C) + filled series (T x C) + the model's input copy, per pixel.
    bytes_per_pixel = 4 * (meta.n_bands + (cloud is not None)) * n_obs + 8 * meta.n_bands * meta.n_timesteps
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
    return shape, blocks, items, post


def absolute(path: str | Path) -> Path:
    return Path(path).expanduser().resolve()


def block_results(plan: Plan, progress: ProgressCallback | None) -> Iterator[BlockResult]:
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


def options_from(options: ClassifyOptions | None, kwargs: dict[str, Any]) -> ClassifyOptions:
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


class Tally:
    """Running per-class pixel counts and areas, and stage timings."""

    def __init__(self, plan: Plan) -> None:
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
