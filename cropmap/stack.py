"""Reading Sentinel-2 time stacks lazily, window by window.

Three layouts are accepted (docs/input-formats.md):

* one multi-band GeoTIFF whose bands are ``(date, band)`` pairs, described either
  by band descriptions ``YYYY-MM-DD_B02`` or by the dataset tags ``dates`` and
  ``bands`` (comma-separated; time-major, band ``i`` (0-based) = ``t * n_bands + b``);
* a folder of per-date GeoTIFFs, the date in the file name (``YYYY-MM-DD`` or
  ``YYYYMMDD``), band names in the band descriptions or a ``bands`` tag, all on one grid;
* a STAC item collection (``.json``): one item per date, one Cloud-Optimised GeoTIFF asset per band
  (:mod:`cropmap.stac_input`).

Opening a stack reads headers only. :meth:`Stack.read` reads one window of the
chosen observations and bands as float32 with NaN where data is missing; each call
opens its own rasterio handles, so calls are safe from any thread or process.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import math
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.errors import NotGeoreferencedWarning, RasterioError, RasterioIOError
from rasterio.windows import Window

from cropmap.contract.bands import canonical_band
from cropmap.errors import InputRasterError

logger = logging.getLogger(__name__)

_DESC_RE = re.compile(r"^(\d{4}-\d{2}-\d{2}|\d{8})[_\s:-]+(\S+)$")
_NAME_DATE_RE = re.compile(r"(?<!\d)(\d{4}-\d{2}-\d{2}|\d{8})(?!\d)")
_TIFF_SUFFIXES = (".tif", ".tiff")
STAC_SUFFIXES = (".json", ".geojson")
"""A stack file with one of these suffixes is a STAC item collection (:mod:`cropmap.stac_input`)."""

GDAL_CACHE_BYTES = 64 * 2**20
"""GDAL's raster block cache while cropmap reads stacks and writes outputs. GDAL's default (5 % of the
machine's RAM) fills up with the tiles a run has read or written, so a process's memory would grow with
the raster's size up to that; bounded, it depends on the block size only."""


def bounded_gdal_cache(at_least: int = 0) -> rasterio.Env:
    """A rasterio environment that bounds GDAL's block cache to :data:`GDAL_CACHE_BYTES`, or ``at_least``
    bytes when more (one window's tiles must fit, or GDAL would decode a tile again for every band)."""
    return rasterio.Env(GDAL_CACHEMAX=max(GDAL_CACHE_BYTES, int(at_least)))


def _tile_bytes(src: rasterio.io.DatasetReader, window: Window) -> int:
    """Bytes of the decoded tiles (all bands) that ``window`` touches in ``src``: bounded by the block size."""
    th, tw = src.block_shapes[0]
    r0, c0 = int(window.row_off), int(window.col_off)
    rows = (-(-(r0 + int(window.height)) // th) - r0 // th) * th
    cols = (-(-(c0 + int(window.width)) // tw) - c0 // tw) * tw
    return rows * cols * src.count * np.dtype(src.dtypes[0]).itemsize


@dataclass(frozen=True)
class ReflectanceScale:
    """How raw stack values relate to reflectance: ``reflectance = value * gain + offset``."""

    gain: float
    offset: float
    source: str
    """Where it was declared (``"tag reflectance_scale"``, ``"GDAL band scale/offset"``, ``"--reflectance-scale"``)."""

    @property
    def reflectance_scale(self) -> float:
        """The equivalent ``reflectance_scale`` (raw value = reflectance x this) when offset is 0."""
        return 1.0 / self.gain


@dataclass(frozen=True)
class Stack:
    """An opened (header-only) Sentinel-2 time stack.

    ``sources[s]`` is the file holding observation ``s``; ``band_index[s][name]`` the
    1-based band of that file holding band ``name`` (canonical S2 name) at ``dates[s]``.
    """

    path: Path
    layout: str
    """``"single-file"`` or ``"folder"``."""
    dates: tuple[dt.date, ...]
    sources: tuple[Path, ...]
    band_index: tuple[dict[str, int], ...]
    bands: tuple[str, ...]
    """Band names present at every date (canonical where they are S2 bands), in file order."""
    crs: CRS
    transform: Affine
    height: int
    width: int
    dtype: str
    nodata: tuple[float | None, ...]
    """Declared nodata of each source (``None`` when a source declares none)."""
    tile_shape: tuple[int, int]
    """Internal block shape (rows, cols) of the first source."""
    scale: ReflectanceScale | None
    """Declared reflectance scale; ``None`` when the stack declares none."""
    band_files: tuple[dict[str, Path], ...] | None = None
    """For stacks with one file per band and date (STAC items): ``band_files[s][name]`` is the file holding
    band ``name`` at ``dates[s]`` (band ``band_index[s][name]`` of it); ``None``: :attr:`sources` holds every band."""

    @property
    def files(self) -> tuple[Path, ...]:
        """Every file the stack reads."""
        if self.band_files is None:
            return tuple(dict.fromkeys(self.sources))
        return tuple(dict.fromkeys(f for per_date in self.band_files for f in per_date.values()))

    def _file(self, s: int, band: str) -> Path:
        return self.sources[s] if self.band_files is None else self.band_files[s][band]

    @property
    def shape(self) -> tuple[int, int]:
        """Raster shape (rows, cols)."""
        return (self.height, self.width)

    @property
    def has_nodata(self) -> bool:
        """Whether every source declares a nodata value."""
        return all(v is not None for v in self.nodata)

    def check_bands(self, wanted: Sequence[str]) -> None:
        """Check that every band the bundle needs is present.

        Raises:
            InputRasterError: Naming the bands found and the bands expected.
        """
        missing = [b for b in wanted if b not in self.bands]
        if missing:
            raise InputRasterError(
                f"stack {self.path} has bands {list(self.bands)}; the model needs {list(wanted)} "
                f"(missing {missing})"
            )
        extra = [b for b in self.bands if b not in wanted]
        if extra:
            logger.info("stack bands %s are not used by the model (it reads %s)", extra, list(wanted))

    def read(self, window: Window, obs: Sequence[int], bands: Sequence[str]) -> np.ndarray:
        """Read one window as float32 ``(S, C, rows, cols)``, NaN where data is missing.

        Args:
            window: Pixel window on the stack grid.
            obs: Indices into :attr:`dates` of the observations to read, in output order.
            bands: Canonical band names, in output order.

        Raises:
            InputRasterError: If a file cannot be read (e.g. truncated or corrupt).
        """
        rows, cols = int(window.height), int(window.width)
        out = np.empty((len(obs) * len(bands), rows, cols), dtype=np.float32)
        by_source: dict[Path, list[int]] = {}  # file -> rows of ``out`` (observation x band) it holds
        for i, s in enumerate(obs):
            for j, b in enumerate(bands):
                by_source.setdefault(self._file(s, b), []).append(i * len(bands) + j)
        for src_path, out_rows in by_source.items():
            indexes = [self.band_index[obs[k // len(bands)]][bands[k % len(bands)]] for k in out_rows]
            try:
                with (
                    bounded_gdal_cache(),
                    rasterio.open(src_path) as src,
                    bounded_gdal_cache(2 * _tile_bytes(src, window)),
                ):
                    raw = src.read(indexes, window=window)
                    nodatavals = [src.nodatavals[k - 1] for k in indexes]
            except RasterioError as err:
                raise InputRasterError(
                    f"stack file {src_path} could not be read at window {_fmt_window(window)} "
                    f"({err}); the file looks truncated or corrupt, expected a complete GeoTIFF"
                ) from err
            values = raw.astype(np.float32, copy=False)
            if raw is values:
                values = values.copy()
            for k, nd in enumerate(nodatavals):
                if nd is not None and not math.isnan(nd):
                    values[k][raw[k] == nd] = np.nan
            out[out_rows] = values
        return out.reshape(len(obs), len(bands), rows, cols)

    def to_model_units(self, values: np.ndarray, target_scale: float) -> np.ndarray:
        """Convert raw values in place to ``reflectance x target_scale``.

        Raises:
            InputRasterError: If the stack has no declared reflectance scale.
        """
        if self.scale is None:
            raise InputRasterError(_no_scale_message(self.path))
        gain = self.scale.gain * target_scale
        offset = self.scale.offset * target_scale
        if gain != 1.0:
            values *= np.float32(gain)
        if offset != 0.0:
            values += np.float32(offset)
        return values


def open_stack(path: str | Path, *, reflectance_scale: float | None = None) -> Stack:
    """Open a stack (single GeoTIFF or folder of per-date GeoTIFFs), reading headers only.

    Args:
        path: The GeoTIFF or the folder.
        reflectance_scale: Raw value = reflectance x this, for stacks that declare none.

    Raises:
        InputRasterError: If the stack is missing, not a GeoTIFF, truncated, has no
            discoverable dates or band names, no CRS, or files on different grids.
    """
    from cropmap.safeio.overlap import special_file_kind

    path = Path(path)
    if not path.exists():
        raise InputRasterError(
            f"stack {path} does not exist; expected a GeoTIFF or a folder of per-date GeoTIFFs"
        )
    if (kind := special_file_kind(path)) is not None:
        raise InputRasterError(
            f"stack {path} is {kind}, not a file; expected a GeoTIFF or a folder of per-date "
            "GeoTIFFs (it is not opened: reading a pipe would wait for a writer)"
        )
    if path.is_dir():
        stack = _open_folder(path)
    elif path.suffix.lower() in STAC_SUFFIXES:
        from cropmap.stac_input import open_stac_items

        stack = open_stac_items(path)
    else:
        stack = _open_single(path)
    _refuse_engineering_crs(path, stack.crs)
    scale = _resolve_scale(stack, reflectance_scale)
    stack = dataclasses.replace(stack, scale=scale)
    if not stack.has_nodata:
        logger.warning(
            "stack %s declares no nodata value: every value is taken as a valid observation (NaN excepted)",
            path,
        )
    logger.info(
        "stack %s: %s, %d dates (%s .. %s), bands %s, %d x %d px, %s, reflectance scale %s (%s)",
        path,
        stack.layout,
        len(stack.dates),
        stack.dates[0],
        stack.dates[-1],
        list(stack.bands),
        stack.height,
        stack.width,
        stack.crs.to_string(),
        round(scale.reflectance_scale, 6),
        scale.source,
    )
    return stack


def _refuse_engineering_crs(path: Path, crs: CRS) -> None:
    """Refuse a stack whose CRS is neither geographic nor projected (an engineering / LOCAL_CS one).

    Such a CRS is not tied to the Earth: no mask can be reprojected onto it, and neither pixel areas
    in hectares nor the lon/lat footprint of the STAC item can be computed.
    """
    if crs.is_geographic or crs.is_projected:
        return
    wkt = crs.to_wkt()
    kind = (
        "an engineering (LOCAL_CS) CRS" if wkt.startswith(("LOCAL_CS", "ENGCRS", "ENGINEERING")) else "a CRS"
    )
    raise InputRasterError(
        f"stack {path} has {kind} that is neither geographic nor projected ({wkt[:80]}); it is not tied to the "
        "Earth, so masks cannot be reprojected onto it and areas cannot be computed; expected a geographic or "
        "projected CRS such as EPSG:32631 (assign the real one with gdal_edit.py -a_srs)"
    )


def _open_dataset(path: Path) -> rasterio.io.DatasetReader:
    try:
        with warnings.catch_warnings():
            # A missing georeference is reported below as an error of its own.
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            src = rasterio.open(path)
    except RasterioIOError as err:
        raise InputRasterError(
            f"{path} is not a readable GeoTIFF, or is truncated or corrupt ({err}); expected a complete GeoTIFF stack"
        ) from err
    if src.driver not in ("GTiff", "COG"):
        src.close()
        raise InputRasterError(f"{path} is a {src.driver} raster; expected a GeoTIFF")
    return src


def _check_complete(src: rasterio.io.DatasetReader, path: Path) -> None:
    """Refuse files whose last tiles lie beyond the end of the file (cut copies)."""
    size = path.stat().st_size
    rows_b, cols_b = src.block_shapes[0]
    last = ((src.height - 1) // rows_b, (src.width - 1) // cols_b)
    for bidx in sorted({1, src.count}):
        for j, i in ((0, 0), last):
            off = src.get_tag_item(f"BLOCK_OFFSET_{i}_{j}", "TIFF", bidx=bidx)
            nbytes = src.get_tag_item(f"BLOCK_SIZE_{i}_{j}", "TIFF", bidx=bidx)
            if off is None or nbytes is None:
                continue
            if int(off) + int(nbytes) > size:
                raise InputRasterError(
                    f"{path} is truncated: band {bidx} needs {int(off) + int(nbytes)} bytes, the file has {size}; "
                    "expected a complete GeoTIFF (re-download or re-export it)"
                )


def _grid(src: rasterio.io.DatasetReader, path: Path) -> tuple[CRS, Affine]:
    if src.crs is None:
        raise InputRasterError(f"{path} has no CRS; expected a georeferenced GeoTIFF (e.g. EPSG:32631)")
    if src.transform == Affine.identity():
        raise InputRasterError(f"{path} has no geotransform; expected a georeferenced GeoTIFF")
    return src.crs, src.transform


def _same_grid(
    src: rasterio.io.DatasetReader, f: Path, ref: dict[str, Any] | None, *, label: str, expected: str
) -> dict[str, Any]:
    """The first file's grid (``ref`` None: this file's), after checking ``src`` lies on it.

    Raises:
        InputRasterError: ``label`` is on another CRS, shape or transform than the reference file.
    """
    crs, transform = _grid(src, f)
    grid = {"crs": crs, "transform": transform, "shape": (src.height, src.width)}
    if ref is None:
        return {**grid, "dtype": src.dtypes[0], "tile": tuple(src.block_shapes[0]), "file": f}
    if any(grid[k] != ref[k] for k in grid):
        raise InputRasterError(
            f"{label} is on another grid than {ref['file'].name} (CRS {crs.to_string()} vs "
            f"{ref['crs'].to_string()}, shape {grid['shape']} vs {ref['shape']}, transform "
            f"{tuple(transform)[:6]} vs {tuple(ref['transform'])[:6]}); expected {expected}"
        )
    return ref


def _parse_date(text: str, where: str) -> dt.date:
    try:
        if "-" in text:
            return dt.date.fromisoformat(text)
        return dt.datetime.strptime(text, "%Y%m%d").date()
    except ValueError as err:
        raise InputRasterError(
            f"{where}: {text!r} is not a valid date; expected YYYY-MM-DD or YYYYMMDD"
        ) from err


def _band_name(name: str) -> str:
    """Canonical S2 name where the name is an S2 band, else the name unchanged (an extra band)."""
    try:
        return canonical_band(name)
    except ValueError:
        return name.strip()


def _nodata(src: rasterio.io.DatasetReader) -> float | None:
    vals = {v for v in src.nodatavals if v is not None}
    if not vals:
        return None
    return float(next(iter(vals))) if len(vals) == 1 else float("nan")


def _open_single(path: Path) -> Stack:
    with _open_dataset(path) as src:
        _check_complete(src, path)
        crs, transform = _grid(src, path)
        descs = list(src.descriptions)
        tags = src.tags()
        pairs: list[tuple[dt.date, str]] | None = None
        parsed = [m for m in (_DESC_RE.match(d) if d else None for d in descs) if m is not None]
        described = len(parsed) == len(descs)  # every band has a 'date_band' description
        if described:
            pairs = [
                (_parse_date(m.group(1), f"{path} band {i + 1} description"), _band_name(m.group(2)))
                for i, m in enumerate(parsed)
            ]
            source = "band descriptions"
        elif "dates" in tags and "bands" in tags:
            tag_dates = [
                _parse_date(d.strip(), f"{path} tag 'dates'") for d in tags["dates"].split(",") if d.strip()
            ]
            names = [_band_name(b) for b in tags["bands"].split(",") if b.strip()]
            if len(tag_dates) * len(names) != src.count:
                raise InputRasterError(
                    f"{path} has {src.count} bands; its tags list {len(tag_dates)} dates x {len(names)} bands = "
                    f"{len(tag_dates) * len(names)} (time-major); expected them to match"
                )
            pairs = [(d, b) for d in tag_dates for b in names]
            source = "tags 'dates'/'bands' (time-major)"
        else:
            found = [d for d in descs if d][:3]
            raise InputRasterError(
                f"{path}: no dates found; expected band descriptions like '2021-03-01_B02' on every band "
                f"(found {found or 'none'}{'...' if len(found) == 3 else ''}) or dataset tags 'dates' and 'bands' "
                f"(found tags {sorted(tags) or 'none'}), or a folder of per-date GeoTIFFs"
            )
        if described and "dates" in tags and "bands" in tags:
            _check_tags_agree(path, pairs, tags)
        index: dict[dt.date, dict[str, int]] = {}
        for bidx, (d, b) in enumerate(pairs, start=1):
            slot = index.setdefault(d, {})
            if b in slot:
                raise InputRasterError(
                    f"{path}: band {b} appears twice for date {d} (bands {slot[b]} and {bidx})"
                )
            slot[b] = bidx
        dates = tuple(sorted(index))
        bands = _common_bands(path, [list(index[d]) for d in dates], [str(d) for d in dates])
        logger.debug("%s: dates and bands from %s", path, source)
        return Stack(
            path=path,
            layout="single-file",
            dates=dates,
            sources=tuple(path for _ in dates),
            band_index=tuple(index[d] for d in dates),
            bands=bands,
            crs=crs,
            transform=transform,
            height=src.height,
            width=src.width,
            dtype=src.dtypes[0],
            nodata=(_nodata(src),),
            tile_shape=tuple(src.block_shapes[0]),
            scale=_declared_scale(src, path),
        )


def _check_tags_agree(path: Path, pairs: list[tuple[dt.date, str]], tags: dict[str, str]) -> None:
    dates = sorted({d for d, _ in pairs})
    tag_dates = sorted(
        {_parse_date(d.strip(), f"{path} tag 'dates'") for d in tags["dates"].split(",") if d.strip()}
    )
    if dates != tag_dates:
        raise InputRasterError(
            f"{path}: band descriptions name dates {[str(d) for d in dates]} but tag 'dates' says "
            f"{[str(d) for d in tag_dates]}; expected them to agree"
        )


def _common_bands(path: Path, per_date: list[list[str]], labels: list[str]) -> tuple[str, ...]:
    common = [b for b in per_date[0] if all(b in names for names in per_date)]
    for names, label in zip(per_date, labels, strict=True):
        partial = [b for b in names if b not in common]
        if partial:
            logger.info(
                "%s: band(s) %s at %s are not present at every date and are ignored", path, partial, label
            )
    return tuple(common)


def _open_folder(path: Path) -> Stack:
    files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in _TIFF_SUFFIXES)
    if not files:
        raise InputRasterError(f"folder {path} holds no .tif/.tiff files; expected one GeoTIFF per date")
    dated: dict[dt.date, Path] = {}
    for f in files:
        m = _NAME_DATE_RE.search(f.stem)
        if m is None:
            raise InputRasterError(
                f"{f.name} in {path} has no date in its name; expected YYYY-MM-DD or YYYYMMDD (e.g. S2_2021-03-01.tif)"
            )
        d = _parse_date(m.group(1), f"file name {f.name}")
        if d in dated:
            raise InputRasterError(
                f"{dated[d].name} and {f.name} in {path} are both dated {d}; expected one file per date"
            )
        dated[d] = f
    dates = tuple(sorted(dated))
    ref: dict[str, Any] | None = None
    index: list[dict[str, int]] = []
    nodata: list[float | None] = []
    scales: list[ReflectanceScale | None] = []
    for d in dates:
        f = dated[d]
        with _open_dataset(f) as src:
            _check_complete(src, f)
            ref = _same_grid(src, f, ref, label=f.name, expected="every date on one grid")
            names = _folder_band_names(src, f)
            slot: dict[str, int] = {}
            for bidx, b in enumerate(names, start=1):
                if b in slot:
                    raise InputRasterError(f"{f}: band {b} appears twice (bands {slot[b]} and {bidx})")
                slot[b] = bidx
            index.append(slot)
            nodata.append(_nodata(src))
            scales.append(_declared_scale(src, f))
    declared = {(s.gain, s.offset) for s in scales if s is not None}
    if len(declared) > 1 or (declared and any(s is None for s in scales)):
        raise InputRasterError(
            f"files in {path} declare different reflectance scales ({sorted(declared)}, some none); "
            "expected one scale for the whole stack"
        )
    scale = next((s for s in scales if s is not None), None)
    bands = _common_bands(path, [list(s) for s in index], [str(d) for d in dates])
    assert ref is not None
    return Stack(
        path=path,
        layout="folder",
        dates=dates,
        sources=tuple(dated[d] for d in dates),
        band_index=tuple(index),
        bands=bands,
        crs=ref["crs"],
        transform=ref["transform"],
        height=ref["shape"][0],
        width=ref["shape"][1],
        dtype=str(ref["dtype"]),
        nodata=tuple(nodata),
        tile_shape=ref["tile"],
        scale=scale,
    )


def _folder_band_names(src: rasterio.io.DatasetReader, f: Path) -> list[str]:
    descs = list(src.descriptions)
    tags = src.tags()
    if all(descs):
        matches = [(d, _DESC_RE.match(d)) for d in descs]
        return [_band_name(m.group(2) if m else d) for d, m in matches]
    if "bands" in tags:
        names = [_band_name(b) for b in tags["bands"].split(",") if b.strip()]
        if len(names) != src.count:
            raise InputRasterError(
                f"{f} has {src.count} bands; its 'bands' tag lists {len(names)}: expected equal"
            )
        return names
    raise InputRasterError(
        f"{f}: no band names found; expected a description on every band (e.g. 'B02') or a dataset tag "
        f"'bands' (found descriptions {descs}, tags {sorted(tags) or 'none'})"
    )


def _declared_scale(src: rasterio.io.DatasetReader, path: Path) -> ReflectanceScale | None:
    tags = src.tags()
    if "reflectance_scale" in tags:
        try:
            value = float(tags["reflectance_scale"])
        except ValueError as err:
            raise InputRasterError(
                f"{path}: tag reflectance_scale is {tags['reflectance_scale']!r}; expected a number such as 10000"
            ) from err
        if not math.isfinite(value) or value <= 0:
            raise InputRasterError(f"{path}: tag reflectance_scale is {value}; expected a positive number")
        return ReflectanceScale(gain=1.0 / value, offset=0.0, source="tag reflectance_scale")
    scales, offsets = set(src.scales), set(src.offsets)
    if scales == {1.0} and offsets == {0.0}:
        return None  # GDAL's defaults: nothing declared
    if len(scales) > 1 or len(offsets) > 1:
        raise InputRasterError(
            f"{path}: bands declare different GDAL scales {sorted(scales)} / offsets {sorted(offsets)}; "
            "expected one scale and offset for all bands"
        )
    return ReflectanceScale(
        gain=float(next(iter(scales))), offset=float(next(iter(offsets))), source="GDAL band scale/offset"
    )


def _no_scale_message(path: Path) -> str:
    return (
        f"stack {path} does not declare its reflectance scale (no tag 'reflectance_scale', no GDAL band "
        "scale); expected one of them, or pass --reflectance-scale (10000 for Sentinel-2 L2A digital numbers)"
    )


def _resolve_scale(stack: Stack, option: float | None) -> ReflectanceScale:
    declared = stack.scale
    if option is None:
        if declared is None:
            raise InputRasterError(_no_scale_message(stack.path))
        return declared
    if declared is not None and not math.isclose(declared.reflectance_scale, option, rel_tol=1e-9):
        raise InputRasterError(
            f"stack {stack.path} declares reflectance scale {declared.reflectance_scale:g} ({declared.source}) "
            f"but --reflectance-scale is {option:g}; expected them to agree (drop the option or fix the file)"
        )
    return declared or ReflectanceScale(gain=1.0 / option, offset=0.0, source="--reflectance-scale")


def _fmt_window(window: Window) -> str:
    return f"rows {window.row_off}..{window.row_off + window.height}, cols {window.col_off}..{window.col_off + window.width}"
