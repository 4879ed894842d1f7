"""A crop per parcel: pixel probabilities aggregated over each input polygon, and a check of declared crops.

Zonal statistics are computed here, block by block, on the blocks the classification
already reads: each block's parcels are burnt into an id raster (pixel-centre rule,
the same as the cropland mask), and per-parcel sums are added with ``np.bincount``.
Memory holds ``O(parcels x classes)`` sums, never a whole raster. (exactextract, which
weights each pixel by its exact coverage fraction, was weighed: it is not a dependency
of cropmap, would need the probabilities written to a raster first and read back, and
partial pixels at field edges are the mixed pixels a crop map least trusts; the
pixel-centre rule also keeps a parcel's pixels the same pixels as the map's.)

The parcel's class probabilities are the **mean of its pixels' class probabilities**
(calibrated where the bundle is). Averaging logits (a product of pixel probabilities)
treats pixels as independent evidence and drives a field of 200 pixels to
probability ~1 even when a third of them disagree: pixels of a field share the same
errors (the same clouds, the same model bias), so that certainty is not real. The mean
of probabilities stays a probability distribution, equals the expected share of pixels
of each class, and is robust to a few odd pixels. docs/outputs.md lists the columns.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import shapely
from affine import Affine
from rasterio.features import rasterize

from cropmap.contract.metadata import ClassInfo
from cropmap.errors import MaskError

logger = logging.getLogger(__name__)

MIN_PARCEL_PIXELS = 3
"""Fewest classified pixels a parcel needs for a class."""
MIN_VALID_SHARE = 0.5
"""Smallest share of a parcel's pixels (on the stack, inside the mask) that must be classified."""
CONFIRM_AT = 0.6
"""A declaration is confirmed when the parcel's probability of the declared class is at least this."""
CONTRADICT_BELOW = 0.2
"""... and contradicted when it is below this (doubtful in between)."""

REASON_OUTSIDE = "outside the stack"
REASON_NO_PIXEL = "smaller than a pixel (no pixel centre inside)"
REASON_NO_MASK = "outside the cropland mask"
REASON_TOO_LITTLE = "too little valid data"
STATUSES = ("confirmed", "doubtful", "contradicted", "not enough data", "not checked")
"""Declared-crop statuses; "not checked": the declaration maps to no class of the bundle."""
STATUS_COLORS = {
    "confirmed": "#1a9850",
    "doubtful": "#fee08b",
    "contradicted": "#d73027",
    "not enough data": "#bdbdbd",
    "not checked": "#ffffff",
}


