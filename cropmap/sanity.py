"""Checks that a stack fits the bundle before any work starts.

:func:`check_season` refuses a stack whose dates span too little of the bundle's season and
warns about dates the bundle's grid never reaches; :func:`check_processing_level` refuses a
likely L1C (top-of-atmosphere) stack under a bundle trained on L2A surface reflectance. Both
name the flag that overrides them (docs/faults.md).

Checks that a stack's values can be reflectance in the scale it declares (or was given).

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
import re
from collections.abc import Sequence
from typing import Any

import numpy as np
from rasterio.windows import Window

from cropmap.contract.metadata import BundleMetadata
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


MIN_SEASON_COVERAGE = 0.8
"""Least share of the bundle's grid positions a stack's dates must cover
(:func:`cropmap.contract.timegrid.season_coverage`) unless ``allow_partial_season``; below 1 a warning says which
part of the season is missing."""
_L1C_RE = re.compile(
    r"(?<![A-Za-z0-9])(L1C|MSIL1C|S2MSI1C|Level-?1C|TOA|top[ _-]of[ _-]atmosphere)(?![A-Za-z0-9])",
    re.IGNORECASE,
)
"""Words that mark a Sentinel-2 Level-1C (top-of-atmosphere) product in file names, tags and band names."""
_L1C_BUNDLE_RE = re.compile(
    r"(?<![A-Za-z0-9])(L1C|Level-?1C|TOA|top[ _-]of[ _-]atmosphere|BreizhCrops)(?![A-Za-z0-9])", re.IGNORECASE
)
"""Words in a bundle's ``provenance.training_data`` saying it was trained on L1C data (BreizhCrops is L1C)."""


def check_season(
    stack: Stack,
    obs: Sequence[int],
    meta: BundleMetadata,
    season: int,
    *,
    allow_partial: bool = False,
    where: str = "",
) -> dict[str, Any]:
    """Refuse a stack whose season dates cover too little of the bundle's grid; warn about the rest.

    Args:
        stack: The stack.
        obs: Indices of the season's observations (ordered by season position).
        meta: The bundle's metadata (its time grid).
        season: The season's start year.
        allow_partial: Classify a stack below :data:`MIN_SEASON_COVERAGE` anyway (with a warning).
        where: The bundle, as messages name it.

    Returns:
        The coverage record of the run summary (:func:`cropmap.contract.timegrid.season_coverage`, with dates).

    Raises:
        InputRasterError: If the coverage is below :data:`MIN_SEASON_COVERAGE` and ``allow_partial`` is off.
    """
    from cropmap.contract.timegrid import season_coverage

    grid = meta.time_grid
    dates = [stack.dates[i] for i in obs]
    cov = season_coverage([grid.position_of(d) for d in dates], grid.day_of_season)
    outside = [str(dates[i]) for i in cov.pop("outside_grid")]
    cov["dates_outside_grid"] = outside
    cov["first_date"], cov["last_date"] = str(min(dates)), str(max(dates))
    cov["min_share"] = MIN_SEASON_COVERAGE
    cov["allowed_partial"] = bool(allow_partial and cov["share"] < MIN_SEASON_COVERAGE)
    span = (
        f"the stack's dates of season {season} ({cov['first_date']} .. {cov['last_date']}) cover "
        f"{cov['grid_steps_covered']} of the {cov['grid_steps']} time steps of {where or 'the bundle'}'s "
        f"grid (season starting {grid.season_start}; {cov['share']:.0%}); the steps at days "
        f"{cov['uncovered_days']} of the season lie more than one grid step beyond the first or last "
        "date and get that date's values"
    )
    if cov["share"] < MIN_SEASON_COVERAGE and not allow_partial:
        raise InputRasterError(
            f"{span}; expected dates covering at least {MIN_SEASON_COVERAGE:.0%} of the season, as the model "
            "was trained on (use a stack of the whole season, or pass --allow-partial-season to classify it "
            "anyway)"
        )
    if cov["share"] < 1.0:
        logger.warning("%s; the map may differ from one made with the whole season", span)
    if outside:
        logger.warning(
            "%d dates of stack %s lie beyond %s's time grid (days %d .. %d of the season) and are not used: "
            "%s",
            len(outside),
            stack.path,
            where or "the bundle",
            grid.day_of_season[0],
            grid.day_of_season[-1],
            ", ".join(outside[:6]) + (", ..." if len(outside) > 6 else ""),
        )
    return cov


