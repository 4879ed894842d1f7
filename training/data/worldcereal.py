"""Readers for WorldCereal point/parcel extractions (parquet), long and wide formats.

WorldCereal publishes its reference extractions in two layouts
(https://github.com/WorldCereal/worldcereal-classification):

* **long**: one row per ``sample_id`` x ``timestamp``, one column per band
  (``S2-L2A-B02`` ... ``S2-L2A-B12``), the label in ``ewoc_code``;
* **wide**: one row per sample, one column per band and time step
  (``OPTICAL-B02-ts0-10m`` ...), time step ``i`` being the month ``start_date + i``.

Both carry Sentinel-2 L2A reflectance x 10000 as unsigned integers with
:data:`NODATA` (65535) for missing observations. The readers return raw digital
numbers as float32 with NaN where the source holds nodata, never rescaled: the
normalisation lives in the model. Bands that hold no data at all (``S2-L2A-B8A``
in the long files) are skipped, with a log line saying so.

:func:`on_time_grid` puts the series on a bundle's time grid with
:func:`cropmap.contract.timegrid.fill_gaps`, so training sees gaps filled exactly as
inference fills them.

``ewoc_code`` is WorldCereal's hierarchical crop legend: ``1101060000`` reads as
``11-01-06-000-0`` (temporary crops / cereals / maize). :func:`read_class_names`
turns ``crop_type_class_mappings.csv`` into ``code -> name``, and
:data:`FLANDERS_CLASSES` is the coarse legend of the shipped sample model.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from cropmap.contract.bands import S2_BANDS, canonical_band
from cropmap.contract.metadata import TimeGrid
from cropmap.contract.timegrid import fill_gaps, select_season

logger = logging.getLogger(__name__)

NODATA = 65535
"""WorldCereal's nodata value for Sentinel-2 reflectance (uint16 maximum)."""

_LONG_BAND_RE = re.compile(r"^S2-L2A-(B[0-9A]+)$")
_WIDE_BAND_RE = re.compile(r"^OPTICAL-(B[0-9A]+)-ts(\d+)-\d+m$")


@dataclass(frozen=True)
class WorldCerealSeries:
    """Sentinel-2 series of labelled samples as read from one extraction file."""

    values: np.ndarray
    """float32 ``(N, S, C)`` raw digital numbers (reflectance x 10000), NaN where nodata."""
    dates: np.ndarray
    """``datetime64[D]`` ``(N, S)``: date of each observation of each sample, increasing along S."""
    bands: tuple[str, ...]
    """Canonical band names of the C axis."""
    labels: np.ndarray
    """int64 ``(N,)`` label codes (``ewoc_code`` unless another column was asked for)."""
    label_column: str
    """Column the labels were read from."""
    sample_ids: np.ndarray
    """``(N,)`` sample identifiers (str)."""
    parcel_ids: np.ndarray | None = None
    """``(N,)`` parcel of each sample (str), from a ``parcel_id`` column (extractions of several pixels per parcel,
    :mod:`training.data.extract`); ``None`` when each sample is its own parcel."""
    class_names: dict[int, str] | None = None
    """Label code -> name, from a ``class_name`` column; ``None`` when the file names no class."""

    def __len__(self) -> int:
        """Number of samples N."""
        return int(self.values.shape[0])

    def subset(self, index: np.ndarray | Sequence[int]) -> WorldCerealSeries:
        """The samples at ``index`` (integer positions or a boolean mask)."""
        idx = np.asarray(index)
        return WorldCerealSeries(
            values=self.values[idx],
            dates=self.dates[idx],
            bands=self.bands,
            labels=self.labels[idx],
            label_column=self.label_column,
            sample_ids=self.sample_ids[idx],
            parcel_ids=None if self.parcel_ids is None else self.parcel_ids[idx],
            class_names=self.class_names,
        )


@dataclass(frozen=True)
class GriddedSeries:
    """Series resampled onto a time grid (the model's input layout)."""

    x: np.ndarray
    """float32 ``(N, T, C)`` gap-filled raw digital numbers; rows with ``ok`` False are NaN."""
    n_valid: np.ndarray
    """int ``(N,)`` valid observations inside the season."""
    ok: np.ndarray
    """bool ``(N,)``: the sample has at least ``min_valid`` valid observations."""
    labels: np.ndarray
    """int64 ``(N,)`` label codes."""
    sample_ids: np.ndarray
    """``(N,)`` sample identifiers."""
    bands: tuple[str, ...]
    season: int
    """Calendar year in which the season starts."""


