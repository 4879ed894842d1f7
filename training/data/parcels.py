"""A user's labelled parcels (WorldCereal extractions) as a downstream task: legend, time grid, split.

What a user chooses, and what is checked (every refusal is a one-line ``ValueError``):

* **classes**: the ``top`` N most frequent label codes (named from WorldCereal's legend,
  :data:`EWOC_NAMES_CSV`), or a class-map CSV (``match,name[,color]``: ``match`` is an
  ``ewoc_code`` or a leading part of one such as ``11-01-06``; rows with the same ``name`` form one
  class; the longest match wins; samples that match no row are dropped and counted in the log).
  Every class needs at least two usable parcels (one for training, one for validation).
* **time grid**: ``monthly`` (12 first-of-month stamps), ``dekadal`` (36 stamps on the 1st, 11th and
  21st), explicit ``MM-DD`` stamps, from ``season_start``, or ``auto`` (the default): the input's own
  step (:func:`native_grid`: dekadal for stamps 15 days apart or closer, monthly otherwise); the season
  is the year given or, by default, the season holding most valid observations. The grid, the season
  window and the input stamps it leaves out are said in one line (:attr:`ParcelTask.grid_note`). Series are resampled onto the grid with
  :func:`cropmap.contract.timegrid.fill_gaps`, exactly as inference does; parcels whose observations miss
  some time steps, or hold nodata cells, are gaps like any other.
* **split**: by parcel, stratified by class, seeded by ``split_seed`` (separate from the seed of the
  hyper-parameters and weights), or given by a CSV ``sample_id,split`` with ``train`` / ``val``.
"""

from __future__ import annotations

import colorsys
import datetime as dt
import itertools
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from cropmap.contract.metadata import ClassInfo, TimeGrid
from training.data.worldcereal import format_ewoc_code, on_time_grid, read_class_names, read_extraction

logger = logging.getLogger(__name__)

EWOC_NAMES_CSV = Path(__file__).with_name("crop_type_class_mappings.csv")
"""WorldCereal's legend (``ewoc_code`` -> names), shipped with the package (licence beside it)."""

GRIDS = ("monthly", "dekadal")
AUTO_GRID = "auto"
"""The grid value that follows the input's own step (:func:`native_grid`)."""
DEKADAL_MAX_STEP_DAYS = 15
"""Input stamps this many days apart or closer (median step) get the dekadal grid; wider steps the monthly one."""
_MMDD = re.compile(r"^\d{2}-\d{2}$")


