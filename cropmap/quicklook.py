"""PNG quick-look of a class map: map coordinates, CRS, scale bar, and a legend of class names and areas.

Pixels that were not classified are shown in two colours: outside the cropland mask
(very light grey) and inside it with too few valid observations (dark grey), so the
two reasons for an empty pixel can be told apart.

The figure is drawn with Pillow (nearest-neighbour map, text in Pillow's built-in font): a few
milliseconds, where a plotting library's figure cost a tenth of a second per run, paid again
for every region of a batch.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import rasterio
from PIL import Image, ImageDraw, ImageFont
from rasterio.enums import Resampling

from cropmap.contract.metadata import ClassInfo

logger = logging.getLogger(__name__)

MAX_SIDE_PX = 1024
OUTSIDE_RGBA = (0.94, 0.94, 0.94, 1.0)
"""Colour of pixels outside the cropland mask."""
INSUFFICIENT_RGBA = (0.25, 0.25, 0.25, 1.0)
"""Colour of pixels inside the mask with too few valid observations."""
STATUS_OUTSIDE, STATUS_CLASSIFIED, STATUS_INSUFFICIENT = 0, 1, 2
"""Values of the status raster the pipeline hands to :func:`write_quicklook`."""


def _nice_step(span: float, n: int = 5) -> float:
    """A 1-2-5 x 10^n length close to ``span / n``, not above it."""
    target = span / n
    exp = math.floor(math.log10(target))
    for m in (5, 2, 1):
        if m * 10**exp <= target:
            return m * 10**exp
    return 10**exp


def _nice_length(span: float) -> float:
    """A 1-2-5 x 10^n length close to a fifth of ``span`` (the scale bar)."""
    return _nice_step(span, 5)


def _label(v: float, step: float) -> str:
    decimals = max(0, -math.floor(math.log10(step))) if step < 1 else 0
    return f"{v:.{decimals}f}"


def _rgb(rgba: Sequence[float]) -> tuple[int, int, int]:
    r, g, b = rgba[:3]
    return round(r * 255), round(g * 255), round(b * 255)


_FONTS: dict[int, ImageFont.FreeTypeFont | ImageFont.ImageFont] = {}


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    if size not in _FONTS:
        _FONTS[size] = ImageFont.load_default(size=size)
    return _FONTS[size]


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
    with rasterio.open(map_path) as ds:
        factor = max(1.0, max(ds.height, ds.width) / MAX_SIDE_PX)
        shape = (max(1, round(ds.height / factor)), max(1, round(ds.width / factor)))
        codes = ds.read(1, out_shape=shape, resampling=Resampling.nearest)
        crs, bounds = ds.crs, ds.bounds
    status = None
    if status_path is not None:
        with rasterio.open(status_path) as st:
            status = st.read(1, out_shape=shape, resampling=Resampling.nearest)
    rgb = np.empty((*codes.shape, 3), dtype=np.uint8)
    rgb[:] = _rgb(OUTSIDE_RGBA)
    if status is not None:
        rgb[status == STATUS_INSUFFICIENT] = _rgb(INSUFFICIENT_RGBA)
    for c in classes:
        rgb[codes == c.code] = c.rgb()

    black, white = (0, 0, 0), (255, 255, 255)
    small, normal = _font(13), _font(15)
    # Layout (pixels): the map fills a square box left of the legend, keeping its aspect.
    box_x, box_y, box = 120, 60, 600
    rows, cols = codes.shape
    scale = box / max(rows, cols)
    w, h = max(1, round(cols * scale)), max(1, round(rows * scale))
    handles = [
        (c.rgb(), f"{c.name}: {area_ha.get(c.code, 0.0):.2f} ha")
        for c in sorted(classes, key=lambda c: -area_ha.get(c.code, 0.0))
    ]
    if status is not None:
        extra = f": {insufficient_ha:.2f} ha" if insufficient_ha is not None else ""
        handles.append((_rgb(INSUFFICIENT_RGBA), f"in mask, too little valid data{extra}"))
        handles.append((_rgb(OUTSIDE_RGBA), "outside the cropland mask"))
    else:
        handles.append((_rgb(OUTSIDE_RGBA), "not classified"))
    legend_x = box_x + w + 50
    legend_w = max(int(small.getlength(text)) for _, text in handles) + 40
    width = max(legend_x + legend_w + 30, int(normal.getlength(title)) + 2 * box_x)
    line = 22
    legend_h = line * len(handles)
    height = box_y + max(h, legend_h) + 110
    img = Image.new("RGB", (width, height), white)
    img.paste(Image.fromarray(rgb).resize((w, h), Image.Resampling.NEAREST), (box_x, box_y))
    draw = ImageDraw.Draw(img)
    draw.rectangle((box_x - 1, box_y - 1, box_x + w, box_y + h), outline=black)
    draw.text((box_x + w / 2, box_y - 12), title, fill=black, font=normal, anchor="md")

    # Axes: ticks at round map coordinates.
    unit = "m" if crs is not None and crs.is_projected else "deg"
    span_x, span_y = bounds.right - bounds.left, bounds.top - bounds.bottom

    def ticks(lo: float, hi: float, px: int) -> tuple[list[float], float]:
        """Round values between ``lo`` and ``hi``, at most 5 and at least 60 px apart (one on a thin axis)."""
        step = _nice_step(hi - lo, max(1, min(5, px // 60)))
        values = [k * step for k in range(math.ceil(lo / step), math.floor(hi / step) + 1)]
        return (values if step / (hi - lo) * px >= 40 else values[:1]), step

    if span_x > 0 and span_y > 0:
        xs, sx = ticks(bounds.left, bounds.right, w)
        for v in xs:
            px = box_x + (v - bounds.left) / span_x * w
            draw.line((px, box_y + h, px, box_y + h + 5), fill=black)
            draw.text((px, box_y + h + 8), _label(v, sx), fill=black, font=small, anchor="mt")
        ys, sy = ticks(bounds.bottom, bounds.top, h)
        for v in ys:
            py = box_y + (bounds.top - v) / span_y * h
            draw.line((box_x - 5, py, box_x - 1, py), fill=black)
            draw.text((box_x - 8, py), _label(v, sy), fill=black, font=small, anchor="rm")
    draw.text((box_x + w / 2, box_y + h + 30), f"x ({unit})", fill=black, font=small, anchor="mt")
    draw.text((box_x - 8, box_y - 8), f"y ({unit})", fill=black, font=small, anchor="rs")
    crs_name = crs.to_string() if crs is not None else "unknown CRS"
    wkt = crs.to_wkt() if crs is not None else ""
    pretty = wkt.split('"')[1] if wkt.count('"') >= 2 else ""  # the CRS's name, e.g. "WGS 84 / UTM zone 31N"
    crs_text = f"CRS: {crs_name}" + (f" ({pretty})" if pretty and pretty != crs_name else "")
    draw.text((box_x, box_y + h + 60), crs_text, fill=black, font=small, anchor="lt")

    if crs is not None and crs.is_projected and span_x > 0:
        factor_m = crs.linear_units_factor[1]
        length_m = _nice_length(span_x * factor_m)
        bar = length_m / factor_m / span_x * w
        x0, y0 = box_x + 0.05 * w, box_y + 0.95 * h
        text = f"{length_m / 1000:g} km" if length_m >= 1000 else f"{length_m:g} m"
        tw = small.getlength(text)
        draw.rectangle((x0 + bar / 2 - tw / 2 - 3, y0 - 22, x0 + bar / 2 + tw / 2 + 3, y0 - 5), fill=white)
        draw.text((x0 + bar / 2, y0 - 6), text, fill=black, font=small, anchor="md")
        draw.rectangle((x0, y0 - 2, x0 + bar, y0 + 2), fill=black)
        draw.line((x0 + 1, y0, x0 + bar - 1, y0), fill=white)

    # Legend: a swatch and a label per entry, centred on the map's height.
    y = box_y + max(0.0, (h - legend_h) / 2)
    for colour, text in handles:
        draw.rectangle((legend_x, y + 3, legend_x + 26, y + 15), fill=colour, outline=(128, 128, 128))
        draw.text((legend_x + 36, y + 9), text, fill=black, font=small, anchor="lm")
        y += line
    img.save(dest, format="PNG", compress_level=1)
    logger.debug("quick-look written to %s", dest)
