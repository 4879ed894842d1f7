"""Labelled series from any stack ``cropmap classify`` reads plus labelled polygons, as a long parquet file.

``cropmap data extract STACK POLYGONS --label-column COL -o OUT.parquet`` (alias ``python -m
training.data.extract``) writes one row per sample and stack date (``sample_id``, ``parcel_id``, ``timestamp``,
``S2-L2A-Bxx`` ..., the label), the long layout that
``cropmap train downstream --task real --data OUT.parquet --label-column COL`` reads
(:func:`training.data.worldcereal.read_long`). Everything between the files and the values is inference's own
code, so training and inference cannot drift:

* the stack is opened by :func:`cropmap.stack.open_stack` (one GeoTIFF, a folder of per-date GeoTIFFs or a STAC
  item collection), bands are chosen by name (:mod:`cropmap.contract.bands`), the reflectance scale must be declared (or
  given) and pass :func:`cropmap.sanity.check_reflectance`; values are written as reflectance x 10000
  (:data:`REFLECTANCE_SCALE`, WorldCereal's units, what downstream's models record) in float32, NaN where missing;
* the cloud band is chosen and applied by :mod:`cropmap.contract.clouds` (masked observations become NaN);
* polygons are reprojected to the stack's CRS, and a pixel belongs to a polygon when its centre lies inside it,
  block by block with the block's window transform, as :mod:`cropmap.mask` burns the cropland mask;
* blocks come from :mod:`cropmap.tiling` (aligned with the file's tiles, sized to the memory budget), so memory
  follows the block size, never the raster size;
* a pixel needs ``min_valid`` valid observations under :func:`cropmap.contract.timegrid.fill_gaps`' rule (all bands
  finite after nodata and clouds); downstream later fills the gaps with that same function onto its time grid.

Per polygon (``pixels``): ``all`` pixels (default), up to ``N`` random ones (seeded, independent of the block
size), or the ``mean`` of its pixels per date (over the pixels clear on that date). Polygons are first shrunk by
``buffer_m`` (default 10 m, one Sentinel-2 pixel) to drop mixed edge pixels. Each sample carries its parcel's id
(``--id-column``, default the feature's row number in the layer) in ``parcel_id``, and
:func:`training.data.parcels.load_parcels` splits by that column, so no parcel has pixels on both sides.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import datetime as dt
import hashlib
import json
import logging
import math
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import shapely

from cropmap.contract.bands import S2_BANDS, canonical_band
from cropmap.contract.clouds import CloudMask, no_cloud_message, resolve_cloud_mask
from cropmap.contract.metadata import TimeGrid
from cropmap.errors import CropmapError, MaskError, OutputExistsError
from cropmap.mask import vector_layer
from cropmap.safeio.atomic import atomic_path
from cropmap.stack import Stack, open_stack
from cropmap.tiling import Block, block_shape, plan_blocks

logger = logging.getLogger(__name__)

REFLECTANCE_SCALE = 10000.0
"""Values are written as reflectance x this (WorldCereal's scale, and what downstream's models record)."""
DEFAULT_BUFFER_M = 10.0
"""Polygons shrink by this many metres before pixels are taken: one Sentinel-2 pixel of mixed edge."""
DEFAULT_MIN_VALID = 3
"""Fewest valid observations a pixel needs (downstream's default ``min_valid``)."""
PARCEL_COLUMN = "parcel_id"
"""Column holding each sample's parcel id (the split groups on it)."""
NAME_COLUMN = "class_name"
"""Column holding each sample's class name, written when the labels are names or a class map was given."""
PIXEL_MODES = ("all", "mean")


def code_column(label_column: str) -> str:
    """The output column of the integer class codes: named like the polygons' label attribute, or ``label_code``
    where that attribute is named like the names column (:data:`NAME_COLUMN`), whose name it would take."""
    return "label_code" if label_column == NAME_COLUMN else label_column


CACHE_VERSION = 1
"""Part of every cache key: bump it when the output of the same inputs and options changes."""


class ExtractError(CropmapError, ValueError):
    """The polygons' labels, the class map or the extraction options do not fit."""


@dataclass(frozen=True)
class ExtractOptions:
    """What to extract and how (the command's options)."""

    label_column: str
    """Polygon attribute holding the label: integer codes or names."""
    id_column: str | None = None
    """Polygon attribute holding unique parcel ids; ``None``: the feature's row number (0-based) in the layer."""
    layer: str | None = None
    """Layer of the polygon file; required when it holds several."""
    class_map: Path | None = None
    """CSV ``match,name``: a label value (name or code, case-insensitive) -> class; unmatched polygons are left out."""
    pixels: str = "all"
    """``all``, ``mean`` or a positive integer N (up to N random pixels per polygon)."""
    seed: int = 0
    """Seeds the choice of pixels with ``pixels=N``."""
    buffer_m: float = DEFAULT_BUFFER_M
    """Inward buffer in metres (0: none)."""
    min_valid: int = DEFAULT_MIN_VALID
    """Fewest valid observations a pixel needs."""
    season: int | None = None
    """Keep only the dates of the season starting in this year (``None``: every date of the stack)."""
    season_start: str = "11-01"
    """``MM-DD`` start of a season, with ``season``."""
    bands: tuple[str, ...] | None = None
    """Bands to write (any spelling :func:`cropmap.contract.bands.canonical_band` takes); ``None``: every S2 band."""
    reflectance_scale: float | None = None
    """Raw value = reflectance x this, for stacks that declare no scale."""
    cloud_band: str | None = None
    """As ``cropmap classify --cloud-band`` (``none``: no masking; ``None``: found by name)."""
    cloud_threshold: float | None = None
    cloud_classes: tuple[int, ...] | None = None
    cloud_scale: float | None = None
    """As ``cropmap classify --cloud-scale``: raw value of cloud probability 1 in a probability band."""
    block_size: int | None = None
    """Block edge in pixels (``None``: cropmap's default within the memory budget)."""
    workers: int | None = None
    """Blocks read at once (``None``: the number of cores)."""

    def __post_init__(self) -> None:
        if self.pixels not in PIXEL_MODES and not (self.pixels.isdigit() and int(self.pixels) > 0):
            raise ExtractError(f"pixels is {self.pixels!r}; expected 'all', 'mean' or a positive integer N")
        if not math.isfinite(self.buffer_m) or self.buffer_m < 0:
            raise ExtractError(f"buffer is {self.buffer_m} m; expected a distance >= 0 (metres inward)")
        if self.min_valid < 1:
            raise ExtractError(f"min_valid is {self.min_valid}; expected at least 1")
        if self.workers is not None and self.workers < 1:
            raise ExtractError(f"workers is {self.workers}; expected at least 1")

    def content_key(self) -> dict[str, Any]:
        """The options that change the output (not how it is computed), for cache keys."""
        skip = {"block_size", "workers", "class_map"}
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in skip}


