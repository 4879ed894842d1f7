"""Sentinel-2 + Sentinel-1 pairs from a WorldCereal extraction, for bi-modal pre-training.

``cropmap data s1-pairs EXTRACTION.parquet -o OUT.npz [--alignment point|time]`` (alias ``python -m
training.data.s1pairs``) pairs each sample's
Sentinel-2 observation with its Sentinel-1 backscatter of the same sample and date, and writes the ``.npz``
that ``python -m training.pretrain --data OUT.npz --mode bimodal`` reads: Sentinel-1 plays the second
modality (the role PlanetScope has in the papers), with k = 1 (the sample's own value, no neighbourhood) and
two features (VV, VH).

Both WorldCereal layouts are read (:mod:`training.data.worldcereal`): long files carry ``S1-SIGMA0-VV`` /
``S1-SIGMA0-VH`` beside ``S2-L2A-Bxx`` on each (``sample_id``, ``timestamp``) row; wide files carry
``SAR-VV-ts<i>-<res>m`` / ``SAR-VH-ts<i>-<res>m`` beside ``OPTICAL-Bxx-ts<i>-<res>m``, time step ``i`` being the
same month for both.

**Sentinel-1 values.** WorldCereal stores sigma0 backscatter as unsigned 16-bit digital numbers
``DN = 10 ** ((dB + 83) / 20)``, with :data:`S1_NODATA` (65535) for no data; its own preprocessing turns them
back into decibels with ``dB = 20 * log10(DN) - 83`` (:func:`s1_to_db`). The pairs hold decibels by default
(``units="db"``; on the shipped files the medians are about -11 dB VV and -17 dB VH, as expected of farmland),
or the stored numbers (``units="dn"``). A value of 65535, or 0 and below (no logarithm), is no data.

**Validity.** A Sentinel-2 observation is valid under the rule the rest of training applies
(:func:`cropmap.contract.timegrid.fill_gaps`, :mod:`training.data.datasets`): every band holds data (65535 in any band
makes the whole observation missing) and not every band is 0. WorldCereal's monthly composites are built from
cloud-masked scenes and carry no cloud band, so there is no cloud probability to threshold. A Sentinel-1
observation is valid when every polarisation holds data. Point-wise, a (sample, date) becomes a pair when both
are valid; the others are dropped and counted by reason (:class:`PairCounts`). Time-wise, a sample becomes one
series pair ``(T, C)`` / ``(T, 2)`` over all the file's dates when every date has both modalities valid (the
pre-training input must be gap-free); samples with any incomplete date are dropped and counted.

Besides ``s2``, ``ps`` and ``bands`` the file holds ``ps_bands`` (``VV``, ``VH``), ``ps_units``, ``sample_id``,
``date`` (``(N,)`` point-wise, ``(N, T)`` time-wise, ISO dates) and ``label`` (the label column of each pair's
sample), so that a caller can keep the pairs of some samples only (e.g. the training parcels of a split).
Labels are never used by pre-training.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from cropmap.safeio.atomic import atomic_path
from training.data.worldcereal import WorldCerealSeries, read_extraction

logger = logging.getLogger(__name__)

S1_NODATA = 65535
"""WorldCereal's nodata value for Sentinel-1 sigma0 (uint16 maximum)."""
S1_POLARISATIONS = ("VV", "VH")
"""The polarisations WorldCereal extracts, in the order the pairs hold them by default."""
DB_OFFSET = 83.0
"""``dB = 20 * log10(DN) - DB_OFFSET`` (WorldCereal's sigma0 encoding)."""

_LONG_S1_RE = re.compile(r"^S1-SIGMA0-(VV|VH)$")
_WIDE_S1_RE = re.compile(r"^SAR-(VV|VH)-ts(\d+)-\d+m$")

Alignment = Literal["point", "time"]
Units = Literal["db", "dn"]