@dataclass(frozen=True)
class ParcelSet:
    """Parcels in the stack's CRS, with the input table kept aside for the output."""

    path: Path | None
    geometries: tuple[shapely.Geometry, ...]
    """In the stack's CRS, one per input row (parcel id = position)."""
    frame: Any  # geopandas.GeoDataFrame, the input as read (its own CRS)
    source_crs: str
    _tree: shapely.STRtree = field(init=False, repr=False, compare=False)
    """Spatial index of :attr:`geometries` (built by ``__post_init__``)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "_tree", shapely.STRtree(list(self.geometries)))

    def __len__(self) -> int:
        return len(self.geometries)

    def select(self, bounds: tuple[float, float, float, float]) -> tuple[tuple[int, shapely.Geometry], ...]:
        """``(id, geometry)`` of the parcels that intersect the box ``(left, bottom, right, top)``."""
        idx = self._tree.query(shapely.box(*bounds), predicate="intersects")
        return tuple((int(i), self.geometries[i]) for i in sorted(idx.tolist()))


def load_parcels(source: Any, stack_crs: Any, *, layer: str | None = None) -> ParcelSet:
    """Read parcels (a path or a GeoDataFrame) and reproject their geometries to the stack's CRS.

    Raises:
        MaskError: A missing or unreadable file, no CRS, no features, or features that are not polygons.
    """
    import geopandas as gpd

    path: Path | None = None
    if isinstance(source, gpd.GeoDataFrame):
        frame = source
    else:
        import pyogrio
        from pyogrio.errors import DataSourceError

        path = Path(source)
        if not path.exists():
            raise MaskError(f"parcels {path} do not exist; expected polygons such as a GeoPackage")
        from cropmap.mask import vector_layer

        chosen = vector_layer(path, layer, what="parcels", plural=True, several="expected one layer")
        try:
            frame = pyogrio.read_dataframe(path, layer=chosen)
        except DataSourceError as err:
            raise MaskError(
                f"parcels {path} are not a readable vector file ({str(err).splitlines()[0]})"
            ) from err
    where = f"parcels {path}" if path is not None else "the parcels GeoDataFrame"
    if len(frame) == 0:
        raise MaskError(f"{where} hold no features; expected parcel polygons")
    if frame.crs is None:
        raise MaskError(f"{where} have no CRS; expected a declared CRS (no CRS is assumed)")
    geoms = frame.geometry
    kinds = {t for t in geoms.geom_type.dropna().unique()} - {"Polygon", "MultiPolygon"}
    if kinds:
        raise MaskError(
            f"{where} hold {', '.join(sorted(kinds))} features; expected Polygon or MultiPolygon parcels"
        )
    reproj = geoms.to_crs(stack_crs) if frame.crs != stack_crs else geoms
    out = [shapely.make_valid(g) if g is not None and not g.is_valid else g for g in reproj.values]
    out = [g if g is not None else shapely.Polygon() for g in out]
    return ParcelSet(path=path, geometries=tuple(out), frame=frame, source_crs=frame.crs.to_string())


@dataclass
class ParcelBlockStats:
    """Per-parcel sums over one block (only the parcels with a pixel centre in it)."""

    ids: np.ndarray
    n_in: np.ndarray
    n_mask: np.ndarray
    n_classified: np.ndarray
    prob_sum: np.ndarray
    """float64 ``(m, K)``: summed class probabilities of the classified pixels."""
    class_count: np.ndarray
    """int64 ``(m, K)``: classified pixels per map class."""


def block_stats(
    parcels: Sequence[tuple[int, shapely.Geometry]],
    transform: Affine,
    classes: np.ndarray,
    in_mask: np.ndarray,
    probabilities: np.ndarray | None,
    codes: np.ndarray,
) -> ParcelBlockStats | None:
    """Zonal sums of one block.

    Args:
        parcels: ``(id, geometry)`` of the parcels touching the block.
        transform: The block's transform.
        classes: uint8 ``(rows, cols)`` map classes (0: not classified).
        in_mask: bool ``(rows, cols)``: inside the cropland mask.
        probabilities: float ``(K, rows, cols)`` class probabilities (``None`` where nothing was classified).
        codes: ``(K,)`` class codes in the bundle's order.
    """
    if not parcels:
        return None
    shape = classes.shape
    ids = rasterize(
        ((g, i) for i, g in parcels if not g.is_empty),
        out_shape=shape,
        transform=transform,
        fill=-1,
        dtype="int32",
    )
    hit = ids >= 0
    if not hit.any():
        return None
    uniq, local = np.unique(ids[hit], return_inverse=True)
    m, k = uniq.size, codes.size
    n_in = np.bincount(local, minlength=m)
    n_mask = np.bincount(local, weights=in_mask[hit], minlength=m).astype(np.int64)
    cls = classes[hit]
    done = cls != 0
    n_cls = np.bincount(local[done], minlength=m)
    lookup = np.full(256, -1, dtype=np.int64)
    lookup[codes] = np.arange(k)
    idx = lookup[cls[done]]
    class_count = np.bincount(local[done] * k + idx, minlength=m * k).reshape(m, k)
    prob_sum = np.zeros((m, k))
    if probabilities is not None and done.any():
        for j in range(k):
            prob_sum[:, j] = np.bincount(local[done], weights=probabilities[j][hit][done], minlength=m)
    return ParcelBlockStats(
        ids=uniq, n_in=n_in, n_mask=n_mask, n_classified=n_cls, prob_sum=prob_sum, class_count=class_count
    )


class ParcelTally:
    """Running per-parcel sums over the blocks of a run."""

    def __init__(self, n: int, k: int) -> None:
        self.n_in = np.zeros(n, dtype=np.int64)
        self.n_mask = np.zeros(n, dtype=np.int64)
        self.n_classified = np.zeros(n, dtype=np.int64)
        self.prob_sum = np.zeros((n, k))
        self.class_count = np.zeros((n, k), dtype=np.int64)

    def add(self, s: ParcelBlockStats | None) -> None:
        """Add one block's sums (a parcel split by block edges adds up; no pixel is in two blocks)."""
        if s is None:
            return
        self.n_in[s.ids] += s.n_in
        self.n_mask[s.ids] += s.n_mask
        self.n_classified[s.ids] += s.n_classified
        self.prob_sum[s.ids] += s.prob_sum
        self.class_count[s.ids] += s.class_count