@dataclass
class ExtractSummary:
    """What an extraction read, kept and left out."""

    output: Path
    polygons_read: int = 0
    polygons_without_label: int = 0
    polygons_not_polygons: int = 0
    """Features without geometry, or points and lines."""
    polygons_unmapped: int = 0
    polygons_outside: int = 0
    polygons_vanished: int = 0
    polygons_without_pixel: int = 0
    """Polygons (after the buffer) that hold no pixel centre, or none with enough valid observations."""
    polygons_used: int = 0
    pixels_kept: int = 0
    """Pixels written (or averaged, with ``pixels=mean``)."""
    pixels_not_sampled: int = 0
    """Valid pixels beyond the N drawn per polygon."""
    pixels_too_few_valid: int = 0
    pixels_in_several_polygons: int = 0
    samples: int = 0
    observations: int = 0
    observations_cloud_masked: int = 0
    dates: tuple[str, ...] = ()
    bands: tuple[str, ...] = ()
    cloud: str = ""
    read_s: float = 0.0
    """Seconds the blocks spent reading (and masking clouds), summed over the worker threads."""
    workers: int = 1
    classes: dict[str, dict[str, int]] = field(default_factory=dict)
    """Class name -> ``{"code", "parcels", "samples"}``."""

    def text(self) -> str:
        """A few lines for the terminal."""
        lines = [
            (
                f"polygons: {self.polygons_read:,} read, {self.polygons_used:,} used; left out: "
                f"{self.polygons_without_label:,} without label, {self.polygons_unmapped:,} not in the class map, "
                f"{self.polygons_not_polygons:,} not polygons, "
                f"{self.polygons_outside:,} outside the stack, {self.polygons_vanished:,} vanished under the buffer, "
                f"{self.polygons_without_pixel:,} without a usable pixel"
            ),
            (
                f"pixels: {self.pixels_kept:,} kept, {self.pixels_too_few_valid:,} dropped for too few valid "
                f"observations, {self.pixels_in_several_polygons:,} in several polygons, {self.pixels_not_sampled:,} "
                "not drawn"
            ),
            f"clouds: {self.cloud}"
            + (
                f"; {self.observations_cloud_masked:,} of {self.observations:,} observations masked"
                if self.observations
                else ""
            ),
            (
                f"{self.samples:,} samples x {len(self.dates)} dates ({self.dates[0] if self.dates else '-'} .. "
                f"{self.dates[-1] if self.dates else '-'}), bands {' '.join(self.bands)} -> {self.output}"
            ),
            "classes: "
            + ", ".join(
                f"{n} (code {c['code']}): {c['parcels']:,} parcels, {c['samples']:,} samples"
                for n, c in self.classes.items()
            ),
        ]
        return "\n".join(lines)


@dataclass(frozen=True)
class _Parcels:
    """Labelled polygons in the stack's CRS, buffered, that overlap the stack."""

    geometries: tuple[shapely.Geometry, ...]
    ids: tuple[str, ...]
    codes: np.ndarray
    """int64 ``(P,)`` class code of each polygon."""
    names: dict[int, str] | None
    """Class code -> name; ``None`` when the labels are integer codes used as they are."""


# ---------------------------------------------------------------------------------------------- polygons


