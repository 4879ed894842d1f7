"""Canonical Sentinel-2 band names, used to validate stacks and bundles.

Names follow the ESA MSI band designations
(https://sentiwiki.copernicus.eu/web/s2-mission, "Spectral bands"). cropmap never
assumes a band order: the order a model expects is written in its bundle, and the
order of a stack is read from its band descriptions or tags.
"""

from __future__ import annotations

S2_BANDS: tuple[str, ...] = (
    "B01",
    "B02",
    "B03",
    "B04",
    "B05",
    "B06",
    "B07",
    "B08",
    "B8A",
    "B09",
    "B10",
    "B11",
    "B12",
)

# Aliases found in real files (BreizhCrops CSVs write "B2", WorldCereal "S2-L2A-B02").
_ALIASES = {f"B{int(b[1:])}": b for b in S2_BANDS if b[1:].isdigit()}


def canonical_band(name: str) -> str:
    """Return the canonical name of a Sentinel-2 band.

    Args:
        name: A band name such as ``"B02"``, ``"B2"``, ``"b8a"`` or ``"S2-L2A-B02"``.

    Returns:
        The canonical name from :data:`S2_BANDS`.

    Raises:
        ValueError: If the name is not a Sentinel-2 band.
    """
    key = name.strip().upper()
    for prefix in ("S2-L2A-", "S2-L1C-", "S2_", "S2-"):
        key = key.removeprefix(prefix)
    if key in S2_BANDS:
        return key
    if key in _ALIASES:
        return _ALIASES[key]
    raise ValueError(f"{name!r} is not a Sentinel-2 band; expected one of {', '.join(S2_BANDS)}")
