"""A DENETHOR-layout scene as cropmap inputs: the S2 series as a GeoTIFF time stack, the fields as GeoPackage.

``python -m training.simulate`` calls :func:`write_cropmap_inputs` for each scene it writes; the same
function (or ``cropmap data scene-export SCENE_DIR``, alias ``python -m training.scene_export``) converts any
scene that
:func:`training.data.denethor.read_scene` reads. Files written into the scene folder::

    SCENE/s2_stack.tif   one GeoTIFF, time-major: 13 bands per date, B01 .. B12 (as in bands.npy), then CLP;
                         descriptions YYYY-MM-DD_Bxx / YYYY-MM-DD_CLP, tags dates, bands,
                         reflectance_scale=10000; uint16, nodata 0, the scene's CRS and S2 grid,
                         256 px tiles (smaller for small scenes), deflate
    SCENE/fields.gpkg    layer ``fields``: field_id, class_code (= crop_id), class_name (= crop_name),
                         geometry in the labels' CRS; also the cropland mask for ``cropmap classify --mask``

The CLP band is the cloud probability x 255 (0..255, as in ``clp.npy``), the band cropmap's cloud masking
finds by name (:mod:`cropmap.contract.clouds`); readers that do not know it ignore it. Its 0 shares the file's nodata,
so a clear observation (probability 0) reads as "no cloud information" and masks nothing either way.

Both files are written under a temporary name in the scene folder and moved into place, so a reader never sees
a partial file.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from pathlib import Path

import geopandas as gpd
import numpy as np
import rasterio

from cropmap.safeio.atomic import atomic_path
from training.data.denethor import S2_BAND_NAMES, read_scene

STACK_NAME = "s2_stack.tif"
FIELDS_NAME = "fields.gpkg"
FIELDS_LAYER = "fields"
CLOUD_BAND = "CLP"
"""Name of the per-date cloud-probability band (x 255), as :mod:`cropmap.contract.clouds` finds it."""
REFLECTANCE_SCALE = 10000
STACK_NODATA = 0
_MAX_TILE = 256
_CHUNK_DATES = 8


def _tile(size: int) -> int:
    """Tile side: 256, or the size rounded up to a multiple of 16 (GeoTIFF tiles are) for smaller scenes."""
    return min(_MAX_TILE, 16 * math.ceil(size / 16))


def write_s2_stack(scene_dir: str | Path, dest: str | Path | None = None) -> Path:
    """Write a scene's Sentinel-2 series and cloud probability as one cropmap time stack.

    Args:
        scene_dir: A DENETHOR-layout scene folder (``s2/bands.npy``, ``s2/clp.npy``, ``timestamp.pkl``,
            ``bbox.pkl``, ``labels.geojson``, ``planet/``).
        dest: The GeoTIFF to write; ``SCENE/s2_stack.tif`` when omitted.

    Returns:
        The path written.

    Raises:
        ValueError: If the scene has two stamps on one date (a stack holds one observation per date), or its
            files disagree (see :func:`training.data.denethor.read_scene`).
    """
    scene = read_scene(scene_dir)
    dest = Path(dest) if dest is not None else Path(scene_dir) / STACK_NAME
    if len(set(scene.dates)) != len(scene.dates):
        twice = sorted({str(d) for d in scene.dates if scene.dates.count(d) > 1})
        raise ValueError(f"{scene.root}: several S2 stamps on {', '.join(twice)}; a stack holds one per date")
    names = (*S2_BAND_NAMES, CLOUD_BAND)
    n_t, height, width, _ = scene.s2.shape
    tile = _tile(max(height, width))
    profile = {
        "driver": "GTiff",
        "dtype": "uint16",
        "count": n_t * len(names),
        "height": height,
        "width": width,
        "crs": scene.crs,
        "transform": scene.transform,
        "nodata": STACK_NODATA,
        "tiled": True,
        "blockxsize": tile,
        "blockysize": tile,
        "compress": "deflate",
        "predictor": 2,
        "interleave": "band",
        "BIGTIFF": "IF_SAFER",
    }
    tags = {
        "dates": ",".join(d.isoformat() for d in scene.dates),
        "bands": ",".join(names),
        "layout": f"time-major: band index (0-based) = t*{len(names)} + b",
        "reflectance_scale": str(REFLECTANCE_SCALE),
        "scale": f"B01..B12: reflectance*{REFLECTANCE_SCALE} (uint16), {STACK_NODATA} = nodata; "
        f"{CLOUD_BAND}: cloud probability*255",
        "source": f"DENETHOR-layout scene {scene.root.name}: s2/bands.npy and s2/clp.npy (values unchanged)",
    }
    with atomic_path(dest) as tmp, rasterio.open(tmp, "w", **profile) as dst:
        dst.update_tags(**tags)
        for t0 in range(0, n_t, _CHUNK_DATES):
            t1 = min(n_t, t0 + _CHUNK_DATES)
            refl = _as_dn(np.asarray(scene.s2[t0:t1]))  # (t, H, W, 12)
            clp = _as_clp(np.asarray(scene.clp[t0:t1]), scene.clp_scale)  # (t, H, W)
            block = np.concatenate([refl, clp[..., None]], axis=-1)  # (t, H, W, 13)
            block = np.moveaxis(block, -1, 1).reshape(-1, height, width)
            first = t0 * len(names) + 1
            dst.write(block, indexes=list(range(first, first + block.shape[0])))
        for t, date in enumerate(scene.dates):
            for b, name in enumerate(names):
                dst.set_band_description(t * len(names) + b + 1, f"{date.isoformat()}_{name}")
    return dest


def _as_dn(values: np.ndarray) -> np.ndarray:
    """Reflectance x 10000 as uint16 (float arrays rounded; 0 stays 0 = no data)."""
    if values.dtype == np.uint16:
        return values
    return np.clip(np.round(np.nan_to_num(values.astype(np.float64), nan=0.0)), 0, 65535).astype(np.uint16)


def _as_clp(values: np.ndarray, scale: float) -> np.ndarray:
    """Cloud probability x 255 as uint16."""
    if scale == 255.0:
        return values.astype(np.uint16)
    prob = np.nan_to_num(values.astype(np.float64) / scale, nan=0.0)
    return np.clip(np.round(prob * 255), 0, 255).astype(np.uint16)


def write_fields(scene_dir: str | Path, dest: str | Path | None = None) -> Path:
    """Write a scene's labelled fields as a GeoPackage (layer ``fields``), also usable as cropmap's mask.

    Args:
        scene_dir: A DENETHOR-layout scene folder with ``labels.geojson`` (field_id, crop_id, crop_name).
        dest: The GeoPackage to write; ``SCENE/fields.gpkg`` when omitted.

    Returns:
        The path written.

    Raises:
        ValueError: If the labels lack a column, have no CRS or no polygon.
    """
    src = Path(scene_dir) / "labels.geojson"
    labels = gpd.read_file(src)
    missing = {"field_id", "crop_id", "crop_name"} - set(labels.columns)
    if missing:
        raise ValueError(f"{src} lacks column(s) {sorted(missing)}; found {sorted(labels.columns)}")
    if labels.crs is None:
        raise ValueError(f"{src} has no CRS; expected the scene's (EPSG:25833)")
    if labels.empty:
        raise ValueError(f"{src} holds no field polygons")
    fields = gpd.GeoDataFrame(
        {
            "field_id": labels["field_id"].astype(np.int64),
            "class_code": labels["crop_id"].astype(np.int64),
            "class_name": labels["crop_name"].astype(str),
        },
        geometry=labels.geometry.to_numpy(),
        crs=labels.crs,
    )
    dest = Path(dest) if dest is not None else Path(scene_dir) / FIELDS_NAME
    with atomic_path(dest) as tmp:
        fields.to_file(tmp, layer=FIELDS_LAYER, driver="GPKG")
    return dest


def write_cropmap_inputs(scene_dir: str | Path) -> dict[str, Path]:
    """Write ``s2_stack.tif`` and ``fields.gpkg`` into a scene folder.

    Returns:
        ``{"stack": path, "fields": path}``.
    """
    return {"stack": write_s2_stack(scene_dir), "fields": write_fields(scene_dir)}


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m training.scene_export``: an alias of ``cropmap data scene-export``; returns the exit status."""
    from cropmap.cli_common import run_command
    from training.simulate.cli import scene_export as command

    return run_command(command, argv, prog_name="python -m training.scene_export")


if __name__ == "__main__":
    sys.exit(main())
