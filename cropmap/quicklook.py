"""PNG quick-look of a class map, with a legend of class names and areas."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import rasterio
from rasterio.enums import Resampling

from cropmap.bundle import ClassInfo

logger = logging.getLogger(__name__)

MAX_SIDE_PX = 1024
_NODATA_RGBA = (0.85, 0.85, 0.85, 1.0)


def write_quicklook(
    map_path: Path,
    dest: Path,
    classes: Sequence[ClassInfo],
    area_ha: Mapping[int, float],
    *,
    title: str,
) -> None:
    """Render the class map at ``map_path`` to a PNG at ``dest``.

    The map is read at most :data:`MAX_SIDE_PX` on its longer side (nearest
    neighbour, from the COG's overviews where present). Pixels without a class are
    light grey; the legend lists every class with its area.

    Args:
        map_path: The class-map GeoTIFF.
        dest: The PNG to write.
        classes: The bundle's classes.
        area_ha: Area per class code, hectares.
        title: Figure title.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # deferred: matplotlib is heavy
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    with rasterio.open(map_path) as ds:
        factor = max(1.0, max(ds.height, ds.width) / MAX_SIDE_PX)
        shape = (max(1, round(ds.height / factor)), max(1, round(ds.width / factor)))
        codes = ds.read(1, out_shape=shape, resampling=Resampling.nearest)
    rgba = np.empty((*codes.shape, 4), dtype=np.float32)
    rgba[:] = _NODATA_RGBA
    for c in classes:
        r, g, b = c.rgb()
        rgba[codes == c.code] = (r / 255, g / 255, b / 255, 1.0)

    fig = Figure(figsize=(9, 6), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0.02, 0.05, 0.6, 0.88))
    ax.imshow(rgba, interpolation="nearest")
    ax.set_axis_off()
    ax.set_title(title, fontsize=10)
    handles = [
        Patch(facecolor=c.color, edgecolor="none", label=f"{c.name}: {area_ha.get(c.code, 0.0):.2f} ha")
        for c in sorted(classes, key=lambda c: -area_ha.get(c.code, 0.0))
    ]
    handles.append(Patch(facecolor=_NODATA_RGBA, edgecolor="0.5", label="not classified"))
    fig.legend(handles=handles, loc="center left", bbox_to_anchor=(0.64, 0.5), fontsize=8, frameon=False)
    fig.savefig(dest, format="png")
    logger.debug("quick-look written to %s", dest)