@dataclass(frozen=True)
class PairCounts:
    """What happened to the (sample, date) observations of the file."""

    observations: int
    """Sample x date slots of the file (a long file's missing rows included)."""
    both_valid: int
    """Slots where Sentinel-2 and Sentinel-1 are both valid."""
    s2_missing: int
    """Slots where only Sentinel-2 is invalid (nodata in a band, or every band 0)."""
    s1_missing: int
    """Slots where only Sentinel-1 is invalid (nodata or a non-positive number in a polarisation)."""
    both_missing: int
    """Slots where neither modality is valid."""
    samples: int
    """Samples in the file."""
    samples_kept: int
    """Samples with at least one pair (point-wise) or whose every date is a pair (time-wise)."""
    pairs: int
    """Pairs written: (sample, date) pairs point-wise, sample series time-wise."""

    def summary(self) -> str:
        """One line for the command's output."""
        return (
            f"{self.observations:,} (sample, date) observations: {self.both_valid:,} with both modalities, "
            f"dropped {self.s2_missing:,} without S2, {self.s1_missing:,} without S1, {self.both_missing:,} "
            f"without either; {self.samples_kept:,} of {self.samples:,} samples kept"
        )


@dataclass(frozen=True)
class S1Pairs:
    """Sentinel-2 / Sentinel-1 pairs of one extraction."""

    s2: np.ndarray
    """float32 ``(N, C)`` point-wise or ``(N, T, C)`` time-wise S2 raw digital numbers (reflectance x 10000)."""
    s1: np.ndarray
    """float32 ``(N, P)`` or ``(N, T, P)`` Sentinel-1 sigma0, in ``units``."""
    bands: tuple[str, ...]
    """S2 band names of the C axis."""
    s1_bands: tuple[str, ...]
    """Polarisations of the P axis."""
    units: Units
    """``"db"`` (decibels) or ``"dn"`` (WorldCereal's stored numbers)."""
    sample_ids: np.ndarray
    """``(N,)`` str: the sample of each pair."""
    dates: np.ndarray
    """``datetime64[D]``: ``(N,)`` point-wise, ``(N, T)`` time-wise."""
    labels: np.ndarray
    """int64 ``(N,)`` label of each pair's sample."""
    alignment: Alignment
    counts: PairCounts


def s1_to_db(dn: np.ndarray) -> np.ndarray:
    """WorldCereal sigma0 digital numbers -> decibels (``20 * log10(DN) - 83``); nodata becomes NaN."""
    raw = np.asarray(dn, dtype=np.float64)
    out = np.full(raw.shape, np.nan, dtype=np.float64)
    good = _s1_valid_values(raw)
    out[good] = 20.0 * np.log10(raw[good]) - DB_OFFSET
    return out.astype(np.float32)


def _s1_valid_values(raw: np.ndarray) -> np.ndarray:
    return np.isfinite(raw) & (raw != S1_NODATA) & (raw > 0)


def s2_valid(values: np.ndarray) -> np.ndarray:
    """``(..., C)`` S2 raw values with NaN for nodata -> ``(...)`` bool: every band holds data, not all 0."""
    return np.isfinite(values).all(axis=-1) & ~(values == 0).all(axis=-1)


def _missing_s1(path: Path, names: Sequence[str], wanted: Sequence[str], found: Sequence[str]) -> ValueError:
    s1ish = [c for c in names if any(k in c.upper() for k in ("S1", "SAR", "SIGMA", "VV", "VH"))]
    return ValueError(
        f"{path}: Sentinel-1 polarisations {sorted(set(wanted) - set(found))} not found; expected columns "
        f"'S1-SIGMA0-<VV|VH>' (long layout) or 'SAR-<VV|VH>-ts<i>-<res>m' (wide layout), found "
        f"{s1ish if s1ish else 'no Sentinel-1 column'} among {len(names)} columns"
    )


def _read_s1_long(path: Path, series: WorldCerealSeries, pols: Sequence[str]) -> np.ndarray:
    """``(N, S, P)`` stored S1 numbers on the series' (sample, date) grid; NaN where the file has no row."""
    names = _schema(path)
    cols = {m.group(1): c for c in names if (m := _LONG_S1_RE.match(c))}
    if any(p not in cols for p in pols):
        raise _missing_s1(path, names, pols, sorted(cols))
    df = pd.read_parquet(path, columns=["sample_id", "timestamp", *(cols[p] for p in pols)])
    key = pd.MultiIndex.from_arrays(
        [df["sample_id"].astype(str).to_numpy(), df["timestamp"].to_numpy().astype("datetime64[D]")],
        names=["sample_id", "date"],
    )
    if key.duplicated().any():
        raise ValueError(
            f"{path}: some samples have two rows on the same day; cannot pair S1 with S2 by date"
        )
    table = pd.DataFrame({p: df[cols[p]].to_numpy(dtype=np.float64) for p in pols}, index=key)
    n, s = series.dates.shape
    want = pd.MultiIndex.from_arrays(
        [np.repeat(series.sample_ids, s), series.dates.reshape(-1)], names=["sample_id", "date"]
    )
    return table.reindex(want).to_numpy().reshape(n, s, len(pols))


