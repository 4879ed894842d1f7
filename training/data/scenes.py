"""Second-modality scenes for :mod:`training.data.pairs`: finding them, their dates, bands and masks, and mosaicking.

A scene is one GeoTIFF of the second modality (a PlanetScope SR scene, a Sentinel-1 backscatter image, ...)
with its own CRS, grid and footprint. Nothing about it is assumed: its bands are found by their names (band
descriptions), its date from an ``acquired`` tag or the file / folder name, and its usable-data mask from a
band named like ``--mask-band`` in the scene itself or in its UDM2 file (``<scene id>_udm2.tif`` beside it).

:func:`mosaic` puts the scenes of one day onto a window of the pairing grid: read directly where a scene's grid
is the pairing grid shifted by whole pixels (values copied exactly), warped with :func:`rasterio.warp.reproject`
otherwise (another CRS, pixel size or origin). Where scenes overlap, the first usable value wins (scenes sorted by
path), so a pixel masked in one scene is filled from another scene of the same day.
"""

from __future__ import annotations

import datetime as dt
import functools
import math
import re
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.warp import Resampling, reproject, transform_bounds
from rasterio.windows import Window

from cropmap.errors import CropmapError

PS_BANDS: tuple[str, ...] = ("blue", "green", "red", "nir")
"""Default second-modality bands: PlanetScope's four SR bands, as Planet names them in the band descriptions of
4-band (``..._AnalyticMS_SR.tif``) and 8-band SuperDove (``..._AnalyticMS_SR_8b.tif``) scenes."""

SUPERDOVE_BANDS: tuple[str, ...] = (
    "coastal_blue",
    "blue",
    "green_i",
    "green",
    "yellow",
    "red",
    "rededge",
    "nir",
)
"""The band descriptions of 8-band SuperDove SR scenes."""

UDM2_BANDS: tuple[str, ...] = (
    "clear",
    "snow",
    "shadow",
    "light_haze",
    "heavy_haze",
    "cloud",
    "confidence",
    "udm1",
)
"""The band descriptions of Planet's UDM2 file; band ``clear`` is 1 where the pixel is usable."""

DEFAULT_MASK_BAND = "clear"
NO_MASK = "none"
_TIFF = (".tif", ".tiff")
_STAC = (".json", ".geojson")
_DATE = re.compile(r"(?<!\d)(\d{4})-?(\d{2})-?(\d{2})(?!\d)")


class PairsError(CropmapError, ValueError):
    """A bad input of the pairing; its message is the one line the command prints."""


def band_key(name: str) -> str:
    """A band name compared case-, space- and hyphen-insensitively (``"Coastal Blue"`` == ``"coastal_blue"``)."""
    return re.sub(r"[\s\-]+", "_", name.strip().lower())


@dataclass(frozen=True)
class SecondScene:
    """One scene of the second modality, headers only."""

    path: Path
    date: dt.date
    crs: CRS
    transform: Affine
    shape: tuple[int, int]
    """(rows, cols)."""
    band_index: tuple[int, ...]
    """1-based bands of :attr:`path` holding the wanted bands, in the wanted order."""
    nodata: float | None
    mask_path: Path | None
    """File holding the usable-data mask band (the scene itself or its UDM2); ``None``: no mask."""
    mask_index: int | None

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """(left, bottom, right, top) in :attr:`crs`."""
        return rasterio.transform.array_bounds(self.shape[0], self.shape[1], self.transform)[:4]


def _date_of(path: Path, tags: dict[str, str]) -> dt.date:
    for key in ("acquired", "ACQUIRED", "acquisition_date"):
        if key in tags:
            try:
                return dt.date.fromisoformat(tags[key][:10])
            except ValueError as err:
                raise PairsError(f"scene {path}: tag {key}={tags[key]!r} is not an ISO date") from err
    for part in (path.name, *(p.name for p in path.parents)):
        m = _DATE.search(part)
        if m:
            try:
                return dt.date(int(m.group(1)), int(m.group(2)), int(m.group(3)))
            except ValueError:
                continue
    raise PairsError(
        f"cannot tell the date of scene {path}: no 'acquired' tag and no YYYYMMDD / YYYY-MM-DD in its name or folder"
    )


def _udm2_id(path: Path) -> str:
    """The scene id a UDM2 file belongs to: its name up to ``udm2`` (``20210601_101010_1001_3B_``)."""
    name = path.name.lower()
    return name[: name.index("udm2")].rstrip("_-.")


def _is_udm2(path: Path) -> bool:
    return "udm2" in path.name.lower()


