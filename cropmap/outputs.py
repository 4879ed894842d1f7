"""The outputs of a ``classify`` run: each per-pixel raster declared once, and the output folder claimed.

:func:`raster_outputs` lists the rasters a run writes (class map, confidence, probabilities, uncertainty,
embedding) as :class:`RasterOutput` entries: the final path, the file's layout and tags, and which array of a
block's :class:`~cropmap.predict.BlockPrediction` it holds. :func:`cropmap.pipeline.classify` opens each, writes
every block to each and turns each into a Cloud-Optimised GeoTIFF; a new per-pixel output is one more entry.

:func:`claim_outputs` takes the output's lock, repairs a commit a killed run left, re-checks the outputs, removes a
killed run's temporaries, checks the free space and yields the :class:`~cropmap.writer.Staging` the run writes
into; :func:`refuse_inputs_as_outputs` keeps every input out of the outputs.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cropmap.contract.metadata import BundleMetadata
from cropmap.options import ClassifyOptions
from cropmap.predict import CONFIDENCE_NODATA, BlockPrediction

if TYPE_CHECKING:
    from cropmap.writer import BlockRaster, OutputPaths, Staging

logger = logging.getLogger(__name__)

UNCERTAINTY_MEASURES = {
    "entropy": "Shannon entropy of the class probabilities / ln(number of classes)",
    "margin": "1 - (highest - second highest class probability)",
}
"""How each ``--uncertainty`` measure is computed, in words (the raster's tag)."""


@dataclass(frozen=True)
class RasterGrid:
    """The pixel grid every output raster of a run shares: the stack's."""

    crs: Any  # rasterio.crs.CRS
    transform: Any  # affine.Affine
    shape: tuple[int, int]


@dataclass(frozen=True)
class RasterOutput:
    """One per-pixel output raster of a run.

    Attributes:
        name: Its field of :class:`~cropmap.writer.OutputPaths` (``"map"``, ``"confidence"``, ...).
        final: The path the finished Cloud-Optimised GeoTIFF is moved to.
        values: The block's array it holds: ``(rows, cols)`` for one band, ``(bands, rows, cols)`` for several.
        count, dtype, nodata, descriptions, tags, band_tags, colormap: The file's layout and metadata.
        embedding: Stored by :class:`~cropmap.embedding.EmbeddingRaster` (``dtype`` is the storage type,
            int8 with per-band scale and offset, float16 or float32).
    """

    name: str
    final: Path
    values: Callable[[BlockPrediction], np.ndarray | None]
    count: int
    dtype: str
    descriptions: list[str]
    tags: dict[str, str]
    nodata: float | None = None
    band_tags: dict[int, dict[str, str]] | None = None
    colormap: Mapping[int, tuple[int, ...]] | None = None
    embedding: bool = False

    def block(self, prediction: BlockPrediction) -> np.ndarray:
        """What this output holds of one block's prediction.

        Raises:
            RuntimeError: The kernel computed no such array (a bug: the block job and the outputs disagree).
        """
        values = self.values(prediction)
        if values is None:
            raise RuntimeError(
                f"the block's prediction holds no {self.name} values; the block job was not asked"
            )
        return values

    def open(self, staging: Staging, grid: RasterGrid) -> BlockRaster:
        """The block-wise raster, on scratch files that ``staging`` removes (with their overview levels)."""
        from cropmap.embedding import EmbeddingRaster

        layout: dict[str, Any] = {
            "count": self.count,
            "dtype": self.dtype,
            "descriptions": self.descriptions,
            "tags": self.tags,
            "crs": grid.crs,
            "transform": grid.transform,
            "shape": grid.shape,
        }
        if self.embedding:
            return EmbeddingRaster(
                staging.scratch(self.final, ".tif"),
                scratch=lambda extra: staging.scratch(self.final, ".tif" + extra),
                **layout,
            )
        if self.colormap is not None:
            layout["colormap"] = self.colormap
        if self.band_tags is not None:
            layout["band_tags"] = self.band_tags
        return scratch_raster(staging, self.final, nodata=self.nodata, **layout)


def scratch_raster(staging: Staging, final: Path, *, suffix: str = ".tif", **layout: Any) -> BlockRaster:
    """A :class:`~cropmap.writer.BlockRaster` whose scratch files (and their overview levels) staging removes."""
    from cropmap.writer import BlockRaster

    return BlockRaster(
        staging.scratch(final, suffix), scratch=lambda extra: staging.scratch(final, suffix + extra), **layout
    )


def raster_outputs(
    meta: BundleMetadata, opts: ClassifyOptions, paths: OutputPaths, season: int
) -> list[RasterOutput]:
    """The per-pixel rasters this run writes, class map first."""
    from cropmap.writer import MAP_NODATA, class_tags, colormap

    legend_tags, band_legend = class_tags(meta.classes)
    note = probability_note(meta, opts)
    percent = {"count": 1, "dtype": "uint8", "nodata": CONFIDENCE_NODATA}
    declared: list[RasterOutput | None] = [
        RasterOutput(
            name="map",
            final=paths.map,
            values=lambda p: p.classes,
            count=1,
            dtype="uint8",
            nodata=MAP_NODATA,
            colormap=colormap(meta.classes),
            descriptions=["crop_class"],
            band_tags={1: band_legend},
            tags={"cropmap_model": meta.model_name, "cropmap_season": str(season), **legend_tags},
        ),
        None
        if paths.confidence is None
        else RasterOutput(
            name="confidence",
            final=paths.confidence,
            values=lambda p: p.confidence,
            descriptions=["confidence"],
            tags={"confidence": f"max class probability x 100 (0..100); {note}"},
            **percent,  # type: ignore[arg-type]
        ),
        None
        if paths.probabilities is None
        else RasterOutput(
            name="probabilities",
            final=paths.probabilities,
            values=lambda p: p.probabilities,
            count=len(meta.classes),
            dtype="uint8",
            nodata=CONFIDENCE_NODATA,
            descriptions=[c.name for c in meta.classes],
            tags={
                "probabilities": f"class probability x 100 (0..100), one band per class; {note}",
                "class_codes": ",".join(str(c.code) for c in meta.classes),
            },
        ),
        None
        if paths.uncertainty is None
        else RasterOutput(
            name="uncertainty",
            final=paths.uncertainty,
            values=lambda p: p.uncertainty,
            descriptions=[f"uncertainty_{opts.uncertainty}"],
            tags={
                "uncertainty": f"{UNCERTAINTY_MEASURES[str(opts.uncertainty)]}, x 100 (0 certain .. 100 "
                f"uncertain); {note}"
            },
            **percent,  # type: ignore[arg-type]
        ),
        None
        if paths.embedding is None or meta.embedding is None
        else RasterOutput(
            name="embedding",
            final=paths.embedding,
            values=lambda p: p.embedding,
            count=meta.embedding.dim,
            dtype=opts.embedding_dtype,
            descriptions=[f"embedding_{i:03d}" for i in range(meta.embedding.dim)],
            tags={"embedding": meta.embedding.description, "embedding_output": meta.embedding.output_name},
            embedding=True,
        ),
    ]
    return [o for o in declared if o is not None]


def probability_note(meta: BundleMetadata, opts: ClassifyOptions) -> str:
    """What the probabilities of this run are, for raster tags and the summary."""
    cal = meta.calibration
    note = (
        f"calibrated by temperature scaling (T = {cal.temperature:.4g}, fitted on {cal.n} held-out samples; "
        f"ECE {cal.ece_before:.3f} -> {cal.ece_after:.3f})"
        if cal is not None
        else "UNCALIBRATED softmax of the model's logits (the bundle carries no calibration)"
    )
    if opts.smooth_probabilities is not None:
        note += f"; spatially smoothed (Gaussian sigma {opts.smooth_probabilities:g} px within the mask)"
    return note


def refuse_inputs_as_outputs(
    paths: OutputPaths,
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
def claim_outputs(paths: OutputPaths, opts: ClassifyOptions, least_bytes: int) -> Iterator[Staging]:
    """Make the output folder, lock the output, re-check it, tidy up after killed runs, check the space; stage.

    On failure the temporaries, the lock file and any folder made here (if empty)
    are removed again; an ``OSError`` from writing becomes one line naming the path,
    the operation and the cause.

    Args:
        least_bytes: A low estimate of the bytes the outputs take (:func:`least_output_bytes`).
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
        check_free_space(folder, least_bytes, f"the outputs of {paths.map.name}")
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


def least_output_bytes(outputs: list[RasterOutput], n_pixels: int) -> int:
    """A low estimate of the bytes the output rasters take, for the free-space check.

    Only blocks that touch cropland hold data (``n_pixels``, the rest is nodata and compresses
    to almost nothing). Deflate was measured at about 2.5:1 on float32 embeddings and 3:1 on
    uint8 rasters of the sample data; the estimate assumes 3:1 and 20:1, so that a run is refused
    only when its outputs clearly cannot fit.
    """
    from cropmap.embedding import BYTES_PER_VALUE

    uint8_bands = sum(o.count for o in outputs if not o.embedding)
    float_bytes = sum(BYTES_PER_VALUE[o.dtype] * o.count for o in outputs if o.embedding)
    return int(n_pixels * (uint8_bands / 20 + float_bytes / 3))
