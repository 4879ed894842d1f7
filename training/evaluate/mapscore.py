"""Score a class map (a GeoTIFF such as ``cropmap classify`` writes) against labelled field polygons.

The polygons are rasterised on the map's own grid (a pixel belongs to a polygon when its centre lies inside,
the rule cropmap's mask uses; where polygons overlap, the later one wins). A pixel is scored when it lies in
a polygon and the map gives it a class: map values 0 and the map's declared nodata mean "not classified" and
are counted apart (``n_unclassified``), not as errors. Class values are compared as numbers: the map's values
are the bundle's class codes, the polygons' codes come from ``code_column`` (``class_code`` in the
GeoPackages ``training.simulate.run`` writes, equal to the simulated ``crop_id``).

Scores, over the scored pixels: overall accuracy, macro F1 (mean over the classes that occur in the labels or
in the map, as :func:`training.evaluate.run.metrics_from_confusion`), Cohen's kappa, per-class recall, precision
and F1, and the confusion matrix (labels on rows, map on columns).

``cropmap evaluate mapscore MAP.tif FIELDS.gpkg [-o OUT.json] [--json]`` (alias ``python -m training.mapscore``,
whose old ``--json OUT.json`` is ``-o OUT.json``) prints them; bad input is a one-line error (exit 1; usage errors
exit 2).
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from training.evaluate.run import metrics_from_confusion


def score_map(
    map_tif: str | Path,
    fields_gpkg: str | Path,
    *,
    code_column: str = "class_code",
    name_column: str | None = "class_name",
    layer: str | None = None,
) -> dict[str, Any]:
    """Pixel-level scores of a class map against labelled polygons.

    Args:
        map_tif: Single-band integer class map (band 1 is scored); 0 and its nodata are "not classified".
        fields_gpkg: Any vector file geopandas reads (GeoPackage, GeoJSON, Shapefile, ...) with polygons and
            an integer class code per polygon, in the map's CRS.
        code_column: Column of the class codes (positive integers, the map's values).
        name_column: Optional column of class names, reported beside the codes; ignored when absent.
        layer: Layer of ``fields_gpkg``; ``None``: its first (or only) layer.

    Returns:
        A JSON-ready dict: ``overall_accuracy``, ``macro_f1``, ``kappa``, ``n_pixels`` (scored),
        ``n_pixels_in_fields``, ``n_unclassified``, ``n_fields``, ``classes`` (codes, the confusion matrix's
        order), ``confusion_matrix`` (labels on rows, map on columns), ``per_class`` (one dict per class:
        code, name (from ``name_column``), map_name (from the legend cropmap writes into its maps), recall,
        precision, f1, reference_pixels, mapped_pixels; ``None`` where undefined), and
        the inputs (``map``, ``fields``, ``code_column``).

    Raises:
        ValueError: One line, when a file cannot be read, the map is not an integer raster, a CRS is
            missing or the two CRS differ, the code column is missing or not positive integers, the
            polygons miss the map, or no pixel inside them has a class.
    """
    import geopandas as gpd
    import rasterio
    from rasterio.errors import RasterioIOError
    from rasterio.features import rasterize

    map_tif, fields_gpkg = Path(map_tif), Path(fields_gpkg)
    try:
        with rasterio.open(map_tif) as src:
            values = src.read(1)
            crs, transform, nodata = src.crs, src.transform, src.nodata
            bounds = tuple(src.bounds)
            legend = _map_legend(src.tags().get("cropmap_classes"))
    except RasterioIOError as err:
        raise ValueError(f"{map_tif}: not a readable raster ({_first_line(err)})") from err
    if not np.issubdtype(values.dtype, np.integer):
        raise ValueError(f"{map_tif} holds {values.dtype} values; expected an integer class map (0 = nodata)")
    if crs is None:
        raise ValueError(f"{map_tif} has no CRS; expected a georeferenced class map")
    try:
        fields = gpd.read_file(fields_gpkg, layer=layer)
    except Exception as err:  # pyogrio raises several types (DataSourceError, DataLayerError, OSError)
        raise ValueError(f"{fields_gpkg}: not a readable vector file ({_first_line(err)})") from err
    if fields.crs is None:
        raise ValueError(f"{fields_gpkg} has no CRS; expected the map's ({crs.to_string()})")
    if rasterio.crs.CRS.from_user_input(fields.crs) != crs:
        raise ValueError(
            f"{fields_gpkg} is in {fields.crs.to_string()} but {map_tif} in {crs.to_string()}; expected one "
            "CRS (reproject the polygons, e.g. ogr2ogr -t_srs)"
        )
    if code_column not in fields.columns:
        found = sorted(c for c in fields.columns if c != fields.geometry.name)
        raise ValueError(
            f"{fields_gpkg} has no column {code_column!r}; found {found} (choose one with --code-column)"
        )
    fields = fields[fields.geometry.notna() & ~fields.geometry.is_empty]
    fields = fields[fields.geometry.geom_type.isin(["Polygon", "MultiPolygon"])]
    if fields.empty:
        raise ValueError(f"{fields_gpkg} holds no polygons")
    raw_codes = fields[code_column].to_numpy()
    try:
        codes = raw_codes.astype(np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(
            f"{fields_gpkg}: column {code_column!r} is not numeric; expected integer class codes"
        ) from err
    if not np.all(np.isfinite(codes)) or np.any(codes != np.round(codes)) or codes.min() < 1:
        raise ValueError(
            f"{fields_gpkg}: column {code_column!r} holds {sorted(set(raw_codes.tolist()))[:5]}...; "
            "expected positive integer class codes (0 means no class)"
        )
    codes = codes.astype(np.int64)
    names: dict[int, str] = {}
    if name_column is not None and name_column in fields.columns:
        for code, name in zip(codes.tolist(), fields[name_column].astype(str), strict=True):
            names.setdefault(code, name)

    left, bottom, right, top = fields.total_bounds
    if left >= bounds[2] or right <= bounds[0] or bottom >= bounds[3] or top <= bounds[1]:
        raise ValueError(
            f"no polygon of {fields_gpkg} overlaps {map_tif} (polygons {_fmt_bounds(fields.total_bounds)}, "
            f"map {_fmt_bounds(bounds)}); expected the map of the labelled area"
        )
    reference = rasterize(
        zip(fields.geometry, codes.tolist(), strict=True),
        out_shape=values.shape,
        transform=transform,
        fill=0,
        dtype="int32" if codes.max() > 65535 else "uint16",
    )
    in_fields = reference > 0
    if not in_fields.any():
        raise ValueError(
            f"no pixel centre of {map_tif} lies inside a polygon of {fields_gpkg}; expected polygons larger "
            "than the map's pixels on the map's area"
        )
    classified = values != 0
    if nodata is not None and not math.isnan(nodata):
        classified &= values != nodata
    scored = in_fields & classified
    n_in, n_scored = int(in_fields.sum()), int(scored.sum())
    if n_scored == 0:
        raise ValueError(
            f"none of the {n_in} pixels of {map_tif} inside the polygons has a class (all are 0 / nodata); "
            "expected a classified map of the labelled fields"
        )
    y_true = reference[scored].astype(np.int64)
    y_pred = values[scored].astype(np.int64)
    classes = np.union1d(np.unique(y_true), np.unique(y_pred))
    k = classes.size
    cm = np.bincount(
        np.searchsorted(classes, y_true) * k + np.searchsorted(classes, y_pred), minlength=k * k
    ).reshape(k, k)
    metrics = metrics_from_confusion(cm)
    support, mapped = cm.sum(axis=1), cm.sum(axis=0)
    per_class = []
    for i, code in enumerate(classes.tolist()):
        per_class.append(
            {
                "code": int(code),
                "name": names.get(code),
                "map_name": legend.get(code),
                "recall": _num(metrics.recall[i]),
                "precision": float(cm[i, i] / mapped[i]) if mapped[i] else None,
                "f1": _num(metrics.f1[i]),
                "reference_pixels": int(support[i]),
                "mapped_pixels": int(mapped[i]),
            }
        )
    return {
        "map": str(map_tif),
        "fields": str(fields_gpkg),
        "code_column": code_column,
        "overall_accuracy": metrics.accuracy,
        "macro_f1": metrics.macro_f1,
        "kappa": metrics.kappa,
        "n_pixels": n_scored,
        "n_pixels_in_fields": n_in,
        "n_unclassified": n_in - n_scored,
        "n_fields": len(fields),
        "classes": [int(c) for c in classes],
        "confusion_matrix": cm.tolist(),
        "per_class": per_class,
    }


def _map_legend(tag: str | None) -> dict[int, str]:
    """Class names of a map cropmap wrote (its ``cropmap_classes`` tag); empty for other maps."""
    try:
        return {int(c["value"]): str(c["name"]) for c in json.loads(tag or "[]")}
    except (ValueError, TypeError, KeyError):
        return {}


def _num(x: float) -> float | None:
    return None if math.isnan(x) else float(x)


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _fmt_bounds(b: Sequence[float]) -> str:
    return "(" + ", ".join(f"{float(v):.1f}" for v in b) + ")"


def format_scores(scores: dict[str, Any]) -> str:
    """The scores as a few lines of text: headline, then one line per class."""
    lines = [
        (
            f"overall accuracy {scores['overall_accuracy']:.4f}  macro F1 {scores['macro_f1']:.4f}  "
            f"kappa {scores['kappa']:.4f}"
        ),
        (
            f"{scores['n_pixels']:,} pixels scored in {scores['n_fields']:,} polygons "
            f"({scores['n_unclassified']:,} of {scores['n_pixels_in_fields']:,} inside them not classified)"
        ),
        f"{'code':>5}  {'class':<20} {'recall':>7} {'precision':>9} {'F1':>6} {'pixels':>8}",
    ]
    for c in scores["per_class"]:
        cells = [("-" if c[key] is None else f"{c[key]:.3f}") for key in ("recall", "precision", "f1")]
        name = c["name"] or c.get("map_name") or ""
        pixels = c["reference_pixels"]
        lines.append(f"{c['code']:>5}  {name[:20]:<20} {cells[0]:>7} {cells[1]:>9} {cells[2]:>6} {pixels:>8}")
    differ = [
        f"{c['code']} ({c['name']} / {c['map_name']})"
        for c in scores["per_class"]
        if c["name"] and c.get("map_name") and c["name"].casefold() != c["map_name"].casefold()
    ]
    if differ:
        lines.append(
            f"note: the polygons and the map's legend name codes differently: {', '.join(differ)}; "
            "check that the bundle's class codes are the labels' codes"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m training.mapscore``: an alias of ``cropmap evaluate mapscore``; returns the exit status.

    Its old ``--json OUT`` (the file it wrote) is ``-o OUT`` there.
    """
    from cropmap.cli_common import json_path_as_output
    from training.evaluate.cli import mapscore as command
    from training.evaluate.cli import run_alias

    return run_alias(command, argv, prog_name="python -m training.mapscore", rewrite=json_path_as_output)


if __name__ == "__main__":
    sys.exit(main())