def read_declared_map(path: str | Path) -> dict[str, str]:
    """The declared-crop CSV: declared code or name (1st column) -> bundle class (2nd column, code or name)."""
    from cropmap.assess import read_class_map_csv
    from cropmap.errors import AssessError

    try:
        return read_class_map_csv(path)
    except AssessError as err:
        raise MaskError(str(err).replace("class map", "declared-crop map", 1)) from err


def _declared_codes(
    values: Sequence[Any],
    classes: Sequence[ClassInfo],
    table: Mapping[str, str] | None,
) -> tuple[np.ndarray, dict[str, int]]:
    """Bundle class index of each declaration (-1: not mapped, -2: empty) and the unmapped values with counts."""
    by_text = {str(c.code): i for i, c in enumerate(classes)}
    by_text.update({c.name.strip().casefold(): i for i, c in enumerate(classes)})
    translate: dict[str, int] = {}
    if table is not None:
        for key, value in table.items():
            if value == "":
                translate[key] = -1
                continue
            if value.strip().casefold() not in by_text:
                raise MaskError(
                    f"the declared-crop map sends {key!r} to {value!r}, which is no class of the bundle "
                    f"({', '.join(f'{c.code}={c.name}' for c in classes)})"
                )
            translate[key] = by_text[value.strip().casefold()]
    out = np.full(len(values), -2, dtype=np.int64)
    unmapped: dict[str, int] = {}
    for i, v in enumerate(values):
        if v is None or (isinstance(v, float) and math.isnan(v)) or str(v).strip() == "":
            continue
        key = str(int(v)) if isinstance(v, float) and v.is_integer() else str(v)
        key = key.strip().casefold()
        j = translate.get(key, -1) if table is not None else by_text.get(key, -1)
        out[i] = j
        if j == -1:
            unmapped[str(v)] = unmapped.get(str(v), 0) + 1
    return out, unmapped


