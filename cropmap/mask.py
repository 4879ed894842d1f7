"""Cropland polygons: reading, reprojecting to the raster grid, rasterising per block.

Any vector format GDAL/OGR reads is accepted (GeoPackage first). The polygons are
reprojected to the stack's CRS (logged at INFO) and burnt block by block with the
block's own window transform, so no full-raster mask ever exists in memory. A
pixel is cropland when its centre lies inside a polygon.

Reprojection keeps the shape: before the vertices are transformed, every edge is split
in the mask's own CRS into segments of at most :data:`MAX_SEGMENT_M` metres (shapely
``segmentize``), so a long straight edge in longitude/latitude follows its true curve in
the stack's CRS instead of becoming a chord. A mask already in the stack's CRS is used
as it is. Invalid polygons are repaired (``make_valid``); the degenerate parts a repair
leaves (a zero-width spike becomes a line, a zero-area sliver a line or point) are
dropped, with their count logged and recorded (:attr:`Polygons.dropped_parts`), so they
never burn a line of pixels.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import shapely
from affine import Affine
from rasterio.crs import CRS
from rasterio.errors import CRSError
from rasterio.features import rasterize

from cropmap.errors import MaskError

logger = logging.getLogger(__name__)

_POLYGON_TYPES = ("Polygon", "MultiPolygon")
MAX_SEGMENT_M = 100.0
"""Longest edge (metres) a mask polygon keeps before it is reprojected; longer edges are split first.
The image of a 100 m segment departs from its chord by far less than a millimetre in any UTM zone."""
METRES_PER_DEGREE = 111_320.0
"""Metres in a degree of latitude (and at most in one of longitude): :data:`MAX_SEGMENT_M` in degrees."""


@dataclass(frozen=True)
class Polygons:
    """Cropland polygons in the raster's CRS."""

    path: Path
    geometries: tuple[shapely.Geometry, ...]
    crs: CRS
    source_crs: str
    layer: str | None = None
    """The layer the polygons were read from."""
    max_segment_m: float | None = None
    """Edges were split to at most this many metres before reprojection; ``None``: not reprojected."""
    dropped_parts: int = 0
    """Degenerate parts (lines, points, zero-area polygons) left by repairing invalid polygons, dropped."""
    _tree: shapely.STRtree = field(init=False, repr=False, compare=False)
    """Spatial index of :attr:`geometries` (built by ``__post_init__``)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "_tree", shapely.STRtree(list(self.geometries)))

    def __getstate__(self) -> dict[str, object]:
        return {
            "path": self.path,
            "geometries": self.geometries,
            "crs": self.crs,
            "source_crs": self.source_crs,
            "layer": self.layer,
            "max_segment_m": self.max_segment_m,
            "dropped_parts": self.dropped_parts,
        }

    def __setstate__(self, state: dict[str, object]) -> None:
        for k, v in state.items():
            object.__setattr__(self, k, v)
        self.__post_init__()

    def select(self, bounds: tuple[float, float, float, float]) -> tuple[shapely.Geometry, ...]:
        """Polygons whose geometry intersects the box ``(left, bottom, right, top)``."""
        box = shapely.box(*bounds)
        idx = self._tree.query(box, predicate="intersects")
        return tuple(self.geometries[i] for i in sorted(idx.tolist()))


def vector_layer(
    path: Path,
    layer: str | None,
    *,
    what: str,
    plural: bool = False,
    several: str = "name one with --layer NAME",
    error: type[Exception] = MaskError,
) -> str:
    """The layer of the vector file ``path`` to read: ``layer`` when the file has it, else its only layer.

    ``what`` names the file in messages (``"mask"``, ``"polygons"``, ...; ``plural`` for the verbs), ``several``
    ends the message for a file of several layers and no ``layer``.

    Raises:
        error: If the file is not a readable vector file, holds no layer, lacks ``layer``, or holds several
            layers and no ``layer`` was named.
    """
    import pyogrio
    from pyogrio.errors import DataSourceError

    is_, has, holds = ("are", "have", "hold") if plural else ("is", "has", "holds")
    try:
        names = [str(n) for n, _ in pyogrio.list_layers(path)]
    except DataSourceError as err:
        raise error(
            f"{what} {path} {is_} not a readable vector file ({_first_line(err)}); expected e.g. a GeoPackage"
        ) from err
    if not names:
        raise error(f"{what} {path} {holds} no layers; expected one polygon layer")
    if layer is not None and layer not in names:
        raise error(f"{what} {path} {has} no layer {layer!r}; its layers are {', '.join(names)}")
    if layer is None and len(names) > 1:
        raise error(f"{what} {path} {holds} {len(names)} layers ({', '.join(names)}); {several}")
    return layer if layer is not None else names[0]


def load_polygons(
    path: str | Path,
    raster_crs: CRS,
    raster_bounds: tuple[float, float, float, float],
    *,
    layer: str | None = None,
) -> Polygons:
    """Read cropland polygons and reproject them to the raster CRS.

    Args:
        path: Any OGR-readable vector file (GeoPackage, Shapefile, GeoJSON, ...).
        raster_crs: CRS of the stack.
        raster_bounds: ``(left, bottom, right, top)`` of the stack in ``raster_crs``.
        layer: The layer to read; required when the file holds several layers.

    Raises:
        MaskError: If the file is missing or unreadable, has several layers and no
            ``layer`` was named, has no layer ``layer``, no features, no polygons, no
            CRS, or no polygon overlaps the stack.
    """
    import pyogrio  # deferred: keeps `import cropmap` light
    from pyogrio.errors import DataSourceError

    from cropmap.safeio.overlap import special_file_kind

    path = Path(path)
    if not path.exists():
        raise MaskError(f"mask {path} does not exist; expected a polygon file such as a GeoPackage")
    if (kind := special_file_kind(path)) is not None:
        raise MaskError(
            f"mask {path} is {kind}, not a file; expected a polygon file such as a GeoPackage (it is "
            "not opened: reading a pipe would wait for a writer)"
        )
    chosen = vector_layer(path, layer, what="mask", several="name the cropland one with --mask-layer NAME")
    try:
        info = pyogrio.read_info(path, layer=chosen)
        _meta, _fids, wkb, _fields = pyogrio.raw.read(path, layer=chosen, read_geometry=True, columns=[])
    except DataSourceError as err:
        raise MaskError(
            f"mask {path} could not be read ({_first_line(err)}); expected a readable polygon layer"
        ) from err
    geoms = shapely.from_wkb(wkb) if len(wkb) else np.array([], dtype=object)
    geoms = [g for g in geoms if g is not None and not g.is_empty]
    if not geoms:
        raise MaskError(
            f"mask {path} has no features (layer {chosen!r} is empty); expected cropland polygons"
        )
    polys: list[shapely.Geometry] = []
    other: dict[str, int] = {}
    for g in geoms:
        parts = shapely.get_parts(g) if g.geom_type == "GeometryCollection" else [g]
        for p in parts:
            if p.geom_type in _POLYGON_TYPES:
                polys.append(p)
            else:
                other[p.geom_type] = other.get(p.geom_type, 0) + 1
    if not polys:
        raise MaskError(
            f"mask {path} holds no polygons (found {', '.join(f'{n} {t}' for t, n in sorted(other.items()))}); "
            "expected Polygon or MultiPolygon features marking cropland"
        )
    if other:
        logger.warning("mask %s: ignored %s (only polygons mark cropland)", path, other)
    if not info.get("crs"):
        raise MaskError(
            f"mask {path} has no CRS; expected a declared CRS (e.g. EPSG:4326); set it with ogr2ogr -a_srs"
        )
    src_crs = CRS.from_user_input(info["crs"])
    _check_geographic_extent(path, polys, src_crs)
    max_segment_m = None
    if src_crs != raster_crs:
        max_segment_m = MAX_SEGMENT_M
        step = _segment_length(path, src_crs)
        logger.info(
            "reprojecting mask %s from %s to the stack's %s (edges split to at most %g m first)",
            path,
            src_crs.to_string(),
            raster_crs.to_string(),
            MAX_SEGMENT_M,
        )
        polys = _reproject([shapely.segmentize(p, step) for p in polys], src_crs, raster_crs)
    polys, dropped = _repair(polys)
    if dropped:
        logger.warning(
            "mask %s: dropped %d degenerate parts of invalid polygons (zero-width spikes, "
            "zero-area slivers: lines or points once repaired); only areas mark cropland",
            path,
            dropped,
        )
    if not polys:
        raise MaskError(
            f"mask {path} holds only degenerate polygons ({dropped} parts without area); "
            "expected cropland polygons with an area"
        )
    stack_box = shapely.box(*raster_bounds)
    kept = [p for p in polys if p.intersects(stack_box)]
    if not kept:
        mb = shapely.total_bounds(polys).round(2).tolist()
        raise MaskError(
            f"no polygon of mask {path} overlaps the stack: polygons span {mb}, the stack "
            f"{[round(v, 2) for v in raster_bounds]} (in {raster_crs.to_string()}); expected overlapping areas"
        )
    logger.info("mask %s (layer %s): %d polygons, %d overlap the stack", path, chosen, len(polys), len(kept))
    return Polygons(
        path=path,
        geometries=tuple(kept),
        crs=raster_crs,
        source_crs=src_crs.to_string(),
        layer=chosen,
        max_segment_m=max_segment_m,
        dropped_parts=dropped,
    )


def _segment_length(path: Path, crs: CRS) -> float:
    """:data:`MAX_SEGMENT_M` in the units of ``crs`` (degrees or its linear unit).

    Raises:
        MaskError: For a CRS whose unit is neither an angle nor a length.
    """
    if crs.is_geographic:
        return MAX_SEGMENT_M / METRES_PER_DEGREE
    try:
        return MAX_SEGMENT_M / float(crs.linear_units_factor[1])
    except CRSError as err:
        raise MaskError(
            f"mask {path} has CRS {crs.to_string()}, which has neither degrees nor a length unit; cannot "
            "reproject it; expected a geographic or projected CRS (or the stack's own)"
        ) from err


def _flatten(geom: shapely.Geometry) -> list[shapely.Geometry]:
    """The single-part geometries of ``geom`` (collections of collections included)."""
    if geom.geom_type.startswith("Multi") or geom.geom_type == "GeometryCollection":
        return [g for part in shapely.get_parts(geom) for g in _flatten(part)]
    return [geom]


def _repair(polys: Sequence[shapely.Geometry]) -> tuple[list[shapely.Geometry], int]:
    """Valid polygons kept as they are; invalid ones repaired, keeping only their parts with an area.

    Returns:
        The polygons and the number of degenerate parts dropped.
    """
    out: list[shapely.Geometry] = []
    dropped = 0
    for p in polys:
        if p.is_valid:
            out.append(p)
            continue
        fixed = shapely.make_valid(p)
        if fixed.geom_type in _POLYGON_TYPES and fixed.area > 0:
            out.append(fixed)
            continue
        parts = [g for g in _flatten(fixed) if not g.is_empty]
        areas = [g for g in parts if g.geom_type == "Polygon" and g.area > 0]
        dropped += len(parts) - len(areas)
        if len(areas) == 1:
            out.append(areas[0])
        elif areas:
            out.append(shapely.MultiPolygon(areas))
    return out, dropped


def _reproject(geoms: Sequence[shapely.Geometry], src: CRS, dst: CRS) -> list[shapely.Geometry]:
    from pyproj import Transformer
    from pyproj.exceptions import ProjError

    try:
        tf = Transformer.from_crs(src, dst, always_xy=True)
    except ProjError as err:
        raise MaskError(
            f"the mask's CRS {src.to_string()[:80]} cannot be reprojected to the stack's CRS "
            f"{dst.to_string()[:80]} ({_first_line(err)}); expected CRSs tied to the Earth "
            "(geographic or projected)"
        ) from err

    def _tx(coords: np.ndarray) -> np.ndarray:
        x, y = tf.transform(coords[:, 0], coords[:, 1])
        return np.column_stack([x, y])

    return [shapely.transform(g, _tx) for g in geoms]


def rasterize_block(
    geometries: Sequence[shapely.Geometry], shape: tuple[int, int], transform: Affine
) -> np.ndarray:
    """Burn polygons into a boolean block.

    Args:
        geometries: Polygons in the raster CRS (typically those selected for the block).
        shape: Block shape (rows, cols).
        transform: The block's window transform.

    Returns:
        bool ``(rows, cols)``: True where a pixel centre lies in a polygon.
    """
    if not geometries:
        return np.zeros(shape, dtype=bool)
    burnt = rasterize(
        ((g, 1) for g in geometries), out_shape=shape, transform=transform, fill=0, dtype="uint8"
    )
    return burnt.astype(bool)


def _first_line(err: Exception) -> str:
    return str(err).splitlines()[0] if str(err) else type(err).__name__


def _check_geographic_extent(path: Path, polys: Sequence[shapely.Geometry], crs: CRS) -> None:
    """Refuse coordinates that cannot be longitude/latitude in a geographic CRS.

    GDAL reads a GeoJSON without a ``crs`` member as longitude/latitude (RFC 7946), so
    a GeoJSON of projected coordinates (metres) arrives here as "EPSG:4326" with
    coordinates in the hundreds of thousands, which reproject to infinity.
    """
    if not crs.is_geographic:
        return
    left, bottom, right, top = shapely.total_bounds(list(polys)).tolist()
    if left >= -360.0 and right <= 360.0 and bottom >= -90.0 and top <= 90.0:
        return
    span = [round(v, 2) for v in (left, bottom, right, top)]
    geojson = path.suffix.lower() in (".geojson", ".json", ".geojsonl", ".geojsons")
    why = (
        "a GeoJSON without a `crs` member is read as longitude/latitude (RFC 7946), but these coordinates are "
        "not degrees (projected metres?)"
        if geojson
        else "these coordinates are not degrees (projected metres?)"
    )
    raise MaskError(
        f"mask {path} has CRS {crs.to_string()} (longitude/latitude) but its polygons span {span}; {why}; expected "
        "longitude/latitude coordinates, or the file's real CRS declared (e.g. ogr2ogr -a_srs EPSG:32631 "
        "cropland.gpkg mask.geojson)"
    )
