"""Produce ``sample_data/`` from the real source files (run once by maintainers).

Usage::

    python sample_data/make_sample_data.py --source DIR [--out sample_data]

``DIR`` is a folder laid out as the project's real-data drop: ``belgium_2021/``
(``s2_stack.tif``, ``cropland.gpkg``, ``worldcereal_prediction.tif`` and the MIT
licence of WorldCereal/worldcereal-classification) and ``worldcereal_parcels/``
(the WorldCereal extractions and class tables). Provenance of each file is in
``sample_data/README.md``.

What it does:

* ``belgium_2021/s2_stack.tif``: a byte copy of the source stack, then one dataset
  tag ``reflectance_scale=10000`` is added in place. Pixel values, band
  descriptions, the other tags, tiling and compression are unchanged; the script
  checks that after writing.
* every other file is copied byte for byte.

This script is the provenance of the sample data. Nothing in cropmap, training
or the tests runs it.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import shutil
import sys
from pathlib import Path

import numpy as np
import rasterio

logger = logging.getLogger("make_sample_data")

STACK_COPIES = {
    "belgium_2021/cropland.gpkg": "belgium_2021/cropland.gpkg",
    "belgium_2021/worldcereal_prediction.tif": "belgium_2021/worldcereal_prediction.tif",
    "belgium_2021/LICENSE_worldcereal-classification_MIT.txt": "belgium_2021/LICENSE_worldcereal-classification_MIT.txt",
}
"""``source path -> destination path`` of files copied unchanged for the map."""

PARCEL_COPIES = {
    "worldcereal_parcels/2021_BEL_LPIS-Flanders_POLY_110_monthly.parquet": (
        "worldcereal/2021_BEL_LPIS-Flanders_POLY_110_monthly.parquet"
    ),
    "worldcereal_parcels/2022_FRA_LPIS_POLY_110_monthly.geoparquet": (
        "worldcereal/2022_FRA_LPIS_POLY_110_monthly.geoparquet"
    ),
    "worldcereal_parcels/LICENSE_worldcereal-classification_MIT.txt": (
        "worldcereal/LICENSE_worldcereal-classification_MIT.txt"
    ),
}
"""``source path -> destination path`` of the training data for the sample model."""

STACK = "belgium_2021/s2_stack.tif"
REFLECTANCE_SCALE_TAG = ("reflectance_scale", "10000")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def copy_unchanged(source: Path, out: Path, mapping: dict[str, str]) -> None:
    """Copy files byte for byte.

    Raises:
        FileNotFoundError: If a source file is missing.
    """
    for src_rel, dst_rel in mapping.items():
        src, dst = source / src_rel, out / dst_rel
        if not src.is_file():
            raise FileNotFoundError(f"{src} not found; --source must hold {sorted(mapping)}")
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)
        logger.info("copied %s (%d bytes, sha256 %s)", dst_rel, dst.stat().st_size, _sha256(dst)[:16])


def tag_stack(source: Path, out: Path) -> None:
    """Copy the S2 stack and add the ``reflectance_scale`` dataset tag.

    Raises:
        FileNotFoundError: If the source stack is missing.
        RuntimeError: If the written file differs from the source in anything
            except the added tag.
    """
    src, dst = source / STACK, out / STACK
    if not src.is_file():
        raise FileNotFoundError(f"{src} not found")
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_suffix(".tmp.tif")
    shutil.copyfile(src, tmp)
    key, value = REFLECTANCE_SCALE_TAG
    with rasterio.open(tmp, "r+") as ds:
        ds.update_tags(**{key: value})
    aux = tmp.with_name(tmp.name + ".aux.xml")
    if aux.exists():
        raise RuntimeError(f"GDAL wrote the tag to a side-car {aux} instead of the GeoTIFF")
    with rasterio.open(src) as a, rasterio.open(tmp) as b:
        want_tags = {**a.tags(), key: value}
        checks = {
            "values": np.array_equal(a.read(), b.read()),
            "descriptions": a.descriptions == b.descriptions,
            "tags": b.tags() == want_tags,
            "profile": a.profile == b.profile,
            "band tags": all(a.tags(i) == b.tags(i) for i in range(1, a.count + 1)),
        }
    failed = [name for name, ok in checks.items() if not ok]
    if failed:
        tmp.unlink()
        raise RuntimeError(f"the tagged stack differs from {src} in: {', '.join(failed)}")
    tmp.replace(dst)
    logger.info("wrote %s with tag %s=%s (%d bytes)", STACK, key, value, dst.stat().st_size)


def main(argv: list[str] | None = None) -> int:
    """Build ``sample_data/`` from ``--source``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--source", type=Path, required=True, help="folder with belgium_2021/ and worldcereal_parcels/"
    )
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).resolve().parent, help="default: this folder"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    tag_stack(args.source, args.out)
    copy_unchanged(args.source, args.out, STACK_COPIES)
    copy_unchanged(args.source, args.out, PARCEL_COPIES)
    return 0


if __name__ == "__main__":
    sys.exit(main())
