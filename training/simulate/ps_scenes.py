"""A DENETHOR-layout scene's PlanetScope archive as real-world-shaped scenes, the test bed of :mod:`training.data.pairs`.

``python -m training.simulate`` calls :func:`write_ps_scenes` for each scene it writes (after everything else, from
the files already written: the rest of the scene is unchanged); ``cropmap data ps-scenes SCENE_DIR`` (alias
``python -m training.ps_scenes``) does it
for any scene with a ``planet/`` archive. For each PlanetScope day ``planet/YYYY-MM-DD/sr.tif`` it writes into
``SCENE/planet_scenes/`` two overlapping scenes as Planet delivers them::

    YYYYMMDD_101000_1_3B_AnalyticMS_SR.tif   west part: columns 0 .. 60 % of the day's raster, with a 2-pixel nodata
                                             collar on the top and left (so its origin is not the S2 origin); same
                                             CRS and 3 m grid as planet/; its UDM2 marks a cloud over part of the
                                             overlap (clear = 0 there and on the collar)
    YYYYMMDD_101000_1_3B_udm2.tif            its UDM2: 8 bands clear, snow, shadow, light_haze, heavy_haze, cloud,
                                             confidence, udm1
    YYYYMMDD_101010_2_3B_AnalyticMS_SR.tif   east part: columns 40 % .. 100 %, own origin; on every second day
                                             warped into the next UTM zone west (EPSG:25832 for the simulator's
                                             EPSG:25833) at 1.5 m with nearest-neighbour resampling
    YYYYMMDD_101010_2_3B_udm2.tif            its UDM2 (clear = 1 inside its footprint)

Scene files are 4-band uint16 (blue, green, red, nir by band description), nodata 0, tag ``acquired``. The clear
part of the mosaic of a day's two scenes holds every pixel of ``planet/YYYY-MM-DD/sr.tif`` with its value: the
cloud of scene 1 lies where scene 2 is clear, and a 1.5 m warp sends every 3 m pixel centre back to a 1.5 m pixel
whose value came from that same 3 m pixel (the 1.5 m pixel's centre is within 1.06 m of it, less than half a
3 m pixel). So :mod:`training.data.pairs` on these scenes must give exactly the pairs that
:func:`training.data.datasets.pointwise_pairs` / :func:`~training.data.datasets.timewise_pairs` draw from the
aligned layout (tests/training/test_pairs.py checks it). Files are written under temporary names and renamed
into place; the folder itself is built beside its final name and renamed when complete.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.warp import Resampling, calculate_default_transform, reproject

from cropmap.errors import OutputExistsError
from cropmap.safeio.atomic import atomic_path
from training.data.denethor import read_scene
from training.data.scenes import PS_BANDS, UDM2_BANDS

SCENES_DIR = "planet_scenes"
COLLAR_PX = 2
WEST_END, EAST_START = 0.6, 0.4
"""Scene 1 holds columns [0, 60 %), scene 2 [40 %, 100 %) of the day's raster."""
CLOUD_ROWS = (0.25, 0.5)
"""Rows (fractions) of the cloud in scene 1's UDM2, over the overlap columns."""
OTHER_ZONE_RES_M = 1.5


def _other_zone(crs: CRS) -> CRS:
    """The UTM zone west of ``crs`` (ETRS89 / WGS84 UTM north codes)."""
    epsg = crs.to_epsg()
    if epsg is None or not (25801 <= epsg <= 25860 or 32601 <= epsg <= 32660):
        raise ValueError(f"the PlanetScope archive is in {crs}; expected a UTM zone (EPSG:258xx or 326xx)")
    return CRS.from_epsg(epsg - 1 if epsg % 100 > 1 else epsg + 1)


def _write(
    path: Path,
    data: np.ndarray,
    crs: CRS,
    transform: Affine,
    descriptions: Sequence[str],
    nodata: float | None,
    tags: dict[str, str],
) -> None:
    profile = {
        "driver": "GTiff",
        "dtype": data.dtype.name,
        "count": data.shape[0],
        "height": data.shape[1],
        "width": data.shape[2],
        "crs": crs,
        "transform": transform,
        "nodata": nodata,
        "compress": "deflate",
    }
    with atomic_path(path) as tmp, rasterio.open(tmp, "w", **profile) as dst:
        dst.write(data)
        dst.descriptions = tuple(descriptions)
        dst.update_tags(**tags)


