"""Writing outputs: Cloud-Optimised GeoTIFFs with a legend, written atomically.

Every output is first written under a temporary name in its final directory and
moved into place (``os.replace``) only when all outputs of the run are complete;
on any failure the temporaries are removed, so a final path never holds a
half-written file.

The class map is a uint8 COG (nodata 0) with an embedded colour table. Its class
names travel inside the file itself as band metadata (``CLASS_<code>=<name>`` items
and a ``cropmap_classes`` JSON legend, in the GeoTIFF's GDAL_METADATA tag, so copying
the ``.tif`` alone keeps them). GDAL's GeoTIFF driver has no in-file place for
category names or a raster attribute table (it keeps them in the PAM sidecar), so
they are written as well to ``<map>.tif.aux.xml`` (category names and a thematic
RAT, read by GDAL and QGIS) and as a QGIS style ``<map stem>.qml`` (paletted
renderer with labels) that QGIS applies when the layer is opened.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape, quoteattr

import numpy as np
import rasterio
import rasterio.shutil
from affine import Affine
from rasterio.crs import CRS
from rasterio.io import MemoryFile
from rasterio.windows import Window
from typing_extensions import Self

from cropmap.contract.metadata import ClassInfo
from cropmap.errors import OutputExistsError
from cropmap.safeio.commit import replace_all
from cropmap.safeio.oserrors import cause_of, io_step
from cropmap.safeio.temporaries import owned_path
from cropmap.stack import bounded_gdal_cache

logger = logging.getLogger(__name__)

MAP_NODATA = 0
COG_BLOCK_SIZE_PX = 512
_TMP_TILE_PX = 256


@dataclass(frozen=True)
class OutputPaths:
    """Final paths of a run's outputs (``None`` for outputs not requested)."""

    map: Path
    aux: Path
    qml: Path
    summary: Path
    confidence: Path | None
    embedding: Path | None
    quicklook: Path | None
    stac: Path | None = None
    probabilities: Path | None = None
    uncertainty: Path | None = None
    parcels: Path | None = None
    """The per-parcel GeoPackage (``--parcels``)."""
    parcels_qml: Path | None = None

    def all(self) -> list[Path]:
        """Every output path of the run."""
        paths = [
            self.map,
            self.aux,
            self.qml,
            self.confidence,
            self.probabilities,
            self.uncertainty,
            self.embedding,
            self.quicklook,
            self.stac,
            self.parcels,
            self.parcels_qml,
            self.summary,
        ]
        return [p for p in paths if p is not None]


def output_paths(
    out: Path,
    *,
    confidence: bool,
    embedding: bool,
    quicklook: bool,
    probabilities: bool = False,
    uncertainty: bool = False,
    parcels: bool = False,
) -> OutputPaths:
    """Name the outputs of a run writing the class map to ``out``."""
    stem = out.with_suffix("")
    return OutputPaths(
        map=out,
        aux=out.with_name(out.name + ".aux.xml"),
        qml=out.with_suffix(".qml"),
        summary=stem.with_name(stem.name + "_summary.json"),
        confidence=stem.with_name(stem.name + "_confidence.tif") if confidence else None,
        embedding=stem.with_name(stem.name + "_embedding.tif") if embedding else None,
        quicklook=stem.with_name(stem.name + "_quicklook.png") if quicklook else None,
        stac=stem.with_name(stem.name + "_stac.json"),
        probabilities=stem.with_name(stem.name + "_probabilities.tif") if probabilities else None,
        uncertainty=stem.with_name(stem.name + "_uncertainty.tif") if uncertainty else None,
        parcels=stem.with_name(stem.name + "_parcels.gpkg") if parcels else None,
        parcels_qml=stem.with_name(stem.name + "_parcels.qml") if parcels else None,
    )


def possible_outputs(out: Path) -> OutputPaths:
    """Every output a run writing the class map to ``out`` can write (all options on)."""
    return output_paths(
        out,
        confidence=True,
        embedding=True,
        quicklook=True,
        probabilities=True,
        uncertainty=True,
        parcels=True,
    )


