"""Block plan over (y, x) and running the per-block work on dask.

Blocks are aligned with the stack's internal tiling (their edge is a multiple of
the file's tile), and every block carries all dates and bands. Blocks whose bounds
touch no polygon are skipped without being read. Work runs on local worker threads
or, given an address, on an existing dask.distributed cluster; at most twice as many
blocks as workers are in flight at once and a new one starts as soon as one finishes,
so memory is bounded by the block size and every worker stays busy.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from affine import Affine
from rasterio.windows import Window
from rasterio.windows import transform as window_transform

from cropmap.options import BLOCK_MEMORY_BUDGET_BYTES, DEFAULT_BLOCK_SIZE_PX

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Block:
    """One block of the plan: a window of the stack grid."""

    row: int
    """Block row in the plan."""
    col: int
    """Block column in the plan."""
    row_off: int
    col_off: int
    height: int
    width: int

    @property
    def window(self) -> Window:
        """The block's rasterio window."""
        return Window(self.col_off, self.row_off, self.width, self.height)

    def transform(self, grid: Affine) -> Affine:
        """The block's window transform on a grid with transform ``grid``."""
        return window_transform(self.window, grid)

    def bounds(self, grid: Affine) -> tuple[float, float, float, float]:
        """``(left, bottom, right, top)`` of the block in map units (the box around its four corners)."""
        r0, c0, r1, c1 = self.row_off, self.col_off, self.row_off + self.height, self.col_off + self.width
        xs, ys = zip(*(grid @ (c, r) for c, r in ((c0, r0), (c1, r0), (c0, r1), (c1, r1))), strict=True)
        return min(xs), min(ys), max(xs), max(ys)