def _choose_bands(found: dict[str, bool], requested: Sequence[str] | None, path: Path) -> tuple[str, ...]:
    """Pick the bands to return from ``{canonical name: whether the band is nodata everywhere}``."""
    empty = [b for b, all_nodata in found.items() if bool(all_nodata)]
    if requested is None:
        if empty:
            logger.info("%s: skipping bands %s (all observations are nodata)", path.name, ", ".join(empty))
        return tuple(b for b in S2_BANDS if b in found and b not in empty)
    wanted = tuple(canonical_band(b) for b in requested)
    missing = [b for b in wanted if b not in found]
    if missing:
        raise ValueError(f"{path}: bands {missing} requested but the file holds {sorted(found)}")
    useless = [b for b in wanted if b in empty]
    if useless:
        raise ValueError(f"{path}: requested bands {useless} hold only nodata ({NODATA}) in this file")
    return wanted


def _to_float(raw: np.ndarray) -> np.ndarray:
    out = raw.astype(np.float32)
    out[raw == NODATA] = np.nan
    return out


def _labels(df: pd.DataFrame, label_column: str, path: Path) -> np.ndarray:
    if label_column not in df.columns:
        candidates = [c for c in df.columns if "label" in c.lower() or "code" in c.lower()]
        raise ValueError(
            f"{path}: label column {label_column!r} not found; columns that look like labels: {candidates}"
        )
    return df[label_column].to_numpy(dtype=np.int64)


def read_long(
    path: str | Path, *, bands: Sequence[str] | None = None, label_column: str = "ewoc_code"
) -> WorldCerealSeries:
    """Read a long-format extraction (one row per sample and timestamp).

    Args:
        path: A ``.parquet`` / ``.geoparquet`` file with ``sample_id``, ``timestamp``,
            ``S2-L2A-Bxx`` columns and the label column.
        bands: Bands to return, in this order (any spelling :func:`cropmap.contract.bands.canonical_band`
            accepts); default all bands holding data, in :data:`cropmap.contract.bands.S2_BANDS` order.
        label_column: Integer label column; constant within a sample.

    Returns:
        The series, samples sorted by ``sample_id``, observations by date.

    Raises:
        ValueError: If columns are missing, a sample repeats a timestamp, a label varies
            within a sample, or a requested band is missing or all nodata. Samples that miss
            some of the file's timestamps get gaps (NaN) there.
    """
    path = Path(path)
    df = pd.read_parquet(path)
    for col in ("sample_id", "timestamp"):
        if col not in df.columns:
            raise ValueError(
                f"{path}: column {col!r} not found; is this a long-format WorldCereal extraction?"
            )
    band_cols = {canonical_band(m.group(1)): c for c in df.columns if (m := _LONG_BAND_RE.match(c))}
    if not band_cols:
        raise ValueError(f"{path}: no 'S2-L2A-Bxx' columns; found {list(df.columns)}")
    found = {b: bool((df[c].to_numpy() == NODATA).all()) for b, c in band_cols.items()}
    chosen = _choose_bands(found, bands, path)

    df = df.sort_values(["sample_id", "timestamp"], kind="stable")
    if df.duplicated(["sample_id", "timestamp"]).any():
        raise ValueError(f"{path}: some samples have the same timestamp twice")
    labels = _labels(df, label_column, path)
    per_sample = pd.Series(labels, index=df["sample_id"].to_numpy()).groupby(level=0, sort=True)
    if (per_sample.nunique() > 1).any():
        raise ValueError(f"{path}: {label_column!r} changes within a sample")
    counts = df.groupby("sample_id", sort=True).size()
    parcel_ids, class_names = _parcels_and_names(df, labels, label_column, path)
    stamps = np.sort(df["timestamp"].unique())
    if counts.nunique() != 1 or int(counts.iloc[0]) != len(stamps):
        # Real extractions miss some time steps for some parcels: put every sample on the union of the
        # file's timestamps, a missing row being a gap (nodata) like any other.
        logger.info(
            "%s: %d of %d samples miss some of the %d timestamps; missing steps are gaps",
            path.name,
            int((counts < len(stamps)).sum()),
            len(counts),
            len(stamps),
        )
        full = pd.MultiIndex.from_product([counts.index, stamps], names=["sample_id", "timestamp"])
        df = df.set_index(["sample_id", "timestamp"]).reindex(full).reset_index()
        for b in chosen:
            df[band_cols[b]] = df[band_cols[b]].fillna(NODATA)
    n, s = len(counts), len(stamps)
    raw = np.stack([df[band_cols[b]].to_numpy() for b in chosen], axis=-1).reshape(n, s, len(chosen))
    dates = df["timestamp"].to_numpy().astype("datetime64[D]").reshape(n, s)
    logger.info("%s: %d samples x %d dates x %d bands (%s)", path.name, n, s, len(chosen), " ".join(chosen))
    return WorldCerealSeries(
        values=_to_float(raw),
        dates=dates,
        bands=chosen,
        labels=per_sample.first().to_numpy(dtype=np.int64),
        label_column=label_column,
        sample_ids=counts.index.to_numpy().astype(str),
        parcel_ids=parcel_ids,
        class_names=class_names,
    )