def bundle_is_l1c(meta: BundleMetadata) -> bool:
    """Whether a bundle was trained on L1C (top-of-atmosphere) data: it takes band B10, or its provenance says
    so. Every other bundle is taken as trained on L2A surface reflectance."""
    return "B10" in meta.bands or bool(_L1C_BUNDLE_RE.search(meta.provenance.training_data or ""))


def l1c_evidence(stack: Stack) -> list[str]:
    """What marks a stack as a likely Sentinel-2 L1C (top-of-atmosphere) product: band B10 (cirrus, which L2A
    products drop), or L1C / TOA words in a file name, the first file's tags or band descriptions."""
    import rasterio

    from cropmap.safeio.oserrors import io_step

    found = []
    if "B10" in stack.bands:
        found.append(f"{len(stack.bands)} bands including B10 (cirrus, which L2A products drop)")
    for f in [stack.path, *stack.files]:
        if _L1C_RE.search(f.name):
            found.append(f"file name {f.name}")
            break
    first = stack.files[0]
    with io_step("read the tags of", first), rasterio.open(first) as ds:
        texts = [f"tag {k}={v}" for k, v in ds.tags().items()]
        texts += [f"band description {d}" for d in ds.descriptions if d]
    hit = next((t for t in texts if _L1C_RE.search(t)), None)
    if hit is not None:
        found.append(hit if len(hit) <= 80 else hit[:77] + "...")
    return found


def check_processing_level(
    stack: Stack, meta: BundleMetadata, *, allow_l1c: bool = False, where: str = ""
) -> list[str]:
    """Refuse a likely L1C stack under a bundle trained on L2A surface reflectance.

    Returns:
        The evidence found (empty for a stack that shows none, or under an L1C bundle).

    Raises:
        InputRasterError: Naming the evidence, unless ``allow_l1c`` (then a warning).
    """
    if bundle_is_l1c(meta):
        return []
    found = l1c_evidence(stack)
    if not found:
        return []
    what = (
        f"stack {stack.path} looks like a Sentinel-2 L1C (top-of-atmosphere) product "
        f"({'; '.join(found)}), but {where or 'the bundle'} was trained on L2A surface reflectance; "
        "top-of-atmosphere values shift every band and the classes change without any error"
    )
    if not allow_l1c:
        raise InputRasterError(f"{what}; expected an L2A stack (pass --allow-l1c to classify it anyway)")
    logger.warning("%s (classified anyway: --allow-l1c)", what)
    return found


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


def check_reflectance(
    stack: Stack, obs: Sequence[int], bands: Sequence[str], blocks: Sequence[Block]
) -> None:
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
        logger.info(
            "reflectance check skipped: only %d valid values in the sample of stack %s",
            values.size,
            stack.path,
        )
        return
    raw_median = float(np.median(values))
    refl = values.astype(np.float64) * gain + offset
    median = float(np.median(refl))
    declared = f"{stack.scale.reflectance_scale:g}" + (f" with offset {offset:g}" if offset else "")
    where = f"stack {stack.path} (declared by {stack.scale.source}: raw value = reflectance x {declared})"
    if not MEDIAN_RANGE[0] <= median <= MEDIAN_RANGE[1]:
        fit = likely_scale(raw_median)
        guess = (
            f"the values look like reflectance x {fit:g}"
            if fit is not None
            else f"no common scale ({', '.join(f'{s:g}' for s in COMMON_SCALES)}) fits them"
        )
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
    logger.debug(
        "reflectance check of %s: median %.3f from %d sampled values", stack.path, median, values.size
    )
