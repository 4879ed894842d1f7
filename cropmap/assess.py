"""``cropmap assess``: a class map's accuracy and class areas from a reference sample, and sample plans.

* :func:`assess` reads any single-band integer class raster and reference points or
  polygons (any CRS, reprojected to the map's), turns them into sample units, and
  applies the stratified estimator of :mod:`cropmap.accuracy` with the map classes
  as strata and the strata weights from the map's own class areas (every pixel of the
  map is counted). :func:`write_report` writes the JSON report, a Markdown report
  and a PNG of the error matrix beside it, atomically.
* :func:`plan_sample` proposes a stratified random sample for a target standard
  error of overall accuracy (Olofsson et al. 2014, eq. 13) and writes its points as
  a GeoPackage.

Class names come from the legend cropmap writes into its maps (``cropmap_classes``
and ``CLASS_<code>`` tags, see :mod:`cropmap.writer`); other maps are assessed by
code. Reference labels match a class code or name (case-insensitive), or are
translated by a ``--class-map`` CSV. docs/accuracy.md explains the estimator.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import logging
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cropmap.accuracy import StratifiedResult, allocate, sample_size, stratified_estimate
from cropmap.errors import AssessError, OutputExistsError

logger = logging.getLogger(__name__)

POLYGON_SAMPLES = ("pixels", "majority")
"""How reference polygons become sample units: every pixel centre inside, or one unit per polygon."""


# ---------------------------------------------------------------------------------------------- the map


@dataclass(frozen=True)
class ClassMap:
    """A single-band integer class raster and its class areas over the whole map."""

    path: Path
    crs: Any  # rasterio CRS
    transform: Any  # affine.Affine
    shape: tuple[int, int]
    nodata: int | None
    codes: tuple[int, ...]
    """Values present in the map (nodata excluded), ascending."""
    pixels: tuple[int, ...]
    area_m2: tuple[float, ...]
    names: Mapping[int, str]
    """Class names from the map's legend tags (empty for maps without one)."""
    legend_codes: tuple[int, ...] = ()
    """Every class of the legend, including those without pixels."""
    block_shape: tuple[int, int] = (512, 512)

    def name(self, code: int) -> str:
        """The class's name, or its code as text."""
        return self.names.get(code, str(code))

    @property
    def pixel_area_m2(self) -> float:
        """Mean area of one classified pixel."""
        n = sum(self.pixels)
        return sum(self.area_m2) / n if n else math.nan


def read_legend(
    tags: Mapping[str, str], band_tags: Mapping[str, str]
) -> tuple[dict[int, str], tuple[int, ...]]:
    """Class names of a map from cropmap's tags: ``cropmap_classes`` JSON, else ``CLASS_<code>`` band items."""
    names: dict[int, str] = {}
    raw = tags.get("cropmap_classes")
    if raw:
        try:
            for entry in json.loads(raw):
                names[int(entry["value"])] = str(entry["name"])
        except (ValueError, TypeError, KeyError):
            names = {}
    if not names:
        names = {int(k[6:]): v for k, v in band_tags.items() if k.startswith("CLASS_") and k[6:].isdigit()}
    return names, tuple(sorted(names))


def _row_areas(crs: Any, transform: Any, height: int) -> np.ndarray:
    """Pixel area (m2) of each row: one value on projected grids, ellipsoidal areas on geographic ones."""
    if crs.is_projected:
        factor = crs.linear_units_factor[1]
        return np.full(height, abs(transform.a * transform.e - transform.b * transform.d) * factor**2)
    from pyproj import Geod

    geod = Geod(ellps="WGS84")
    out = np.empty(height)
    for r in range(height):
        xs, ys = zip(
            *(transform @ (c, rr) for c, rr in ((0, r), (1, r), (1, r + 1), (0, r + 1))), strict=True
        )
        out[r] = abs(geod.polygon_area_perimeter(xs, ys)[0])
    return out