def parcel_table(
    parcels: ParcelSet,
    tally: ParcelTally,
    classes: Sequence[ClassInfo],
    stack_bounds: tuple[float, float, float, float],
    stack_crs: Any,
    *,
    declared_column: str | None = None,
    declared_map: Mapping[str, str] | None = None,
) -> tuple[Any, dict[str, Any]]:
    """The per-parcel GeoDataFrame (input columns kept, geometry in the input's CRS) and its summary."""
    import geopandas as gpd
    import pandas as pd

    n, _k = len(parcels), len(classes)
    codes = np.array([c.code for c in classes])
    names = [c.name for c in classes]
    geoms = np.asarray(parcels.geometries, dtype=object)
    stack_box = shapely.box(*stack_bounds)
    area = shapely.area(geoms)
    on_stack = np.where(
        area > 0, shapely.area(shapely.intersection(geoms, stack_box)) / np.where(area > 0, area, 1), 0.0
    )
    ok = (tally.n_classified >= MIN_PARCEL_PIXELS) & (
        tally.n_classified >= MIN_VALID_SHARE * np.maximum(tally.n_mask, 1)
    )
    with np.errstate(invalid="ignore", divide="ignore"):
        probs = tally.prob_sum / tally.n_classified[:, None]
    probs[~ok] = np.nan
    best = np.where(ok, np.argmax(np.nan_to_num(probs, nan=-1.0), axis=1), -1)
    reason = np.full(n, "", dtype=object)
    outside = on_stack <= 0
    reason[~ok & (tally.n_mask > 0)] = REASON_TOO_LITTLE
    reason[~ok & (tally.n_mask == 0) & (tally.n_in > 0)] = REASON_NO_MASK
    reason[~ok & (tally.n_in == 0)] = REASON_NO_PIXEL
    reason[~ok & outside] = REASON_OUTSIDE
    agree = np.full(n, np.nan)
    rows = np.flatnonzero(ok)
    agree[rows] = tally.class_count[rows, best[rows]] / tally.n_classified[rows]
    out = pd.DataFrame(index=parcels.frame.index)
    out["class_code"] = pd.array(np.where(ok, codes[np.maximum(best, 0)], 0), dtype="Int64")
    out.loc[~ok, "class_code"] = pd.NA
    out["class_name"] = pd.array([names[b] if b >= 0 else None for b in best], dtype="string")
    out["confidence"] = np.round(np.nanmax(np.where(ok[:, None], probs, -1.0), axis=1), 4)
    out.loc[~ok, "confidence"] = np.nan
    for j, c in enumerate(classes):
        out[f"p_{_column_name(c.name)}"] = np.round(probs[:, j], 4)
    out["pixels_in"] = tally.n_in
    out["pixels_in_mask"] = tally.n_mask
    out["pixels_classified"] = tally.n_classified
    out["agreement"] = np.round(agree, 4)
    out["on_stack_share"] = np.round(on_stack, 4)
    out["reason"] = pd.array([r if r else None for r in reason], dtype="string")
    area_ha = _areas_m2(parcels, stack_crs) / 1e4
    summary: dict[str, Any] = {
        "parcels": n,
        "classified": int(ok.sum()),
        "reasons": {
            r: int((reason == r).sum())
            for r in (REASON_OUTSIDE, REASON_NO_PIXEL, REASON_NO_MASK, REASON_TOO_LITTLE)
        },
        "aggregation": "mean of the classified pixels' class probabilities (pixel-centre rule); class = argmax",
        "thresholds": {"min_pixels": MIN_PARCEL_PIXELS, "min_valid_share": MIN_VALID_SHARE},
        "classes": [
            {
                "code": int(c.code),
                "name": c.name,
                "parcels": int((best == j).sum()),
                "area_ha": round(float(area_ha[best == j].sum()), 4),
            }
            for j, c in enumerate(classes)
        ],
    }
    if declared_column is not None:
        values = list(parcels.frame[declared_column])
        idx, unmapped = _declared_codes(values, classes, declared_map)
        p_decl = np.full(n, np.nan)
        has = (idx >= 0) & ok
        p_decl[has] = probs[has, idx[has]]
        status = np.full(n, "not enough data", dtype=object)
        status[idx == -1] = "not checked"
        status[has & (p_decl >= CONFIRM_AT)] = "confirmed"
        status[has & (p_decl < CONFIRM_AT) & (p_decl >= CONTRADICT_BELOW)] = "doubtful"
        status[has & (p_decl < CONTRADICT_BELOW)] = "contradicted"
        out["declared_code"] = pd.array([int(codes[i]) if i >= 0 else None for i in idx], dtype="Int64")
        out["declared_probability"] = np.round(p_decl, 4)
        out["declared_status"] = pd.array(status.tolist(), dtype="string")
        summary["declared"] = {
            "column": declared_column,
            "thresholds": {"confirmed_at": CONFIRM_AT, "contradicted_below": CONTRADICT_BELOW},
            "statuses": {
                s: {
                    "parcels": int((status == s).sum()),
                    "area_ha": round(float(area_ha[status == s].sum()), 4),
                }
                for s in STATUSES
            },
            "unmapped_declarations": dict(sorted(unmapped.items(), key=lambda kv: -kv[1])),
        }
        if unmapped:
            shown = ", ".join(
                f"{v!r} ({c})" for v, c in list(summary["declared"]["unmapped_declarations"].items())[:8]
            )
            logger.warning(
                "declared crops that map to no class of the bundle (status 'not checked'): %s", shown
            )
    frame = parcels.frame.copy()
    clash = [c for c in out.columns if c in frame.columns]
    if clash:
        frame = frame.rename(columns={c: f"input_{c}" for c in clash})
    result = gpd.GeoDataFrame(
        pd.concat([frame.drop(columns=frame.geometry.name), out], axis=1),
        geometry=frame.geometry,
        crs=frame.crs,
    )
    return result, summary


