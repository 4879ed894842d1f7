"""The regions of a batch: read from a CSV, TOML or JSON manifest, or from stack/mask pairs.

A region is a name (its output folder), a Sentinel-2 stack, cropland polygons and
optionally the season to classify. Manifest paths that are relative are resolved
against the manifest's folder. Every problem with a manifest raises
:class:`ManifestError` naming the file, the row and what was expected.

CSV (header row required, ``season`` column optional, empty cell = not set)::

    name,stack,mask,season
    north,stacks/north.tif,masks/north.gpkg,2021

TOML::

    [[regions]]
    name = "north"
    stack = "stacks/north.tif"
    mask = "masks/north.gpkg"
    season = 2021

JSON: a list of objects with the same keys, or ``{"regions": [...]}``.
"""

from __future__ import annotations

import csv
import json
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cropmap.errors import CropmapError

REQUIRED_KEYS = ("name", "stack", "mask")
OPTIONAL_KEYS = ("season", "parcels", "declared_column")
RESERVED_NAMES = frozenset({"batch_state.json", "batch_summary.json"})
"""File names ``cropmap batch`` writes in the output folder; no region may take them."""
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
_SUFFIXES = {".csv": "csv", ".toml": "toml", ".json": "json"}


class ManifestError(CropmapError, ValueError):
    """A region manifest (or a list of regions) is missing, unreadable or invalid."""


@dataclass(frozen=True)
class Region:
    """One region of a batch."""

    name: str
    """Output folder name: letters, digits, ``.``, ``_``, ``-``; starts with a letter or digit."""
    stack: Path
    """Absolute path of the stack (a time-major GeoTIFF or a folder of per-date GeoTIFFs)."""
    mask: Path
    """Absolute path of the cropland polygons."""
    season: int | None = None
    """Year in which the season to classify starts; ``None`` leaves it to the batch option."""
    parcels: Path | None = None
    """Parcel polygons: the region also gets ``<name>_parcels.gpkg``, a crop per parcel (``classify --parcels``)."""
    declared_column: str | None = None
    """With ``parcels``: their column of declared crops, checked against the map (``classify --declared-column``)."""


def read_manifest(path: str | Path) -> list[Region]:
    """Read the regions listed in a ``.csv``, ``.toml`` or ``.json`` manifest.

    Args:
        path: The manifest; relative stack and mask paths in it are resolved
            against its folder.

    Returns:
        The regions in manifest order.

    Raises:
        ManifestError: If the file is missing or unreadable, has an unknown
            suffix, unknown or missing keys, bad values, duplicate names or no regions.
    """
    path = Path(path).expanduser()
    kind = _SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise ManifestError(f"manifest {path} has suffix {path.suffix!r}; expected .csv, .toml or .json")
    from cropmap.safeio.overlap import special_file_kind

    if (special := special_file_kind(path)) is not None:
        raise ManifestError(
            f"manifest {path} is {special}, not a file; expected a .csv, .toml or .json file (it is "
            "not opened: reading a pipe would wait for a writer)"
        )
    if not path.is_file():
        raise ManifestError(
            f"manifest {path} does not exist; expected a .csv, .toml or .json file listing regions"
        )
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as err:
        raise ManifestError(f"manifest {path} could not be read as UTF-8 text ({err})") from err
    base = path.resolve().parent
    if kind == "csv":
        rows = _csv_rows(path, text)
    elif kind == "toml":
        tomllib = _toml_module(path)
        try:
            doc: Any = tomllib.loads(text)
        except tomllib.TOMLDecodeError as err:
            raise ManifestError(f"manifest {path} is not valid TOML ({err})") from err
        rows = _table_rows(path, doc, top="[[regions]] tables")
    else:
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as err:
            raise ManifestError(f"manifest {path} is not valid JSON ({err})") from err
        doc = {"regions": doc} if isinstance(doc, list) else doc
        rows = _table_rows(path, doc, top='a list or {"regions": [...]}')
    regions = [
        _region(f"manifest {path}, {where}", row, base, from_text=kind == "csv") for where, row in rows
    ]
    check_regions(regions, source=f"manifest {path}")
    return regions