def _label_text(value: Any) -> str | None:
    """A label value as text (``201.0`` -> ``"201"``); ``None`` for a missing value."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    text = str(value).strip()
    return text or None


def read_class_map(path: str | Path) -> tuple[dict[str, str], list[str]]:
    """Read a class map CSV ``match,name``: ``match`` is a label value (a name or a code), compared case-insensitively.

    Returns:
        ``(rules, names)``: casefolded match -> class name, and the class names in order of first appearance
        (they get codes 1..K).

    Raises:
        ExtractError: On missing columns, an empty match or name, a match given twice, or more than 254 classes.
    """
    import pandas as pd

    path = Path(path)
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False, comment="#")
    except (OSError, ValueError) as err:
        raise ExtractError(f"class map {path} could not be read ({err}); expected a CSV match,name") from err
    table.columns = [c.strip() for c in table.columns]
    if not {"match", "name"} <= set(table.columns):
        raise ExtractError(f"class map {path} has columns {list(table.columns)}; expected match,name")
    rules: dict[str, str] = {}
    names: list[str] = []
    for i, row in table.iterrows():
        match, name = row["match"].strip().casefold(), row["name"].strip()
        if not match or not name:
            raise ExtractError(f"class map {path} row {int(i) + 2}: empty match or name")
        if match in rules:
            raise ExtractError(f"class map {path} row {int(i) + 2}: {row['match']!r} is matched twice")
        rules[match] = name
        if name not in names:
            names.append(name)
    if not 1 <= len(names) <= 254:
        raise ExtractError(f"class map {path} defines {len(names)} classes; expected 1..254")
    return rules, names


def _classes(
    labels: list[str | None], class_map: Path | None, integer: bool
) -> tuple[np.ndarray, dict[int, str] | None]:
    """Class code per polygon (-1: no label, -2: not in the class map) and the names of the codes."""
    codes = np.full(len(labels), -1, dtype=np.int64)
    if class_map is not None:
        rules, names = read_class_map(class_map)
        index = {n: k + 1 for k, n in enumerate(names)}
        for i, text in enumerate(labels):
            if text is not None:
                hit = rules.get(text.casefold())
                codes[i] = index[hit] if hit is not None else -2
        return codes, {k: n for n, k in index.items()}
    if integer:
        for i, text in enumerate(labels):
            if text is not None:
                codes[i] = int(text)
        if (codes[codes != -1] < 0).any():
            raise ExtractError(
                "integer labels must be >= 0; give a class map (--classes CSV) for other codes"
            )
        return codes, None
    found = sorted({t for t in labels if t is not None})
    if len(found) > 254:
        raise ExtractError(
            f"the labels hold {len(found)} distinct names; expected at most 254 (merge them in a class map)"
        )
    index = {n: k + 1 for k, n in enumerate(found)}
    for i, text in enumerate(labels):
        if text is not None:
            codes[i] = index[text]
    return codes, {k: n for n, k in index.items()}


def _read_layer(path: Path, layer: str | None) -> tuple[Any, str]:  # (GeoDataFrame, layer name)
    import pyogrio
    from pyogrio.errors import DataSourceError

    if not path.exists():
        raise MaskError(f"polygons {path} do not exist; expected a polygon file such as a GeoPackage")
    chosen = vector_layer(path, layer, what="polygons", plural=True)
    try:
        frame = pyogrio.read_dataframe(path, layer=chosen)
    except DataSourceError as err:
        raise MaskError(f"polygons {path} could not be read ({str(err).splitlines()[0]})") from err
    return frame, chosen


def read_parcels(path: str | Path, stack: Stack, opts: ExtractOptions, summary: ExtractSummary) -> _Parcels:
    """Read the labelled polygons, reproject them to the stack's CRS, shrink them and keep those on the stack.

    Raises:
        MaskError: The file is missing or unreadable, the layer is unknown or ambiguous, it has no CRS or no
            polygon, or no polygon overlaps the stack.
        ExtractError: A missing label or id column, repeated ids, a bad class map, no label left, or every
            polygon vanishing under the buffer.
    """
    path = Path(path)
    frame, layer = _read_layer(path, opts.layer)
    columns = [c for c in frame.columns if c != frame.geometry.name]
    where = f"polygons {path} (layer {layer})"
    for flag, col in (("--label-column", opts.label_column), ("--id-column", opts.id_column)):
        if col is not None and col not in columns:
            raise ExtractError(
                f"{where} have no column {col!r}; their columns are {columns}; pass {flag} NAME"
            )
    if frame.crs is None:
        raise MaskError(f"{where} have no CRS; expected a declared CRS (set it with ogr2ogr -a_srs EPSG:...)")
    summary.polygons_read = len(frame)
    if opts.id_column is not None:
        ids = [_label_text(v) for v in frame[opts.id_column].tolist()]
        if any(v is None for v in ids):
            raise ExtractError(
                f"{where}: column {opts.id_column!r} is empty for {ids.count(None)} polygons; "
                "expected an id for every polygon"
            )
        seen = collections.Counter(ids)
        twice = [k for k, n in seen.items() if n > 1]
        if twice:
            raise ExtractError(
                f"{where}: column {opts.id_column!r} repeats {len(twice)} ids (e.g. {twice[:3]}); "
                "expected one id per polygon"
            )
    else:
        ids = [str(i) for i in range(len(frame))]
    raw = frame[opts.label_column]
    integer = raw.dtype.kind in "iu" or (raw.dtype.kind == "f" and bool((raw.dropna() % 1 == 0).all()))
    labels = [_label_text(v) for v in raw.tolist()]
    codes, names = _classes(labels, opts.class_map, integer)
    summary.polygons_without_label = int((codes == -1).sum())
    summary.polygons_unmapped = int((codes == -2).sum())
    geoms = frame.geometry.to_numpy()
    polygonal = np.array(
        [g is not None and not g.is_empty and g.geom_type in ("Polygon", "MultiPolygon") for g in geoms]
    )
    if not polygonal.any():
        raise MaskError(f"{where} hold no polygons; expected Polygon or MultiPolygon features")
    keep = polygonal & (codes >= 0)
    if not keep.any():
        raise ExtractError(
            f"{where}: none of the {len(frame)} polygons has a label"
            + (f" in class map {opts.class_map}" if opts.class_map is not None else "")
            + f" (column {opts.label_column!r})"
        )
    frame = frame[keep]
    from rasterio.crs import CRS

    if CRS.from_user_input(frame.crs.to_wkt()) != stack.crs:
        logger.info(
            "reprojecting polygons %s from %s to the stack's %s",
            path,
            frame.crs.to_string(),
            stack.crs.to_string(),
        )
        frame = frame.to_crs(stack.crs.to_wkt())
    shapes = shapely.make_valid(frame.geometry.to_numpy())
    left, top = stack.transform @ (0, 0)
    right, bottom = stack.transform @ (stack.width, stack.height)
    bounds = (min(left, right), min(top, bottom), max(left, right), max(top, bottom))
    on_stack = shapely.intersects(shapes, shapely.box(*bounds))
    summary.polygons_not_polygons = int((~polygonal).sum())
    summary.polygons_outside = int((~on_stack).sum())
    if not on_stack.any():
        span = [round(v, 2) for v in shapely.total_bounds(shapes).tolist()]
        raise MaskError(
            f"no polygon of {path} overlaps the stack: polygons span {span}, the stack "
            f"{[round(v, 2) for v in bounds]} "
            f"(in {stack.crs.to_string()}); expected overlapping areas"
        )
    shapes = _shrink(shapes, opts.buffer_m, stack, frame)
    gone = shapely.is_empty(shapes) & on_stack
    summary.polygons_vanished = int(gone.sum())
    use = on_stack & ~gone
    if not use.any():
        raise ExtractError(
            f"all {int(on_stack.sum())} polygons on the stack vanish under the {opts.buffer_m:g} m "
            "inward buffer; expected larger parcels, or a smaller --buffer"
        )
    kept_ids = np.asarray(ids, dtype=object)[keep][use]
    return _Parcels(
        geometries=tuple(shapes[use]),
        ids=tuple(str(i) for i in kept_ids),
        codes=codes[keep][use],
        names=names,
    )


def _shrink(shapes: np.ndarray, buffer_m: float, stack: Stack, frame: Any) -> np.ndarray:
    """``shapes`` (in the stack's CRS) shrunk by ``buffer_m`` metres (through the local UTM zone on a geographic
    grid)."""
    if buffer_m == 0:
        return shapes
    if stack.crs.is_projected:
        return shapely.buffer(shapes, -buffer_m / stack.crs.linear_units_factor[1])
    import geopandas as gpd

    series = gpd.GeoSeries(shapes, crs=stack.crs)
    utm = series.estimate_utm_crs()
    logger.info("buffering the polygons in %s (the stack's CRS is geographic)", utm.to_string())
    return series.to_crs(utm).buffer(-buffer_m).to_crs(stack.crs).to_numpy()


# ---------------------------------------------------------------------------------------------- blocks


def _pixel_keys(rows: np.ndarray, cols: np.ndarray, width: int, seed: int) -> np.ndarray:
    """A pseudo-random uint64 per pixel from its position and ``seed`` (splitmix64): the same whatever the blocks."""
    with np.errstate(over="ignore"):
        z = (rows.astype(np.uint64) * np.uint64(width) + cols.astype(np.uint64)) + np.uint64(
            seed
        ) * np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


@dataclass
class _BlockPixels:
    """The pixels of one block that lie in exactly one polygon and have enough valid observations."""

    parcel: np.ndarray
    """int64 ``(N,)`` polygon index."""
    rows: np.ndarray
    cols: np.ndarray
    series: np.ndarray
    """float32 ``(N, S, C)`` reflectance x 10000, NaN where missing."""
    too_few: int
    """Pixels dropped for too few valid observations."""
    touched: np.ndarray
    """int64 indices of the polygons whose box touches the block."""
    several: int
    observations: int
    cloud_masked: int
    read_s: float = 0.0
    """Seconds spent reading the block's observations (and masking clouds)."""


