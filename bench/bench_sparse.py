"""Benchmark: a nominally huge stack with one block of cropland costs only that block.

Usage::

    python bench/bench_sparse.py [--side 100000] [--repeat 3] [--markdown docs/benchmarks/sparse.md]

Builds, in a temporary folder, a sparse GeoTIFF stack of ``side x side`` px with the sample stack's 12 dates x
9 bands (pixel-interleaved, 512 px tiles; only one 512 x 512 tile holds data, the sample's values tiled)
and one cropland polygon inside that tile; and the same block as a 512 x 512 px stack. Then runs
``cropmap classify`` on both in fresh processes, side by side, and reports wall time and peak RSS of each,
and checks that the classified block is the same in both maps.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import rasterio
from rasterio.transform import from_origin
from rasterio.windows import Window

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from _proc import measure, median

SAMPLE = REPO / "sample_data" / "belgium_2021" / "s2_stack.tif"
BLOCK = 512


def build(folder: Path, side: int) -> tuple[Path, Path, Path, Path, tuple[int, int]]:
    """The huge sparse stack, a small stack of the data block alone, and a polygon (a GeoPackage for each)."""
    import geopandas as gpd
    import shapely

    with rasterio.open(SAMPLE) as src:
        data, prof, tags, desc = src.read(), src.profile, src.tags(), src.descriptions
    block = np.tile(data, (1, BLOCK // 100 + 1, BLOCK // 100 + 1))[:, :BLOCK, :BLOCK]
    row = col = (side // 2 // BLOCK) * BLOCK
    x0, y0 = 500000.0, 6000000.0
    prof.update(
        width=side,
        height=side,
        transform=from_origin(x0, y0, 10, 10),
        tiled=True,
        blockxsize=BLOCK,
        blockysize=BLOCK,
        interleave="pixel",
        BIGTIFF="YES",
        SPARSE_OK="TRUE",
        compress="deflate",
    )
    big = folder / "huge.tif"
    with rasterio.open(big, "w", **prof) as ds:
        ds.write(block, window=Window(col, row, BLOCK, BLOCK))
        ds.update_tags(**tags)
        ds.descriptions = desc
    small_prof = dict(
        prof, width=BLOCK, height=BLOCK, transform=from_origin(x0 + col * 10, y0 - row * 10, 10, 10)
    )
    small = folder / "block.tif"
    with rasterio.open(small, "w", **small_prof) as ds:
        ds.write(block)
        ds.update_tags(**tags)
        ds.descriptions = desc
    poly = shapely.box(x0 + col * 10 + 1000, y0 - row * 10 - 1700, x0 + col * 10 + 1700, y0 - row * 10 - 1000)
    mask = folder / "cropland.gpkg"
    gpd.GeoDataFrame(geometry=[poly], crs=prof["crs"]).to_file(mask, engine="pyogrio")
    return big, small, mask, mask, (row, col)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--side", type=int, default=100_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--markdown", type=Path, default=None, help="write the measured section into this page")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="cropmap-sparse-") as tmp:
        folder = Path(tmp)
        big, small, mask, _, (row, col) = build(folder, args.side)
        runs: dict[str, list] = {"huge": [], "block": []}
        for _ in range(args.repeat):  # side by side: huge, block, huge, block, ...
            for name, stack in (("huge", big), ("block", small)):
                out = folder / f"{name}_map.tif"
                r = measure(
                    [
                        sys.executable,
                        "-m",
                        "cropmap",
                        "classify",
                        str(stack),
                        "--mask",
                        str(mask),
                        "-o",
                        str(out),
                        "--overwrite",
                        "-q",
                        "--cloud-band",
                        "none",
                    ]
                )
                if r.returncode != 0:
                    sys.exit(f"cropmap classify failed on {name}: {r.stderr.strip()}")
                runs[name].append(r)
        with rasterio.open(folder / "huge_map.tif") as a, rasterio.open(folder / "block_map.tif") as b:
            same = np.array_equal(a.read(1, window=Window(col, row, BLOCK, BLOCK)), b.read(1))
            huge_size = (folder / "huge_map.tif").stat().st_size
            overviews = a.overviews(1)
        lines = [
            (
                f"`python bench/bench_sparse.py --side {args.side} --repeat {args.repeat}`: `cropmap classify` (fresh "
                f"process, default options: map, quick-look, summary) on a {args.side:,} x {args.side:,} px stack "
                f"(12 dates x 9 bands, uint16) whose only data and cropland is one {BLOCK} x {BLOCK} px block, next to "
                f"the same block as a {BLOCK} x {BLOCK} px stack; median of {args.repeat} runs each."
            ),
            "",
            "| stack | wall s | peak RSS MB |",
            "|---|---:|---:|",
        ]
        for name, label in (
            ("huge", f"{args.side:,} x {args.side:,} px, one cropland block"),
            ("block", f"{BLOCK} x {BLOCK} px, the same block"),
        ):
            lines.append(
                f"| {label} | {median([r.wall_s for r in runs[name]]):.2f} | "
                f"{median([r.peak_mb for r in runs[name]]):.0f} |"
            )
        lines += [
            "",
            (
                f"Class map of the huge stack: {huge_size / 1e6:.2f} MB on disk, overviews {overviews}; its "
                f"block equals the small stack's map: {same}."
            ),
        ]
        report = "\n".join(lines)
        print(report)
        if not same:
            sys.exit("the block differs between the two maps")
        if args.markdown is not None:
            from _report import write_measured

            write_measured(args.markdown, report)


if __name__ == "__main__":
    main()