def _companion_udm2(path: Path, udm2s: dict[Path, dict[str, list[Path]]]) -> Path | None:
    """The UDM2 file of a scene: the one in its folder with the longest id that starts the scene's name.

    ``udm2s``: folder -> UDM2 id -> files.
    """
    name = path.name.lower()
    ids = [i for i in udm2s.get(path.parent, {}) if i and name.startswith(i)]
    if not ids:
        return None
    best = udm2s[path.parent][max(ids, key=len)]
    if len(best) > 1:
        raise PairsError(f"scene {path} has several UDM2 files: {best[0].name}, {best[1].name}")
    return best[0]


def _open_scene(
    path: Path,
    date: dt.date | None,
    bands: Sequence[str],
    mask_band: str,
    mask_file: Path | None,
    descriptions: Sequence[str] | None = None,
) -> SecondScene:
    try:
        src = rasterio.open(path)
    except rasterio.errors.RasterioError as err:
        raise PairsError(
            f"scene {path} is not a readable GeoTIFF ({' '.join(str(err).split())[:160]})"
        ) from err
    with src:
        if src.crs is None:
            raise PairsError(f"scene {path} has no CRS; set it (gdal_edit.py -a_srs EPSG:...) before pairing")
        t = src.transform
        if t.b != 0 or t.d != 0 or t.e >= 0 or t.a <= 0:
            raise PairsError(f"scene {path} is rotated or flipped ({tuple(t)[:6]}); expected a north-up grid")
        names = [band_key(d or "") for d in (descriptions or src.descriptions)]
        wanted = [band_key(b) for b in bands]
        missing = [b for b, k in zip(bands, wanted, strict=True) if k not in names]
        if missing and not any(descriptions or src.descriptions):
            raise PairsError(
                f"bands missing: scene {path} has no band names (descriptions); bands are chosen by name, never by "
                f"position: set its band descriptions (e.g. {', '.join(bands)}) or name them in a STAC item"
            )
        if missing:
            found = list(descriptions or src.descriptions)
            raise PairsError(
                f"bands missing: scene {path} has bands {found}, lacks {list(missing)}; bands are chosen by name "
                f"(band descriptions), set --second-bands to the names it uses"
            )
        index = tuple(names.index(k) + 1 for k in wanted)
        day = date if date is not None else _date_of(path, src.tags())
        nodatas = {src.nodatavals[i - 1] for i in index}
        nodata = nodatas.pop() if len(nodatas) == 1 else None
        if nodatas:
            raise PairsError(f"scene {path}: its bands declare different nodata values")
        mask_path, mask_index = None, None
        if band_key(mask_band) != NO_MASK:
            if band_key(mask_band) in names:
                mask_path, mask_index = path, names.index(band_key(mask_band)) + 1
            elif mask_file is not None:
                with rasterio.open(mask_file) as msk:
                    mnames = [band_key(d or "") for d in msk.descriptions]
                    if band_key(mask_band) in mnames:
                        mask_index = mnames.index(band_key(mask_band)) + 1
                    elif (
                        band_key(mask_band) == DEFAULT_MASK_BAND
                        and msk.count >= 1
                        and not any(msk.descriptions)
                    ):
                        mask_index = (
                            1  # Planet's UDM2 without descriptions: band 1 is 'clear' by specification
                        )
                    else:
                        raise PairsError(
                            f"bands missing: mask file {mask_file} of scene {path} has no band {mask_band!r} "
                            f"(bands {list(msk.descriptions)}); set --mask-band"
                        )
                    if (msk.crs, msk.transform, msk.shape) != (src.crs, src.transform, src.shape):
                        raise PairsError(f"mask file {mask_file} is not on the grid of its scene {path}")
                mask_path = mask_file
            else:
                raise PairsError(
                    f"no usable-data mask for scene {path}: no band {mask_band!r} in it and no UDM2 file "
                    f"(<scene id>_udm2.tif) beside it; pass --mask-band none to pair without one"
                )
        return SecondScene(
            path=path,
            date=day,
            crs=src.crs,
            transform=t,
            shape=(src.height, src.width),
            band_index=index,
            nodata=None if nodata is None else float(nodata),
            mask_path=mask_path,
            mask_index=mask_index,
        )


