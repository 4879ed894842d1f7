"""Checks that a stack's values can be reflectance in the scale it declares (or was given).

A float stack holding reflectance 0..1 but declared as ``x 10000`` (or digital
numbers declared as ``x 1``) is read without error, and the model then puts every
pixel into one class. :func:`check_reflectance` reads a small sample of the blocks
to classify before any work starts and refuses values that cannot be surface
reflectance: a median orders of magnitude off, a sizeable share of negative values
or of values above the physical maximum. The error names the scale that fits.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import numpy as np
from rasterio.windows import Window

from cropmap.errors import InputRasterError
from cropmap.stack import Stack
from cropmap.tiling import Block

logger = logging.getLogger(__name__)

MEDIAN_RANGE = (0.01, 1.5)
"""Median surface reflectance of a scene's valid values is far inside this range (typically 0.05 .. 0.4)."""
NEGATIVE_LIMIT = -0.05
"""Reflectance below this is not physical (small negatives occur in dark pixels of L2A products)."""
MAXIMUM = 2.0
"""Reflectance above this is not physical (bright clouds and snow stay below about 1.6)."""
SHARE = 0.01
"""Share of the sampled values that may lie beyond NEGATIVE_LIMIT or MAXIMUM."""
COMMON_SCALES = (1.0, 100.0, 10000.0)
"""Reflectance x 1 (float reflectance), x 100 (percent), x 10000 (Sentinel-2 L2A digital numbers)."""
SAMPLE_WINDOWS = 8
SAMPLE_EDGE_PX = 32
SAMPLE_OBSERVATIONS = 12
"""Observations read per window, evenly spread over the season (a 144-stamp stack would otherwise decode 1,728
band tiles per window, most of a second before the run starts)."""
MIN_VALUES = 200


def _inside_tile(start: int, length: int, size: int, tile: int) -> int:
    """Offset of a ``size`` window centred in ``[start, start + length)``, shifted into the tile that holds the
    centre when it fits there."""
    centred = start + (length - size) // 2
    t0 = (start + length // 2) // tile * tile
    lo, hi = max(t0, start), min(t0 + tile, start + length) - size
    return min(max(centred, lo), hi) if lo <= hi else centred


def _windows(blocks: Sequence[Block], tile: tuple[int, int] = (1, 1)) -> list[Window]:
    """Up to :data:`SAMPLE_WINDOWS` windows of at most :data:`SAMPLE_EDGE_PX` square, one near the centre of
    each sampled block, shifted into the file's ``tile`` that holds the block's centre where it fits there: a
    window inside one tile decodes one tile per band instead of up to four."""
    if not blocks:
        return []
    step = max(1, len(blocks) // SAMPLE_WINDOWS)
    out = []
    th, tw = max(1, tile[0]), max(1, tile[1])
    for b in list(blocks)[::step][:SAMPLE_WINDOWS]:
        h, w = min(SAMPLE_EDGE_PX, b.height), min(SAMPLE_EDGE_PX, b.width)
        r = _inside_tile(b.row_off, b.height, h, th)
        c = _inside_tile(b.col_off, b.width, w, tw)
        out.append(Window(c, r, w, h))
    return out


def likely_scale(median_raw: float) -> float | None:
    """The common scale that turns ``median_raw`` into a typical reflectance (0.01 .. 1), closest to 0.15."""
    fits = [s for s in COMMON_SCALES if 0.01 <= abs(median_raw) / s <= 1.0]
    if not fits:
        return None
    return min(fits, key=lambda s: abs(math.log10(abs(median_raw) / s / 0.15)))


def check_reflectance(stack: Stack, obs: Sequence[int], bands: Sequence[str], blocks: Sequence[Block]) -> None:
    """Refuse a stack whose sampled values cannot be reflectance in its scale.

    Reads a window near the centre of up to :data:`SAMPLE_WINDOWS` of ``blocks`` (those to be
    classified), at most :data:`SAMPLE_OBSERVATIONS` of observations ``obs`` (evenly spread) and
    ``bands``. With fewer than :data:`MIN_VALUES` valid values (a nearly empty stack) nothing is
    decided here.

    Raises:
        InputRasterError: Naming the median, the declared scale and the likely one.
    """
    assert stack.scale is not None
    gain, offset = stack.scale.gain, stack.scale.offset
    parts = []
    step = max(1, -(-len(obs) // SAMPLE_OBSERVATIONS))
    sampled = list(obs)[::step]
    for window in _windows(blocks, stack.tile_shape):
        raw = stack.read(window, sampled, bands)
        parts.append(raw[np.isfinite(raw)])
    values = np.concatenate(parts) if parts else np.empty(0, dtype=np.float32)
    if values.size < MIN_VALUES:
        logger.info("reflectance check skipped: only %d valid values in the sample of stack %s", values.size, stack.path)
        return
    raw_median = float(np.median(values))
    refl = values.astype(np.float64) * gain + offset
    median = float(np.median(refl))
    declared = f"{stack.scale.reflectance_scale:g}" + (f" with offset {offset:g}" if offset else "")
    where = f"stack {stack.path} (declared by {stack.scale.source}: raw value = reflectance x {declared})"
    if not MEDIAN_RANGE[0] <= median <= MEDIAN_RANGE[1]:
        fit = likely_scale(raw_median)
        guess = (f"the values look like reflectance x {fit:g}" if fit is not None
                 else f"no common scale ({', '.join(f'{s:g}' for s in COMMON_SCALES)}) fits them")  # fmt: skip
        raise InputRasterError(
            f"{where}: the median value {raw_median:g} is reflectance {median:.3g}, orders of magnitude from any "
            f"surface ({MEDIAN_RANGE[0]:g} .. {MEDIAN_RANGE[1]:g}); {guess}; expected the declared scale to match "
            "the data (fix the file's tag reflectance_scale / band scale, or --reflectance-scale for files that "
            "declare none)"
        )
    low = float(np.mean(refl < NEGATIVE_LIMIT))
    if low > SHARE:
        raise InputRasterError(
            f"{where}: {low:.1%} of the sampled values are below reflectance {NEGATIVE_LIMIT:g} (lowest raw value "
            f"{float(values.min()):g}); negative reflectance is not physical; expected an undeclared nodata value "
            "(e.g. -9999) to be declared as the file's nodata, or the right offset"
        )
    high = float(np.mean(refl > MAXIMUM))
    if high > SHARE:
        raise InputRasterError(
            f"{where}: {high:.1%} of the sampled values are above reflectance {MAXIMUM:g}, the physical maximum "
            f"(highest raw value {float(values.max()):g}); expected an undeclared nodata value (e.g. 65535) to be "
            f"declared as the file's nodata, or a scale that fits (the median fits x {stack.scale.reflectance_scale:g})"
        )
    logger.debug("reflectance check of %s: median %.3f from %d sampled values", stack.path, median, values.size)
