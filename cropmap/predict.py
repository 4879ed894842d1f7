"""The per-block kernel, and the picklable job that feeds it on any dask worker.

:func:`predict_block` is pure: numpy in, numpy out. Only pixels inside the mask
with enough valid observations go through ONNX Runtime, in batches.
:class:`BlockJob` reads one block, burns the mask, and calls the kernel with an
ONNX Runtime session from the process's pool (:func:`bundle_session`; sessions cannot
be pickled, so each worker process opens its own from the bundle path and reuses them).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import shapely
from rasterio.windows import Window
from rasterio.windows import transform as window_transform
from typing_extensions import Self

from cropmap.contract.clouds import CloudMask
from cropmap.contract.metadata import BundleMetadata
from cropmap.contract.timegrid import fill_gaps
from cropmap.errors import BundleError
from cropmap.mask import rasterize_block
from cropmap.postprocess import (
    UNCERTAINTY_METHODS,
    PostProcess,
    majority_filter,
    smooth_probabilities,
    softmax,
)
from cropmap.postprocess import uncertainty as _uncertainty
from cropmap.runtime import Bundle, load_bundle
from cropmap.stack import Stack
from cropmap.tiling import Block

CONFIDENCE_NODATA = 255
"""Nodata of the confidence, probability and uncertainty rasters (valid values are 0..100)."""


@dataclass
class BlockPrediction:
    """What one block produced."""

    classes: np.ndarray
    """uint8 ``(rows, cols)`` class codes, 0 where not classified."""
    confidence: np.ndarray | None
    """uint8 ``(rows, cols)`` max probability x 100, :data:`CONFIDENCE_NODATA` where not classified."""
    embedding: np.ndarray | None
    """float32 ``(D, rows, cols)``, NaN where not classified."""
    n_mask: int
    """Pixels inside the cropland mask."""
    n_classified: int
    n_insufficient: int
    """Pixels inside the mask with fewer valid observations than needed."""
    timings: dict[str, float] = field(default_factory=dict)
    """Seconds spent per stage (``read``, ``fill``, ``model``)."""
    probabilities: np.ndarray | None = None
    """uint8 ``(K, rows, cols)`` class probabilities x 100 in the bundle's class order, :data:`CONFIDENCE_NODATA`
    where not classified."""
    uncertainty: np.ndarray | None = None
    """uint8 ``(rows, cols)`` uncertainty x 100 (:mod:`cropmap.postprocess`), :data:`CONFIDENCE_NODATA` where not
    classified."""
    insufficient: np.ndarray | None = None
    """bool ``(rows, cols)``: inside the mask but too few valid observations."""
    n_observations: int = 0
    """Observations of mask pixels with valid reflectance before cloud masking (0 when the stack has no cloud band)."""
    n_cloud_masked: int = 0
    """Of those, the observations masked as cloud, shadow etc. (:mod:`cropmap.contract.clouds`)."""
    provider: str | None = None
    """The ONNX Runtime execution provider that ran the model on this block (``None``: nothing to classify)."""
    float_probabilities: np.ndarray | None = None
    """float64 ``(K, rows, cols)`` class probabilities (0 where not classified), when asked for (parcels)."""
    parcel_stats: Any = None
    """Per-parcel sums of the block (:class:`cropmap.parcels.ParcelBlockStats`), with ``--parcels``."""


def _percent(p: np.ndarray) -> np.ndarray:
    return np.rint(np.clip(p, 0.0, 1.0) * 100.0).astype(np.uint8)


def run_batches(
    bundles: Sequence[Bundle], x: np.ndarray, batch_size: int, *, embedding: bool = False
) -> tuple[np.ndarray, np.ndarray | None]:
    """Run ``x`` (float32 ``(N, T, C)``) through the bundle in batches of ``batch_size``.

    With several sessions of the same bundle, batch ``i`` runs on session ``i % len(bundles)``,
    each session on its own thread (ONNX Runtime releases the GIL), so that the sessions work at
    once. On a CPU, single-threaded sessions side by side classify faster than one session using
    the same number of intra-op threads (docs/benchmarks/precision.md).

    Returns:
        float32 logits ``(N, K)`` and, when ``embedding``, float32 embeddings ``(N, D)`` (else ``None``).
    """
    meta = bundles[0].metadata
    if embedding and meta.embedding is None:
        raise BundleError(f"bundle {bundles[0].path} has no embedding output")
    n = len(x)
    logits = np.empty((n, len(meta.classes)), dtype=np.float32)
    vecs = np.empty((n, meta.embedding.dim), dtype=np.float32) if embedding and meta.embedding else None
    starts = list(range(0, n, batch_size))

    def work(k: int, b: Bundle, stride: int) -> None:
        for start in starts[k::stride]:
            sl = slice(start, start + batch_size)
            if vecs is not None:  # embedding asked for (the bundle has one: checked above)
                logits[sl], vecs[sl] = b.run(x[sl], embedding=True)
            else:
                logits[sl] = b.run(x[sl])

    used = bundles[: max(1, min(len(bundles), len(starts)))]
    if len(used) == 1:
        work(0, used[0], 1)
        return logits, vecs
    with ThreadPoolExecutor(max_workers=len(used), thread_name_prefix="cropmap-session") as pool:
        for fut in [pool.submit(work, k, b, len(used)) for k, b in enumerate(used)]:
            fut.result()
    return logits, vecs


def check_finite(bundle_path: Path, logits: np.ndarray, embedding: np.ndarray | None = None) -> None:
    """Stop the run when the model returned NaN or infinite values (a broken bundle, or one that overflows on
    these inputs): an argmax over NaN picks the first class, so the map would look complete and be wrong.

    Raises:
        BundleError: Naming the bundle and how many pixels got non-finite outputs.
    """
    for what, values in (("logits", logits), ("embedding", embedding)):
        if values is None or values.size == 0:
            continue
        finite = np.isfinite(values).all(axis=1)
        if not finite.all():
            bad = int((~finite).sum())
            found = (("NaN", np.isnan(values).any()), ("infinite", np.isinf(values).any()))
            kinds = " and ".join(k for k, hit in found if hit)
            raise BundleError(
                f"bundle {bundle_path} returned {kinds} {what} for {bad:,} of {len(values):,} pixels of a "
                f"block; expected finite {what} for every input (the model is broken or overflows on this "
                "stack); nothing was written"
            )


def predict_block(
    values: np.ndarray,
    mask: np.ndarray,
    positions: np.ndarray,
    bundle: Bundle | SessionPool,
    *,
    min_valid: int,
    batch_size: int,
    confidence: bool = False,
    embedding: bool = False,
    probabilities: bool = False,
    uncertainty: str | None = None,
    post: PostProcess | None = None,
    inner: tuple[slice, slice] | None = None,
    float_probabilities: bool = False,
) -> BlockPrediction:
    """Classify the masked pixels of one block.

    Args:
        values: float32 ``(S, C, rows, cols)`` in the bundle's units, NaN where missing;
            observations ordered by season position, bands in the bundle's order.
        mask: bool ``(rows, cols)``, True for cropland.
        positions: ``(S,)`` season positions of the observations.
        bundle: An opened bundle, or a run's :class:`SessionPool`, whose threads take the
            batches of every block as they come.
        min_valid: Fewest valid observations a pixel needs.
        batch_size: Pixels per ONNX Runtime call.
        confidence: Also return the confidence block.
        embedding: Also return the embedding block.
        probabilities: Also return the per-class probability block.
        uncertainty: Also return the uncertainty block (a method of
            :data:`cropmap.postprocess.UNCERTAINTY_METHODS`).
        post: Spatial post-processing; its filters see the whole of ``values``.
        inner: The part of the arrays to return (rows, cols slices); the rest is the
            halo that only feeds the post-processing. Default: everything.
        float_probabilities: Also return the float class probabilities (for parcels).
    """
    meta = bundle.metadata
    provider = None
    _s, c, rows, cols = values.shape
    if c != meta.n_bands:
        raise ValueError(f"values hold {c} bands; the bundle expects {meta.n_bands}")
    if uncertainty is not None and uncertainty not in UNCERTAINTY_METHODS:
        raise ValueError(f"uncertainty is {uncertainty!r}; expected one of {UNCERTAINTY_METHODS}")
    if embedding and meta.embedding is None:
        raise ValueError("the bundle has no embedding output")
    inner = inner or (slice(0, rows), slice(0, cols))
    post = post if post is not None and post.active else None
    k = len(meta.classes)
    need_probs = (
        confidence or probabilities or uncertainty is not None or post is not None or float_probabilities
    )
    index = np.zeros((rows, cols), dtype=np.int64)
    ok_grid = np.zeros((rows, cols), dtype=bool)
    probs = np.zeros((k, rows, cols), dtype=np.float64) if need_probs else None
    emb = (
        np.full((meta.embedding.dim, rows, cols), np.nan, dtype=np.float32)
        if embedding and meta.embedding is not None  # None: refused above
        else None
    )
    rr, cc = np.nonzero(mask)
    timings = {"fill": 0.0, "model": 0.0}
    good_any = False
    if rr.size:
        t0 = time.perf_counter()
        series = np.ascontiguousarray(values[:, :, rr, cc].transpose(2, 0, 1))  # (N, S, C)
        filled, _n_valid, ok = fill_gaps(series, positions, meta.time_grid.day_of_season, min_valid=min_valid)
        timings["fill"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        good = np.flatnonzero(ok)
        good_any = bool(good.size)
        ok_grid[rr[good], cc[good]] = True
        if isinstance(bundle, SessionPool):
            logits, vec, provider = bundle.run(filled[good], batch_size, embedding=embedding)
        else:
            logits, vec = run_batches([bundle], filled[good], batch_size, embedding=embedding)
            provider = bundle.provider
        check_finite(bundle.path, logits, vec)
        if emb is not None:
            if vec is None:
                raise BundleError(f"bundle {bundle.path} returned no embedding output; expected one")
            emb[:, rr[good], cc[good]] = vec.T
        index[rr[good], cc[good]] = np.argmax(logits, axis=1)
        if probs is not None:
            probs[:, rr[good], cc[good]] = softmax(logits.astype(np.float64), meta.temperature).T
        if probs is not None and post is not None and post.smooth_sigma is not None:  # post: probs exist
            probs = smooth_probabilities(probs, ok_grid, post.smooth_sigma)
            index = np.where(ok_grid, np.argmax(probs, axis=0), index)
        if post is not None and post.majority_filter is not None:
            index = majority_filter(index, ok_grid, post.majority_filter, k)
        timings["model"] = time.perf_counter() - t0

    ok_in = ok_grid[inner]
    mask_in = mask[inner]
    codes = np.array([kk.code for kk in meta.classes], dtype=np.uint8)
    classes = np.where(ok_in, codes[index[inner]], 0).astype(np.uint8)
    inner_all = (slice(None), *inner)  # every channel of (C, rows, cols) inside ``inner``
    conf = prob_out = unc = None
    if probs is not None:
        p_in = probs[inner_all]
        if confidence:
            conf = np.where(ok_in, _percent(p_in.max(axis=0)), CONFIDENCE_NODATA).astype(np.uint8)
        if probabilities:
            prob_out = np.where(ok_in[None], _percent(p_in), CONFIDENCE_NODATA).astype(np.uint8)
        if uncertainty is not None:
            unc = np.where(
                ok_in, _percent(_uncertainty(p_in, uncertainty, axis=0)), CONFIDENCE_NODATA
            ).astype(np.uint8)
    if emb is not None:
        emb = np.ascontiguousarray(emb[inner_all])
    n_mask, n_classified = int(mask_in.sum()), int(ok_in.sum())
    return BlockPrediction(
        classes=classes,
        confidence=conf,
        embedding=emb,
        n_mask=n_mask,
        n_classified=n_classified,
        n_insufficient=n_mask - n_classified,
        timings=timings,
        probabilities=prob_out,
        uncertainty=unc,
        insufficient=mask_in & ~ok_in,
        provider=provider if good_any else None,
        float_probabilities=probs[inner_all] if float_probabilities and probs is not None else None,
    )


_IDLE: OrderedDict[tuple[Any, ...], list[Bundle]] = OrderedDict()
_IDLE_LOCK = threading.Lock()
MAX_CACHED_BUNDLES = 4
"""Bundle files (with their thread count and provider) whose idle sessions a process keeps."""
MAX_IDLE_SESSIONS = 8
"""Idle sessions kept per bundle file, threads and provider."""


@contextmanager
def bundle_session(path: str | Path, intra_op_threads: int, provider: str = "cpu") -> Iterator[Bundle]:
    """An open session of the bundle at ``path`` on ``provider``, for the calling thread's use until exit.

    Sessions are reused: the block threads of a run, successive runs in one process (API calls, a
    batch's regions on a Dask worker) and the driver's check of the bundle take an idle session of the
    same (file, threads, provider) instead of opening a new one. Each thread has its own while it runs
    (two threads on one session run measurably slower than on two). The key holds the file's size,
    modification time and inode, so a bundle rewritten in place is opened again.
    """
    p = Path(path).resolve()
    try:
        st = p.stat()
    except OSError:
        load_bundle(p, intra_op_threads=intra_op_threads, provider=provider)  # raises, saying what is wrong
        raise
    key = (str(p), st.st_size, st.st_mtime_ns, st.st_ino, intra_op_threads, provider)
    with _IDLE_LOCK:
        idle = _IDLE.get(key)
        bundle = idle.pop() if idle else None
    if bundle is None:
        bundle = load_bundle(p, intra_op_threads=intra_op_threads, provider=provider)
    try:
        yield bundle
    finally:
        with _IDLE_LOCK:
            idle = _IDLE.setdefault(key, [])
            _IDLE.move_to_end(key)
            if len(idle) < MAX_IDLE_SESSIONS:
                idle.append(bundle)
            while len(_IDLE) > MAX_CACHED_BUNDLES:
                _IDLE.popitem(last=False)


class SessionPool:
    """The ONNX Runtime sessions of one run: ``threads`` threads, each running single-threaded sessions of
    one bundle (from :func:`bundle_session`), shared by all the blocks of the run.

    A block hands its batches to :meth:`run`; they join one queue and run on whichever thread is free.
    So the cores stay busy whatever the split of the cropland between blocks: a run of two blocks, one
    with three times the cropland of the other, does not leave a core idle while the larger one finishes.
    On the CPU, single-threaded sessions side by side also classify faster than one session with as many
    intra-op threads (docs/benchmarks/precision.md). Close it (or use it as a context manager) to stop its
    threads.
    """

    def __init__(self, path: str | Path, provider: str, threads: int) -> None:
        self.path, self.provider = Path(path), provider
        with bundle_session(self.path, 1, provider) as b:
            self.metadata = b.metadata
            # A GPU takes one session at a time: more would only share its memory.
            self.threads = max(1, threads) if b.provider == "CPUExecutionProvider" else 1
        self._pool = ThreadPoolExecutor(max_workers=self.threads, thread_name_prefix="cropmap-session")

    def _one(self, x: np.ndarray, embedding: bool) -> tuple[np.ndarray, np.ndarray | None, str]:
        with bundle_session(self.path, 1, self.provider) as b:
            out = b.run(x, embedding=embedding)
            return (out[0], out[1], b.provider) if embedding else (out, None, b.provider)

    def run(
        self, x: np.ndarray, batch_size: int, *, embedding: bool = False
    ) -> tuple[np.ndarray, np.ndarray | None, str | None]:
        """Run float32 ``(N, T, C)`` in batches of ``batch_size`` on the pool's threads.

        Returns:
            float32 logits ``(N, K)``, float32 embeddings ``(N, D)`` when ``embedding`` (else ``None``), and
            the execution provider that ran them (``None`` when ``x`` is empty).
        """
        futures = [
            self._pool.submit(self._one, x[s : s + batch_size], embedding)
            for s in range(0, len(x), batch_size)
        ]
        try:
            parts = [f.result() for f in futures]
        except BaseException:
            for f in futures:
                f.cancel()
            raise
        k = len(self.metadata.classes)
        logits = (
            np.concatenate([p[0] for p in parts]).astype(np.float32, copy=False)
            if parts
            else np.empty((0, k), dtype=np.float32)
        )
        vecs = None
        if embedding and self.metadata.embedding is not None:
            vecs = (
                np.concatenate([p[1] for p in parts]).astype(np.float32, copy=False)
                if parts
                else np.empty((0, self.metadata.embedding.dim), dtype=np.float32)
            )
        return logits, vecs, parts[0][2] if parts else None

    def close(self) -> None:
        """Stop the threads (batches not started are cancelled)."""
        self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass(frozen=True)
class BlockItem:
    """One unit of work: a block and the polygons that touch it."""

    block: Block
    geometries: tuple[shapely.Geometry, ...]
    parcels: tuple[tuple[int, shapely.Geometry], ...] = ()
    """``(parcel id, geometry)`` of the parcels touching the block (``--parcels``)."""


@dataclass(frozen=True)
class BlockResult:
    """A block's prediction together with where it goes."""

    block: Block
    prediction: BlockPrediction


def halo_window(block: Block, halo: int, raster_shape: tuple[int, int]) -> tuple[Window, tuple[slice, slice]]:
    """The window read for ``block``: the block grown by ``halo`` pixels each side, clipped to
    the raster; and the (rows, cols) slices of the block inside that window."""
    r0, c0 = max(0, block.row_off - halo), max(0, block.col_off - halo)
    r1 = min(raster_shape[0], block.row_off + block.height + halo)
    c1 = min(raster_shape[1], block.col_off + block.width + halo)
    inner = (
        slice(block.row_off - r0, block.row_off - r0 + block.height),
        slice(block.col_off - c0, block.col_off - c0 + block.width),
    )
    return Window(c0, r0, c1 - c0, r1 - r0), inner


@dataclass(frozen=True)
class BlockJob:
    """Everything a worker needs to process blocks; picklable (paths, not handles)."""

    stack: Stack
    bundle_path: Path
    metadata: BundleMetadata
    obs: tuple[int, ...]
    """Stack observation indices of the season, ordered by season position."""
    positions: tuple[int, ...]
    min_valid: int
    batch_size: int
    threads: int
    """ONNX Runtime intra-op threads of the block's session when the job has no :attr:`pool` (on a dask cluster:
    1, one single-threaded session per worker thread)."""
    confidence: bool
    embedding: bool
    probabilities: bool = False
    uncertainty: str | None = None
    post: PostProcess | None = None
    """Spatial post-processing; blocks are then read with :attr:`PostProcess.halo` pixels of context."""
    cloud: CloudMask | None = None
    """The stack's cloud band and masking rule; ``None``: no cloud masking."""
    provider: str = "cpu"
    """ONNX Runtime execution provider of the workers' sessions (see :func:`cropmap.runtime.load_bundle`)."""
    pool: SessionPool | None = field(default=None, compare=False, repr=False)
    """A local run's shared sessions (:class:`SessionPool`); ``None`` on a dask cluster, where a job is pickled."""

    def halo_window(self, block: Block) -> tuple[Window, tuple[slice, slice]]:
        """See :func:`halo_window`, with this job's post-processing halo."""
        h = self.post.halo if self.post is not None and self.post.active else 0
        return halo_window(block, h, self.stack.shape)

    def __call__(self, item: BlockItem) -> BlockResult:
        """Read, mask and classify one block (with its halo, when post-processing)."""
        block = item.block
        t0 = time.perf_counter()
        window, inner = self.halo_window(block)
        height, width = int(window.height), int(window.width)
        mask = rasterize_block(
            item.geometries, (height, width), window_transform(window, self.stack.transform)
        )
        n_obs = n_cloud = 0
        if mask.any():
            bands = [*self.metadata.bands, *([self.cloud.band] if self.cloud is not None else [])]
            raw = self.stack.read(window, self.obs, bands)
            values = self.stack.to_model_units(
                raw[:, : self.metadata.n_bands], self.metadata.reflectance_scale
            )
            if self.cloud is not None:
                counted = np.zeros_like(mask)
                counted[inner] = mask[inner]
                n_obs, n_cloud = self.cloud.apply(values, raw[:, -1], counted)
        else:
            values = np.empty((len(self.obs), self.metadata.n_bands, height, width), dtype=np.float32)
        read_s = time.perf_counter() - t0
        with ExitStack() as held:
            bundle = self.pool or held.enter_context(
                bundle_session(self.bundle_path, self.threads, self.provider)
            )
            pred = predict_block(
                values,
                mask,
                np.asarray(self.positions),
                bundle,
                min_valid=self.min_valid,
                batch_size=self.batch_size,
                confidence=self.confidence,
                embedding=self.embedding,
                probabilities=self.probabilities,
                uncertainty=self.uncertainty,
                post=self.post,
                inner=inner,
                float_probabilities=bool(item.parcels),
            )
        if item.parcels:
            from cropmap.parcels import block_stats

            codes = np.array([c.code for c in self.metadata.classes])
            pred.parcel_stats = block_stats(
                item.parcels,
                window_transform(block.window, self.stack.transform),
                pred.classes,
                mask[inner],
                pred.float_probabilities,
                codes,
            )
            pred.float_probabilities = None  # not shipped back from the worker
        pred.timings["read"] = read_s
        pred.n_observations, pred.n_cloud_masked = n_obs, n_cloud
        return BlockResult(block=block, prediction=pred)