def _areas_m2(parcels: ParcelSet, stack_crs: Any) -> np.ndarray:
    """Parcel areas in m2: in the stack's CRS when projected, else in the parcels' estimated UTM zone."""
    if stack_crs.is_projected:
        return (
            shapely.area(np.asarray(parcels.geometries, dtype=object)) * stack_crs.linear_units_factor[1] ** 2
        )
    frame = parcels.frame
    return np.asarray(frame.geometry.to_crs(frame.estimate_utm_crs()).area, dtype=np.float64)


def _column_name(name: str) -> str:
    text = "".join(ch if ch.isalnum() else "_" for ch in name.strip().lower())
    return text.strip("_") or "class"


def write_qml(path: Path, classes: Sequence[ClassInfo], *, by_status: bool) -> None:
    """A QGIS style for the per-parcel layer: categories by declared status, else by class."""
    from xml.sax.saxutils import quoteattr

    if by_status:
        cats = [(s, s, STATUS_COLORS[s]) for s in STATUSES]
        attr = "declared_status"
    else:
        cats = [(str(c.code), c.name, c.color) for c in classes]
        attr = "class_code"
    cat_xml = "\n".join(
        f'      <category render="true" symbol="{i}" value={quoteattr(v)} label={quoteattr(lab)}/>'
        for i, (v, lab, _) in enumerate(cats)
    )
    sym_xml = "\n".join(
        f'      <symbol type="fill" name="{i}" alpha="0.8"><layer class="SimpleFill">'
        f'<prop k="color" v="{_rgba(col)}"/><prop k="outline_color" v="35,35,35,255"/>'
        f'<prop k="outline_width" v="0.2"/></layer></symbol>'
        for i, (_, _, col) in enumerate(cats)
    )
    text = (
        '<!DOCTYPE qgis PUBLIC "http://mrcc.com/qgis.dtd" "SYSTEM">\n<qgis version="3.28" styleCategories="Symbology">\n'
        f'  <renderer-v2 type="categorizedSymbol" attr="{attr}" forceraster="0" enableorderby="0">\n'
        f"    <categories>\n{cat_xml}\n    </categories>\n    <symbols>\n{sym_xml}\n    </symbols>\n"
        "  </renderer-v2>\n</qgis>\n"
    )
    path.write_text(text, encoding="utf-8")


def _rgba(color: str) -> str:
    c = color.lstrip("#")
    return f"{int(c[0:2], 16)},{int(c[2:4], 16)},{int(c[4:6], 16)},255"


def check_declared_column(parcels: ParcelSet, column: str | None) -> None:
    """Refuse a ``--declared-column`` the parcels do not have."""
    if column is not None and column not in parcels.frame.columns:
        cols = [c for c in parcels.frame.columns if c != parcels.frame.geometry.name]
        raise MaskError(f"parcels have no column {column!r}; their columns are {', '.join(map(str, cols))}")


__all__ = [
    "ParcelSet",
    "ParcelTally",
    "block_stats",
    "load_parcels",
    "parcel_table",
    "read_declared_map",
    "write_qml",
]