@dataclass(frozen=True)
class _BlockReader:
    """Reads the labelled pixels of one block (picklable, opens its own files; safe from threads)."""

    stack: Stack
    geometries: tuple[shapely.Geometry, ...]
    obs: tuple[int, ...]
    bands: tuple[str, ...]
    cloud: CloudMask | None
    positions: np.ndarray
    min_valid: int

    def __call__(self, item: tuple[Block, np.ndarray]) -> _BlockPixels:
        from rasterio.enums import MergeAlg
        from rasterio.features import rasterize

        from cropmap.contract.timegrid import fill_gaps

        block, touched = item
        tf = block.transform(self.stack.transform)
        shape = (block.height, block.width)
        shapes = [(self.geometries[i], int(i) + 1) for i in touched]
        # Pixel centres, as cropmap.mask.rasterize_block burns the cropland mask; a pixel in two polygons is ambiguous.
        owner = rasterize(shapes, out_shape=shape, transform=tf, fill=0, dtype="int32")
        hits = rasterize(
            ((g, 1) for g, _ in shapes),
            out_shape=shape,
            transform=tf,
            fill=0,
            dtype="uint8",
            merge_alg=MergeAlg.add,
        )
        several = hits > 1
        owner[several] = 0
        inside = owner > 0
        if not inside.any():
            return _BlockPixels(
                np.empty(0, np.int64),
                np.empty(0, np.int64),
                np.empty(0, np.int64),
                np.empty((0, len(self.obs), len(self.bands)), np.float32),
                0,
                touched,
                int(several.sum()),
                0,
                0,
            )
        t0 = time.perf_counter()
        read = [*self.bands, *([self.cloud.band] if self.cloud is not None else [])]
        raw = self.stack.read(block.window, self.obs, read)
        values = self.stack.to_model_units(raw[:, : len(self.bands)], REFLECTANCE_SCALE)
        n_obs = n_cloud = 0
        if self.cloud is not None:
            n_obs, n_cloud = self.cloud.apply(values, raw[:, -1], inside)
        read_s = time.perf_counter() - t0
        rr, cc = np.nonzero(inside)
        series = np.ascontiguousarray(values[:, :, rr, cc].transpose(2, 0, 1))  # (N, S, C)
        _, _, ok = fill_gaps(series, self.positions, self.positions[:1], min_valid=self.min_valid)
        parcel = owner[rr, cc].astype(np.int64) - 1
        return _BlockPixels(
            parcel[ok],
            rr[ok] + block.row_off,
            cc[ok] + block.col_off,
            series[ok],
            int((~ok).sum()),
            touched,
            int(several.sum()),
            n_obs,
            n_cloud,
            read_s,
        )