def _udm2(clear: np.ndarray, inside: np.ndarray) -> np.ndarray:
    """An 8-band UDM2 (uint8) from the clear mask and the footprint."""
    out = np.zeros((len(UDM2_BANDS), *clear.shape), dtype=np.uint8)
    out[0] = clear
    out[5] = inside & ~clear  # cloud
    out[6] = np.where(inside, 100, 0)  # confidence, %
    out[7] = np.where(inside, np.where(clear, 0, 2), 1)  # udm1: bit 0 blackfill, bit 1 cloud
    return out


def write_ps_scenes(scene_dir: str | Path) -> Path:
    """Write ``SCENE/planet_scenes/`` (layout in the module docstring) from ``SCENE/planet/``.

    Returns:
        The folder written.

    Raises:
        cropmap.errors.OutputExistsError: If the folder exists already (a ``FileExistsError``).
        ValueError: If the archive is not in a UTM zone.
    """
    scene = read_scene(scene_dir)
    dest = Path(scene_dir) / SCENES_DIR
    if dest.exists():
        raise OutputExistsError(f"{dest} exists already; remove it to write the scenes again")
    with atomic_path(dest) as tmp_dir:
        tmp_dir.mkdir()
        for k, (date, path) in enumerate(zip(scene.ps_dates, scene.ps_paths, strict=True)):
            with rasterio.open(path) as src:
                data, crs, t, names = src.read(), src.crs, src.transform, tuple(src.descriptions)
            if names != PS_BANDS:
                raise ValueError(f"{path} has bands {names}; expected {PS_BANDS}")
            _, h, w = data.shape
            stamp = date.strftime("%Y%m%d")
            tags = {"acquired": f"{date.isoformat()}T10:10:00Z"}
            # Scene 1: west part with a nodata collar (another origin), a cloud in its UDM2 over the overlap.
            we, es = int(np.ceil(WEST_END * w)), int(np.floor(EAST_START * w))
            west = np.zeros((4, h + COLLAR_PX, we + COLLAR_PX), dtype=data.dtype)
            west[:, COLLAR_PX:, COLLAR_PX:] = data[:, :, :we]
            inside = west[0] > 0
            clear = inside.copy()
            cr0, cr1 = (int(f * h) + COLLAR_PX for f in CLOUD_ROWS)
            clear[cr0:cr1, es + COLLAR_PX :] = False
            t1 = t @ Affine.translation(-COLLAR_PX, -COLLAR_PX)
            base = tmp_dir / f"{stamp}_101000_1_3B"
            _write(base.with_name(base.name + "_AnalyticMS_SR.tif"), west, crs, t1, PS_BANDS, 0, tags)
            _write(
                base.with_name(base.name + "_udm2.tif"), _udm2(clear, inside), crs, t1, UDM2_BANDS, None, tags
            )
            # Scene 2: east part, own origin; every second day in the next UTM zone at 1.5 m.
            east = np.ascontiguousarray(data[:, :, es:])
            t2 = t @ Affine.translation(es, 0)
            crs2 = crs
            if k % 2 == 1:
                crs2 = _other_zone(crs)
                left, top = t2.c, t2.f
                bounds = (left, top + t2.e * h, left + t2.a * east.shape[2], top)
                t3, w3, h3 = calculate_default_transform(
                    crs, crs2, east.shape[2], h, *bounds, resolution=OTHER_ZONE_RES_M
                )
                warped = np.zeros((4, h3, w3), dtype=data.dtype)
                reproject(
                    east,
                    warped,
                    src_transform=t2,
                    src_crs=crs,
                    src_nodata=0,
                    dst_transform=t3,
                    dst_crs=crs2,
                    dst_nodata=0,
                    resampling=Resampling.nearest,
                )
                east, t2 = warped, t3
            inside2 = east[0] > 0
            base = tmp_dir / f"{stamp}_101010_2_3B"
            _write(base.with_name(base.name + "_AnalyticMS_SR.tif"), east, crs2, t2, PS_BANDS, 0, tags)
            _write(
                base.with_name(base.name + "_udm2.tif"),
                _udm2(inside2, inside2),
                crs2,
                t2,
                UDM2_BANDS,
                None,
                tags,
            )
    return dest


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m training.ps_scenes``: an alias of ``cropmap data ps-scenes``; returns the exit status."""
    from cropmap.cli_common import run_command
    from training.simulate.cli import ps_scenes as command

    return run_command(command, argv, prog_name="python -m training.ps_scenes")


if __name__ == "__main__":
    sys.exit(main())