def stale_outputs(paths: OutputPaths) -> list[Path]:
    """Side outputs of an earlier run beside ``paths.map`` that this run does not write (they would go stale)."""
    mine = set(paths.all())
    return [p for p in possible_outputs(paths.map).all() if p not in mine and os.path.lexists(p)]


TEMP_NAME_EXTRA = 72
"""Characters a temporary name adds to an output's name at most (``.``, ``.cropmap-HOST-PID-TOKEN.scratch.tif...``)."""


def check_outputs(paths: OutputPaths, *, overwrite: bool) -> None:
    """Refuse to run when an output exists and ``overwrite`` is False, or is not a file.

    An output path that is a symbolic link counts as existing, also when it dangles. A
    side output of an earlier run that this run does not write (e.g. a confidence raster
    when ``--confidence`` is off) counts too: with ``overwrite`` it is removed with the
    commit, so the folder never mixes two runs' files. Names and paths too long for the
    file system (with the temporaries' longer names) are refused here, before any work.
    Creates nothing: the output folder is made once the inputs are valid.

    Raises:
        OutputExistsError: Naming the existing files, a folder path that is a file, or
            an output path that is a folder (never replaced, even with ``overwrite``).
    """
    _refuse_long_names(paths)
    folder = paths.map.parent
    p = folder
    while not p.exists() and p != p.parent:
        p = p.parent
    if not p.is_dir():
        raise OutputExistsError(
            f"output folder {folder}: {p} is a file; expected a folder (or nothing) there"
        )
    candidates = [*paths.all(), *stale_outputs(paths)]
    not_files = [str(p) for p in candidates if p.exists() and not p.is_file()]
    if not_files:
        raise OutputExistsError(
            f"output {', '.join(not_files)} exists and is not a file (a folder?); expected a file or nothing there "
            "(it is never replaced, not even with --overwrite)"
        )
    if overwrite:
        return
    existing = [
        str(p) + (" (a dangling symbolic link)" if not p.exists() else "")
        for p in candidates
        if os.path.lexists(p)
    ]
    if existing:
        raise OutputExistsError(
            f"output {', '.join(existing)} already exists; pass --overwrite to replace it"
        )


def _refuse_long_names(paths: OutputPaths) -> None:
    """Refuse output names or paths the file system cannot hold once made temporary names."""
    try:
        path_max = os.pathconf("/", "PC_PATH_MAX")
    except (OSError, ValueError):
        path_max = 4096
    existing = Path(os.path.abspath(paths.map.parent))
    while existing != existing.parent and (len(os.fsencode(existing)) >= path_max or not existing.is_dir()):
        existing = existing.parent
    try:
        name_max = os.pathconf(existing, "PC_NAME_MAX")
    except (OSError, ValueError):
        name_max = 255
    for out in paths.all():
        name_len = len(os.fsencode(out.name))
        if name_len + TEMP_NAME_EXTRA > name_max:
            raise OutputExistsError(
                f"output name {out.name[:40]}... is {name_len} bytes long; its temporary names need up to "
                f"{name_len + TEMP_NAME_EXTRA} and the file system allows {name_max}; expected an output name of at "
                f"most {name_max - TEMP_NAME_EXTRA} bytes (choose a shorter -o)"
            )
        path_len = len(os.fsencode(os.path.abspath(out)))
        if path_len + TEMP_NAME_EXTRA > path_max:
            raise OutputExistsError(
                f"output path {str(out)[:60]}... is {path_len} bytes long; with its temporary names it needs up to "
                f"{path_len + TEMP_NAME_EXTRA} and the system allows {path_max}; expected a shorter path "
                "(choose a shorter -o)"
            )