def _in_order(func: Callable[[Any], Any], items: Sequence[Any], workers: int) -> Iterator[Any]:
    """``func`` over ``items`` on ``workers`` threads, results in input order, at most ``2 x workers`` pending."""
    with concurrent.futures.ThreadPoolExecutor(
        max_workers=workers, thread_name_prefix="extract-block"
    ) as pool:
        pending: collections.deque[concurrent.futures.Future[Any]] = collections.deque()
        queue = iter(items)
        try:
            for item in queue:
                pending.append(pool.submit(func, item))
                if len(pending) >= 2 * workers:
                    break
            while pending:
                result = pending.popleft().result()
                nxt = next(queue, None)
                if nxt is not None:
                    pending.append(pool.submit(func, nxt))
                yield result
        finally:
            for fut in pending:
                fut.cancel()


# ---------------------------------------------------------------------------------------------- output


class _Writer:
    """Long rows into a parquet file (the temporary of :func:`~cropmap.safeio.atomic.atomic_path`)."""

    def __init__(
        self,
        path: Path,
        dates: Sequence[dt.date],
        bands: Sequence[str],
        label_column: str,
        names: dict[int, str] | None,
    ) -> None:
        import pyarrow as pa

        self.path, self.names, self.label_column = path, names, label_column
        self.stamps = np.array(dates, dtype="datetime64[D]").astype("datetime64[ms]")
        self.band_columns = [f"S2-L2A-{b}" for b in bands]
        fields = [
            ("sample_id", pa.string()),
            (PARCEL_COLUMN, pa.string()),
            ("timestamp", pa.timestamp("ms")),
            ("row", pa.int32()),
            ("col", pa.int32()),
            ("n_pixels", pa.int32()),
            *[(c, pa.float32()) for c in self.band_columns],
            (label_column, pa.int64()),
        ]
        if names is not None:
            fields.append((NAME_COLUMN, pa.string()))
        self.schema = pa.schema(fields)
        if names is not None:
            self.name_codes = np.array(sorted(names), dtype=np.int64)
            self.name_array = pa.array([names[int(c)] for c in self.name_codes], pa.string())
        self._writer: Any = None

    def write(
        self,
        sample_ids: Any,
        parcel_ids: Any,
        rows: np.ndarray,
        cols: np.ndarray,
        n_pixels: np.ndarray,
        series: np.ndarray,
        codes: np.ndarray,
    ) -> None:
        """Write ``N`` samples: ``series`` float32 ``(N, S, C)``, ids as pyarrow string arrays, the rest ``(N,)``."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        n, s, _ = series.shape
        if n == 0:
            return
        each = pa.array(np.repeat(np.arange(n, dtype=np.int32), s))

        def strings(values: Any) -> pa.Array:
            return (values if isinstance(values, pa.Array) else pa.array(list(values), pa.string())).take(
                each
            )

        columns: dict[str, Any] = {
            "sample_id": strings(sample_ids),
            PARCEL_COLUMN: strings(parcel_ids),
            "timestamp": pa.array(np.tile(self.stamps, n)),
            "row": pa.array(np.repeat(rows.astype(np.int32), s)),
            "col": pa.array(np.repeat(cols.astype(np.int32), s)),
            "n_pixels": pa.array(np.repeat(n_pixels.astype(np.int32), s)),
            **{
                c: pa.array(np.ascontiguousarray(series[:, :, k]).ravel())
                for k, c in enumerate(self.band_columns)
            },
            self.label_column: pa.array(np.repeat(codes.astype(np.int64), s)),
        }
        if self.names is not None:
            columns[NAME_COLUMN] = strings(
                self.name_array.take(pa.array(np.searchsorted(self.name_codes, codes)))
            )
        if self._writer is None:
            # Dictionaries for the repeated strings only, and no column statistics: a float column's dictionary
            # attempt and the strings' statistics cost more than the rest of the write.
            self._writer = pq.ParquetWriter(
                self.path,
                self.schema,
                write_statistics=False,
                use_dictionary=["sample_id", PARCEL_COLUMN, NAME_COLUMN],
            )
        self._writer.write_table(pa.table(columns, schema=self.schema))

    def close(self) -> None:
        """Close the file (its temporary path becomes the output when :func:`atomic_path` ends)."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None