def block_shape(
    tile_shape: tuple[int, int],
    raster_shape: tuple[int, int],
    requested: int | None,
    *,
    bytes_per_pixel: int | None = None,
) -> tuple[int, int]:
    """Block shape (rows, cols) aligned with the file's tiles.

    Each side is the smallest multiple of the tile side that is at least
    ``requested`` (default :data:`~cropmap.options.DEFAULT_BLOCK_SIZE_PX`), capped at
    the raster's side. Striped files (tiles spanning the full width) get full-width blocks.
    Without ``requested``, the default edge shrinks (never below one tile) until a block
    of ``bytes_per_pixel`` fits :data:`~cropmap.options.BLOCK_MEMORY_BUDGET_BYTES`, so a
    long 144-date stack gets smaller blocks than a 12-date one.

    Args:
        tile_shape: Internal tile (rows, cols) of the file.
        raster_shape: Raster (rows, cols).
        requested: Wanted block edge in pixels, or ``None``.
        bytes_per_pixel: Working memory one pixel of a block needs (read + filled series).
    """
    want = requested or DEFAULT_BLOCK_SIZE_PX
    shrink = False
    if requested is None and bytes_per_pixel:
        fits = int(math.sqrt(BLOCK_MEMORY_BUDGET_BYTES / bytes_per_pixel))
        if fits < want:
            want, shrink = max(1, fits), True
    sides = []
    for tile, size in zip(tile_shape, raster_shape, strict=True):
        tile = max(1, min(tile, size))
        # Round up to whole tiles, or down when shrinking to fit the memory budget.
        tiles = max(1, want // tile) if shrink else math.ceil(want / tile)
        sides.append(min(size, tiles * tile))
    if shrink:
        logger.info(
            "blocks of %s px keep one block within %d MiB (%d bytes per pixel)",
            tuple(sides),
            BLOCK_MEMORY_BUDGET_BYTES // 2**20,
            bytes_per_pixel,
        )
    if requested is not None and tuple(sides) != (
        min(requested, raster_shape[0]),
        min(requested, raster_shape[1]),
    ):
        logger.info(
            "block size %d px aligned to the file's %s px tiles: blocks of %s px",
            requested,
            tile_shape,
            tuple(sides),
        )
    return sides[0], sides[1]


def plan_blocks(raster_shape: tuple[int, int], shape: tuple[int, int]) -> list[Block]:
    """All blocks of ``shape`` covering the raster, row-major; edge blocks are cropped."""
    rows, cols = raster_shape
    bh, bw = shape
    out = []
    for i, r in enumerate(range(0, rows, bh)):
        for j, c in enumerate(range(0, cols, bw)):
            out.append(
                Block(row=i, col=j, row_off=r, col_off=c, height=min(bh, rows - r), width=min(bw, cols - c))
            )
    return out


@dataclass(frozen=True)
class Executor:
    """Where blocks run: the local threaded scheduler or a dask.distributed cluster."""

    workers: int
    """Blocks processed at once."""
    threads_per_worker: int
    """CPU threads per block worker, so that workers x threads stays within the cores. A local run keeps
    workers x threads single-threaded ONNX Runtime sessions that take the batches of every block
    (:class:`cropmap.predict.SessionPool`)."""
    scheduler: str | None

    @property
    def description(self) -> str:
        """Human-readable description for logs and the summary."""
        if self.scheduler:
            return f"dask.distributed at {self.scheduler} ({self.workers} worker threads)"
        return (
            f"local threads ({self.workers} block workers; {self.workers * self.threads_per_worker} "
            "single-threaded ONNX Runtime sessions)"
        )


def make_executor(
    n_blocks: int, workers: int | None, scheduler: str | None, *, threads: int | None = None
) -> Executor:
    """Choose parallelism for ``n_blocks`` blocks.

    Locally, ``workers`` defaults to the number of cores (but never more than there
    are blocks), and each worker gets ``cores // workers`` threads: the run keeps workers x threads
    single-threaded ONNX Runtime sessions, which take the batches of every block as they come.
    ``threads``, when given, replaces the number of cores as the run's thread budget.
    On a cluster each worker thread runs one single-threaded session.
    """
    cores = threads or os.cpu_count() or 1
    if scheduler:
        from cropmap.errors import CropmapError

        try:
            client = _client(scheduler)
        except OSError as err:
            raise CropmapError(
                f"could not connect to the dask scheduler at {scheduler} ({err}); expected a running "
                "dask.distributed scheduler"
            ) from err
        try:
            threads = sum(w["nthreads"] for w in client.scheduler_info()["workers"].values())
        finally:
            client.close()
        if threads == 0:
            raise CropmapError(f"the dask scheduler at {scheduler} has no workers; expected at least one")
        return Executor(workers=threads, threads_per_worker=1, scheduler=scheduler)
    n = max(1, min(workers or cores, max(n_blocks, 1)))
    return Executor(workers=n, threads_per_worker=max(1, cores // n), scheduler=None)


def _client(address: str) -> Any:  # distributed.Client
    from distributed import Client

    return Client(address, timeout="10s", set_as_default=False)


def run_blocks(
    func: Callable[..., Any], blocks: Sequence[Any], executor: Executor, *, in_flight: int | None = None
) -> Iterator[Any]:
    """Run ``func(block)`` for every block and yield the results as they finish.

    At most ``in_flight`` (default ``2 x workers``) results are pending at once, so
    memory stays bounded by the block size whatever the raster size.

    Args:
        func: A picklable function of one block (it must open its own file handles
            and ONNX Runtime session).
        blocks: The blocks to process.
        executor: From :func:`make_executor`.
        in_flight: Most results pending at once.
    """
    limit = in_flight or 2 * executor.workers
    if executor.scheduler:
        yield from _run_distributed(func, blocks, executor.scheduler, limit)
        return
    yield from _run_threads(func, blocks, executor.workers, limit)


def _run_threads(func: Callable[..., Any], blocks: Sequence[Any], workers: int, limit: int) -> Iterator[Any]:
    """Run on ``workers`` threads with at most ``limit`` blocks submitted at a time, yielding as they finish.

    A new block is submitted as soon as one finishes (no wave waits for its slowest block), so
    every worker stays busy until the last blocks. On an error or when the caller stops early, the
    blocks not started are cancelled and the running ones finish before this returns.
    """
    from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait

    queue = iter(blocks)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="cropmap-block") as pool:
        pending: set[Future[Any]] = set()
        try:
            for b in queue:
                pending.add(pool.submit(func, b))
                if len(pending) >= limit:
                    break
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for fut in done:
                    result = fut.result()
                    nxt = next(queue, None)
                    if nxt is not None:
                        pending.add(pool.submit(func, nxt))
                    yield result
        finally:
            for fut in pending:
                fut.cancel()


def _run_distributed(
    func: Callable[..., Any], blocks: Sequence[Any], address: str, limit: int
) -> Iterator[Any]:
    from distributed import as_completed

    client = _client(address)
    try:
        with client.as_current():
            queue = list(blocks)
            futures = [client.submit(func, b, pure=False) for b in queue[:limit]]
            queue = queue[limit:]
            done = as_completed(futures)
            for fut in done:
                result = fut.result()
                fut.release()
                if queue:
                    done.add(client.submit(func, queue.pop(0), pure=False))
                yield result
    finally:
        client.close()