class Staging:
    """Temporary files that become the final outputs together, or not at all."""

    def __init__(self) -> None:
        self._moves: list[tuple[Path, Path]] = []
        self._scratch: list[Path] = []
        self.journal: Path | None = None
        """The commit journal of the set (:func:`cropmap.safeio.commit.journal_path`), if any."""
        self.stale: list[Path] = []
        """Outputs of an earlier run that the commit removes."""

    def temp_for(self, final: Path) -> Path:
        """A temporary path in ``final``'s folder that :meth:`commit` moves to ``final``."""
        tmp = owned_path(final, "tmp", final.suffix)
        self._moves.append((tmp, final))
        return tmp

    def newest(self) -> Path | None:
        """The temporary path handed out last by :meth:`temp_for` (the one being written, if a write fails)."""
        return self._moves[-1][0] if self._moves else None

    def staged(self, final: Path) -> Path:
        """The temporary path staged for ``final``."""
        return next(t for t, f in self._moves if f == final)

    def scratch(self, near: Path, suffix: str) -> Path:
        """A temporary path removed when staging ends."""
        tmp = owned_path(near, "scratch", suffix)
        self._scratch.append(tmp)
        return tmp

    def commit(self, *, remove: Sequence[Path] = (), journal: Path | None = None) -> None:
        """Move every staged file to its final path and remove ``remove``, all or none.

        With ``journal`` a run killed during the commit leaves the previous set or the new
        one (see :func:`cropmap.safeio.commit.replace_all` and :func:`cropmap.safeio.commit.recover_commit`).
        """
        replace_all(self._moves, remove=remove, journal=journal)
        self._moves.clear()
        self.committed = True

    committed = False
    """Whether :meth:`commit` succeeded: then failing to remove a temporary is a warning only."""

    def cleanup(self) -> None:
        """Remove whatever temporary file is left (and GDAL sidecars of it).

        After a commit, a temporary that cannot be removed is a warning (the outputs are
        complete); before, the error is raised.
        """
        for tmp in [t for t, _ in self._moves] + self._scratch:
            for p in (tmp, tmp.with_name(tmp.name + ".aux.xml"), tmp.with_name(tmp.name + ".ovr")):
                try:
                    if (
                        p.exists() or p.is_symlink()
                    ):  # (unlink of a missing file fails on a read-only file system)
                        p.unlink()
                except OSError as err:
                    if not self.committed:
                        raise
                    logger.warning(
                        "could not remove the temporary file %s (the outputs are complete): %s",
                        p,
                        cause_of(err)[1],
                    )
        self._moves.clear()
        self._scratch.clear()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.cleanup()