def read_class_map(path: str | Path) -> ClassMap:
    """Open a class raster, check it, and count its classes' pixels and areas block by block.

    Raises:
        AssessError: A missing or unreadable file, several bands, a non-integer band,
            no CRS, or no pixel with a class.
    """
    import rasterio
    from rasterio.errors import RasterioIOError

    path = Path(path)
    if not path.is_file():
        raise AssessError(f"map {path} does not exist; expected a single-band class GeoTIFF")
    try:
        ds = rasterio.open(path)
    except RasterioIOError as err:
        raise AssessError(f"map {path} is not a readable raster ({str(err).splitlines()[0]})") from err
    with ds:
        if ds.count != 1:
            raise AssessError(f"map {path} has {ds.count} bands; expected a single-band class raster")
        dtype = np.dtype(ds.dtypes[0])
        if dtype.kind not in "iu":
            raise AssessError(f"map {path} holds {dtype} values; expected integer class codes")
        if ds.crs is None:
            raise AssessError(
                f"map {path} has no CRS; expected a georeferenced class raster (no CRS is assumed)"
            )
        nodata = None if ds.nodata is None else int(ds.nodata)
        names, legend = read_legend(ds.tags(), ds.tags(1))
        row_area = _row_areas(ds.crs, ds.transform, ds.height)
        pixels: dict[int, int] = {}
        area: dict[int, float] = {}
        uniform = bool(np.all(row_area == row_area[0]))
        small = dtype.itemsize <= 2  # uint8/int16 codes: a bincount is far faster than a sort
        low = int(np.iinfo(dtype).min)
        for _, window in _windows(ds):
            block = ds.read(1, window=window)
            if small:
                hist = np.bincount((block.astype(np.int64) - low).ravel())
                values = np.flatnonzero(hist)
                counts, values = hist[values], values + low
            else:
                values, counts = np.unique(block, return_counts=True)
            for v, c in zip(values.tolist(), counts.tolist(), strict=True):
                if v == nodata:
                    continue
                pixels[v] = pixels.get(v, 0) + c
                if uniform:
                    area[v] = area.get(v, 0.0) + c * float(row_area[0])
                else:
                    rows = row_area[window.row_off : window.row_off + window.height]
                    area[v] = area.get(v, 0.0) + float((block == v).sum(axis=1) @ rows)
        bs = ds.block_shapes[0]
        result = ClassMap(
            path=path,
            crs=ds.crs,
            transform=ds.transform,
            shape=(ds.height, ds.width),
            nodata=nodata,
            codes=tuple(sorted(pixels)),
            pixels=tuple(pixels[c] for c in sorted(pixels)),
            area_m2=tuple(area[c] for c in sorted(pixels)),
            names=names,
            legend_codes=legend,
            block_shape=(int(bs[0]), int(bs[1])),
        )
    if not result.codes:
        raise AssessError(f"map {path} has no classified pixel (every pixel is nodata {nodata})")
    return result


