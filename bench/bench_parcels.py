"""Benchmark: per-parcel classification next to the pixel map alone, and `cropmap assess` on a large map.

Usage::

    python bench/bench_parcels.py                        # sample stack, its 4 fields as mask and parcels
    python bench/bench_parcels.py --repeat 5 --grid 5    # also the fields cut into 5 x 5 px parcels
    python bench/bench_parcels.py --assess-size 10000 --assess-points 10000

Part 1 runs :func:`cropmap.classify` on the shipped sample stack with ``cropland.gpkg`` as the
mask, once without and once with ``parcels=`` (the same polygons; with ``--grid N`` also the
fields cut into N x N pixel parcels), alternating, best of ``--repeat`` turns each: the ratio
is the cost of the per-parcel GeoPackage over the map alone. Part 2 writes a
``--assess-size``-square uint8 class map (4 classes in 100-px patches, tiled, deflate; not
timed) and times :func:`cropmap.assess.assess` + :func:`cropmap.assess.write_report` on
``--assess-points`` reference points (read the whole map for the class areas, sample the
points, estimate, JSON + Markdown + PNG).
"""

from __future__ import annotations

import argparse
import datetime as dt
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

STACK = REPO / "sample_data" / "belgium_2021" / "s2_stack.tif"
FIELDS = REPO / "sample_data" / "belgium_2021" / "cropland.gpkg"


def grid_parcels(fields: Path, cell_px: int, out: Path) -> int:
    """The fields cut into ``cell_px`` x ``cell_px`` pixel cells (10 m pixels): many small parcels."""
    import geopandas as gpd
    import shapely

    g = gpd.read_file(fields)
    x0, y0, x1, y1 = g.total_bounds
    step = 10.0 * cell_px
    cells = [
        shapely.box(x, y, x + step, y + step)
        for x in np.arange(x0, x1, step)
        for y in np.arange(y0, y1, step)
    ]
    grid = gpd.GeoDataFrame({"cell": range(len(cells))}, geometry=cells, crs=g.crs)
    parts = gpd.overlay(grid, g[["geometry"]], how="intersection", keep_geom_type=True)
    parts = parts[parts.geometry.area > 0].explode(index_parts=False).reset_index(drop=True)
    parts.to_file(out)
    return len(parts)


def time_classify(parcels: Path | None, folder: Path, turn: int) -> float:
    from cropmap.pipeline import classify

    out = folder / f"map_{'p' if parcels else 'x'}_{turn}.tif"
    t0 = time.perf_counter()
    classify(STACK, FIELDS, out=out, parcels=parcels, overwrite=True)
    return time.perf_counter() - t0


def bench_parcels(repeat: int, grid: int | None, folder: Path) -> list[tuple[str, int, float, float]]:
    """``(case, parcels, best map-only s, best with-parcels s)`` per case."""
    import geopandas as gpd

    cases = [("the 4 sample fields", FIELDS, len(gpd.read_file(FIELDS)))]
    if grid:
        path = folder / f"grid_{grid}px.gpkg"
        cases.append(
            (f"the fields cut into {grid} x {grid} px parcels", path, grid_parcels(FIELDS, grid, path))
        )
    time_classify(None, folder, -1)  # warm-up: imports, first session
    rows = []
    for name, path, n in cases:
        alone, with_p = [], []
        for turn in range(repeat):
            alone.append(time_classify(None, folder, turn))
            with_p.append(time_classify(path, folder, turn))
        rows.append((name, n, min(alone), min(with_p)))
    return rows