def _read_s1_wide(path: Path, series: WorldCerealSeries, pols: Sequence[str]) -> np.ndarray:
    """``(N, S, P)`` stored S1 numbers of a wide file, rows in file order (as :func:`read_wide`)."""
    names = _schema(path)
    cols: dict[str, dict[int, str]] = {}
    for c in names:
        if m := _WIDE_S1_RE.match(c):
            cols.setdefault(m.group(1), {})[int(m.group(2))] = c
    if any(p not in cols for p in pols):
        raise _missing_s1(path, names, pols, sorted(cols))
    s = series.dates.shape[1]
    for p in pols:
        if sorted(cols[p]) != list(range(s)):
            raise ValueError(
                f"{path}: SAR-{p} time steps are {sorted(cols[p])}; the optical bands have steps 0..{s - 1}"
            )
    df = pd.read_parquet(path)
    if "sample_id" not in df.columns and df.index.name == "sample_id":
        df = df.reset_index()
    if not np.array_equal(df["sample_id"].to_numpy().astype(str), series.sample_ids):
        raise ValueError(f"{path}: sample order changed between reads")
    return np.stack([df[[cols[p][i] for i in range(s)]].to_numpy(dtype=np.float64) for p in pols], axis=-1)


def _schema(path: Path) -> list[str]:
    import pyarrow.parquet as pq

    return list(pq.read_schema(path).names)


def s1_series(
    path: str | Path,
    series: WorldCerealSeries,
    *,
    polarisations: Sequence[str] = S1_POLARISATIONS,
    units: Units = "db",
) -> np.ndarray:
    """Sentinel-1 values of an extraction on the (sample, date) layout of its S2 ``series``.

    Args:
        path: The extraction ``series`` was read from (:func:`training.data.worldcereal.read_extraction`).
        series: Its S2 series; the result has the same sample and date axes.
        polarisations: Sentinel-1 polarisations, in this order.
        units: ``"db"`` or ``"dn"``, as in :func:`extraction_pairs`.

    Returns:
        float32 ``(N, S, P)``, NaN where no data (or no row in a long file).

    Raises:
        ValueError: If the file lacks the polarisations' columns.
    """
    path = Path(path)
    names = _schema(path)
    pols = tuple(p.upper() for p in polarisations)
    long = any(c.startswith("S2-L2A-") for c in names)
    raw = _read_s1_long(path, series, pols) if long else _read_s1_wide(path, series, pols)
    if units == "db":
        return s1_to_db(raw)
    return np.where(_s1_valid_values(raw), raw, np.nan).astype(np.float32)