# ---------------------------------------------------------------------------------------------- extraction


def extract(
    stack: str | Path,
    polygons: str | Path,
    out: str | Path,
    options: ExtractOptions,
    *,
    overwrite: bool = False,
    progress: bool = False,
) -> ExtractSummary:
    """Write the labelled series of ``polygons`` on ``stack`` to ``out`` (long parquet) and return the summary.

    Args:
        stack: A single GeoTIFF stack, a folder of per-date GeoTIFFs or a STAC item collection.
        polygons: Labelled polygons in any OGR format.
        out: The ``.parquet`` file to write; it appears only when complete.
        options: What to extract (:class:`ExtractOptions`).
        overwrite: Replace an existing ``out``.
        progress: Show a progress bar over blocks (stderr).

    Raises:
        CropmapError: A ``ValueError`` / ``OSError`` subclass with a one-line message for every bad input
            (stack, polygons, labels, options), an existing output without ``overwrite``, an output that is an
            input, or an extraction that keeps no sample (nothing is then written).
    """
    from tqdm import tqdm

    from cropmap.contract.timegrid import select_season
    from cropmap.safeio.overlap import mask_files, refuse_overlap
    from cropmap.sanity import check_reflectance

    out, polygons = Path(out), Path(polygons)
    if out.suffix.lower() != ".parquet":
        raise ExtractError(
            f"output {out} must end in .parquet (the long layout training.downstream.run reads)"
        )
    if out.exists() and not overwrite:
        raise OutputExistsError(f"output {out} exists; pass --overwrite to replace it")
    st = open_stack(stack, reflectance_scale=options.reflectance_scale)
    inputs = {
        Path(stack): "stack",
        **{f: "stack file" for f in st.files},
        **{m: "polygons" for m in mask_files(polygons)},
    }
    if options.class_map is not None:
        inputs[options.class_map] = "class map"
    refuse_overlap([out], inputs)
    cloud = resolve_cloud_mask(
        st.bands,
        st.dtype,
        cloud_band=options.cloud_band,
        threshold=options.cloud_threshold,
        classes=options.cloud_classes,
        scale=options.cloud_scale,
        where=f"stack {st.path}",
    )
    bands = _bands(st, options.bands, cloud)
    if options.season is not None:
        idx, _ = select_season(st.dates, TimeGrid(options.season_start, (0,), ()), options.season)
        obs = tuple(int(i) for i in idx)
    else:
        obs = tuple(int(i) for i in np.argsort(np.array(st.dates, dtype="datetime64[D]"), kind="stable"))
    dates = [st.dates[i] for i in obs]
    if options.min_valid > len(obs):
        raise ExtractError(
            f"stack {st.path} holds {len(obs)} dates{' in that season' if options.season else ''} but "
            f"a pixel needs {options.min_valid} valid observations; lower --min-valid"
        )
    summary = ExtractSummary(output=out, dates=tuple(d.isoformat() for d in dates), bands=bands)
    parcels = read_parcels(polygons, st, options, summary)
    summary.cloud = (
        cloud.describe()
        if cloud is not None
        else "off (--cloud-band none)"
        if options.cloud_band
        else "the stack has no cloud band: every observation is taken as clear"
    )
    if cloud is None and options.cloud_band is None:
        logger.warning(no_cloud_message(f"stack {st.path}", st.bands))

    bytes_per_pixel = 4 * (len(bands) + (cloud is not None)) * len(obs) * 2 + 8
    shape = block_shape(st.tile_shape, st.shape, options.block_size, bytes_per_pixel=bytes_per_pixel)
    tree = shapely.STRtree(list(parcels.geometries))
    items = []
    for b in plan_blocks(st.shape, shape):
        touched = np.sort(tree.query(shapely.box(*b.bounds(st.transform)), predicate="intersects"))
        if len(touched):
            items.append((b, touched.astype(np.int64)))
    check_reflectance(st, obs, bands, [b for b, _ in items])
    remaining = np.bincount(np.concatenate([t for _, t in items]), minlength=len(parcels.ids))
    positions = np.array([(d - dates[0]).days for d in dates], dtype=np.int64)
    reader = _BlockReader(
        stack=st,
        geometries=parcels.geometries,
        obs=obs,
        bands=bands,
        cloud=cloud,
        positions=positions,
        min_valid=options.min_valid,
    )
    with atomic_path(out) as tmp:
        writer = _Writer(tmp, dates, bands, code_column(options.label_column), parcels.names)
        sink = _Sink(options, parcels, writer, summary, st.width)
        workers = options.workers or os.cpu_count() or 1
        summary.workers = workers
        logger.info(
            "%d blocks of %s px touch %d polygons; %d worker threads",
            len(items),
            shape,
            len(parcels.ids),
            workers,
        )
        try:
            with tqdm(total=len(items), unit="block", desc="extract", disable=not progress) as bar:
                for result in _in_order(reader, items, workers):
                    sink.add(result)
                    remaining[result.touched] -= 1
                    for p in result.touched[remaining[result.touched] == 0]:
                        sink.finish(int(p))
                    bar.update()
            if summary.samples == 0:
                raise ExtractError(
                    f"no sample was extracted: {summary.pixels_too_few_valid:,} pixels inside the polygons have fewer "
                    f"than {options.min_valid} valid observations and no other pixel centre lies inside a (buffered) "
                    "polygon; expected at least one (lower --min-valid or --buffer)"
                )
        finally:
            writer.close()
    summary.polygons_without_pixel = len(parcels.ids) - summary.polygons_used
    return summary