def write_map(path: Path, size: int, rng: np.random.Generator) -> None:
    import rasterio
    from affine import Affine
    from rasterio.windows import Window

    from cropmap.contract.metadata import ClassInfo
    from cropmap.writer import class_tags, colormap

    classes = [
        ClassInfo(1, "maize", "#ffd700"),
        ClassInfo(2, "wheat", "#a0522d"),
        ClassInfo(3, "grassland", "#2e8b57"),
        ClassInfo(4, "other", "#999999"),
    ]
    patch = 100
    n = -(-size // patch)
    patches = rng.choice([1, 2, 3, 4], size=(n, n), p=[0.15, 0.25, 0.4, 0.2]).astype(np.uint8)
    prof = {
        "driver": "GTiff",
        "height": size,
        "width": size,
        "count": 1,
        "dtype": "uint8",
        "crs": "EPSG:32631",
        "nodata": 0,
        "transform": Affine(10, 0, 500_000, 0, -10, 5_700_000),
        "tiled": True,
        "blockxsize": 512,
        "blockysize": 512,
        "compress": "deflate",
        "BIGTIFF": "IF_SAFER",
    }
    tags, band = class_tags(classes)
    with rasterio.open(path, "w", **prof) as ds:
        ds.update_tags(**tags)
        ds.update_tags(1, **band)
        ds.write_colormap(1, colormap(classes))
        rows = 2048
        for r0 in range(0, size, rows):
            h = min(rows, size - r0)
            block = np.repeat(np.repeat(patches[r0 // patch : -(-(r0 + h) // patch)], patch, 0), patch, 1)
            off = r0 - (r0 // patch) * patch
            ds.write(block[off : off + h, :size], 1, window=Window(0, r0, size, h))


def bench_assess(size: int, points: int, folder: Path) -> dict[str, float]:
    import geopandas as gpd
    import rasterio
    import shapely

    from cropmap.assess import assess, write_report

    rng = np.random.default_rng(0)
    map_path = folder / f"map_{size}.tif"
    t0 = time.perf_counter()
    write_map(map_path, size, rng)
    make_s = time.perf_counter() - t0
    with rasterio.open(map_path) as ds:
        tf = ds.transform
        rows, cols = rng.integers(0, size, points), rng.integers(0, size, points)
        values = np.array(
            [
                v[0]
                for v in ds.sample(zip(tf.c + (cols + 0.5) * tf.a, tf.f + (rows + 0.5) * tf.e, strict=True))
            ]
        )
    truth = np.where(rng.random(points) < 0.85, values, rng.integers(1, 5, points))
    ref = folder / "reference.gpkg"
    gpd.GeoDataFrame(
        {"crop": truth},
        geometry=shapely.points(tf.c + (cols + 0.5) * tf.a, tf.f + (rows + 0.5) * tf.e),
        crs="EPSG:32631",
    ).to_crs(4326).to_file(ref)
    t0 = time.perf_counter()
    report = assess(map_path, ref, label_column="crop")
    assess_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    write_report(report, folder / "report.json", overwrite=True)
    write_s = time.perf_counter() - t0
    return {
        "make_s": make_s,
        "assess_s": assess_s,
        "write_s": write_s,
        "oa": report["overall_accuracy"]["estimate"],
        "units": report["sample"]["units"],
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--grid", type=int, default=5, help="also cut the fields into N x N px parcels (0: no)")
    ap.add_argument("--assess-size", type=int, default=10_000)
    ap.add_argument("--assess-points", type=int, default=10_000)
    args = ap.parse_args(argv)
    import os

    with tempfile.TemporaryDirectory(prefix="bench_parcels_") as tmp:
        folder = Path(tmp)
        rows = bench_parcels(args.repeat, args.grid or None, folder)
        a = bench_assess(args.assess_size, args.assess_points, folder) if args.assess_size else None
    print(
        f"# bench_parcels {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC, {platform.machine()}, "
        f"{os.cpu_count()} cores, best of {args.repeat}"
    )
    print("| parcels | count | map alone s | map + parcels s | ratio |")
    print("|---|---:|---:|---:|---:|")
    for name, n, alone, with_p in rows:
        print(f"| {name} | {n:,} | {alone:.2f} | {with_p:.2f} | {with_p / alone:.2f}x |")
    if a is not None:
        print(
            f"\nassess: {args.assess_size:,} x {args.assess_size:,} map, {args.assess_points:,} points "
            f"({a['units']:,} units): assess {a['assess_s']:.2f} s + reports {a['write_s']:.2f} s "
            f"(map written in {a['make_s']:.1f} s, not timed); overall accuracy {a['oa']:.4f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