def extraction_pairs(
    path: str | Path,
    *,
    alignment: Alignment = "point",
    bands: Sequence[str] | None = None,
    polarisations: Sequence[str] = S1_POLARISATIONS,
    units: Units = "db",
    label_column: str = "ewoc_code",
) -> S1Pairs:
    """Pair the Sentinel-2 and Sentinel-1 observations of a WorldCereal extraction by sample and date.

    Args:
        path: A long (``S1-SIGMA0-VV``) or wide (``SAR-VV-ts<i>-<res>m``) extraction.
        alignment: ``"point"``: one pair per (sample, date) with both modalities valid; ``"time"``: one
            series pair per sample whose every date has both modalities valid.
        bands: S2 bands (default: every band holding data, as :func:`read_extraction`).
        polarisations: Sentinel-1 polarisations, in this order.
        units: ``"db"`` (``20 * log10(DN) - 83``) or ``"dn"`` (the stored numbers).
        label_column: The samples' label column (carried along, never used for pairing).

    Returns:
        The pairs and the counts of what was kept and dropped.

    Raises:
        ValueError: If the file lacks the S1 columns (naming what it has and what was expected), for
            the reader's errors, an unknown polarisation / alignment / unit, or when no pair remains.
    """
    path = Path(path)
    if alignment not in ("point", "time"):
        raise ValueError(f"alignment must be 'point' or 'time', got {alignment!r}")
    if units not in ("db", "dn"):
        raise ValueError(f"units must be 'db' or 'dn', got {units!r}")
    pols = tuple(p.upper() for p in polarisations)
    unknown = [p for p in pols if p not in S1_POLARISATIONS]
    if unknown or not pols or len(set(pols)) != len(pols):
        raise ValueError(
            f"polarisations must be distinct values of {list(S1_POLARISATIONS)}, got {list(polarisations)}"
        )
    names = _schema(path)
    if not any(_LONG_S1_RE.match(c) or _WIDE_S1_RE.match(c) for c in names):
        raise _missing_s1(path, names, pols, [])
    series = read_extraction(path, bands=bands, label_column=label_column)
    s1 = s1_series(path, series, polarisations=pols, units=units)  # (N, S, P), NaN = no data

    ok2 = s2_valid(series.values)  # (N, S)
    ok1 = np.isfinite(s1).all(axis=-1)
    both = ok2 & ok1
    n, s = both.shape
    if alignment == "point":
        sample_idx, date_idx = np.nonzero(both)
        keep_samples = int(both.any(axis=1).sum())
        out_s2 = series.values[sample_idx, date_idx]
        out_s1 = s1[sample_idx, date_idx]
        out_ids, out_dates = series.sample_ids[sample_idx], series.dates[sample_idx, date_idx]
        out_labels = series.labels[sample_idx]
    else:
        full = both.all(axis=1)
        keep_samples = int(full.sum())
        out_s2, out_s1 = series.values[full], s1[full]
        out_ids, out_dates, out_labels = series.sample_ids[full], series.dates[full], series.labels[full]
    counts = PairCounts(
        observations=n * s,
        both_valid=int(both.sum()),
        s2_missing=int((~ok2 & ok1).sum()),
        s1_missing=int((ok2 & ~ok1).sum()),
        both_missing=int((~ok2 & ~ok1).sum()),
        samples=n,
        samples_kept=keep_samples,
        pairs=len(out_s2),
    )
    if counts.pairs < 2:
        why = (
            "no sample has every date with both modalities" if alignment == "time" else "too few valid pairs"
        )
        raise ValueError(f"{path}: {counts.pairs} {alignment}-wise pairs ({why}); {counts.summary()}")
    logger.info("%s: %s", path.name, counts.summary())
    return S1Pairs(
        s2=np.ascontiguousarray(out_s2, dtype=np.float32),
        s1=np.ascontiguousarray(out_s1, dtype=np.float32),
        bands=series.bands,
        s1_bands=pols,
        units=units,
        sample_ids=np.asarray(out_ids).astype(str),
        dates=np.asarray(out_dates, dtype="datetime64[D]"),
        labels=np.asarray(out_labels, dtype=np.int64),
        alignment=alignment,
        counts=counts,
    )


def subset(pairs: S1Pairs, keep: np.ndarray) -> S1Pairs:
    """The pairs at ``keep`` (bool mask or positions); counts are those of the whole file."""
    idx = np.asarray(keep)
    return S1Pairs(
        s2=pairs.s2[idx],
        s1=pairs.s1[idx],
        bands=pairs.bands,
        s1_bands=pairs.s1_bands,
        units=pairs.units,
        sample_ids=pairs.sample_ids[idx],
        dates=pairs.dates[idx],
        labels=pairs.labels[idx],
        alignment=pairs.alignment,
        counts=pairs.counts,
    )


def write_pairs(pairs: S1Pairs, out: str | Path) -> Path:
    """Write the pairs as the ``.npz`` :func:`training.pretrain.run.load_pretrain_arrays` reads (atomically)."""
    out = Path(out)
    if out.suffix != ".npz":
        raise ValueError(f"output must be an .npz file, got {str(out)!r}")
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        np.savez(
            tmp,
            s2=pairs.s2,
            ps=pairs.s1,
            bands=np.array(pairs.bands),
            ps_bands=np.array(pairs.s1_bands),
            ps_units=np.array(pairs.units),
            sample_id=pairs.sample_ids,
            date=pairs.dates.astype(str),
            label=pairs.labels,
        )
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m training.data.s1pairs``: an alias of ``cropmap data s1-pairs``; returns the exit status."""
    from cropmap.cli_common import run_command
    from training.data.cli import s1_pairs as command

    return run_command(command, argv, prog_name="python -m training.data.s1pairs")


if __name__ == "__main__":
    raise SystemExit(main())