def find_scenes(inputs: Sequence[str | Path], bands: Sequence[str], mask_band: str) -> list[SecondScene]:
    """Open the second-modality scenes named on the command line.

    Args:
        inputs: One folder (every ``*.tif`` under it), one STAC item collection (``.json``), or GeoTIFF files.
            Files with ``udm2`` in their name are UDM2 masks, matched to their scene by name.
        bands: Band names to pair (matched to the band descriptions).
        mask_band: Usable-data band name (``"clear"``: UDM2's), or ``"none"``.

    Returns:
        The scenes sorted by (date, path).

    Raises:
        PairsError: For a missing input, a scene without CRS or date, missing bands or mask.
    """
    paths = [Path(p) for p in inputs]
    if not paths:
        raise PairsError("no scenes given")
    for p in paths:
        if not p.exists():
            raise PairsError(f"scene input {p} does not exist")
    if len(paths) == 1 and paths[0].suffix.lower() in _STAC:
        return _stac_scenes(paths[0], bands, mask_band)
    files: list[Path] = []
    for p in paths:
        if p.is_dir():
            files += sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in _TIFF)
        elif p.suffix.lower() in _TIFF:
            files.append(p)
        else:
            raise PairsError(
                f"scene input {p} is neither a folder, a GeoTIFF nor a STAC item collection (.json)"
            )
    udm2s: dict[Path, dict[str, list[Path]]] = {}
    for f in files:
        if _is_udm2(f):
            udm2s.setdefault(f.parent, {}).setdefault(_udm2_id(f), []).append(f)
    data = [f for f in files if not _is_udm2(f)]
    if not data:
        raise PairsError(f"no scene GeoTIFFs (other than UDM2 masks) in {', '.join(map(str, paths))}")
    scenes = [_open_scene(f, None, bands, mask_band, _companion_udm2(f, udm2s)) for f in data]
    return sorted(scenes, key=lambda s: (s.date, str(s.path)))


def _stac_scenes(path: Path, bands: Sequence[str], mask_band: str) -> list[SecondScene]:
    import pystac

    try:
        items = list(pystac.ItemCollection.from_file(str(path)))
    except Exception as err:
        raise PairsError(f"{path} is not a STAC item collection ({type(err).__name__})") from err
    if not items:
        raise PairsError(f"{path} holds no STAC items")
    scenes = []
    for item in items:
        when = item.datetime
        if when is None:
            raise PairsError(f"STAC item {item.id!r} in {path} has no datetime")
        day = (when.astimezone(dt.timezone.utc) if when.tzinfo else when).date()
        data: list[tuple[str, Path, list[str] | None]] = []
        udm2: Path | None = None
        for key, asset in item.assets.items():
            href = asset.href
            url = urlparse(href)
            if url.scheme not in ("", "file") or Path(url.path).suffix.lower() not in _TIFF:
                continue
            f = Path(unquote(url.path) if url.scheme == "file" else href)
            f = f if f.is_absolute() else path.parent / f
            if not f.is_file():
                raise PairsError(f"asset {key!r} of STAC item {item.id!r}: {f} does not exist")
            if "udm2" in key.lower() or _is_udm2(f):
                udm2 = f
                continue
            described = asset.extra_fields.get("eo:bands") or asset.extra_fields.get("bands") or []
            names: list[str] = [
                b.get("name") or b.get("common_name") or "" for b in described if isinstance(b, dict)
            ]
            data.append((key, f, names or None))
        chosen = None
        for _key, f, asset_names in data:
            with rasterio.open(f) as src:
                have = {band_key(n or "") for n in (asset_names or src.descriptions)}
            if {band_key(b) for b in bands} <= have:
                chosen = (f, asset_names)
                break
        if chosen is None:
            raise PairsError(
                f"bands missing: no asset of STAC item {item.id!r} has the bands {list(bands)} "
                "(by name: band descriptions or eo:bands); set --second-bands"
            )
        scenes.append(_open_scene(chosen[0], day, bands, mask_band, udm2, chosen[1]))
    return sorted(scenes, key=lambda s: (s.date, str(s.path)))


class DatasetCache:
    """Scene files kept open while they are used (least recently used closed beyond ``size``).

    :func:`mosaic` opens one per call and closes it on return; a caller may pass a longer-lived one, at the cost
    of the native memory every open GDAL dataset keeps (it grows with the file).
    """

    def __init__(self, size: int = 256) -> None:
        self.size = size
        self._open: OrderedDict[Path, Any] = OrderedDict()

    def get(self, path: Path) -> Any:
        """The open dataset of ``path``."""
        if path in self._open:
            self._open.move_to_end(path)
            return self._open[path]
        ds = rasterio.open(path)
        self._open[path] = ds
        if len(self._open) > self.size:
            self._open.popitem(last=False)[1].close()
        return ds

    def close(self) -> None:
        """Close every dataset."""
        while self._open:
            self._open.popitem()[1].close()


@functools.lru_cache(maxsize=65536)
def footprint_in(scene: SecondScene, crs: CRS) -> tuple[float, float, float, float]:
    """The scene's bounding box in ``crs``."""
    if scene.crs == crs:
        return scene.bounds
    return transform_bounds(scene.crs, crs, *scene.bounds, densify_pts=21)


def _aligned_offset(scene: SecondScene, crs: CRS, transform: Affine) -> tuple[int, int] | None:
    """(row, col) of the window's origin in the scene's grid when both grids coincide up to whole pixels."""
    t = scene.transform
    if (
        scene.crs != crs
        or not math.isclose(t.a, transform.a, rel_tol=1e-9)
        or not math.isclose(t.e, transform.e, rel_tol=1e-9)
    ):
        return None
    col = (transform.c - t.c) / t.a
    row = (transform.f - t.f) / t.e
    if abs(col - round(col)) > 1e-6 or abs(row - round(row)) > 1e-6:
        return None
    return round(row), round(col)


