"""Mapping observation dates onto a bundle's time grid, and filling gaps along time.

This module is part of the contract: training prepares its series with the same
functions that inference uses, so a model never sees data filled differently from
what it was trained on.

Method (``gap_fill = "linear"``):

1. Each observation date gets a *season position*: days since the most recent
   ``season_start`` (:meth:`cropmap.contract.metadata.TimeGrid.position_of`). Dates of any
   year therefore land on the same grid. One call handles one season.
2. An observation is valid when all its bands are finite (nodata is turned into
   NaN by the reader). A pixel needs at least ``min_valid`` valid observations in
   the season; otherwise it is reported as having too little data.
3. Each grid position takes the linear interpolation, in season days, between the
   nearest valid observations before and after it. Before the first / after the
   last valid observation the nearest valid value is repeated (no extrapolated
   trend, which would run away on reflectance).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

import numpy as np

from cropmap.contract.metadata import TimeGrid
from cropmap.errors import InputRasterError


def season_positions(dates: Sequence[dt.date], grid: TimeGrid) -> np.ndarray:
    """Season positions (days since season start) of ``dates``, as int64 ``(S,)``."""
    return np.array([grid.position_of(d) for d in dates], dtype=np.int64)


def select_season(
    dates: Sequence[dt.date], grid: TimeGrid, season: int | None = None
) -> tuple[np.ndarray, int]:
    """Choose the observations of one season.

    Args:
        dates: Observation dates, any order.
        grid: The bundle's time grid.
        season: Calendar year in which the wanted season starts; ``None`` accepts the
            dates only if they all fall in one season.

    Returns:
        ``(indices, season)``: indices into ``dates`` of the chosen observations,
        ordered by season position, and the season's start year.

    Raises:
        InputRasterError: If the dates span several seasons and none was chosen, or
            the chosen season holds no date.
    """
    if not dates:
        raise InputRasterError("the stack has no dates")
    seasons = np.array([grid.season_of(d) for d in dates])
    found = sorted(set(seasons.tolist()))
    if season is None:
        if len(found) > 1:
            spans = ", ".join(f"{y} ({int((seasons == y).sum())} dates)" for y in found)
            raise InputRasterError(
                f"the stack's dates span {len(found)} seasons starting {grid.season_start}: {spans}; "
                f"the model classifies one season at a time - choose one with --season YEAR"
            )
        season = found[0]
    elif season not in found:
        raise InputRasterError(f"season {season} holds none of the stack's dates; seasons found: {found}")
    idx = np.flatnonzero(seasons == season)
    pos = season_positions([dates[int(i)] for i in idx], grid)
    order = np.argsort(pos, kind="stable")
    return idx[order], season


def fill_gaps(
    values: np.ndarray,
    positions: np.ndarray,
    grid_positions: Sequence[int] | np.ndarray,
    *,
    min_valid: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Resample pixel series onto the grid with linear interpolation over gaps.

    Args:
        values: float32 ``(N, S, C)``, NaN where an observation is missing; an
            observation with any NaN band counts as missing as a whole.
        positions: ``(S,)`` season positions of the observations, non-decreasing.
        grid_positions: ``(T,)`` season positions the model expects.
        min_valid: Fewest valid observations a pixel needs.

    Returns:
        ``(filled, n_valid, ok)``: float32 ``(N, T, C)`` (rows where ``ok`` is False
        are NaN), int ``(N,)`` valid-observation counts, and bool ``(N,)``.
    """
    values = np.asarray(values, dtype=np.float32)
    if values.ndim != 3:
        raise ValueError(f"values has shape {values.shape}; expected (N, S, C)")
    n, s, c = values.shape
    positions = np.asarray(positions, dtype=np.float64)
    if positions.shape != (s,):
        raise ValueError(f"positions has shape {positions.shape}; expected ({s},)")
    if s > 1 and np.any(np.diff(positions) < 0):
        raise ValueError("positions must be non-decreasing (sort the observations by season position)")
    grid = np.asarray(grid_positions, dtype=np.float64)
    t = grid.shape[0]

    valid = np.isfinite(values).all(axis=2)  # (N, S)
    n_valid = valid.sum(axis=1)
    ok = n_valid >= max(min_valid, 1)
    filled = np.full((n, t, c), np.nan, dtype=np.float32)
    if s == 0 or not ok.any():
        return filled, n_valid, ok

    obs = np.arange(s)
    # Index of the last valid observation at or before each s (-1 if none), and of
    # the first valid one at or after each s (s if none).
    prev_valid = np.maximum.accumulate(np.where(valid, obs, -1), axis=1)
    next_valid = np.minimum.accumulate(np.where(valid, obs, s)[:, ::-1], axis=1)[:, ::-1]

    j = np.searchsorted(positions, grid, side="right") - 1  # last obs with pos <= g
    k = np.searchsorted(positions, grid, side="left")  # first obs with pos >= g
    left = np.where(j[None, :] >= 0, prev_valid[:, np.clip(j, 0, s - 1)], -1)  # (N, T)
    right = np.where(k[None, :] < s, next_valid[:, np.clip(k, 0, s - 1)], s)
    has_left = left >= 0
    has_right = right < s
    left_i = np.where(has_left, left, np.where(has_right, right, 0))
    right_i = np.where(has_right, right, left_i)

    pos_l = positions[left_i]
    pos_r = positions[right_i]
    span = pos_r - pos_l
    with np.errstate(invalid="ignore", divide="ignore"):
        w = np.where(span > 0, (grid[None, :] - pos_l) / np.where(span > 0, span, 1.0), 0.0)
    w = np.clip(w, 0.0, 1.0).astype(np.float32)[:, :, None]
    rows = np.arange(n)[:, None]
    x_l = values[rows, left_i]  # (N, T, C)
    x_r = values[rows, right_i]
    out = (1.0 - w) * x_l + w * x_r
    filled[ok] = out[ok]
    return filled, n_valid, ok


