"""The per-block kernel, and the picklable job that feeds it on any dask worker.

:func:`predict_block` is pure: numpy in, numpy out. Only pixels inside the mask
with enough valid observations go through ONNX Runtime, in batches.
:class:`BlockJob` reads one block, burns the mask, and calls the kernel with an
ONNX Runtime session opened once per worker thread (sessions cannot be pickled,
so each worker opens its own from the bundle path).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import shapely

from cropmap.bundle import Bundle, BundleMetadata, load_bundle
from cropmap.clouds import CloudMask
from cropmap.mask import rasterize_block
from cropmap.stack import Stack
from cropmap.tiling import Block
from cropmap.timegrid import fill_gaps

CONFIDENCE_NODATA = 255
"""Nodata of the confidence raster (valid values are 0..100)."""


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
    n_observations: int = 0
    """Observations of mask pixels with valid reflectance before cloud masking (0 when the stack has no cloud band)."""
    n_cloud_masked: int = 0
    """Of those, the observations masked as cloud, shadow etc. (:mod:`cropmap.clouds`)."""


def predict_block(
    values: np.ndarray,
    mask: np.ndarray,
    positions: np.ndarray,
    bundle: Bundle,
    *,
    min_valid: int,
    batch_size: int,
    confidence: bool = False,
    embedding: bool = False,
) -> BlockPrediction:
    """Classify the masked pixels of one block.

    Args:
        values: float32 ``(S, C, rows, cols)`` in the bundle's units, NaN where missing;
            observations ordered by season position, bands in the bundle's order.
        mask: bool ``(rows, cols)``, True for cropland.
        positions: ``(S,)`` season positions of the observations.
        bundle: An opened bundle.
        min_valid: Fewest valid observations a pixel needs.
        batch_size: Pixels per ONNX Runtime call.
        confidence: Also return the confidence block.
        embedding: Also return the embedding block.
    """
    meta = bundle.metadata
    s, c, rows, cols = values.shape
    if c != meta.n_bands:
        raise ValueError(f"values hold {c} bands; the bundle expects {meta.n_bands}")
    classes = np.zeros((rows, cols), dtype=np.uint8)
    conf = np.full((rows, cols), CONFIDENCE_NODATA, dtype=np.uint8) if confidence else None
    emb = None
    if embedding:
        if meta.embedding is None:
            raise ValueError("the bundle has no embedding output")
        emb = np.full((meta.embedding.dim, rows, cols), np.nan, dtype=np.float32)
    rr, cc = np.nonzero(mask)
    n_mask = int(rr.size)
    timings = {"fill": 0.0, "model": 0.0}
    if n_mask == 0:
        return BlockPrediction(classes, conf, emb, 0, 0, 0, timings)

    t0 = time.perf_counter()
    series = np.ascontiguousarray(values[:, :, rr, cc].transpose(2, 0, 1))  # (N, S, C)
    filled, _n_valid, ok = fill_gaps(series, positions, meta.time_grid.day_of_season, min_valid=min_valid)
    timings["fill"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    codes = np.array([k.code for k in meta.classes], dtype=np.uint8)
    good = np.flatnonzero(ok)
    x = filled[good]
    for start in range(0, good.size, batch_size):
        batch = x[start : start + batch_size]
        sel = good[start : start + batch_size]
        if embedding:
            logits, vec = bundle.run(batch, embedding=True)
            emb[:, rr[sel], cc[sel]] = np.asarray(vec, dtype=np.float32).T
        else:
            logits = bundle.run(batch)
        logits = np.asarray(logits, dtype=np.float64)
        classes[rr[sel], cc[sel]] = codes[np.argmax(logits, axis=1)]
        if conf is not None:
            z = logits - logits.max(axis=1, keepdims=True)
            p = np.exp(z)
            pmax = 1.0 / p.sum(axis=1)  # the max class has exp(0) = 1
            conf[rr[sel], cc[sel]] = np.rint(pmax * 100.0).astype(np.uint8)
    timings["model"] = time.perf_counter() - t0
    return BlockPrediction(
        classes=classes, confidence=conf, embedding=emb, n_mask=n_mask, n_classified=int(good.size),
        n_insufficient=n_mask - int(good.size), timings=timings,
    )  # fmt: skip


_local = threading.local()


def worker_bundle(path: str | Path, intra_op_threads: int) -> Bundle:
    """The bundle session of the calling thread, opened on first use."""
    cache: dict[tuple[str, int], Bundle] = _local.__dict__.setdefault("bundles", {})
    key = (str(path), intra_op_threads)
    if key not in cache:
        cache[key] = load_bundle(path, intra_op_threads=intra_op_threads)
    return cache[key]


@dataclass(frozen=True)
class BlockItem:
    """One unit of work: a block and the polygons that touch it."""

    block: Block
    geometries: tuple[shapely.Geometry, ...]


@dataclass(frozen=True)
class BlockResult:
    """A block's prediction together with where it goes."""

    block: Block
    prediction: BlockPrediction


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
    intra_op_threads: int
    confidence: bool
    embedding: bool
    cloud: CloudMask | None = None
    """The stack's cloud band and masking rule; ``None``: no cloud masking."""

    def __call__(self, item: BlockItem) -> BlockResult:
        """Read, mask and classify one block."""
        block = item.block
        t0 = time.perf_counter()
        mask = rasterize_block(item.geometries, (block.height, block.width), block.transform(self.stack.transform))
        n_obs = n_cloud = 0
        if mask.any():
            bands = [*self.metadata.bands, *([self.cloud.band] if self.cloud is not None else [])]
            raw = self.stack.read(block.window, self.obs, bands)
            values = self.stack.to_model_units(raw[:, : self.metadata.n_bands], self.metadata.reflectance_scale)
            if self.cloud is not None:
                n_obs, n_cloud = self.cloud.apply(values, raw[:, -1], mask)
        else:
            values = np.empty((len(self.obs), self.metadata.n_bands, block.height, block.width), dtype=np.float32)
        read_s = time.perf_counter() - t0
        bundle = worker_bundle(self.bundle_path, self.intra_op_threads)
        pred = predict_block(
            values, mask, np.asarray(self.positions), bundle, min_valid=self.min_valid,
            batch_size=self.batch_size, confidence=self.confidence, embedding=self.embedding,
        )  # fmt: skip
        pred.timings["read"] = read_s
        pred.n_observations, pred.n_cloud_masked = n_obs, n_cloud
        return BlockResult(block=block, prediction=pred)