class BlockRaster:
    """A raster written window by window to a sparse scratch GTiff, then copied to a COG.

    Only the windows written cost anything: the scratch file is sparse (tiles never
    written take no space and read as nodata), each write also puts its
    nearest-neighbour samples into the overview levels (sparse scratch files of their
    own), and the COG is copied from a VRT that names those levels as the overviews
    (``OVERVIEWS=FORCE_USE_EXISTING``, ``SPARSE_OK``), so neither the copy nor the
    overviews read the empty tiles' pixels through a block cache. GDAL's block
    cache is bounded by :data:`GDAL_CACHE_BYTES` while writing.
    """

    def __init__(
        self,
        path: Path,
        *,
        crs: CRS,
        transform: Affine,
        shape: tuple[int, int],
        count: int,
        dtype: str,
        nodata: float,
        colormap: dict[int, tuple[int, int, int, int]] | None = None,
        descriptions: Sequence[str] | None = None,
        tags: dict[str, str] | None = None,
        band_tags: dict[int, dict[str, str]] | None = None,
        scratch: Callable[[str], Path] | None = None,
    ) -> None:
        self.path = path
        self.nodata = nodata
        self.count = count
        self.dtype = dtype
        self.shape = shape
        self._scratch = scratch or (lambda suffix: path.with_name(path.name + suffix))
        self.factors = overview_factors(shape)
        self._levels: dict[int, Any] = {}
        self._level_paths = {f: self._scratch(f".ov{f}.tif") for f in self.factors}
        with io_step("create the temporary raster", path):
            self._ds = rasterio.open(path, "w", **self._profile(shape, transform, crs, colormap is not None))
            if colormap is not None:
                self._ds.write_colormap(1, colormap)
            if descriptions:
                for i, d in enumerate(descriptions, start=1):
                    self._ds.set_band_description(i, d)
            if tags:
                self._ds.update_tags(**tags)
            for band, items in (band_tags or {}).items():
                self._ds.update_tags(band, **items)
            for f, level_path in self._level_paths.items():
                level_shape = (-(-shape[0] // f), -(-shape[1] // f))
                self._levels[f] = rasterio.open(
                    level_path, "w", **self._profile(level_shape, transform @ Affine.scale(f), crs, False)
                )

    def _profile(self, shape: tuple[int, int], transform: Affine, crs: CRS, palette: bool) -> dict[str, Any]:
        tile = _TMP_TILE_PX
        profile: dict[str, Any] = {
            "driver": "GTiff",
            "width": shape[1],
            "height": shape[0],
            "count": self.count,
            "dtype": self.dtype,
            "crs": crs,
            "transform": transform,
            "nodata": self.nodata,
            "tiled": True,
            "blockxsize": tile,
            "blockysize": tile,
            "compress": "deflate",
            "interleave": "band" if self.count > 1 else "pixel",
            "BIGTIFF": "IF_SAFER",
            "SPARSE_OK": "TRUE",
        }
        if palette:
            profile["photometric"] = "palette"
        return profile

    def write(self, window: Window, data: np.ndarray) -> None:
        """Write ``data`` (``(rows, cols)`` or ``(bands, rows, cols)``) at ``window``, and its overview samples.

        Windows never written stay empty (nodata) in the file and cost nothing.
        """
        arr = (data if data.ndim == 3 else data[None]).astype(self.dtype, copy=False)
        with bounded_gdal_cache(), io_step("write the temporary raster", self.path):
            self._ds.write(arr, window=window)
            r0, c0 = int(window.row_off), int(window.col_off)
            for f, level in self._levels.items():
                rows = _samples(r0, r0 + arr.shape[1], f, self.shape[0])
                cols = _samples(c0, c0 + arr.shape[2], f, self.shape[1])
                if rows.start < rows.stop and cols.start < cols.stop:
                    src_r = _sources(rows, f, self.shape[0]) - r0
                    src_c = _sources(cols, f, self.shape[1]) - c0
                    part = np.ascontiguousarray(arr[:, src_r][:, :, src_c])
                    level.write(
                        part,
                        window=Window(cols.start, rows.start, cols.stop - cols.start, rows.stop - rows.start),
                    )

    def to_cog(self, dest: Path) -> None:
        """Close the scratch files and copy them to a Cloud-Optimised GeoTIFF at ``dest``.

        The overviews are the nearest-neighbour samples written with each window
        (class codes must not be averaged): overview level ``f`` holds, at ``(i, j)``,
        the full-resolution pixel ``(i f + f // 2, j f + f // 2)`` (clipped to the raster).
        """
        with io_step("finish the temporary raster", self.path):
            self._close_files()
        try:
            with bounded_gdal_cache(), io_step("write the Cloud-Optimised GeoTIFF", dest):
                # The VRT lives in memory (GDAL's /vsimem/): only the COG itself is written to disk.
                with MemoryFile(ext=".vrt") as plain:
                    rasterio.shutil.copy(self.path, plain.name, driver="VRT")
                    xml = plain.read().decode("utf-8")
                levels = [str(self._level_paths[f]) for f in self.factors]
                with MemoryFile(_with_overviews(xml, levels).encode("utf-8"), ext=".vrt") as vrt:
                    rasterio.shutil.copy(
                        vrt.name,
                        dest,
                        driver="COG",
                        COMPRESS="DEFLATE",
                        BLOCKSIZE=COG_BLOCK_SIZE_PX,
                        OVERVIEWS="FORCE_USE_EXISTING",
                        SPARSE_OK="TRUE",
                        BIGTIFF="IF_SAFER",
                        NUM_THREADS="1",
                    )
                dest.with_name(dest.name + ".aux.xml").unlink(missing_ok=True)
                check_cog(dest)
        finally:
            self._remove_extras()

    def preview(self, max_side: int) -> Path:
        """Close the scratch files and return the coarsest of them (full resolution or an overview level)
        whose longer side still has at least ``max_side`` pixels, for a quick-look read at about that size
        without visiting every tile of a large raster. Valid until :meth:`close`."""
        with io_step("finish the temporary raster", self.path):
            self._close_files()
        best = self.path
        for f in self.factors:
            if max(-(-self.shape[0] // f), -(-self.shape[1] // f)) >= max_side:
                best = self._level_paths[f]
        return best

    def _close_files(self) -> None:
        for ds in [self._ds, *self._levels.values()]:
            if not ds.closed:
                with io_step("close the temporary raster", Path(ds.name)):
                    ds.close()

    def _remove_extras(self) -> None:
        """Remove the overview levels (the scratch file itself is the caller's)."""
        for p in self._level_paths.values():
            if p.exists() or p.is_symlink():
                p.unlink()

    def close(self) -> None:
        """Close the scratch files without copying them; the overview levels are removed."""
        try:
            self._close_files()
        finally:
            self._remove_extras()


def overview_factors(shape: tuple[int, int]) -> list[int]:
    """Overview decimation factors of a COG of ``shape``: 2, 4, ... while the level above is wider than a tile.

    This is the rule of GDAL's COG driver: the smallest overview is the first that fits one
    :data:`COG_BLOCK_SIZE_PX` tile.
    """
    factors: list[int] = []
    f = 2
    while max(-(-shape[0] // (f // 2)), -(-shape[1] // (f // 2))) > COG_BLOCK_SIZE_PX:
        factors.append(f)
        f *= 2
    return factors


def _sources(index: range | np.ndarray, factor: int, size: int) -> np.ndarray:
    """Full-resolution row (or column) sampled by overview row ``index`` at ``factor``."""
    return np.minimum(np.asarray(index, dtype=np.int64) * factor + factor // 2, size - 1)


def _samples(start: int, stop: int, factor: int, size: int) -> range:
    """Overview rows (or columns) whose sample lies in full-resolution rows ``[start, stop)``."""
    n = -(-size // factor)
    src = _sources(np.arange(n), factor, size)
    return range(int(np.searchsorted(src, start, "left")), int(np.searchsorted(src, stop, "left")))


def _with_overviews(vrt_xml: str, levels: Sequence[str]) -> str:
    """``vrt_xml`` with ``<Overview>`` elements naming ``levels`` (one file per level) in every band."""
    import re

    def add(match: re.Match[str]) -> str:
        band = re.search(r'band="(\d+)"', match.group(0))
        assert band is not None
        items = "".join(
            f'<Overview><SourceFilename relativeToVRT="0">{escape(p)}</SourceFilename>'
            f"<SourceBand>{band.group(1)}</SourceBand></Overview>"
            for p in levels
        )
        return match.group(0).replace("</VRTRasterBand>", items + "</VRTRasterBand>")

    return re.sub(r"<VRTRasterBand\b.*?</VRTRasterBand>", add, vrt_xml, flags=re.DOTALL)


def check_cog(path: Path) -> None:
    """Verify with GDAL that ``path`` is a tiled GeoTIFF with the COG layout.

    Raises:
        RuntimeError: If GDAL does not report ``LAYOUT=COG`` or the file is not tiled
            (a bug in cropmap, not a user error).
    """
    with rasterio.open(path) as ds:
        layout = ds.tags(ns="IMAGE_STRUCTURE").get("LAYOUT")
        # (rasterio's profile calls a one-tile raster 512 px wide "not tiled": compare the tile shape instead)
        tiles = ds.block_shapes[0]
        if layout != "COG" or tiles != (COG_BLOCK_SIZE_PX, COG_BLOCK_SIZE_PX):
            raise RuntimeError(f"{path} is not a Cloud-Optimised GeoTIFF (LAYOUT={layout}, blocks {tiles})")


def colormap(classes: Sequence[ClassInfo]) -> dict[int, tuple[int, int, int, int]]:
    """The embedded colour table: class colours, transparent nodata, black elsewhere."""
    cmap = {i: (0, 0, 0, 255) for i in range(256)}
    cmap[MAP_NODATA] = (0, 0, 0, 0)
    for c in classes:
        cmap[c.code] = (*c.rgb(), 255)
    return cmap


def class_tags(classes: Sequence[ClassInfo]) -> tuple[dict[str, str], dict[str, str]]:
    """In-file legend of the class map: ``(dataset tags, band-1 tags)``.

    GDAL stores both in the GeoTIFF's GDAL_METADATA tag, inside the file, so they
    survive copying the ``.tif`` alone (``gdalinfo`` lists them under Metadata;
    ``rasterio`` reads them with ``tags()`` / ``tags(1)``).
    """
    legend = [
        {"value": c.code, "name": c.name, "color": c.color} for c in sorted(classes, key=lambda c: c.code)
    ]
    dataset = {
        "cropmap_classes": json.dumps(legend, ensure_ascii=False),
        "cropmap_nodata": f"{MAP_NODATA} = not classified",
    }
    band = {f"CLASS_{c.code}": c.name for c in classes}
    return dataset, band


def read_class_names(path: Path) -> dict[int, str]:
    """Class names stored inside a class-map GeoTIFF written by cropmap (no sidecar needed)."""
    with rasterio.open(path) as ds:
        band = ds.tags(1)
    return {int(k.split("_", 1)[1]): v for k, v in band.items() if k.startswith("CLASS_") and k[6:].isdigit()}


def write_aux_xml(path: Path, classes: Sequence[ClassInfo]) -> None:
    """Write GDAL category names and a thematic raster attribute table (PAM ``.aux.xml``).

    Category ``i`` is the name of pixel value ``i``; values without a class (0, the
    nodata, included) get an empty name.
    """
    by_code = {c.code: c for c in classes}
    cats = "\n".join(
        f"      <Category>{escape(by_code[i].name) if i in by_code else ''}</Category>"
        for i in range(max(by_code) + 1)
    )
    fields = [
        ("Value", 0, 5),
        ("Class_Name", 2, 2),
        ("Red", 0, 6),
        ("Green", 0, 7),
        ("Blue", 0, 8),
        ("Alpha", 0, 9),
    ]
    defs = "\n".join(
        f'      <FieldDefn index="{i}"><Name>{n}</Name><Type>{t}</Type><Usage>{u}</Usage></FieldDefn>'
        for i, (n, t, u) in enumerate(fields)
    )
    rows = []
    for i, c in enumerate(sorted(classes, key=lambda c: c.code)):
        r, g, b = c.rgb()
        rows.append(
            f'      <Row index="{i}"><F>{c.code}</F><F>{escape(c.name)}</F><F>{r}</F><F>{g}</F><F>{b}</F><F>255</F></Row>'
        )
    text = (
        "<PAMDataset>\n"
        '  <PAMRasterBand band="1">\n'
        "    <CategoryNames>\n"
        f"{cats}\n"
        "    </CategoryNames>\n"
        '    <GDALRasterAttributeTable tableType="thematic">\n'
        f"{defs}\n" + "\n".join(rows) + "\n    </GDALRasterAttributeTable>\n"
        "  </PAMRasterBand>\n"
        "</PAMDataset>\n"
    )
    path.write_text(text, encoding="utf-8")


def write_qml(path: Path, classes: Sequence[ClassInfo]) -> None:
    """Write a QGIS style: paletted renderer with one labelled entry per class."""
    entries = "\n".join(
        f'        <paletteEntry value="{c.code}" color="{c.color.lower()}" alpha="255" label={quoteattr(c.name)}/>'
        for c in sorted(classes, key=lambda c: c.code)
    )
    text = (
        "<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>\n"
        '<qgis version="3.28.0" styleCategories="AllStyleCategories">\n'
        "  <pipe>\n"
        '    <rasterrenderer type="paletted" band="1" opacity="1" alphaBand="-1" nodataColor="">\n'
        "      <rasterTransparency/>\n"
        "      <colorPalette>\n"
        f"{entries}\n"
        "      </colorPalette>\n"
        "    </rasterrenderer>\n"
        "  </pipe>\n"
        "</qgis>\n"
    )
    path.write_text(text, encoding="utf-8")


def write_class_map(data: Any, path: str | Path, *, overwrite: bool = False) -> Path:
    """Write a class-map DataArray (from :func:`cropmap.classify_array`) the way ``cropmap classify`` does.

    A uint8 COG with nodata 0, the colour table, the class names inside the file
    (:func:`class_tags`), ``<map>.tif.aux.xml`` and ``<map stem>.qml`` beside it, written
    atomically. ``rio.to_raster`` keeps none of the legend.

    Args:
        data: A 2-D ``(y, x)`` DataArray with the attrs ``crs``, ``transform``,
            ``class_codes``, ``class_names`` and ``class_colors`` that ``classify_array`` sets.
        path: The ``.tif`` to write; the sidecars are named after it.
        overwrite: Replace existing files.

    Raises:
        ValueError: A DataArray without those attrs, or not 2-D.
        OutputExistsError: An output exists and ``overwrite`` is False.
    """
    from cropmap.safeio.folders import output_folder
    from cropmap.safeio.locks import RunLock
    from cropmap.safeio.temporaries import remove_stale

    path = Path(path)
    attrs = getattr(data, "attrs", {})
    missing = [
        k for k in ("crs", "transform", "class_codes", "class_names", "class_colors") if k not in attrs
    ]
    if missing or getattr(data, "ndim", 0) != 2:
        raise ValueError(
            f"expected a 2-D class DataArray from cropmap.classify_array (attrs missing: {missing})"
        )
    classes = [
        ClassInfo(code=int(c), name=str(n), color=str(col))
        for c, n, col in zip(attrs["class_codes"], attrs["class_names"], attrs["class_colors"], strict=True)
    ]
    paths = [path, path.with_name(path.name + ".aux.xml"), path.with_suffix(".qml")]
    values = np.asarray(data.values, dtype=np.uint8)
    grid = {
        "crs": CRS.from_user_input(attrs["crs"]),
        "transform": Affine(*attrs["transform"][:6]),
        "shape": values.shape,
    }
    legend_tags, band_legend = class_tags(classes)
    extra = {k: str(attrs[k]) for k in ("model", "season") if k in attrs}
    tags = {f"cropmap_{k}": v for k, v in extra.items()}

    def check() -> None:
        existing = [str(p) for p in paths if p.exists()]
        if existing and not overwrite:
            raise OutputExistsError(
                f"output {', '.join(existing)} already exists; pass overwrite=True to replace it"
            )

    check()
    with output_folder(path.parent), RunLock(path, "output"):
        check()
        remove_stale(path.parent, {p.name for p in paths})
        with Staging() as staging:
            raster = BlockRaster(
                staging.scratch(path, ".tif"),
                count=1,
                dtype="uint8",
                nodata=MAP_NODATA,
                colormap=colormap(classes),
                descriptions=["crop_class"],
                band_tags={1: band_legend},
                tags={**tags, **legend_tags},
                scratch=lambda extra_suffix: staging.scratch(path, ".tif" + extra_suffix),
                **grid,
            )
            try:
                raster.write(Window(0, 0, values.shape[1], values.shape[0]), values)
                raster.to_cog(staging.temp_for(path))
            finally:
                raster.close()
            write_aux_xml(staging.temp_for(paths[1]), classes)
            write_qml(staging.temp_for(paths[2]), classes)
            staging.commit()
    return path