def _bands(stack: Stack, wanted: Sequence[str] | None, cloud: CloudMask | None) -> tuple[str, ...]:
    """The S2 bands to write, by name: ``wanted`` in order, or every S2 band of the stack in :data:`S2_BANDS` order."""
    if wanted is not None:
        try:
            chosen = tuple(canonical_band(b) for b in wanted)
        except ValueError as err:
            raise ExtractError(f"--bands: {err}") from err
        stack.check_bands(chosen)
        return chosen
    chosen = tuple(b for b in S2_BANDS if b in stack.bands)
    if not chosen:
        raise ExtractError(
            f"stack {stack.path} holds no Sentinel-2 band (bands {list(stack.bands)}); expected B02 ..."
        )
    other = [b for b in stack.bands if b not in chosen and (cloud is None or b != cloud.band)]
    if other:
        logger.info("stack bands %s are not Sentinel-2 reflectance and are not written", other)
    return chosen


class _Sink:
    """Turns block results into samples: every pixel at once, or per polygon once its last block is read."""

    def __init__(
        self, opts: ExtractOptions, parcels: _Parcels, writer: _Writer, summary: ExtractSummary, width: int
    ) -> None:
        self.mode = opts.pixels
        self.n = int(opts.pixels) if opts.pixels.isdigit() else 0
        self.seed, self.width = opts.seed, width
        self.parcels, self.writer, self.summary = parcels, writer, summary
        self.pool: dict[int, list[Any]] = {}
        self.sums: dict[int, tuple[np.ndarray, np.ndarray, int]] = {}
        self.used: set[int] = set()
        import pyarrow as pa

        self.id_array = pa.array(parcels.ids, pa.string())

    def add(self, r: _BlockPixels) -> None:
        """Take one block's pixels."""
        s = self.summary
        s.pixels_too_few_valid += r.too_few
        s.pixels_in_several_polygons += r.several
        s.observations += r.observations
        s.observations_cloud_masked += r.cloud_masked
        s.read_s += r.read_s
        if self.mode == "all":
            self._emit(r.parcel, r.rows, r.cols, np.ones(len(r.parcel), np.int64), r.series)
            return
        for p in np.unique(r.parcel):
            sel = r.parcel == p
            if self.mode == "mean":
                x = r.series[sel]
                valid = np.isfinite(x).all(axis=2)  # (n, S): fill_gaps' rule
                total = np.where(valid[:, :, None], x, 0.0).sum(axis=0, dtype=np.float64)
                count = valid.sum(axis=0)
                if p in self.sums:
                    t0, c0, n0 = self.sums[int(p)]
                    total, count, n = t0 + total, c0 + count, n0 + int(sel.sum())
                else:
                    n = int(sel.sum())
                self.sums[int(p)] = (total, count, n)
            else:
                keys = _pixel_keys(r.rows[sel], r.cols[sel], self.width, self.seed)
                old = self.pool.get(int(p))
                parts = [keys, r.rows[sel], r.cols[sel], r.series[sel]]
                if old is not None:
                    parts = [np.concatenate([a, b]) for a, b in zip(old, parts, strict=True)]
                if len(parts[0]) > self.n:
                    s.pixels_not_sampled += len(parts[0]) - self.n
                    best = np.argsort(parts[0], kind="stable")[: self.n]
                    parts = [a[best] for a in parts]
                self.pool[int(p)] = parts

    def finish(self, p: int) -> None:
        """Polygon ``p`` has no block left: write its samples (mean or drawn pixels)."""
        if self.mode == "mean" and p in self.sums:
            total, count, n = self.sums.pop(p)
            with np.errstate(invalid="ignore", divide="ignore"):
                mean = (total / count[:, None]).astype(np.float32)
            self._emit(np.array([p]), np.array([-1]), np.array([-1]), np.array([n]), mean[None], mean=True)
        elif p in self.pool:
            _keys, rows, cols, series = self.pool.pop(p)
            order = np.lexsort((cols, rows))
            self._emit(
                np.full(len(rows), p), rows[order], cols[order], np.ones(len(rows), np.int64), series[order]
            )

    def _emit(
        self,
        parcel: np.ndarray,
        rows: np.ndarray,
        cols: np.ndarray,
        n_pixels: np.ndarray,
        series: np.ndarray,
        *,
        mean: bool = False,
    ) -> None:
        import pyarrow as pa
        import pyarrow.compute as pc

        if not len(parcel):
            return
        ids = self.id_array.take(pa.array(parcel))
        if mean:
            sample_ids = ids
        else:  # "<parcel id>_<row>_<col>"
            sample_ids = pc.binary_join_element_wise(
                ids, pa.array(rows).cast(pa.string()), pa.array(cols).cast(pa.string()), "_"
            )
        codes = self.parcels.codes[parcel]
        self.writer.write(sample_ids, ids, rows, cols, n_pixels, series, codes)
        s = self.summary
        s.pixels_kept += int(n_pixels.sum())
        s.samples += len(parcel)
        first = np.unique(parcel)
        new = [int(p) for p in first if int(p) not in self.used]
        self.used.update(new)
        s.polygons_used = len(self.used)
        for code in np.unique(codes):
            name = self.parcels.names[int(code)] if self.parcels.names else str(int(code))
            entry = s.classes.setdefault(name, {"code": int(code), "parcels": 0, "samples": 0})
            entry["samples"] += int((codes == code).sum())
            entry["parcels"] += sum(1 for p in new if self.parcels.codes[p] == code)


