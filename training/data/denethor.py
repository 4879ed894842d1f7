"""Reader for the DENETHOR / DLR fusion layout: Sentinel-2 arrays, PlanetScope daily GeoTIFFs, field polygons.

Expected layout of one scene folder (what :mod:`training.simulate.run` writes; see docs/data.md for where the
published DENETHOR files may differ)::

    SCENE/s2/bands.npy        (T, H, W, 12) reflectance x 10000 (uint16 or float), 0 in every band = no data
    SCENE/s2/clp.npy          (T, H, W) or (T, H, W, 1) cloud probability: uint8 0..255 or float 0..1
    SCENE/s2/timestamp.pkl    list of T datetimes (or dates)
    SCENE/s2/bbox.pkl         bounds and CRS of the S2 grid (dict, sentinelhub BBox, or a 4-tuple)
    SCENE/s2/band_names.json  optional; checked against :data:`S2_BAND_NAMES` when present
    SCENE/planet/YYYY-MM-DD/sr.tif   or  SCENE/planet/YYYY-MM-DD.tif   4-band PS surface reflectance x 10000
    SCENE/labels.geojson      field polygons with crop_id, crop_name and field_id

Arrays are opened as memory maps and PlanetScope files are read by window on request, so an 8000 x 8000 daily
PS archive is never loaded whole.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import pickle
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import rasterio
from rasterio.features import rasterize
from rasterio.windows import Window

logger = logging.getLogger(__name__)

S2_BAND_NAMES: tuple[str, ...] = (
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
    "B11",
    "B12",
)
"""Band order of DENETHOR's ``bands.npy``: the 12 Sentinel-2 L2A bands (B10 is not delivered in L2A)."""

PS_PATCH = 3
"""PlanetScope pixels per S2 pixel along each axis; the PS vector is 3 x 3 x 4 = 36 values."""

_DATE_DIR = re.compile(r"^(\d{4}-\d{2}-\d{2})$")
_DATE_FILE = re.compile(r"^(\d{4}-\d{2}-\d{2})\.tif{1,2}$")


@dataclass
class Scene:
    """One DENETHOR-layout scene: S2 arrays (memory-mapped), dates, grid, field labels and the PS archive."""

    root: Path
    s2: np.ndarray
    """(T, H, W, 12) reflectance x 10000, memory-mapped; band order :data:`S2_BAND_NAMES`."""
    clp: np.ndarray
    """(T, H, W) cloud probability as stored (see :attr:`clp_scale`)."""
    clp_scale: float
    """Divide :attr:`clp` by this to get a probability in 0..1 (255 for uint8, 1 for float)."""
    dates: tuple[dt.date, ...]
    bbox: tuple[float, float, float, float]
    """(min_x, min_y, max_x, max_y) of the S2 grid in :attr:`crs`."""
    crs: str
    transform: rasterio.Affine
    field_raster: np.ndarray
    """(H, W) int32 field id under each S2 pixel centre, 0 = no field."""
    crop_raster: np.ndarray
    """(H, W) int32 crop id under each S2 pixel centre, 0 = no field."""
    crop_names: dict[int, str]
    """crop_id -> crop_name, as in the labels."""
    field_crops: dict[int, int]
    """field_id -> crop_id."""
    ps_dates: tuple[dt.date, ...]
    ps_paths: tuple[Path, ...]
    band_names: tuple[str, ...] = S2_BAND_NAMES
    _ps_geometry: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def shape(self) -> tuple[int, int]:
        """(rows, cols) of the S2 grid."""
        return int(self.s2.shape[1]), int(self.s2.shape[2])

    @property
    def class_names(self) -> tuple[str, ...]:
        """Crop names ordered by crop id; the class index of a crop is its position here."""
        return tuple(self.crop_names[k] for k in sorted(self.crop_names))

    @property
    def field_ids(self) -> np.ndarray:
        """Sorted ids of the labelled fields that cover at least one S2 pixel centre."""
        ids = np.unique(self.field_raster)
        return ids[ids > 0]

    def cloud_probability(self, t: int | slice | np.ndarray = slice(None)) -> np.ndarray:
        """Cloud probability in 0..1 (float32) for the S2 stamps ``t``."""
        return (np.asarray(self.clp[t], dtype=np.float32) / np.float32(self.clp_scale)).astype(np.float32)

    def ps_index(self, max_day_offset: int = 0) -> np.ndarray:
        """Index into :attr:`ps_paths` for each S2 stamp, matched by day of year.

        Args:
            max_day_offset: Accept the nearest PS day up to this many days away when no PS file has the S2
                stamp's day of year (0: exact day, as DENETHOR's daily PS allows).

        Returns:
            (T,) int array.

        Raises:
            ValueError: If an S2 stamp has no PS day within ``max_day_offset``.
        """
        ps_doy = np.array([d.timetuple().tm_yday for d in self.ps_dates])
        out = np.empty(len(self.dates), dtype=np.int64)
        for i, d in enumerate(self.dates):
            gap = np.abs(ps_doy - d.timetuple().tm_yday)
            j = int(np.argmin(gap))
            if gap[j] > max_day_offset:
                raise ValueError(
                    f"S2 stamp {d.isoformat()} (day {d.timetuple().tm_yday}) has no PlanetScope image within "
                    f"{max_day_offset} day(s) in {self.root / 'planet'}; "
                    f"nearest is {self.ps_dates[j].isoformat()}"
                )
            out[i] = j
        return out