def _windows(ds: Any) -> Iterator[tuple[Any, Any]]:
    """Row bands of about 2**22 pixels on the file's block rows (bounded memory on any map size)."""
    from rasterio.windows import Window

    bh = ds.block_shapes[0][0]
    rows = max(bh, (2**22 // max(ds.width, 1)) // bh * bh)
    for r0 in range(0, ds.height, rows):
        yield r0, Window(0, r0, ds.width, min(rows, ds.height - r0))


# ---------------------------------------------------------------------------------------------- labels


def read_class_map_csv(path: str | Path) -> dict[str, str]:
    """A CSV mapping labels (first column) to map classes (second column, a code or name; empty: leave out).

    The first row is a header. Labels are compared after stripping and case-folding.

    Raises:
        AssessError: A missing file, fewer than two columns, or a label mapped twice to different classes.
    """
    path = Path(path)
    if not path.is_file():
        raise AssessError(
            f"class map {path} does not exist; expected a CSV of label,class rows with a header"
        )
    with path.open(newline="", encoding="utf-8-sig") as f:
        rows = list(csv.reader(f))
    if not rows or len(rows[0]) < 2:
        raise AssessError(f"class map {path} has no header of two columns; expected e.g. 'label,class'")
    out: dict[str, str] = {}
    for i, row in enumerate(rows[1:], start=2):
        if not row or not any(cell.strip() for cell in row):
            continue
        if len(row) < 2:
            raise AssessError(f"class map {path} line {i} has one column ({row[0]!r}); expected label,class")
        key, value = row[0].strip().casefold(), row[1].strip()
        if key in out and out[key] != value:
            raise AssessError(f"class map {path} maps label {row[0]!r} to both {out[key]!r} and {value!r}")
        out[key] = value
    if not out:
        raise AssessError(f"class map {path} has no rows under its header")
    return out


def _label_key(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value).strip().casefold()


def resolve_labels(
    labels: Sequence[Any], classes: Mapping[int, str], class_map: Mapping[str, str] | None, what: str
) -> np.ndarray:
    """Class codes of reference labels: a code, a name, or through ``class_map``; -1 where left out.

    Args:
        labels: The label of each reference feature.
        classes: ``{code: name}`` of every class the map knows.
        class_map: Label (case-folded) -> class (code or name; ``""`` leaves the label out).
        what: How messages name the labels ("reference labels in column 'crop'").

    Raises:
        AssessError: Naming labels that match no class (with their counts), or class
            map targets that are no class of the map.
    """
    by_text = {str(c): c for c in classes}
    by_text.update({n.strip().casefold(): c for c, n in classes.items()})

    def target(text: str, source: str) -> int | None:
        code = by_text.get(text.strip().casefold())
        if code is None:
            raise AssessError(
                f"{source} {text!r} is no class of the map; expected one of its codes or names "
                f"({_describe_classes(classes)})"
            )
        return code

    translate: dict[str, int] = {}
    if class_map is not None:
        for key, value in class_map.items():
            translate[key] = -1 if value == "" else int(target(value, "the class map's class") or 0)
    out = np.empty(len(labels), dtype=np.int64)
    unknown: dict[str, int] = {}
    missing = 0
    for i, raw in enumerate(labels):
        if raw is None or (isinstance(raw, float) and math.isnan(raw)) or str(raw).strip() == "":
            missing += 1
            out[i] = -1
            continue
        key = _label_key(raw)
        code = translate.get(key) if class_map is not None else by_text.get(key)
        if code is None:
            unknown[str(raw)] = unknown.get(str(raw), 0) + 1
            out[i] = -1
        else:
            out[i] = code
    if unknown:
        shown = ", ".join(f"{k!r} ({n})" for k, n in sorted(unknown.items(), key=lambda kv: -kv[1])[:8])
        more = f" and {len(unknown) - 8} more" if len(unknown) > 8 else ""
        how = (
            "the --class-map CSV"
            if class_map is not None
            else f"the map's classes ({_describe_classes(classes)})"
        )
        raise AssessError(
            f"{what}: {sum(unknown.values())} features have labels that match none of {how}: {shown}{more}; "
            "expected class codes or names"
            + ("" if class_map is not None else ", or a --class-map CSV translating them")
        )
    if missing:
        logger.warning("%s: %d features have no label and are left out", what, missing)
    return out


def _describe_classes(classes: Mapping[int, str]) -> str:
    items = [f"{c}={n}" if n != str(c) else str(c) for c, n in sorted(classes.items())]
    return ", ".join(items[:12]) + (f", ... ({len(items)} classes)" if len(items) > 12 else "")


# ---------------------------------------------------------------------------------------------- the sample


@dataclass
class Sample:
    """Reference sample units: the map class and the reference class of each."""

    map_codes: np.ndarray
    ref_codes: np.ndarray
    info: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


def read_reference(
    path: str | Path, label_column: str, cmap: ClassMap, *, layer: str | None = None
) -> Any:  # geopandas.GeoDataFrame
    """Read reference features, check their label column and CRS, and reproject them to the map's CRS."""
    import pyogrio
    from pyogrio.errors import DataSourceError

    from cropmap.mask import vector_layer

    path = Path(path)
    if not path.exists():
        raise AssessError(f"reference {path} does not exist; expected points or polygons (e.g. a GeoPackage)")
    chosen = vector_layer(path, layer, what="reference", error=AssessError)
    try:
        gdf = pyogrio.read_dataframe(path, layer=chosen)
    except DataSourceError as err:
        raise AssessError(f"reference {path} could not be read ({str(err).splitlines()[0]})") from err
    if label_column not in gdf.columns:
        cols = [c for c in gdf.columns if c != "geometry"]
        raise AssessError(
            f"reference {path} has no column {label_column!r}; its columns are {', '.join(cols)}"
        )
    if gdf.crs is None:
        raise AssessError(f"reference {path} has no CRS; expected a declared CRS (no CRS is assumed)")
    gdf = gdf[gdf.geometry.notna() & ~gdf.geometry.is_empty]
    if len(gdf) == 0:
        raise AssessError(f"reference {path} (layer {chosen!r}) has no features with a geometry")
    kinds = set(gdf.geometry.geom_type)
    bad = kinds - {"Point", "MultiPoint", "Polygon", "MultiPolygon"}
    if bad:
        raise AssessError(
            f"reference {path} holds {', '.join(sorted(bad))} features; expected points or polygons"
        )
    if gdf.crs != cmap.crs:
        logger.info(
            "reprojecting reference %s from %s to the map's %s",
            path,
            gdf.crs.to_string(),
            cmap.crs.to_string(),
        )
        gdf = gdf.to_crs(cmap.crs)
    gdf.attrs["layer"] = chosen
    return gdf


def sample_units(
    gdf: Any, ref_codes: np.ndarray, cmap: ClassMap, *, polygon_samples: str = "pixels"
) -> Sample:
    """Turn reference features into sample units with their map class.

    Points sample the pixel they fall in. Polygons give every pixel whose centre lies
    inside (``"pixels"``) or one unit per polygon whose map class is the most frequent
    class among those pixels (``"majority"``; ties go to the lowest code). Units on
    nodata or outside the map, and polygons holding no pixel centre, are left out and
    counted.

    Raises:
        AssessError: When no feature overlaps the map.
    """
    import rasterio
    import shapely
    from rasterio.features import rasterize
    from rasterio.windows import Window

    if polygon_samples not in POLYGON_SAMPLES:
        raise ValueError(f"polygon_samples is {polygon_samples!r}; expected one of {POLYGON_SAMPLES}")
    height, width = cmap.shape
    left, top = cmap.transform @ (0, 0)
    right, bottom = cmap.transform @ (width, height)
    map_box = shapely.box(min(left, right), min(top, bottom), max(left, right), max(top, bottom))
    geoms = np.asarray(gdf.geometry.values, dtype=object)
    keep = ref_codes >= 0
    is_point = np.array([g.geom_type in ("Point", "MultiPoint") for g in geoms])
    overlaps = shapely.intersects(geoms, map_box)
    if not overlaps.any():
        gb = [round(v, 2) for v in shapely.total_bounds(geoms).tolist()]
        raise AssessError(
            f"no reference feature overlaps map {cmap.path}: the features span {gb}, the map "
            f"{[round(v, 2) for v in map_box.bounds]} (in {cmap.crs.to_string()}); expected reference data on the map"
        )
    info: dict[str, Any] = {
        "features": len(geoms),
        "points": int(is_point.sum()),
        "polygons": int((~is_point).sum()),
        "left_out_by_label": int((~keep).sum()),
        "outside_map": int((~overlaps).sum()),
        "polygon_samples": polygon_samples,
    }
    maps: list[np.ndarray] = []
    refs: list[np.ndarray] = []
    on_nodata = 0
    empty_polygons = 0
    inv = ~cmap.transform
    nodata = cmap.nodata
    with rasterio.open(cmap.path) as ds:
        # Points: their pixels, read one block window at a time.
        pts = np.flatnonzero(is_point & keep & overlaps)
        if pts.size:
            xs, ys, owner = [], [], []
            for i in pts:
                for p in shapely.get_parts(geoms[i]):
                    xs.append(p.x)
                    ys.append(p.y)
                    owner.append(i)
            cols_f, rows_f = _apply(inv, np.asarray(xs), np.asarray(ys))
            rows, cols = np.floor(rows_f).astype(np.int64), np.floor(cols_f).astype(np.int64)
            owner_a = np.asarray(owner)
            inside = (rows >= 0) & (rows < height) & (cols >= 0) & (cols < width)
            info["outside_map"] += int((~inside).sum())
            rows, cols, owner_a = rows[inside], cols[inside], owner_a[inside]
            values = np.empty(rows.size, dtype=np.int64)
            bh, bw = cmap.block_shape
            key = (rows // bh) * ((width + bw - 1) // bw) + cols // bw
            order = np.argsort(key, kind="stable")
            bounds = np.flatnonzero(np.diff(key[order])) + 1
            for grp in np.split(order, bounds):
                if grp.size == 0:
                    continue
                r0, c0 = int(rows[grp[0]] // bh * bh), int(cols[grp[0]] // bw * bw)
                block = ds.read(1, window=Window(c0, r0, min(bw, width - c0), min(bh, height - r0)))
                values[grp] = block[rows[grp] - r0, cols[grp] - c0]
            valid = values != nodata if nodata is not None else np.ones(values.size, dtype=bool)
            on_nodata += int((~valid).sum())
            maps.append(values[valid])
            refs.append(ref_codes[owner_a[valid]])
        # Polygons: the pixel centres inside each, on the polygon's own window.
        for i in np.flatnonzero(~is_point & keep & overlaps):
            g = geoms[i]
            win = _pixel_window(g.bounds, inv, cmap.shape)
            if win is None:
                empty_polygons += 1
                continue
            block = ds.read(1, window=win)
            inside = rasterize(
                [(g, 1)], out_shape=block.shape, transform=ds.window_transform(win), dtype="uint8"
            )
            values = block[inside.astype(bool)].astype(np.int64)
            if values.size == 0:
                empty_polygons += 1
                continue
            if nodata is not None:
                on_nodata += int((values == nodata).sum())
                values = values[values != nodata]
            if values.size == 0:
                continue
            if polygon_samples == "majority":
                codes, counts = np.unique(values, return_counts=True)
                values = codes[np.argmax(counts)][None]
            maps.append(values)
            refs.append(np.full(values.size, ref_codes[i], dtype=np.int64))
    info["on_nodata"] = on_nodata
    info["polygons_without_pixel"] = empty_polygons
    sample = Sample(
        map_codes=np.concatenate(maps) if maps else np.empty(0, np.int64),
        ref_codes=np.concatenate(refs) if refs else np.empty(0, np.int64),
        info=info,
    )
    info["units"] = int(sample.map_codes.size)
    if on_nodata:
        sample.warnings.append(
            f"{on_nodata:,} reference units fall on nodata (unclassified) pixels and are left out"
        )
    if info["outside_map"]:
        sample.warnings.append(
            f"{info['outside_map']:,} reference features or points lie outside the map and are left out"
        )
    if empty_polygons:
        sample.warnings.append(
            f"{empty_polygons:,} reference polygons hold no pixel centre (smaller than a pixel?) "
            "and are left out"
        )
    if polygon_samples == "pixels" and info["polygons"]:
        sample.warnings.append(
            "polygons were sampled pixel by pixel: pixels of one polygon are not independent units, so the "
            "standard errors are too small (use --polygon-samples majority, or reference points, for design-based "
            "standard errors)"
        )
    if sample.map_codes.size == 0:
        raise AssessError(
            f"no reference unit falls on a classified pixel of map {cmap.path} ({on_nodata:,} on nodata, "
            f"{info['outside_map']:,} outside, {empty_polygons:,} polygons without a pixel centre); "
            "expected reference data on the classified area"
        )
    return sample


def _apply(tf: Any, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """An affine transform applied to coordinate arrays."""
    return tf.a * x + tf.b * y + tf.c, tf.d * x + tf.e * y + tf.f


def _pixel_window(bounds: tuple[float, float, float, float], inv: Any, shape: tuple[int, int]) -> Any:
    """The whole-pixel window covering ``bounds`` (map CRS), clipped to the map; ``None`` when empty."""
    from rasterio.windows import Window

    x0, y0, x1, y1 = bounds
    cols, rows = _apply(inv, np.array([x0, x1, x0, x1]), np.array([y0, y0, y1, y1]))
    c0, c1 = max(0, int(np.floor(cols.min()))), min(shape[1], int(np.ceil(cols.max())))
    r0, r1 = max(0, int(np.floor(rows.min()))), min(shape[0], int(np.ceil(rows.max())))
    if c1 <= c0 or r1 <= r0:
        return None
    return Window(c0, r0, c1 - c0, r1 - r0)


# ---------------------------------------------------------------------------------------------- assess


def assess(
    map_path: str | Path,
    reference: str | Path,
    *,
    label_column: str,
    class_map: str | Path | None = None,
    layer: str | None = None,
    polygon_samples: str = "pixels",
) -> dict[str, Any]:
    """Assess a class map against reference data: the report as a dict (JSON-ready).

    Args:
        map_path: A single-band integer class raster (a cropmap map or any other).
        reference: Reference points or polygons (any OGR format, any CRS).
        label_column: The reference column holding the reference class.
        class_map: Optional CSV translating reference labels to map classes.
        layer: The reference layer, when the file holds several.
        polygon_samples: ``"pixels"`` or ``"majority"`` (see :func:`sample_units`).

    Raises:
        AssessError: For unusable inputs (one line each; see docs/accuracy.md).
    """
    from cropmap import __version__

    cmap = read_class_map(map_path)
    classes = {c: cmap.name(c) for c in sorted(set(cmap.codes) | set(cmap.legend_codes))}
    gdf = read_reference(reference, label_column, cmap, layer=layer)
    cm = read_class_map_csv(class_map) if class_map is not None else None
    what = f"reference {reference} column {label_column!r}"
    ref_codes = resolve_labels(list(gdf[label_column]), classes, cm, what)
    if not (ref_codes >= 0).any():
        raise AssessError(f"{what}: every label is left out by the class map; expected some reference units")
    sample = sample_units(gdf, ref_codes, cmap, polygon_samples=polygon_samples)
    codes = sorted(set(cmap.codes) | set(sample.ref_codes.tolist()))
    index = {c: i for i, c in enumerate(codes)}
    k = len(codes)
    counts = np.zeros((k, k), dtype=np.int64)
    np.add.at(
        counts,
        ([index[c] for c in sample.map_codes.tolist()], [index[c] for c in sample.ref_codes.tolist()]),
        1,
    )
    mapped = np.array([cmap.area_m2[cmap.codes.index(c)] if c in cmap.codes else 0.0 for c in codes])
    pixels = np.array([cmap.pixels[cmap.codes.index(c)] if c in cmap.codes else 0 for c in codes])
    warnings = list(sample.warnings)
    n_h = counts.sum(axis=1)
    unsampled = [c for c, a, n in zip(codes, mapped, n_h, strict=True) if a > 0 and n == 0]
    used_area = mapped.copy()
    if unsampled:
        left = float(sum(mapped[index[c]] for c in unsampled))
        warnings.append(
            f"map classes {', '.join(f'{c} ({classes.get(c, str(c))})' for c in unsampled)} have no reference unit: "
            f"their {left / 1e4:,.2f} ha ({left / mapped.sum():.2%} of the mapped area) are left out of every "
            "estimate, which covers the other strata only"
        )
        for c in unsampled:
            used_area[index[c]] = 0.0
    single = [c for c, n in zip(codes, n_h, strict=True) if n == 1]
    if single:
        warnings.append(
            f"map classes {', '.join(map(str, single))} have one reference unit each: their user's "
            "accuracy has no standard error (null), and their unknown within-class variance is taken as 0 "
            "in the other standard errors, which are then too small"
        )
    result = stratified_estimate(counts, used_area)
    no_ref = [c for c in codes if counts[:, index[c]].sum() == 0]
    if no_ref:
        warnings.append(
            f"classes {', '.join(map(str, no_ref))} have no reference unit of their own: their producer's "
            "accuracy is undefined (null) and their estimated area is 0"
        )
    for w in warnings:
        logger.warning("%s", w)
    return _report(
        cmap,
        codes,
        classes,
        pixels,
        mapped,
        used_area,
        result,
        sample,
        warnings,
        version=__version__,
        inputs={
            "map": str(Path(map_path).resolve()),
            "reference": str(Path(reference).resolve()),
            "reference_layer": gdf.attrs.get("layer"),
            "label_column": label_column,
            "class_map": str(Path(class_map).resolve()) if class_map is not None else None,
        },
    )


def _report(
    cmap: ClassMap,
    codes: list[int],
    classes: Mapping[int, str],
    pixels: np.ndarray,
    mapped: np.ndarray,
    used_area: np.ndarray,
    r: StratifiedResult,
    sample: Sample,
    warnings: list[str],
    *,
    version: str,
    inputs: dict[str, Any],
) -> dict[str, Any]:
    total_m2 = float(used_area.sum())
    per_class = []
    for i, c in enumerate(codes):
        n_ref = int(r.counts[:, i].sum())
        area = r.area_proportion[i]
        per_class.append(
            {
                "code": c,
                "name": classes.get(c, str(c)),
                "map_pixels": int(pixels[i]),
                "map_area_ha": round(float(mapped[i]) / 1e4, 4),
                "weight": round(float(r.weights[i]), 8),
                "sample_units_map": int(r.counts[i].sum()),
                "sample_units_reference": n_ref,
                "stratum_assessed": bool(used_area[i] > 0 or mapped[i] == 0),
                "users_accuracy": r.users[i].as_dict(),
                "producers_accuracy": r.producers[i].as_dict(),
                "f1": r.f1[i].as_dict(),
                "area_proportion": area.as_dict(),
                "area_ha": area.as_dict(scale=total_m2 / 1e4, digits=2),
            }
        )
    return {
        "cropmap_version": version,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "inputs": inputs,
        "map": {
            "crs": cmap.crs.to_string(),
            "shape": list(cmap.shape),
            "nodata": cmap.nodata,
            "pixel_area_m2": round(cmap.pixel_area_m2, 6),
            "classified_area_ha": round(float(mapped.sum()) / 1e4, 4),
            "assessed_area_ha": round(total_m2 / 1e4, 4),
            "class_names": "from the map's cropmap legend tags"
            if cmap.names
            else "none in the map: codes are used",
        },
        "sample": sample.info,
        "estimator": "stratified, strata = map classes, weights = mapped area shares (Olofsson et al. 2014, RSE 148, "
        "eq. 2-11); standard errors by stratified linearisation (equal to their closed forms); 95 % CI = +/- 1.96 SE",
        "classes": [{"code": c, "name": classes.get(c, str(c))} for c in codes],
        "confusion_matrix": {
            "rows": "map class",
            "columns": "reference class",
            "class_order": codes,
            "counts": r.counts.tolist(),
            "area_proportions": np.round(r.proportions, 8).tolist(),
        },
        "overall_accuracy": r.overall.as_dict(),
        "kappa": {
            "estimate": None if math.isnan(r.kappa) else round(r.kappa, 6),
            "sample_counts": None if math.isnan(r.kappa_sample) else round(r.kappa_sample, 6),
            "note": "Cohen's kappa of the estimated area-proportion matrix (and of the raw sample counts); "
            "reported for comparison only, Olofsson et al. (2014) advise against it",
        },
        "per_class": per_class,
        "warnings": warnings,
    }


# ---------------------------------------------------------------------------------------------- outputs


def report_paths(out: Path) -> dict[str, Path]:
    """The JSON report and the Markdown report and PNG beside it."""
    return {"json": out, "markdown": out.with_suffix(".md"), "png": out.with_suffix(".png")}


def _check_new(paths: Sequence[Path], overwrite: bool) -> None:
    folder = paths[0].parent
    p = folder
    while not p.exists() and p != p.parent:
        p = p.parent
    if not p.is_dir():
        raise OutputExistsError(
            f"output folder {folder}: {p} is a file; expected a folder (or nothing) there"
        )
    not_files = [str(q) for q in paths if q.exists() and not q.is_file()]
    if not_files:
        raise OutputExistsError(
            f"output {', '.join(not_files)} exists and is not a file; it is never replaced"
        )
    existing = [str(q) for q in paths if q.exists()]
    if existing and not overwrite:
        raise OutputExistsError(
            f"output {', '.join(existing)} already exists; pass --overwrite to replace it"
        )


def _write_atomically(
    finals: Sequence[Path], inputs: Mapping[Path, str], overwrite: bool, write: Any
) -> None:
    """Lock, stage every output under an owned temporary name, call ``write(temps)``, move all into place."""
    from cropmap.safeio.folders import output_folder
    from cropmap.safeio.locks import RunLock, lock_path
    from cropmap.safeio.oserrors import file_system_error
    from cropmap.safeio.overlap import refuse_overlap
    from cropmap.safeio.temporaries import remove_stale
    from cropmap.writer import Staging

    refuse_overlap([*finals, lock_path(finals[0])], inputs)
    _check_new(finals, overwrite)
    folder = finals[0].parent
    with output_folder(folder), RunLock(finals[0], "output"):
        _check_new(finals, overwrite)
        remove_stale(folder, {p.name for p in finals})
        with Staging() as staging:
            temps = [staging.temp_for(p) for p in finals]
            try:
                write(temps)
            except OSError as err:
                from cropmap.errors import CropmapError

                if isinstance(err, CropmapError):
                    raise
                raise file_system_error(err, "write", err.filename or staging.newest() or folder) from err
            staging.commit()


def check_report_outputs(out: str | Path, *, overwrite: bool = False) -> dict[str, Path]:
    """Refuse a report path that is not ``.json``, or outputs that exist (without ``overwrite``), before any work."""
    out = Path(out)
    if out.suffix.lower() != ".json":
        raise AssessError(
            f"report {out} must end in .json (the Markdown and PNG reports are written beside it)"
        )
    paths = report_paths(out)
    _check_new(list(paths.values()), overwrite)
    return paths


def write_report(report: Mapping[str, Any], out: str | Path, *, overwrite: bool = False) -> dict[str, Path]:
    """Write the JSON report to ``out`` and ``.md`` / ``.png`` beside it, all or none.

    Raises:
        OutputExistsError: An output exists and ``overwrite`` is False.
        InputOverwriteError: An output is the map, the reference or the class map.
    """
    paths = check_report_outputs(out, overwrite=overwrite)
    ins = report["inputs"]
    inputs = {Path(ins["map"]): "map", Path(ins["reference"]): "reference"}
    if ins.get("class_map"):
        inputs[Path(ins["class_map"])] = "class map"

    def write(temps: list[Path]) -> None:
        temps[0].write_text(json.dumps(report, indent=2, allow_nan=False) + "\n", encoding="utf-8")
        temps[1].write_text(markdown_report(report), encoding="utf-8")
        matrix_png(report, temps[2])

    _write_atomically(list(paths.values()), inputs, overwrite, write)
    return paths


def _fmt(d: Mapping[str, Any] | None, pct: bool = True, digits: int = 3) -> str:
    if d is None or d.get("estimate") is None:
        return "n/a"
    v, se = d["estimate"], d.get("se")
    if pct:
        return f"{v:.{digits}f} +- {1.96 * se:.{digits}f}" if se is not None else f"{v:.{digits}f} +- n/a"
    return f"{v:,.0f} +- {1.96 * se:,.0f}" if se is not None else f"{v:,.0f} +- n/a"


def markdown_report(report: Mapping[str, Any]) -> str:
    """The report as Markdown: the error matrices, per-class accuracies and areas, warnings."""
    names = [c["name"] for c in report["classes"]]
    cm = report["confusion_matrix"]
    lines = [
        f"# Accuracy assessment of {Path(report['inputs']['map']).name}",
        "",
        (
            f"Reference: `{report['inputs']['reference']}` (column `{report['inputs']['label_column']}`); "
            f"{report['sample']['units']:,} sample units from {report['sample']['features']:,} features "
            f"(polygons sampled by {report['sample']['polygon_samples']})."
        ),
        "",
        f"Estimator: {report['estimator']}.",
        "",
        (
            f"**Overall accuracy: {_fmt(report['overall_accuracy'])}** (95 % CI half-width); "
            f"kappa {report['kappa']['estimate']}."
        ),
        "",
        "## Error matrix, sample counts (rows: map, columns: reference)",
        "",
        "| map \\ reference | " + " | ".join(names) + " | total |",
        "|---" * (len(names) + 2) + "|",
    ]
    for name, row in zip(names, cm["counts"], strict=True):
        lines.append(f"| {name} | " + " | ".join(str(v) for v in row) + f" | {sum(row)} |")
    lines += [
        "",
        "## Error matrix, estimated area proportions",
        "",
        "| map \\ reference | " + " | ".join(names) + " | W_i |",
        "|---" * (len(names) + 2) + "|",
    ]
    for name, row in zip(names, cm["area_proportions"], strict=True):
        lines.append(f"| {name} | " + " | ".join(f"{v:.4f}" for v in row) + f" | {sum(row):.4f} |")
    lines += [
        "",
        "## Per class (estimate +- 95 % CI half-width)",
        "",
        "| class | user's | producer's | F1 | mapped ha | error-adjusted ha |",
        "|---|---|---|---|---|---|",
    ]
    for c in report["per_class"]:
        lines.append(
            f"| {c['code']} {c['name']} | {_fmt(c['users_accuracy'])} | {_fmt(c['producers_accuracy'])} | "
            f"{_fmt(c['f1'])} | {c['map_area_ha']:,.2f} | {_fmt(c['area_ha'], pct=False)} |"
        )
    if report["warnings"]:
        lines += ["", "## Warnings", ""] + [f"- {w}" for w in report["warnings"]]
    return "\n".join(lines) + "\n"


def matrix_png(report: Mapping[str, Any], path: Path) -> None:
    """A PNG of the area-proportion error matrix, annotated with the sample counts."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    names = [c["name"] for c in report["classes"]]
    p = np.asarray(report["confusion_matrix"]["area_proportions"], dtype=float)
    n = np.asarray(report["confusion_matrix"]["counts"])
    k = len(names)
    side = max(4.0, 0.6 * k + 2.5)
    fig = Figure(figsize=(side + 1, side))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    im = ax.imshow(p, cmap="Blues")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="estimated area proportion")
    ax.set_xticks(range(k), names, rotation=45, ha="right")
    ax.set_yticks(range(k), names)
    ax.set_xlabel("reference class")
    ax.set_ylabel("map class")
    top = p.max() if p.size else 1.0
    for i in range(k):
        for j in range(k):
            ax.text(
                j,
                i,
                f"{p[i, j]:.3f}\n({n[i, j]})",
                ha="center",
                va="center",
                fontsize=7,
                color="white" if p[i, j] > 0.6 * top else "black",
            )
    oa = report["overall_accuracy"]
    ax.set_title(f"{Path(report['inputs']['map']).name}: overall accuracy {_fmt(oa)}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=110)


# ---------------------------------------------------------------------------------------------- sample plans


def parse_expected(spec: str, codes: Sequence[int]) -> dict[int, float]:
    """``"0.8"`` or ``"0.8,3=0.6,5=0.95"`` -> expected user's accuracy per class code."""
    default: float | None = None
    per: dict[int, float] = {}
    try:
        for part in (p.strip() for p in spec.split(",") if p.strip()):
            if "=" in part:
                k, v = part.split("=", 1)
                per[int(k)] = float(v)
            else:
                default = float(part)
    except ValueError as err:
        raise AssessError(f"--expected-accuracy {spec!r}: {err}; expected e.g. 0.8 or 0.8,3=0.6") from err
    unknown = sorted(set(per) - set(codes))
    if unknown:
        raise AssessError(
            f"--expected-accuracy names classes {unknown} that the map does not hold (it holds {list(codes)})"
        )
    missing = [c for c in codes if c not in per]
    if missing and default is None:
        raise AssessError(
            f"--expected-accuracy {spec!r} gives no value for classes {missing}; add a default, e.g. 0.8"
        )
    out = {c: per.get(c, default if default is not None else 0.0) for c in codes}
    if any(not 0 <= v <= 1 for v in out.values()):
        raise AssessError(f"--expected-accuracy {spec!r}: accuracies must lie between 0 and 1")
    return out


def plan_sample(
    map_path: str | Path,
    out: str | Path,
    *,
    target_se: float = 0.01,
    expected: str = "0.8",
    min_per_class: int = 50,
    seed: int = 0,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Propose and write a stratified random sample of pixel centres for a target SE of overall accuracy.

    The total ``n`` follows Olofsson et al. (2014) eq. 13 from the map's class area
    shares and the expected user's accuracies; :func:`cropmap.accuracy.allocate` splits
    it (``min_per_class`` in each small class, the rest proportional to area, never
    more than a class's pixels). Pixels are drawn uniformly without replacement within
    each class with ``numpy.random.default_rng(seed)``: the same seed and map give
    the same points.

    Returns:
        The plan: ``n`` from eq. 13, the allocation per class, the output path.
    """
    import geopandas as gpd
    import rasterio
    import shapely

    cmap = read_class_map(map_path)
    out = Path(out)
    if out.suffix.lower() != ".gpkg":
        raise AssessError(f"plan {out} must end in .gpkg (a GeoPackage of points)")
    if not 0 < target_se < 1:
        raise AssessError(f"--target-se {target_se}; expected a standard error between 0 and 1, e.g. 0.01")
    if min_per_class < 0:
        raise AssessError(f"--min-per-class {min_per_class}; expected 0 or more")
    _check_new([out], overwrite)
    exp = parse_expected(expected, cmap.codes)
    area = np.asarray(cmap.area_m2)
    w = area / area.sum()
    n = sample_size(w, [exp[c] for c in cmap.codes], target_se)
    alloc = np.minimum(allocate(n, w, min_per_class), np.asarray(cmap.pixels))
    rng = np.random.default_rng(seed)
    ranks = {
        c: np.sort(rng.choice(cmap.pixels[i], size=int(alloc[i]), replace=False))
        for i, c in enumerate(cmap.codes)
    }
    seen = dict.fromkeys(cmap.codes, 0)
    taken = dict.fromkeys(cmap.codes, 0)
    rows_out: list[int] = []
    cols_out: list[int] = []
    codes_out: list[int] = []
    with rasterio.open(cmap.path) as ds:
        for r0, window in _windows(ds):
            block = ds.read(1, window=window)
            flat = block.ravel()
            for c in cmap.codes:
                want = ranks[c]
                if taken[c] >= want.size:
                    continue
                where = np.flatnonzero(flat == c)
                lo = seen[c]
                hits = want[(want >= lo) & (want < lo + where.size)] - lo
                seen[c] += where.size
                if hits.size:
                    idx = where[hits]
                    rows_out.extend((r0 + idx // block.shape[1]).tolist())
                    cols_out.extend((idx % block.shape[1]).tolist())
                    codes_out.extend([c] * hits.size)
                    taken[c] += hits.size
    rows_a, cols_a = np.asarray(rows_out), np.asarray(cols_out)
    xs, ys = _apply(cmap.transform, cols_a + 0.5, rows_a + 0.5)
    gdf = gpd.GeoDataFrame(
        {
            "point_id": np.arange(1, rows_a.size + 1),
            "stratum": codes_out,
            "stratum_name": [cmap.name(c) for c in codes_out],
            "row": rows_a,
            "col": cols_a,
            "reference": [None] * rows_a.size,
        },
        geometry=shapely.points(np.asarray(xs), np.asarray(ys)),
        crs=cmap.crs,
    )
    gdf["reference"] = gdf["reference"].astype("string")

    def write(temps: list[Path]) -> None:
        gdf.to_file(temps[0], layer="sample_plan", driver="GPKG")

    _write_atomically([out], {cmap.path: "map"}, overwrite, write)
    return {
        "map": str(cmap.path),
        "out": str(out),
        "target_se": target_se,
        "n_eq13": n,
        "n": int(alloc.sum()),
        "seed": seed,
        "min_per_class": min_per_class,
        "classes": [
            {
                "code": c,
                "name": cmap.name(c),
                "weight": round(float(w[i]), 6),
                "expected_users": exp[c],
                "pixels": cmap.pixels[i],
                "n": int(alloc[i]),
            }
            for i, c in enumerate(cmap.codes)
        ],
    }