# ---------------------------------------------------------------------------------------------- cache


def _digest(paths: Sequence[Path]) -> str:
    """blake2b of the files' contents (and their names relative to the first one's folder)."""
    h = hashlib.blake2b(digest_size=20)
    for p in paths:
        h.update(p.name.encode() + b"\0")
        with p.open("rb") as fh:
            while chunk := fh.read(2**22):
                h.update(chunk)
        h.update(b"\0")
    return h.hexdigest()


def cache_key(stack: str | Path, polygons: str | Path, options: ExtractOptions) -> str:
    """A key of the extraction's inputs by content (every file the stack and the polygons are read from, the
    class map) and of the options that change its output.

    Raises:
        CropmapError: As :func:`cropmap.stack.open_stack` for a stack it cannot open.
    """
    from cropmap.safeio.overlap import mask_files

    st = open_stack(stack, reflectance_scale=options.reflectance_scale)
    files = sorted(st.files) + (
        [Path(stack)] if Path(stack).is_file() and Path(stack) not in st.files else []
    )
    parts = {
        "version": CACHE_VERSION,
        "stack": _digest(files),
        "polygons": _digest(mask_files(Path(polygons))),
        "class_map": _digest([options.class_map]) if options.class_map is not None else None,
        "options": options.content_key(),
    }
    return hashlib.blake2b(
        json.dumps(parts, sort_keys=True, default=str).encode(), digest_size=12
    ).hexdigest()


def extract_cached(
    stack: str | Path,
    polygons: str | Path,
    options: ExtractOptions,
    cache_dir: str | Path,
    *,
    progress: bool = False,
) -> Path:
    """The extraction of ``stack`` + ``polygons`` in ``cache_dir`` (``extract-<key>.parquet``), made when missing.

    The key (:func:`cache_key`) follows the inputs' contents and the options, so a rerun on the same files reads
    the cached file and changed inputs get a new one.
    """
    cache_dir = Path(cache_dir)
    out = cache_dir / f"extract-{cache_key(stack, polygons, options)}.parquet"
    if out.is_file():
        logger.info("extraction of %s + %s: cached %s", stack, polygons, out)
        return out
    cache_dir.mkdir(parents=True, exist_ok=True)
    summary = extract(stack, polygons, out, options, progress=progress)
    for line in summary.text().splitlines():
        logger.info("extraction: %s", line)
    return out


# ---------------------------------------------------------------------------------------------- command


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m training.data.extract``: an alias of ``cropmap data extract``; returns the exit status."""
    from cropmap.cli_common import run_command
    from training.data.cli import extract as command

    return run_command(command, argv, prog_name="python -m training.data.extract")


MMAP_THRESHOLD_BYTES = 4 * 2**20
"""Allocations from this size up get their own pages from glibc (returned on free), see :func:`pin_mmap_threshold`."""


def pin_mmap_threshold() -> None:
    """Fix glibc's mmap threshold at :data:`MMAP_THRESHOLD_BYTES` for this process (the command's, not a library
    caller's).

    glibc raises the threshold each time it frees a large mapped block (up to 32 MiB), after which the blocks'
    arrays of a few MB come from the heap of whichever worker thread made them and fragment it: the peak resident
    memory then creeps up with the number of blocks read (1.24x from a stack to one 16 times larger, measured;
    1.07x with the threshold fixed). Elsewhere (not glibc) this does nothing.
    """
    import ctypes
    import ctypes.util

    if not sys.platform.startswith("linux"):
        return
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return
    m_mmap_threshold = -3  # <malloc.h> M_MMAP_THRESHOLD
    mallopt(m_mmap_threshold, MMAP_THRESHOLD_BYTES)


if __name__ == "__main__":
    raise SystemExit(main())