def _find(root: Path, names: Sequence[str]) -> Path:
    for name in names:
        if (root / name).exists():
            return root / name
    raise FileNotFoundError(
        f"none of {', '.join(names)} found in {root}; expected the DENETHOR layout (docs/data.md)"
    )


def _load_pickle(path: Path) -> Any:
    try:
        with open(path, "rb") as fh:
            return pickle.load(fh)  # the user's own dataset files
    except ModuleNotFoundError as err:
        raise ValueError(
            f"{path} was pickled with objects of the {err.name!r} package, which is not installed; "
            "install it (eo-learn / sentinelhub for DENETHOR's original patches) "
            "or re-save the file as plain Python values"
        ) from err


def _parse_bbox(obj: Any, path: Path) -> tuple[tuple[float, float, float, float], str | None]:
    if isinstance(obj, dict):
        try:
            bounds = (float(obj["min_x"]), float(obj["min_y"]), float(obj["max_x"]), float(obj["max_y"]))
        except KeyError as err:
            raise ValueError(
                f"{path}: bbox dict lacks {err}; expected min_x, min_y, max_x, max_y, crs"
            ) from err
        crs = obj.get("crs")
        return bounds, None if crs is None else str(crs)
    if all(hasattr(obj, a) for a in ("min_x", "min_y", "max_x", "max_y")):  # sentinelhub.BBox
        bounds = (float(obj.min_x), float(obj.min_y), float(obj.max_x), float(obj.max_y))
        crs_obj = getattr(obj, "crs", None)
        epsg = getattr(crs_obj, "epsg", None)
        return bounds, (f"EPSG:{epsg}" if epsg is not None else (None if crs_obj is None else str(crs_obj)))
    if isinstance(obj, (tuple, list)) and len(obj) == 4:
        return (float(obj[0]), float(obj[1]), float(obj[2]), float(obj[3])), None
    raise ValueError(f"{path}: cannot read a bounding box from a {type(obj).__name__}; see docs/data.md")


def _as_dates(stamps: Any, path: Path) -> tuple[dt.date, ...]:
    out = []
    for s in stamps:
        if isinstance(s, dt.datetime):
            out.append(s.date())
        elif isinstance(s, dt.date):
            out.append(s)
        else:
            raise ValueError(  # noqa: TRY004 - bad file content, reported as a data error
                f"{path}: expected datetimes, found {type(s).__name__} ({s!r})"
            )
    return tuple(out)