@dataclass(frozen=True)
class ParcelTask:
    """Gridded, labelled, split parcels."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    classes: tuple[ClassInfo, ...]
    """``y`` indexes this tuple."""
    bands: tuple[str, ...]
    time_grid: TimeGrid
    season: int
    min_valid: int
    ids_train: np.ndarray
    ids_val: np.ndarray
    description: str
    """One line: file, parcels, classes, grid, split (the bundle's ``training_data``)."""
    groups_train: np.ndarray | None = None
    """Parcel of each training sample where a parcel has several (pixels); ``None``: one sample per parcel."""
    grid_note: str = ""
    """One line: the grid used (and why), the season window, and how many input stamps fall outside it."""


def time_grid(grid: str, season_start: str, season: int) -> TimeGrid:
    """The stamps of ``grid`` (``monthly``, ``dekadal`` or comma-separated ``MM-DD``) in one season.

    Raises:
        ValueError: On an unknown grid, a malformed date, or stamps that are not increasing within the season.
    """
    if not _MMDD.match(season_start):
        raise ValueError(f"season start {season_start!r} is not MM-DD (e.g. 11-01)")
    month, day = (int(p) for p in season_start.split("-"))
    try:
        start = dt.date(season, month, day)
    except ValueError as err:
        raise ValueError(f"season start {season_start!r} is not a date: {err}") from None
    if grid == "monthly":
        dates = [_add_months(start, i) for i in range(12)]
    elif grid == "dekadal":
        first, end = start.replace(day=1), _add_months(start, 12)
        candidates = [_add_months(first, m).replace(day=d) for m in range(13) for d in (1, 11, 21)]
        dates = [d for d in candidates if start <= d < end]
    else:
        dates = []
        for part in (p.strip() for p in grid.split(",") if p.strip()):
            if not _MMDD.match(part):
                raise ValueError(f"grid {grid!r} is not 'monthly', 'dekadal' or comma-separated MM-DD stamps")
            m, d = (int(p) for p in part.split("-"))
            try:
                stamp = dt.date(season, m, d)
            except ValueError as err:
                raise ValueError(f"grid stamp {part!r} is not a date: {err}") from None
            dates.append(stamp if stamp >= start else dt.date(season + 1, m, d))
        if len(dates) < 2 or any(b <= a for a, b in itertools.pairwise(dates)):
            raise ValueError(
                f"grid stamps {grid!r} must be at least two dates, increasing from the season start {season_start}"
            )
    probe = TimeGrid(season_start, (0,), ())
    return TimeGrid(
        season_start, tuple(probe.position_of(d) for d in dates), tuple(d.isoformat() for d in dates)
    )


def _add_months(d: dt.date, n: int) -> dt.date:
    y, m = divmod(d.month - 1 + n, 12)
    return d.replace(year=d.year + y, month=m + 1)


def _palette(n: int) -> list[str]:
    """``n`` distinct legend colours (evenly spaced hues)."""
    out = []
    for i in range(n):
        r, g, b = colorsys.hsv_to_rgb(i / max(n, 1), 0.65, 0.85)
        out.append(f"#{round(r * 255):02x}{round(g * 255):02x}{round(b * 255):02x}")
    return out


def read_class_map(path: str | Path) -> tuple[list[tuple[str, str]], list[ClassInfo]]:
    """Read a class map CSV (``match,name[,color]``).

    Returns:
        ``(rules, classes)``: ``(digits prefix, class name)`` rules, longest first, and the classes in
        order of first appearance (codes 1..K).

    Raises:
        ValueError: On missing columns, a malformed ``match`` or colour, or more than 254 classes.
    """
    path = Path(path)
    table = pd.read_csv(path, dtype=str, keep_default_na=False, comment="#")
    table.columns = [c.strip() for c in table.columns]
    if not {"match", "name"} <= set(table.columns):
        raise ValueError(f"class map {path} has columns {list(table.columns)}; expected match,name[,color]")
    rules: list[tuple[str, str]] = []
    names: list[str] = []
    colors: dict[str, str] = {}
    for i, row in table.iterrows():
        digits = row["match"].strip().replace("-", "")
        name = row["name"].strip()
        if not digits.isdigit() or len(digits) > 10 or not name:
            raise ValueError(
                f"class map {path} row {i + 2}: match {row['match']!r} / name {name!r} is not valid"
            )
        rules.append((digits, name))
        if name not in names:
            names.append(name)
        color = str(row.get("color", "")).strip()
        if color:
            if not re.fullmatch(r"#[0-9a-fA-F]{6}", color):
                raise ValueError(f"class map {path} row {i + 2}: colour {color!r} is not #RRGGBB")
            colors.setdefault(name, color)
    if not 2 <= len(names) <= 254:
        raise ValueError(f"class map {path} defines {len(names)} classes; expected 2..254")
    auto = _palette(len(names))
    classes = [ClassInfo(k + 1, n, colors.get(n, auto[k])) for k, n in enumerate(names)]
    return sorted(rules, key=lambda r: -len(r[0])), classes


def _map_codes(
    codes: np.ndarray, rules: Sequence[tuple[str, str]], classes: Sequence[ClassInfo]
) -> np.ndarray:
    """Class index per code (-1 where no rule matches)."""
    index = {c.name: k for k, c in enumerate(classes)}
    out = np.full(len(codes), -1, dtype=np.int64)
    for i, code in enumerate(codes):
        digits = f"{int(code):010d}"
        hit = next((name for prefix, name in rules if digits.startswith(prefix)), None)
        if hit is not None:
            out[i] = index[hit]
    return out


def _seasons(series_dates: np.ndarray, grid_probe: TimeGrid) -> np.ndarray:
    """Season (start year) of every date of ``series_dates`` (any shape), computed once per distinct date."""
    days, inverse = np.unique(series_dates, return_inverse=True)
    years = np.array([grid_probe.season_of(dt.date.fromisoformat(str(d))) for d in days], dtype=np.int64)
    return years[inverse].reshape(series_dates.shape)


def native_grid(series_dates: np.ndarray, valid: np.ndarray) -> tuple[str, float]:
    """The named grid that fits the input's own step, and that step (median days between its valid stamps).

    Raises:
        ValueError: If fewer than two distinct dates hold a valid observation (no step to follow).
    """
    days = np.unique(series_dates[valid]).astype("datetime64[D]").astype(np.int64)
    if len(days) < 2:
        raise ValueError(
            "the input holds valid observations on fewer than 2 dates: its step cannot be read; name a grid "
            "(--grid monthly, dekadal or MM-DD stamps)"
        )
    step = float(np.median(np.diff(days)))
    return ("dekadal" if step <= DEKADAL_MAX_STEP_DAYS else "monthly"), step


def _best_season(series_dates: np.ndarray, valid: np.ndarray, grid_probe: TimeGrid) -> int:
    seasons = _seasons(series_dates, grid_probe)
    years, counts = np.unique(seasons[valid], return_counts=True)
    if not len(years):
        raise ValueError("the file holds no valid observation (every band value is nodata)")
    return int(years[np.argmax(counts)])


def _read_split_file(
    path: Path, ids: np.ndarray, parcels: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Train / validation sample indices from a CSV ``sample_id,split`` (or ``parcel_id,split`` when the samples
    have ``parcels``); a parcel on both sides is refused."""
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    key = "parcel_id" if parcels is not None and "parcel_id" in table.columns else "sample_id"
    if not {key, "split"} <= set(table.columns):
        expected = "sample_id,split" + (" or parcel_id,split" if parcels is not None else "")
        raise ValueError(f"split file {path} has columns {list(table.columns)}; expected {expected}")
    bad = sorted(set(table["split"]) - {"train", "val"})
    if bad:
        raise ValueError(f"split file {path} has split values {bad}; expected 'train' or 'val'")
    split = dict(zip(table[key], table["split"], strict=True))
    keys = parcels if key == "parcel_id" and parcels is not None else ids
    missing = [s for s in keys if s not in split]
    if missing:
        what = "samples" if key == "sample_id" and parcels is not None else "parcels"
        raise ValueError(
            f"split file {path} does not assign {len(missing)} usable {what} (e.g. {missing[:3]})"
        )
    is_val = np.array([split[s] == "val" for s in keys])
    if parcels is not None:
        both = sorted(set(parcels[is_val]) & set(parcels[~is_val]))
        if both:
            raise ValueError(
                f"split file {path} puts samples of {len(both)} parcels on both sides (e.g. {both[:3]}); "
                "expected each parcel in one split (assign parcel_id,split)"
            )
    return np.flatnonzero(~is_val), np.flatnonzero(is_val)


def stratified_split(labels: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded per-class split of sample indices into (train, val).

    Every class with at least two samples puts ``round(val_fraction * n)`` (at least one, at most n - 1)
    samples into validation; a class with one sample stays in training.
    """
    rng = np.random.default_rng(seed)
    train, val = [], []
    for k in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == k))
        n_val = 0 if len(idx) < 2 else min(len(idx) - 1, max(1, round(val_fraction * len(idx))))
        val.extend(idx[:n_val].tolist())
        train.extend(idx[n_val:].tolist())
    return np.sort(np.array(train, dtype=np.int64)), np.sort(np.array(val, dtype=np.int64))


