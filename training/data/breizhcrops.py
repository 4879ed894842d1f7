"""Reader for the BreizhCrops raw CSV layout (one CSV per parcel, one row per Sentinel-2 acquisition).

Layout of a dataset root (BreizhCrops' raw export; the Bavarian crop-type-mapping data use the same)::

    ROOT/classmapping.csv                 crop code -> class id and class name
    ROOT/csv/<region>/<parcel id>.csv     rows = acquisitions: band columns (B1 .. B12, B8A),
                                          QA10 / QA20 / QA60, doa (date of acquisition),
                                          label (crop code), id (parcel id)
    ROOT/ids/<region>_<split>.txt         parcel ids of each split, one per line
                                          (region matched case-insensitively)

Band columns are mapped to canonical names through :func:`cropmap.contract.bands.canonical_band` and returned in
:data:`cropmap.contract.bands.S2_BANDS` order (13 bands, B10 included). Band values stay raw digital numbers
(reflectance x 10000) as float32; empty cells are NaN (rows without any band value are kept unless asked
otherwise). ``QA60`` bits 10 and 11 (opaque cloud, cirrus) give the per-row ``cloudy`` flag.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from cropmap.contract.bands import S2_BANDS, canonical_band

logger = logging.getLogger(__name__)

_NON_BAND_COLUMNS = {"QA10", "QA20", "QA60", "DOA", "LABEL", "ID"}
_CODE_COLUMNS = ("nutzcode", "code")
_QA60_CLOUD_BITS = (1 << 10) | (1 << 11)  # opaque clouds, cirrus (Sentinel-2 L1C QA60)
_IDS_FILE = re.compile(r"^(?P<region>.+)_(?P<split>[^_]+)\.txt$")


class UnknownCropCodeError(ValueError):
    """A parcel's crop code is not in classmapping.csv."""


@dataclass(frozen=True)
class Parcel:
    """One parcel's irregular time series."""

    parcel_id: int
    region: str
    split: str | None
    """Split whose ids file lists the parcel (``train``, ``valid``, ``eval`` ...), None when none does."""
    x: np.ndarray
    """(T_i, 13) float32 raw reflectance x 10000 in :data:`cropmap.contract.bands.S2_BANDS` order, NaN = missing."""
    dates: np.ndarray
    """(T_i,) datetime64[D] acquisition dates, ascending."""
    cloudy: np.ndarray
    """(T_i,) bool, QA60 cloud or cirrus bit set (all False when the file has no QA60 column)."""
    code: int
    """The crop code in the file's label column."""
    label: int
    """Class id from classmapping.csv."""
    class_name: str


def read_classmapping(path: str | Path) -> pd.DataFrame:
    """Read ``classmapping.csv``: one row per crop code with its class ``id`` and ``classname``.

    Returns:
        A frame indexed by crop code with columns ``id`` (int) and ``classname`` (str).

    Raises:
        ValueError: If the required columns are missing or a code maps to two classes.
    """
    frame = pd.read_csv(path)
    code_col = next((c for c in _CODE_COLUMNS if c in frame.columns), None)
    missing = {"id", "classname"} - set(frame.columns)
    if code_col is None or missing:
        raise ValueError(
            f"{path} has columns {list(frame.columns)}; "
            f"expected a code column ({' or '.join(_CODE_COLUMNS)}), 'id' and 'classname'"
        )
    frame = frame[[code_col, "id", "classname"]].rename(columns={code_col: "code"})
    if frame["code"].duplicated().any():
        dupes = sorted(frame.loc[frame["code"].duplicated(), "code"].unique().tolist())
        raise ValueError(f"{path}: crop code(s) {dupes} appear twice")
    frame = frame.astype({"code": np.int64, "id": np.int64, "classname": str})
    return frame.set_index("code")


def read_split_ids(root: str | Path) -> dict[tuple[str, str], set[int]]:
    """Parcel ids per (region, split) from ``ROOT/ids/<region>_<split>.txt`` (region lower-cased)."""
    ids_dir = Path(root) / "ids"
    out: dict[tuple[str, str], set[int]] = {}
    if not ids_dir.is_dir():
        return out
    for path in sorted(ids_dir.glob("*.txt")):
        match = _IDS_FILE.match(path.name)
        if match is None:
            raise ValueError(f"{path.name}: expected ids files named <region>_<split>.txt")
        text = path.read_text().split()
        try:
            ids = {int(v) for v in text}
        except ValueError as err:
            raise ValueError(f"{path}: expected one integer parcel id per line ({err})") from err
        out[(match["region"].lower(), match["split"])] = ids
    return out


def _band_columns(columns: list[str], path: Path) -> dict[str, str]:
    """CSV column -> canonical band name, for every band column; checks that all 13 bands are present."""
    mapping: dict[str, str] = {}
    for col in columns:
        if not col or col.startswith("Unnamed") or col.strip().upper() in _NON_BAND_COLUMNS:
            continue
        try:
            band = canonical_band(col)
        except ValueError as err:
            raise ValueError(
                f"{path}: column {col!r} is neither a band nor one of {sorted(_NON_BAND_COLUMNS)}"
            ) from err
        if band in mapping.values():
            raise ValueError(f"{path}: two columns name band {band}")
        mapping[col] = band
    missing = [b for b in S2_BANDS if b not in mapping.values()]
    if missing:
        raise ValueError(f"{path}: band column(s) {missing} missing; found {sorted(mapping)}")
    return mapping