def _ps_archive(root: Path) -> tuple[tuple[dt.date, ...], tuple[Path, ...]]:
    planet = root / "planet"
    if not planet.is_dir():
        raise FileNotFoundError(f"{planet} not found; expected planet/YYYY-MM-DD/sr.tif files (docs/data.md)")
    found: dict[dt.date, Path] = {}
    for entry in planet.iterdir():
        m_dir, m_file = _DATE_DIR.match(entry.name), _DATE_FILE.match(entry.name)
        if entry.is_dir() and m_dir and (entry / "sr.tif").exists():
            date, path = dt.date.fromisoformat(m_dir.group(1)), entry / "sr.tif"
        elif entry.is_file() and m_file:
            date, path = dt.date.fromisoformat(m_file.group(1)), entry
        else:
            continue
        if date in found:
            raise ValueError(f"two PlanetScope files for {date}: {found[date]} and {path}")
        found[date] = path
    if not found:
        raise FileNotFoundError(f"no PlanetScope files (YYYY-MM-DD/sr.tif or YYYY-MM-DD.tif) in {planet}")
    dates = tuple(sorted(found))
    return dates, tuple(found[d] for d in dates)


def read_scene(root: str | Path) -> Scene:
    """Open one DENETHOR-layout scene.

    Args:
        root: The scene folder (with ``s2/``, ``planet/`` and ``labels.geojson``).

    Returns:
        The :class:`Scene`, with S2 arrays memory-mapped and the field labels rasterised onto the S2 grid
        (pixel-centre rule).

    Raises:
        FileNotFoundError: If a required file is missing.
        ValueError: If files disagree (shapes, dates, bands, CRS) or the labels lack required columns.
    """
    root = Path(root)
    s2_dir = root / "s2"
    if not s2_dir.is_dir():
        raise FileNotFoundError(f"{s2_dir} not found; {root} is not a DENETHOR-layout scene (docs/data.md)")
    s2 = np.load(_find(s2_dir, ["bands.npy", "BANDS.npy", "data/BANDS.npy"]), mmap_mode="r")
    if s2.ndim != 4 or s2.shape[-1] != len(S2_BAND_NAMES):
        raise ValueError(f"{s2_dir}: bands array has shape {s2.shape}; expected (T, H, W, 12)")
    names_file = s2_dir / "band_names.json"
    if names_file.exists():
        names = tuple(json.loads(names_file.read_text()))
        if names != S2_BAND_NAMES:
            raise ValueError(f"{names_file} lists bands {names}; this reader expects {S2_BAND_NAMES}")
    clp = np.load(_find(s2_dir, ["clp.npy", "CLP.npy", "data/CLP.npy"]), mmap_mode="r")
    if clp.ndim == 4 and clp.shape[-1] == 1:
        clp = clp[..., 0]
    if clp.shape != s2.shape[:3]:
        raise ValueError(f"{s2_dir}: clp has shape {clp.shape}; expected {s2.shape[:3]} to match bands")
    if clp.dtype == np.uint8:
        clp_scale = 255.0
    elif np.issubdtype(clp.dtype, np.floating):
        clp_scale = 1.0
    else:
        raise ValueError(f"{s2_dir}: clp dtype {clp.dtype}; expected uint8 (0..255) or float (0..1)")
    ts_path = _find(s2_dir, ["timestamp.pkl"])
    dates = _as_dates(_load_pickle(ts_path), ts_path)
    if len(dates) != s2.shape[0]:
        raise ValueError(f"{ts_path} has {len(dates)} dates; bands has {s2.shape[0]} stamps")
    bbox_path = _find(s2_dir, ["bbox.pkl"])
    bounds, crs = _parse_bbox(_load_pickle(bbox_path), bbox_path)
    h, w = s2.shape[1:3]
    res_x, res_y = (bounds[2] - bounds[0]) / w, (bounds[3] - bounds[1]) / h
    transform = rasterio.Affine(res_x, 0.0, bounds[0], 0.0, -res_y, bounds[3])

    labels_path = _find(root, ["labels.geojson"])
    labels = gpd.read_file(labels_path)
    if labels.crs is None:
        raise ValueError(f"{labels_path} has no CRS; expected EPSG:25833 (DENETHOR) or any declared CRS")
    if crs is None:
        raise ValueError(f"{bbox_path} carries no CRS; expected one in the bbox (e.g. 'crs': 'EPSG:25833')")
    if labels.empty:
        raise ValueError(f"{labels_path} holds no field polygons")
    missing = {"crop_id", "crop_name"} - set(labels.columns)
    if missing:
        raise ValueError(f"{labels_path} lacks column(s) {sorted(missing)}; found {sorted(labels.columns)}")
    if "field_id" not in labels.columns:
        logger.info("%s has no field_id column: numbering fields by row (1..%d)", labels_path, len(labels))
        labels["field_id"] = np.arange(1, len(labels) + 1)
    if (labels["field_id"] <= 0).any() or labels["field_id"].duplicated().any():
        raise ValueError(f"{labels_path}: field_id must be unique positive integers (0 means 'no field')")
    if labels.crs != rasterio.crs.CRS.from_user_input(crs):
        logger.info("reprojecting %s from %s to the S2 grid's %s", labels_path, labels.crs, crs)
        labels = labels.to_crs(crs)
    crop_names: dict[int, str] = {}
    for cid, name in zip(labels["crop_id"].astype(int), labels["crop_name"].astype(str), strict=True):
        if crop_names.setdefault(cid, name) != name:
            raise ValueError(f"{labels_path}: crop_id {cid} is named both {crop_names[cid]!r} and {name!r}")
    fids = labels["field_id"].astype(np.int64).to_numpy()
    cids = labels["crop_id"].astype(np.int64).to_numpy()
    shapes = list(zip(labels.geometry, fids, strict=True))
    field_raster = rasterize(shapes, out_shape=(h, w), transform=transform, fill=0, dtype="int32")
    crop_of = dict(zip(fids.tolist(), cids.tolist(), strict=True))
    keys = np.array(sorted(crop_of), dtype=np.int64)
    values = np.array([crop_of[k] for k in keys.tolist()], dtype=np.int64)
    at = np.clip(np.searchsorted(keys, field_raster), 0, keys.size - 1)
    crop_raster = np.where(field_raster > 0, values[at], 0).astype(np.int32)

    ps_dates, ps_paths = _ps_archive(root)
    scene = Scene(
        root=root,
        s2=s2,
        clp=clp,
        clp_scale=clp_scale,
        dates=dates,
        bbox=bounds,
        crs=crs,
        transform=transform,
        field_raster=field_raster,
        crop_raster=crop_raster,
        crop_names=crop_names,
        field_crops=crop_of,
        ps_dates=ps_dates,
        ps_paths=ps_paths,
    )
    logger.info(
        "%s: %d S2 stamps of %d x %d px, %d fields, %d PS days",
        root,
        len(dates),
        h,
        w,
        len(fids),
        len(ps_dates),
    )
    return scene