def _parcels_and_names(
    df: pd.DataFrame, labels: np.ndarray, label_column: str, path: Path
) -> tuple[np.ndarray | None, dict[int, str] | None]:
    """The parcel of each sample (sorted by ``sample_id``) and the class names, where the file has those columns.

    Raises:
        ValueError: If a sample lies in several parcels, or a label code has several names.
    """
    parcels = None
    if "parcel_id" in df.columns:
        per = df.groupby("sample_id", sort=True)["parcel_id"]
        if (per.nunique() > 1).any():
            raise ValueError(f"{path}: 'parcel_id' changes within a sample")
        parcels = per.first().to_numpy().astype(str)
    names = None
    if "class_name" in df.columns:
        pairs = pd.DataFrame({"code": labels, "name": df["class_name"].to_numpy()}).drop_duplicates()
        if pairs["code"].duplicated().any():
            raise ValueError(f"{path}: some {label_column!r} codes have several names in 'class_name'")
        names = {int(c): str(n) for c, n in zip(pairs["code"], pairs["name"], strict=True)}
    return parcels, names


def read_wide(
    path: str | Path, *, bands: Sequence[str] | None = None, label_column: str = "ewoc_code"
) -> WorldCerealSeries:
    """Read a wide-format extraction (one row per sample, ``OPTICAL-Bxx-ts<i>-<res>m`` columns).

    Time step ``i`` is the month ``start_date + i`` (monthly composites). Where an
    ``end_date`` column exists, the last step must fall in its month.

    Args:
        path: A ``.parquet`` file.
        bands: As in :func:`read_long`.
        label_column: Integer label column (``ewoc_code``; older files such as the
            prometheo test set use ``CROPTYPE_LABEL``).

    Returns:
        The series in file order.

    Raises:
        ValueError: If the sample id, ``start_date`` or label column is missing, the
            time steps of a band are not ``0..S-1`` for every band, or the
            dates disagree with ``end_date``.
    """
    path = Path(path)
    df = pd.read_parquet(path)
    if "sample_id" not in df.columns and df.index.name == "sample_id":
        df = df.reset_index()
    for col in ("sample_id", "start_date"):
        if col not in df.columns:
            raise ValueError(
                f"{path}: column {col!r} not found; is this a wide-format WorldCereal extraction?"
            )
    cols: dict[str, dict[int, str]] = {}
    for c in df.columns:
        if m := _WIDE_BAND_RE.match(c):
            cols.setdefault(canonical_band(m.group(1)), {})[int(m.group(2))] = c
    if not cols:
        raise ValueError(f"{path}: no 'OPTICAL-Bxx-ts<i>-<res>m' columns; found {list(df.columns)[:20]} ...")
    steps = {b: sorted(ts) for b, ts in cols.items()}
    s = len(next(iter(steps.values())))
    bad = {b: ts for b, ts in steps.items() if ts != list(range(s))}
    if bad:
        raise ValueError(f"{path}: time steps are not 0..{s - 1} for bands {sorted(bad)}")
    found = {b: bool((df[list(ts.values())].to_numpy() == NODATA).all()) for b, ts in cols.items()}
    chosen = _choose_bands(found, bands, path)

    raw = np.stack([df[[cols[b][i] for i in range(s)]].to_numpy() for b in chosen], axis=-1)  # (N, S, C)
    start = pd.to_datetime(df["start_date"]).to_numpy().astype("datetime64[M]")
    months = start[:, None] + np.arange(s)[None, :].astype("timedelta64[M]")
    dates = months.astype("datetime64[D]")
    if "end_date" in df.columns:
        end = pd.to_datetime(df["end_date"]).to_numpy().astype("datetime64[M]")
        off = months[:, -1] != end
        if off.any():
            raise ValueError(
                f"{path}: {int(off.sum())} samples have {s} monthly steps from start_date that do not end in the "
                f"month of end_date (e.g. start {start[off][0]}, end {end[off][0]})"
            )
    logger.info(
        "%s: %d samples x %d dates x %d bands (%s)", path.name, len(df), s, len(chosen), " ".join(chosen)
    )
    return WorldCerealSeries(
        values=_to_float(raw),
        dates=dates,
        bands=chosen,
        labels=_labels(df, label_column, path),
        label_column=label_column,
        sample_ids=df["sample_id"].to_numpy().astype(str),
    )


