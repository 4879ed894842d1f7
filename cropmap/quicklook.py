"""PNG quick-look of a class map: map coordinates, CRS, scale bar, and a legend of class names and areas.

Pixels that were not classified are shown in two colours: outside the cropland mask
(very light grey) and inside it with too few valid observations (dark grey), so the
two reasons for an empty pixel can be told apart.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import rasterio
from rasterio.enums import Resampling

from cropmap.bundle import ClassInfo

logger = logging.getLogger(__name__)

MAX_SIDE_PX = 1024
OUTSIDE_RGBA = (0.94, 0.94, 0.94, 1.0)
"""Colour of pixels outside the cropland mask."""
INSUFFICIENT_RGBA = (0.25, 0.25, 0.25, 1.0)
"""Colour of pixels inside the mask with too few valid observations."""
STATUS_OUTSIDE, STATUS_CLASSIFIED, STATUS_INSUFFICIENT = 0, 1, 2
"""Values of the status raster the pipeline hands to :func:`write_quicklook`."""


def _nice_length(span: float) -> float:
    """A 1-2-5 x 10^n length close to a fifth of ``span``."""
    target = span / 5.0
    exp = math.floor(math.log10(target))
    for m in (5, 2, 1):
        if m * 10**exp <= target:
            return m * 10**exp
    return 10**exp


def write_quicklook(
    map_path: Path,
    dest: Path,
    classes: Sequence[ClassInfo],
    area_ha: Mapping[int, float],
    *,
    title: str,
    status_path: Path | None = None,
    insufficient_ha: float | None = None,
) -> None:
    """Render the class map at ``map_path`` to a PNG at ``dest``.

    The map is read at most :data:`MAX_SIDE_PX` on its longer side (nearest
    neighbour, from the COG's overviews where present) and drawn in map coordinates
    of its CRS (named under the map), with a scale bar on projected grids.

    Args:
        map_path: The class-map GeoTIFF.
        dest: The PNG to write.
        classes: The bundle's classes.
        area_ha: Area per class code, hectares.
        title: Figure title.
        status_path: A raster on the same grid holding :data:`STATUS_OUTSIDE`,
            :data:`STATUS_CLASSIFIED`, :data:`STATUS_INSUFFICIENT`; without it every
            unclassified pixel is drawn as "not classified".
        insufficient_ha: Area with too little valid data, for the legend.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # deferred: matplotlib is heavy
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    with rasterio.open(map_path) as ds:
        factor = max(1.0, max(ds.height, ds.width) / MAX_SIDE_PX)
        shape = (max(1, round(ds.height / factor)), max(1, round(ds.width / factor)))
        codes = ds.read(1, out_shape=shape, resampling=Resampling.nearest)
        crs, bounds = ds.crs, ds.bounds
    status = None
    if status_path is not None:
        with rasterio.open(status_path) as st:
            status = st.read(1, out_shape=shape, resampling=Resampling.nearest)
    rgba = np.empty((*codes.shape, 4), dtype=np.float32)
    rgba[:] = OUTSIDE_RGBA
    if status is not None:
        rgba[status == STATUS_INSUFFICIENT] = INSUFFICIENT_RGBA
    for c in classes:
        r, g, b = c.rgb()
        rgba[codes == c.code] = (r / 255, g / 255, b / 255, 1.0)

    fig = Figure(figsize=(9.5, 6.5), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0.1, 0.14, 0.52, 0.78))
    ax.imshow(rgba, interpolation="nearest", extent=(bounds.left, bounds.right, bounds.bottom, bounds.top))
    ax.set_title(title, fontsize=10)
    ax.ticklabel_format(useOffset=False, style="plain")
    ax.tick_params(labelsize=7)
    for label in ax.get_xticklabels():
        label.set_rotation(30)
    unit = "m" if crs is not None and crs.is_projected else "deg"
    crs_name = crs.to_string() if crs is not None else "unknown CRS"
    wkt = crs.to_wkt() if crs is not None else ""
    pretty = wkt.split('"')[1] if wkt.count('"') >= 2 else ""  # the CRS's name, e.g. "WGS 84 / UTM zone 31N"
    ax.set_xlabel(f"x ({unit})", fontsize=8)
    ax.set_ylabel(f"y ({unit})", fontsize=8)
    fig.text(0.1, 0.02, f"CRS: {crs_name}" + (f" ({pretty})" if pretty and pretty != crs_name else ""), fontsize=8)
    if crs is not None and crs.is_projected:
        factor_m = crs.linear_units_factor[1]
        width_m = (bounds.right - bounds.left) * factor_m
        length_m = _nice_length(width_m)
        length_u = length_m / factor_m
        x0 = bounds.left + 0.05 * (bounds.right - bounds.left)
        y0 = bounds.bottom + 0.05 * (bounds.top - bounds.bottom)
        ax.plot([x0, x0 + length_u], [y0, y0], color="black", linewidth=3, solid_capstyle="butt")
        ax.plot([x0, x0 + length_u], [y0, y0], color="white", linewidth=1, solid_capstyle="butt")
        text = f"{length_m / 1000:g} km" if length_m >= 1000 else f"{length_m:g} m"
        ax.text(x0 + length_u / 2, y0 + 0.015 * (bounds.top - bounds.bottom), text, ha="center", va="bottom",
                fontsize=8, bbox={"facecolor": "white", "alpha": 0.7, "edgecolor": "none", "pad": 1})  # fmt: skip
    handles = [
        Patch(facecolor=c.color, edgecolor="none", label=f"{c.name}: {area_ha.get(c.code, 0.0):.2f} ha")
        for c in sorted(classes, key=lambda c: -area_ha.get(c.code, 0.0))
    ]
    if status is not None:
        extra = f": {insufficient_ha:.2f} ha" if insufficient_ha is not None else ""
        handles.append(Patch(facecolor=INSUFFICIENT_RGBA, edgecolor="0.5", label=f"in mask, too little valid data{extra}"))
        handles.append(Patch(facecolor=OUTSIDE_RGBA, edgecolor="0.5", label="outside the cropland mask"))
    else:
        handles.append(Patch(facecolor=OUTSIDE_RGBA, edgecolor="0.5", label="not classified"))
    fig.legend(handles=handles, loc="center left", bbox_to_anchor=(0.65, 0.5), fontsize=8, frameon=False)
    fig.savefig(dest, format="png", pil_kwargs={"compress_level": 1})
    logger.debug("quick-look written to %s", dest)