def _ps_grid(scene: Scene) -> dict[str, Any]:
    """Geometry of the PS archive relative to the S2 grid (checked once, from the first file)."""
    if scene._ps_geometry:
        return scene._ps_geometry
    with rasterio.open(scene.ps_paths[0]) as src:
        if src.crs is None:
            raise ValueError(f"{scene.ps_paths[0]} has no CRS; expected {scene.crs}")
        if src.crs != rasterio.crs.CRS.from_user_input(scene.crs):
            raise ValueError(f"{scene.ps_paths[0]} is in {src.crs}; the S2 grid is in {scene.crs}")
        if src.count < 4:
            raise ValueError(f"{scene.ps_paths[0]} has {src.count} bands; expected 4 (PlanetScope SR)")
        t = src.transform
        if t.b != 0 or t.d != 0 or t.e >= 0:
            raise ValueError(f"{scene.ps_paths[0]} is rotated or flipped ({t}); expected a north-up grid")
        geom = {"left": t.c, "top": t.f, "res": t.a, "height": src.height, "width": src.width}
    s2_res = scene.transform.a
    if s2_res / geom["res"] < PS_PATCH - 1e-6:
        raise ValueError(
            f"PS pixel size {geom['res']} m is too coarse for 3 x 3 PS pixels per {s2_res} m S2 pixel"
        )
    scene._ps_geometry.update(geom)
    return scene._ps_geometry