def read_extraction(
    path: str | Path, *, bands: Sequence[str] | None = None, label_column: str = "ewoc_code"
) -> WorldCerealSeries:
    """Read a WorldCereal extraction in either layout (chosen from its columns).

    Raises:
        ValueError: If the file is neither layout, or as :func:`read_long` / :func:`read_wide`.
    """
    path = Path(path)
    import pyarrow.parquet as pq

    names = pq.read_schema(path).names
    if any(_LONG_BAND_RE.match(c) for c in names):
        return read_long(path, bands=bands, label_column=label_column)
    if any(_WIDE_BAND_RE.match(c) for c in names):
        return read_wide(path, bands=bands, label_column=label_column)
    raise ValueError(
        f"{path}: neither long ('S2-L2A-Bxx') nor wide ('OPTICAL-Bxx-ts<i>-<res>m') WorldCereal columns found"
    )


def on_time_grid(series: WorldCerealSeries, grid: TimeGrid, *, season: int, min_valid: int) -> GriddedSeries:
    """Put series on a time grid with the inference gap filling.

    Observations outside the season starting in ``season`` are dropped, the rest are
    placed by day of season and resampled with :func:`cropmap.contract.timegrid.fill_gaps`
    (linear in time, nearest value repeated at the ends).

    Args:
        series: From one of the readers.
        grid: The model's time grid.
        season: Calendar year in which the wanted season starts (e.g. 2020 for a
            Nov 2020 - Oct 2021 season with ``season_start="11-01"``).
        min_valid: Fewest valid observations a sample needs (``ok`` False otherwise).

    Returns:
        The gridded series (all samples, ``ok`` says which are usable).
    """
    n, _, c = series.values.shape
    t = len(grid.day_of_season)
    x = np.full((n, t, c), np.nan, dtype=np.float32)
    n_valid = np.zeros(n, dtype=np.int64)
    ok = np.zeros(n, dtype=bool)
    # Samples usually share their dates: fill each group of identical date rows at once.
    rows, inverse = np.unique(series.dates, axis=0, return_inverse=True)
    for g, row in enumerate(rows):
        members = np.flatnonzero(inverse.ravel() == g)
        dates = [dt.date.fromisoformat(str(d)) for d in row]
        if not any(grid.season_of(d) == season for d in dates):
            logger.info("%d samples have no observation in season %d", len(members), season)
            continue
        idx, _ = select_season(dates, grid, season)
        pos = np.array([grid.position_of(dates[i]) for i in idx])
        filled, nv, good = fill_gaps(
            series.values[members][:, idx], pos, grid.day_of_season, min_valid=min_valid
        )
        x[members], n_valid[members], ok[members] = filled, nv, good
    dropped = int((~ok).sum())
    if dropped:
        logger.info(
            "%d of %d samples have fewer than %d valid observations in season %d",
            dropped,
            n,
            min_valid,
            season,
        )
    return GriddedSeries(
        x=x,
        n_valid=n_valid,
        ok=ok,
        labels=series.labels,
        sample_ids=series.sample_ids,
        bands=series.bands,
        season=season,
    )


def format_ewoc_code(code: int) -> str:
    """``1101060000`` -> ``"11-01-06-000-0"`` (the legend's spelling)."""
    s = f"{int(code):010d}"
    return f"{s[0:2]}-{s[2:4]}-{s[4:6]}-{s[6:9]}-{s[9]}"