def read_parcel_csv(path: str | Path, classes: pd.DataFrame, *, region: str, split: str | None) -> Parcel:
    """Read one parcel CSV.

    Args:
        path: ``csv/<region>/<id>.csv``.
        classes: :func:`read_classmapping` output.
        region: Region folder name.
        split: The parcel's split (or None).

    Raises:
        UnknownCropCodeError: If classmapping lacks the parcel's crop code.
        ValueError: On missing columns or mixed labels or ids.
    """
    path = Path(path)
    frame = pd.read_csv(path)
    for col in ("doa", "label", "id"):
        if col not in frame.columns:
            raise ValueError(f"{path}: column {col!r} missing; found {list(frame.columns)}")
    if frame.empty:
        raise ValueError(f"{path} has no rows")
    bands = _band_columns(list(frame.columns), path)
    frame = frame.sort_values("doa", kind="stable")
    codes = frame["label"].unique()
    ids = frame["id"].unique()
    if codes.size != 1 or ids.size != 1:
        raise ValueError(
            f"{path}: expected one label and one id, found labels {codes.tolist()} and ids {ids.tolist()}"
        )
    parcel_id, code = int(ids[0]), int(codes[0])
    if path.stem.isdigit() and int(path.stem) != parcel_id:
        raise ValueError(f"{path}: file name says parcel {path.stem}, its id column says {parcel_id}")
    if code not in classes.index:
        raise UnknownCropCodeError(f"{path}: crop code {code} is not in classmapping.csv")
    by_band = {band: col for col, band in bands.items()}
    x = frame[[by_band[b] for b in S2_BANDS]].to_numpy(dtype=np.float32)
    dates = pd.to_datetime(frame["doa"], format="%Y-%m-%d").to_numpy().astype("datetime64[D]")
    if "QA60" in frame.columns:
        qa = frame["QA60"].fillna(0).to_numpy().astype(np.int64)
        cloudy = (qa & _QA60_CLOUD_BITS) != 0
    else:
        cloudy = np.zeros(len(frame), dtype=bool)
    return Parcel(
        parcel_id=parcel_id,
        region=region,
        split=split,
        x=x,
        dates=dates,
        cloudy=cloudy,
        code=code,
        label=int(classes.at[code, "id"]),
        class_name=str(classes.at[code, "classname"]),
    )


def read_parcels(
    root: str | Path,
    *,
    region: str | None = None,
    split: str | None = None,
    drop_empty: bool = False,
    on_unknown_code: Literal["error", "skip"] = "error",
) -> list[Parcel]:
    """Read every parcel of a BreizhCrops-layout dataset.

    Args:
        root: Dataset root (with ``classmapping.csv``, ``csv/`` and optionally ``ids/``).
        region: Only this region folder (case-insensitive); all regions when None.
        split: Only parcels listed in this split's ids file.
        drop_empty: Drop acquisitions without any band value (all NaN).
        on_unknown_code: ``"skip"`` leaves out parcels whose crop code classmapping lacks (logged);
            ``"error"`` raises.

    Returns:
        Parcels sorted by region and id.

    Raises:
        FileNotFoundError: If ``classmapping.csv`` or ``csv/`` is missing, or the region does not exist.
        ValueError: On malformed files, a parcel listed in two splits, or unknown codes with ``"error"``.
    """
    root = Path(root)
    mapping_path = root / "classmapping.csv"
    csv_dir = root / "csv"
    if not mapping_path.exists() or not csv_dir.is_dir():
        raise FileNotFoundError(
            f"{root} lacks classmapping.csv or csv/; expected the BreizhCrops raw CSV layout"
        )
    classes = read_classmapping(mapping_path)
    split_ids = read_split_ids(root)
    regions = sorted(p for p in csv_dir.iterdir() if p.is_dir())
    if region is not None:
        regions = [p for p in regions if p.name.lower() == region.lower()]
        if not regions:
            raise FileNotFoundError(f"region {region!r} not found in {csv_dir}")
    out: list[Parcel] = []
    skipped = 0
    for region_dir in regions:
        key = region_dir.name.lower()
        splits_here = {s: ids for (r, s), ids in split_ids.items() if r == key}
        for path in sorted(region_dir.glob("*.csv")):
            pid = int(path.stem) if path.stem.isdigit() else None
            in_splits = [s for s, ids in splits_here.items() if pid in ids]
            if len(in_splits) > 1:
                raise ValueError(f"parcel {pid} of region {region_dir.name} is listed in splits {in_splits}")
            parcel_split = in_splits[0] if in_splits else None
            if split is not None and parcel_split != split:
                continue
            try:
                parcel = read_parcel_csv(path, classes, region=region_dir.name, split=parcel_split)
            except UnknownCropCodeError:
                if on_unknown_code == "error":
                    raise
                skipped += 1
                continue
            if drop_empty:
                keep = ~np.isnan(parcel.x).all(axis=1)
                parcel = dataclasses.replace(
                    parcel, x=parcel.x[keep], dates=parcel.dates[keep], cloudy=parcel.cloudy[keep]
                )
            out.append(parcel)
    if skipped:
        logger.info("skipped %d parcels whose crop code is not in %s", skipped, mapping_path)
    logger.info("read %d parcels from %s", len(out), root)
    return out