def ps_patches(
    scene: Scene,
    rows: np.ndarray,
    cols: np.ndarray,
    date_indices: np.ndarray,
    *,
    max_day_offset: int = 0,
) -> np.ndarray:
    """The 3 x 3 x 4 PlanetScope pixels under S2 pixels, on the PS day matching each S2 stamp.

    S2 row ``r`` starts at PS row ``int(r * s2_res / ps_res)`` (``int(r * 10 / 3)`` for DENETHOR) plus the
    offset between the two grids' top edges; the same holds for columns. Each PS file is opened once and only
    the window spanning the requested pixels is read.

    Args:
        scene: The scene.
        rows: (N,) S2 row indices.
        cols: (N,) S2 column indices.
        date_indices: (N,) S2 stamp indices; the PS day is matched by day of year (:meth:`Scene.ps_index`).
        max_day_offset: Passed to :meth:`Scene.ps_index`.

    Returns:
        (N, 36) float32 PS reflectance x 10000, flattened in (row, col, band) order.

    Raises:
        ValueError: If indices are out of range, a patch falls outside the PS raster or no PS day matches.
    """
    rows, cols, date_indices = (np.asarray(a, dtype=np.int64).ravel() for a in (rows, cols, date_indices))
    if not rows.size == cols.size == date_indices.size:
        raise ValueError(
            f"rows, cols and date_indices differ in length: {rows.size}, {cols.size}, {date_indices.size}"
        )
    h, w = scene.shape
    t_count = len(scene.dates)
    if rows.size and (rows.min() < 0 or rows.max() >= h or cols.min() < 0 or cols.max() >= w):
        raise ValueError(f"S2 pixel indices outside the {h} x {w} grid")
    if date_indices.size and (date_indices.min() < 0 or date_indices.max() >= t_count):
        raise ValueError(f"date indices outside 0..{t_count - 1}")
    geom = _ps_grid(scene)
    s2_res = scene.transform.a
    ratio = s2_res / geom["res"]
    off_r = (geom["top"] - scene.transform.f) / geom["res"]
    off_c = (scene.transform.c - geom["left"]) / geom["res"]
    ps_r = np.floor(rows * ratio + off_r + 1e-6).astype(np.int64)
    ps_c = np.floor(cols * ratio + off_c + 1e-6).astype(np.int64)
    if rows.size and (
        ps_r.min() < 0
        or ps_c.min() < 0
        or ps_r.max() + PS_PATCH > geom["height"]
        or ps_c.max() + PS_PATCH > geom["width"]
    ):
        raise ValueError(
            f"3 x 3 PS patches reach outside the {geom['height']} x {geom['width']} PS raster; "
            "the PS and S2 grids do not cover the same area"
        )
    ps_of_stamp = scene.ps_index(max_day_offset)
    out = np.empty((rows.size, PS_PATCH, PS_PATCH, 4), dtype=np.float32)
    offsets = np.arange(PS_PATCH)
    for t in np.unique(date_indices):
        sel = np.flatnonzero(date_indices == t)
        r0, c0 = int(ps_r[sel].min()), int(ps_c[sel].min())
        r1, c1 = int(ps_r[sel].max()) + PS_PATCH, int(ps_c[sel].max()) + PS_PATCH
        path = scene.ps_paths[ps_of_stamp[t]]
        with rasterio.open(path) as src:
            if (src.height, src.width) != (geom["height"], geom["width"]):
                raise ValueError(
                    f"{path} is {src.height} x {src.width}; "
                    f"other PS files are {geom['height']} x {geom['width']}"
                )
            block = src.read((1, 2, 3, 4), window=Window(c0, r0, c1 - c0, r1 - r0))  # (4, h, w)
        rr = (ps_r[sel] - r0)[:, None, None] + offsets[None, :, None]
        cc = (ps_c[sel] - c0)[:, None, None] + offsets[None, None, :]
        out[sel] = np.moveaxis(block[:, rr, cc], 0, -1)
    return out.reshape(rows.size, PS_PATCH * PS_PATCH * 4)