def read_class_names(path: str | Path, *, column: str = "label_full") -> dict[int, str]:
    """Read WorldCereal's ``crop_type_class_mappings.csv`` as ``ewoc_code -> name``.

    Args:
        path: The CSV (``;``-separated, UTF-8 with byte-order mark).
        column: Name column (``label_full``, ``sampling_label``, ``level_2`` ...).

    Raises:
        ValueError: If the file lacks ``ewoc_code`` or ``column``, or a code is malformed / repeated.
    """
    path = Path(path)
    table = pd.read_csv(path, sep=";", encoding="utf-8-sig", dtype=str, keep_default_na=False)
    for col in ("ewoc_code", column):
        if col not in table.columns:
            raise ValueError(f"{path}: column {col!r} not found; columns are {list(table.columns)}")
    codes = table["ewoc_code"].str.replace("-", "", regex=False)
    bad = codes[~codes.str.fullmatch(r"\d{10}")]
    if len(bad):
        raise ValueError(f"{path}: malformed ewoc codes {bad.head().tolist()}; expected 'NN-NN-NN-NNN-N'")
    ints = codes.astype(np.int64)
    if ints.duplicated().any():
        raise ValueError(f"{path}: repeated ewoc codes {ints[ints.duplicated()].head().tolist()}")
    return dict(zip(ints.tolist(), table[column].tolist(), strict=True))


@dataclass(frozen=True)
class CoarseClass:
    """One class of a coarse legend, defined by ``ewoc_code`` prefixes."""

    code: int
    """Class code written to maps (1..254)."""
    name: str
    color: str
    """Legend colour ``#RRGGBB``."""
    prefixes: tuple[str, ...]
    """Leading digits of the 10-digit ``ewoc_code`` that belong to this class."""
    description: str


FLANDERS_CLASSES: tuple[CoarseClass, ...] = (
    CoarseClass(
        1,
        "grassland",
        "#5aae61",
        ("20",),
        "Herbaceous non-crop vegetation: managed grassland, temporary and long-term meadows (20-..)",
    ),
    CoarseClass(2, "maize", "#f1c40f", ("110106",), "Maize, grain and silage (11-01-06-..)"),
    CoarseClass(
        3,
        "other arable crops",
        "#b35806",
        ("10", "11", "14", "15"),
        "Every other temporary crop (cereals, potatoes, beet, vegetables, flowers, fallow) and cropland "
        "declared without a crop type (10-..)",
    ),
    CoarseClass(
        4,
        "non-cropland and perennial",
        "#6a7b8c",
        ("12", "16", "17", "25", "3", "4", "5", "6", "7"),
        "Permanent crops (orchards), trees, shrubland, water, built-up and other non-cropland, including "
        "'non-cropland incl. perennial' (16-..)",
    ),
)
"""Coarse legend of the Flanders sample model.

What the 100 Flanders 2021 LPIS parcels hold (``ewoc_code`` -> count) and where it goes:

=====================================  =====  ==========================
WorldCereal label                      count  coarse class
=====================================  =====  ==========================
non_cropland_incl_perennial (16)          30  4 non-cropland and perennial
managed_grasslands (20-01-02)             28  1 grassland
maize (11-01-06)                          12  2 maize
cropland_unspecified (10)                 12  3 other arable crops
potatoes, sugar beet, winter wheat,        9  3 other arable crops
winter barley, spinach, flower crops
open water, shrubland, deciduous trees,   10  4 non-cropland and perennial
permanent crops, pears
=====================================  =====  ==========================

Winter cereals (3 parcels) and potatoes (2) are too rare here to be classes of their own.
The longest matching prefix wins (maize ``110106`` before arable ``11``).
"""


def coarse_labels(codes: np.ndarray, classes: Sequence[CoarseClass] = FLANDERS_CLASSES) -> np.ndarray:
    """Map ``ewoc_code`` values to coarse class codes (longest matching prefix wins).

    Raises:
        ValueError: If a code matches no class (e.g. ``0``, "unknown"), naming the codes.
    """
    rules = sorted(((p, c.code) for c in classes for p in c.prefixes), key=lambda r: -len(r[0]))
    out = np.zeros(len(codes), dtype=np.int64)
    unmatched: set[int] = set()
    for i, code in enumerate(np.asarray(codes, dtype=np.int64)):
        digits = f"{int(code):010d}"
        hit = next((cls for prefix, cls in rules if digits.startswith(prefix)), None)
        if hit is None:
            unmatched.add(int(code))
        else:
            out[i] = hit
    if unmatched:
        raise ValueError(
            f"ewoc codes {sorted(format_ewoc_code(c) for c in unmatched)} match no coarse class "
            f"({', '.join(c.name for c in classes)}); drop those samples or extend the legend"
        )
    return out