def season_coverage(positions: Sequence[int], grid_positions: Sequence[int]) -> dict[str, Any]:
    """How much of the bundle's grid the observations of a season span, and which lie beyond the grid.

    A grid position is *covered* when it lies within the observed span (first to last observation)
    widened by one grid spacing (the median step; a whole season for a one-step grid) on each side;
    positions outside it take the nearest observation's values unchanged (step 3 of the module's
    method), so a model sees a flat series there. An observation is *outside the grid* when it lies
    more than one grid spacing before the first or after the last grid position: the filled series
    never reaches it.

    Args:
        positions: Season positions (days) of the season's observations, any order, at least one.
        grid_positions: The grid's positions, increasing.

    Returns:
        ``share`` (covered / grid positions, 0..1), ``grid_steps``, ``grid_steps_covered``,
        ``uncovered_days`` (grid positions not covered), ``observed_days`` ([first, last]),
        ``tolerance_days`` (the grid spacing) and ``outside_grid`` (indices into ``positions``).
    """
    pos = np.asarray(positions, dtype=np.float64)
    grid = np.asarray(grid_positions, dtype=np.float64)
    spacing = float(np.median(np.diff(grid))) if grid.size > 1 else 366.0
    lo, hi = float(pos.min()), float(pos.max())
    covered = (grid >= lo - spacing) & (grid <= hi + spacing)
    outside = np.flatnonzero((pos < grid[0] - spacing) | (pos > grid[-1] + spacing))
    return {
        "share": round(float(covered.mean()), 4),
        "grid_steps": int(grid.size),
        "grid_steps_covered": int(covered.sum()),
        "uncovered_days": [int(g) for g in grid[~covered]],
        "observed_days": [int(lo), int(hi)],
        "tolerance_days": spacing,
        "outside_grid": [int(i) for i in outside],
    }