def regions_from_pairs(stacks: Sequence[str | Path], masks: Sequence[str | Path]) -> list[Region]:
    """Regions from parallel lists of stacks and masks, named after the stacks.

    A stack file ``north.tif`` gives the region ``north``; a stack folder its folder name.

    Raises:
        ManifestError: If the lists differ in length, are empty, or two stacks give the same name.
    """
    if len(stacks) != len(masks):
        raise ManifestError(
            f"got {len(stacks)} --stack and {len(masks)} --mask; expected one --mask for each --stack, in order"
        )
    regions = []
    for i, (stack, mask) in enumerate(zip(stacks, masks, strict=True), start=1):
        s = Path(stack).expanduser()
        name = s.name if s.suffix.lower() not in (".tif", ".tiff") else s.stem
        row = {"name": name, "stack": str(stack), "mask": str(mask)}
        regions.append(_region(f"--stack number {i} ({stack})", row, Path.cwd(), from_text=True))
    check_regions(regions, source="the --stack options", hint="; use a manifest to name the regions")
    return regions


def check_regions(regions: Sequence[Region], *, source: str, hint: str = "") -> None:
    """Check that there is at least one region and that no two share a folder name.

    Names are compared ignoring case, since the folders would collide on
    case-insensitive file systems.

    Raises:
        ManifestError: Naming the duplicates.
    """
    if not regions:
        raise ManifestError(f"{source} lists no regions; expected at least one")
    seen: dict[str, str] = {}
    for r in regions:
        key = r.name.lower()
        if key in seen:
            raise ManifestError(
                f"{source} names two regions {seen[key]!r} and {r.name!r}; expected unique names "
                f"(they are output folders, compared ignoring case){hint}"
            )
        seen[key] = r.name


def as_regions(items: Iterable[Region | Mapping[str, Any]]) -> list[Region]:
    """Regions from :class:`Region` objects or mappings with the manifest keys.

    Relative paths in mappings are resolved against the current directory.

    Raises:
        ManifestError: As for a manifest.
    """
    out = []
    for i, item in enumerate(items, start=1):
        if isinstance(item, Region):
            out.append(
                _region(
                    f"region {i}",
                    {
                        "name": item.name,
                        "stack": str(item.stack),
                        "mask": str(item.mask),
                        "season": item.season,
                        "parcels": item.parcels,
                        "declared_column": item.declared_column,
                    },
                    Path.cwd(),
                    from_text=False,
                )
            )
        elif isinstance(item, Mapping):
            out.append(_region(f"region {i}", item, Path.cwd(), from_text=False))
        else:
            raise ManifestError(f"region {i} is {item!r}; expected a cropmap.regions.Region or a dict")
    check_regions(out, source="the regions given")
    return out


def _toml_module(path: Path) -> Any:  # tomllib or its backport tomli
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # Python 3.10
        try:
            import tomli as tomllib
        except ModuleNotFoundError as err:
            raise ManifestError(
                f"manifest {path}: reading TOML on Python 3.10 needs the 'tomli' package; expected it installed "
                "(pip install tomli), or use a .csv or .json manifest"
            ) from err
    return tomllib


def _csv_rows(path: Path, text: str) -> list[tuple[str, dict[str, Any]]]:
    reader = csv.DictReader(text.splitlines())
    if not reader.fieldnames:
        raise ManifestError(
            f"manifest {path} is empty; expected a header row 'name,stack,mask[,season]' and one row per region"
        )
    header = [h.strip() for h in reader.fieldnames]
    duplicated = sorted({h for h in header if header.count(h) > 1})
    if duplicated:
        raise ManifestError(
            f"manifest {path}, header: column {', '.join(map(repr, duplicated))} appears more than "
            f"once ({','.join(header)}); expected each column once"
        )
    _check_keys(f"manifest {path}, header", header, what="column")
    rows = []
    for raw in reader:
        i = reader.line_num
        if None in raw:
            raise ManifestError(
                f"manifest {path}, line {i}: more cells than the {len(header)} header columns"
            )
        cells = {h: (v or "").strip() for h, v in zip(header, raw.values(), strict=True)}
        if not any(cells.values()):
            continue
        rows.append((f"line {i}", {k: v for k, v in cells.items() if v != ""}))
    return rows