def _read_aligned(
    src: Any,
    indexes: Sequence[int],
    offset: tuple[int, int],
    scene_shape: tuple[int, int],
    shape: tuple[int, int],
    fill: float,
    dtype: Any,
) -> np.ndarray:
    """Bands of ``path`` on the window (shape ``shape``) whose origin is ``offset`` in the file's grid."""
    out = np.full((len(indexes), *shape), fill, dtype=dtype)
    r0, c0 = offset
    rr0, cc0 = max(r0, 0), max(c0, 0)
    rr1, cc1 = min(r0 + shape[0], scene_shape[0]), min(c0 + shape[1], scene_shape[1])
    if rr1 <= rr0 or cc1 <= cc0:
        return out
    block = src.read(list(indexes), window=Window(cc0, rr0, cc1 - cc0, rr1 - rr0))
    out[:, rr0 - r0 : rr1 - r0, cc0 - c0 : cc1 - c0] = block
    return out


def _scene_on(
    scene: SecondScene,
    crs: CRS,
    transform: Affine,
    shape: tuple[int, int],
    resampling: Resampling,
    cache: DatasetCache,
) -> tuple[np.ndarray, np.ndarray | None]:
    """A scene's bands (float32, NaN outside its data) and raw mask band (``None``: no mask) on a window."""
    offset = _aligned_offset(scene, crs, transform)
    src = cache.get(scene.path)
    if offset is not None:
        values = _read_aligned(src, scene.band_index, offset, scene.shape, shape, np.nan, np.float32)
        if scene.nodata is not None and not math.isnan(scene.nodata):
            values[values == np.float32(scene.nodata)] = np.nan
    else:
        values = np.full((len(scene.band_index), *shape), np.nan, dtype=np.float32)
        reproject(
            rasterio.band(src, list(scene.band_index)),
            values,
            src_nodata=scene.nodata,
            dst_nodata=np.nan,
            dst_transform=transform,
            dst_crs=crs,
            resampling=resampling,
        )
    if scene.mask_path is None:
        return values, None
    assert scene.mask_index is not None
    msk = cache.get(scene.mask_path)
    if offset is not None:
        raw = _read_aligned(msk, [scene.mask_index], offset, scene.shape, shape, 0, np.float32)[0]
    else:
        raw = np.zeros(shape, dtype=np.float32)
        reproject(
            rasterio.band(msk, scene.mask_index),
            raw,
            src_nodata=None,
            dst_nodata=None,
            init_dest_nodata=False,
            dst_transform=transform,
            dst_crs=crs,
            resampling=Resampling.nearest,
        )
    return values, raw


def mosaic(
    scenes: Sequence[SecondScene],
    crs: CRS,
    transform: Affine,
    shape: tuple[int, int],
    *,
    mask_usable: float = 1,
    resampling: Resampling = Resampling.nearest,
    cache: DatasetCache | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The scenes of one day on a window of the pairing grid.

    Args:
        scenes: The day's scenes, in priority order.
        crs: The pairing grid's CRS (the S2 stack's).
        transform: The window's transform on the pairing grid.
        shape: The window's (rows, cols).
        mask_usable: Value of the mask band that marks a usable pixel (UDM2 ``clear``: 1).
        resampling: Resampling of scenes whose grid is not the pairing grid shifted by whole pixels.
        cache: Open datasets to reuse; a private one (closed on return) when omitted.

    Returns:
        ``values`` float32 (C, rows, cols), NaN where no scene has a usable value; ``covered`` bool (rows, cols),
        inside some scene's data; ``usable`` bool (rows, cols), covered and not masked in the scene used.
    """
    c = len(scenes[0].band_index)
    values = np.full((c, *shape), np.nan, dtype=np.float32)
    covered = np.zeros(shape, dtype=bool)
    usable = np.zeros(shape, dtype=bool)
    left, top = transform.c, transform.f
    right, bottom = left + transform.a * shape[1], top + transform.e * shape[0]
    own = cache is None
    cache = cache if cache is not None else DatasetCache()
    try:
        for scene in scenes:
            b = footprint_in(scene, crs)
            if b[0] >= right or b[2] <= left or b[1] >= top or b[3] <= bottom:
                continue
            vals, mask = _scene_on(scene, crs, transform, shape, resampling, cache)
            here = np.isfinite(vals).all(axis=0)
            ok = here if mask is None else here & (mask == np.float32(mask_usable))
            take = ok & ~usable
            values[:, take] = vals[:, take]
            usable |= ok
            covered |= here
            if usable.all():
                break
    finally:
        if own:
            cache.close()
    return values, covered, usable