def load_parcels(
    path: str | Path,
    *,
    label_column: str = "ewoc_code",
    top_classes: int = 6,
    class_map: str | Path | None = None,
    grid: str = AUTO_GRID,
    season_start: str = "11-01",
    season: int | None = None,
    min_valid: int = 3,
    val_fraction: float = 0.3,
    split_seed: int = 0,
    split_file: str | Path | None = None,
    min_class_parcels: int = 0,
) -> ParcelTask:
    """Read a WorldCereal extraction (long or wide) as a split, gridded downstream task.

    With ``top_classes``, classes among the N most frequent that have fewer than ``min_class_parcels`` usable
    parcels are left out (a warning names them and counts their parcels); a class map keeps every class it names.

    Raises:
        ValueError: On an unknown label column, a class with fewer than two usable parcels, no
            valid observations, a grid that does not fit the data, or a bad class map / split file.
    """
    path = Path(path)
    series = read_extraction(path, label_column=label_column)
    valid_obs = np.isfinite(series.values).all(axis=2)
    probe = time_grid("monthly", season_start, 2000)
    season_given = season is not None
    if season is None:
        season = _best_season(series.dates, valid_obs, probe)
        logger.info(
            "%s: season %d (from %s) holds the most valid observations", path.name, season, season_start
        )
    if grid == AUTO_GRID:
        grid, step = native_grid(series.dates, valid_obs)
        grid_why = f"the input's step is {step:g} days; --grid names another"
    else:
        grid_why = "as asked"
    tg = time_grid(grid, season_start, season)
    in_season = _seasons(series.dates, probe) == season
    observed = series.dates[in_season & valid_obs]
    if not observed.size:
        raise ValueError(
            f"{path}: no valid observation in season {season} (starting {season_start}); pick --season"
        )
    first, last = (dt.date.fromisoformat(str(d)) for d in (observed.min(), observed.max()))
    covered = sum(probe.position_of(first) <= p <= probe.position_of(last) for p in tg.day_of_season)
    if covered < len(tg.day_of_season) / 2:
        raise ValueError(
            f"grid {grid!r} of season {season} ({tg.reference_dates[0]} .. {tg.reference_dates[-1]}) does not fit "
            f"the data: valid observations span only {first} .. {last} ({covered} of {len(tg.day_of_season)} stamps)"
        )
    if not 1 <= min_valid <= len(tg.day_of_season):
        raise ValueError(f"min_valid is {min_valid}; expected 1..{len(tg.day_of_season)} for grid {grid!r}")
    outside = int(((~in_season) & valid_obs).sum())
    n_stamps = len(np.unique(series.dates[valid_obs]))
    n_kept = len(np.unique(series.dates[in_season & valid_obs]))
    grid_note = (
        f"{path.name}: {grid} grid ({grid_why}), {len(tg.day_of_season)} stamps {tg.reference_dates[0]} .. "
        f"{tg.reference_dates[-1]}; season {season} from {season_start}"
        f"{'' if season_given else ' (the one with most valid observations)'}: {n_kept} of the input's "
        f"{n_stamps} observation dates in it, {n_stamps - n_kept} outside left out"
    )
    logger.info(
        "%s: grid %s, %d stamps %s .. %s (season %d from %s; valid observations in it span %s .. %s); %d valid "
        "observations outside the season are not used",
        path.name,
        grid,
        len(tg.day_of_season),
        tg.reference_dates[0],
        tg.reference_dates[-1],
        season,
        season_start,
        first,
        last,
        outside,
    )
    gridded = on_time_grid(series, tg, season=season, min_valid=min_valid)
    if not gridded.ok.any():
        raise ValueError(
            f"{path}: no parcel has {min_valid} valid observations in season {season}; lower min_valid"
        )
    usable = np.flatnonzero(gridded.ok)
    codes = series.labels[usable]

    if class_map is not None:
        rules, classes = read_class_map(class_map)
        y = _map_codes(codes, rules, classes)
        unmatched = int((y < 0).sum())
        if unmatched:
            logger.warning(
                "%d of %d usable parcels match no class of %s and are left out", unmatched, len(y), class_map
            )
        legend = f"class map {Path(class_map).name}"
    else:
        if top_classes < 2:
            raise ValueError(f"top_classes is {top_classes}; a classifier needs at least 2 classes")
        values, counts = np.unique(codes, return_counts=True)
        if series.parcel_ids is not None:  # several samples per parcel: count parcels, not samples
            pairs = np.unique(np.stack([codes.astype(str), series.parcel_ids[usable].astype(str)]), axis=1)
            per_code = dict(zip(*np.unique(pairs[0], return_counts=True), strict=True))
            counts = np.array([per_code[str(v)] for v in values])
        order = np.lexsort((values, -counts))[:top_classes]
        thin = order[counts[order] < min_class_parcels]
        if len(thin):
            logger.warning(
                "%s: %d of the %d most frequent classes have fewer than %d usable parcels and are left out (%d "
                "parcels: %s); --set min_class_parcels=0 keeps them",
                path.name,
                len(thin),
                len(order),
                min_class_parcels,
                int(counts[thin].sum()),
                ", ".join(f"{values[i]} ({counts[i]})" for i in thin),
            )
            order = order[counts[order] >= min_class_parcels]
            if len(order) < 2:
                raise ValueError(
                    f"fewer than 2 classes have {min_class_parcels} usable parcels; lower "
                    "min_class_parcels or label more parcels"
                )
        chosen = values[order]
        names = read_class_names(EWOC_NAMES_CSV) if label_column == "ewoc_code" else {}
        if series.class_names is not None:
            names = series.class_names
        colors = _palette(len(chosen))
        classes = [
            ClassInfo(
                k + 1,
                names.get(int(c), format_ewoc_code(int(c)) if label_column == "ewoc_code" else str(c)),
                colors[k],
            )
            for k, c in enumerate(chosen)
        ]
        y = np.array(
            [int(np.flatnonzero(chosen == c)[0]) if c in chosen else -1 for c in codes], dtype=np.int64
        )
        left = int((y < 0).sum())
        logger.info(
            "%s: the %d most frequent classes keep %d of %d usable parcels",
            path.name,
            len(chosen),
            len(y) - left,
            len(y),
        )
        legend = f"{len(chosen)} most frequent {label_column} values"
    keep = y >= 0
    usable, y = usable[keep], y[keep]
    ids = series.sample_ids[usable]
    # Several samples (pixels) of one parcel: the split and its class counts go by parcel, so that no parcel has
    # samples on both sides (neighbouring pixels of a field are near-duplicates).
    groups = series.parcel_ids[usable] if series.parcel_ids is not None else ids
    if series.parcel_ids is None:
        parcels, member, y_parcel = ids, np.arange(len(y)), y
    else:
        parcels, first_sample, member = np.unique(groups, return_index=True, return_inverse=True)
        y_parcel = y[first_sample]
    if (y_parcel[member] != y).any():
        raise ValueError(
            f"{path}: the samples of some parcels have different labels; expected one label per parcel"
        )
    counts = np.bincount(y_parcel, minlength=len(classes))
    too_few = [f"{c.name!r} ({n})" for c, n in zip(classes, counts, strict=True) if n < 2]
    if too_few:
        raise ValueError(
            f"classes {', '.join(too_few)} have fewer than 2 usable parcels; the split needs one for training and one "
            "for validation: choose fewer classes or merge them in a class map"
        )
    if split_file is not None:
        tr, va = _read_split_file(Path(split_file), ids, groups if series.parcel_ids is not None else None)
        split_desc = f"split file {Path(split_file).name}"
    else:
        _, va_p = stratified_split(y_parcel, val_fraction, split_seed)
        in_val = np.isin(member, va_p)
        tr, va = np.flatnonzero(~in_val), np.flatnonzero(in_val)
        split_desc = (
            f"stratified {1 - val_fraction:.0%}/{val_fraction:.0%} by parcel, split seed {split_seed}"
        )
    for name, part in (("training", tr), ("validation", va)):
        missing = sorted(set(range(len(classes))) - set(y[part].tolist()))
        if missing:
            raise ValueError(
                f"the {name} split has no parcel of classes {[classes[k].name for k in missing]}"
            )
    x = gridded.x[usable]
    what = (
        f"{len(usable)} parcels"
        if series.parcel_ids is None
        else f"{len(usable)} samples of {len(parcels)} parcels"
    )
    desc = (
        f"{path.name}: {what} ({len(tr)} train / {len(va)} val, {split_desc}), {legend}, "
        f"{grid} grid of season {season} from {season_start}, {len(gridded.bands)} bands"
    )
    logger.info(desc)
    return ParcelTask(
        x_train=x[tr],
        y_train=y[tr],
        x_val=x[va],
        y_val=y[va],
        classes=tuple(classes),
        bands=tuple(gridded.bands),
        time_grid=tg,
        season=season,
        min_valid=min_valid,
        ids_train=ids[tr],
        ids_val=ids[va],
        description=desc,
        groups_train=None if series.parcel_ids is None else groups[tr],
        grid_note=grid_note,
    )