def _table_rows(path: Path, doc: Any, *, top: str) -> list[tuple[str, dict[str, Any]]]:
    if not isinstance(doc, dict) or set(doc) != {"regions"}:
        found = sorted(doc) if isinstance(doc, dict) else type(doc).__name__
        raise ManifestError(
            f"manifest {path} holds {found}; expected {top} with keys {', '.join(REQUIRED_KEYS)}"
        )
    items = doc["regions"]
    if not isinstance(items, list):
        raise ManifestError(
            f"manifest {path}: 'regions' is a {type(items).__name__}; expected a list of regions"
        )
    rows = []
    for i, item in enumerate(items, start=1):
        if not isinstance(item, dict):
            raise ManifestError(
                f"manifest {path}, region {i} is a {type(item).__name__}; expected a table of keys"
            )
        rows.append((f"region {i}", item))
    return rows


def _check_keys(where: str, keys: Iterable[str], *, what: str = "key") -> None:
    keys = list(keys)
    unknown = [k for k in keys if k not in REQUIRED_KEYS + OPTIONAL_KEYS]
    if unknown:
        raise ManifestError(
            f"{where}: unknown {what}(s) {unknown}; expected {', '.join(REQUIRED_KEYS)} and optionally "
            f"{', '.join(OPTIONAL_KEYS)}"
        )
    missing = [k for k in REQUIRED_KEYS if k not in keys]
    if missing and what == "column":
        raise ManifestError(
            f"{where}: no {what}(s) {missing}; expected {', '.join(REQUIRED_KEYS)} and optionally "
            f"{', '.join(OPTIONAL_KEYS)}"
        )


def _region(where: str, row: Mapping[str, Any], base: Path, *, from_text: bool) -> Region:
    given = row.get("name")
    label = f"{where} ({given.strip()})" if isinstance(given, str) and given.strip() else where
    _check_keys(label, row)
    values: dict[str, Any] = {}
    for key in REQUIRED_KEYS:
        v = row.get(key)
        if v is None or (isinstance(v, str) and not v.strip()):
            raise ManifestError(f"{label}: no {key}; expected {', '.join(REQUIRED_KEYS)} for every region")
        if not isinstance(v, str):
            raise ManifestError(f"{label}: {key} is {v!r}; expected a string")
        values[key] = v.strip()
    name = values["name"]
    if not _NAME_RE.match(name) or name.lower() in RESERVED_NAMES:
        raise ManifestError(
            f"{label}: name {name!r} cannot be a folder name; expected letters, digits, '.', '_' or '-', starting "
            f"with a letter or digit, at most 100 characters (and not {' or '.join(sorted(RESERVED_NAMES))})"
        )
    season = row.get("season")
    if season is not None:
        if from_text and isinstance(season, str) and re.fullmatch(r"\d{4}", season.strip()):
            season = int(season)
        if isinstance(season, bool) or not isinstance(season, int) or not 1900 <= season <= 2200:
            raise ManifestError(f"{label}: season is {row.get('season')!r}; expected a year such as 2021")
    stack, mask = _resolve(values["stack"], base), _resolve(values["mask"], base)
    extra: dict[str, Any] = {}
    for key in ("parcels", "declared_column"):
        v = row.get(key)
        if v is None or (isinstance(v, str) and not v.strip()):
            continue
        if not isinstance(v, str | Path):
            raise ManifestError(f"{label}: {key} is {v!r}; expected a string")
        extra[key] = _resolve(str(v).strip(), base) if key == "parcels" else str(v).strip()
    if "declared_column" in extra and "parcels" not in extra:
        raise ManifestError(
            f"{label}: declared_column {extra['declared_column']!r} checks parcels; give parcels too"
        )
    return Region(name=name, stack=stack, mask=mask, season=season, **extra)


def _resolve(value: str, base: Path) -> Path:
    p = Path(value).expanduser()
    return (p if p.is_absolute() else base / p).resolve()
