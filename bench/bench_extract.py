"""Benchmark: labelled-series extraction next to `cropmap classify` on the same stack, and its memory on a 16x stack.

Usage::

    python bench/bench_extract.py [--side 512] [--repeat 3] [--markdown docs/benchmarks/extract.md]

Builds, in a temporary folder, a GeoTIFF stack of ``side x side`` px from the shipped sample stack's values
(12 dates x 9 bands, tiled, 256 px tiles) and a grid of labelled parcels (48 x 48 px every 64 px, four crops),
and the same at ``4 x side`` (16x the pixels, 16x the parcels). Then runs, in fresh processes, side by side:

* the extraction (:func:`training.data.extract.extract`, every pixel, no buffer: the pixels ``cropmap classify``
  maps inside the same polygons), wall time in this process (open, polygons, read, validity, parquet written);
* :func:`cropmap.classify` on the same stack and polygons with a linear bundle of the sample's bands and time
  grid (built with onnx.helper, so the model costs next to nothing and classify's time is its reading, gap fill
  and writing): its pixels per second of wall time, and of its read stage alone (the blocks' summed read
  seconds divided by its block workers: an upper bound of how fast it reads);

and the peak resident memory of ``python -m training.data.extract`` on both stacks, each in a fresh process. Pixel-series per second = pixels written (or
classified) / seconds.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio
from rasterio.transform import from_origin

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from _proc import measure, median

SAMPLE = REPO / "sample_data" / "belgium_2021" / "s2_stack.tif"
TILE = 256
CROPS = ("maize", "wheat", "grass", "potato")


def build(folder: Path, side: int) -> tuple[Path, Path]:
    """A ``side x side`` stack of the sample's values tiled, and a GeoPackage of labelled parcels on it."""
    import geopandas as gpd
    import shapely

    with rasterio.open(SAMPLE) as src:
        values = src.read()
        tags, descriptions, nodata, crs, tf = src.tags(), src.descriptions, src.nodata, src.crs, src.transform
    reps = -(-side // values.shape[1])
    stack = folder / f"stack_{side}.tif"
    prof = {
        "driver": "GTiff",
        "width": side,
        "height": side,
        "count": values.shape[0],
        "dtype": values.dtype,
        "crs": crs,
        "transform": from_origin(tf.c, tf.f, tf.a, -tf.e),
        "nodata": nodata,
        "tiled": True,
        "blockxsize": TILE,
        "blockysize": TILE,
    }
    with rasterio.open(stack, "w", **prof) as dst:
        for r0 in range(0, side, TILE):  # one strip of tiles at a time: memory stays small
            h = min(TILE, side - r0)
            strip = np.tile(values, (1, -(-h // values.shape[1]) + 1, reps))
            off = r0 % values.shape[1]
            dst.write(strip[:, off : off + h, :side], window=rasterio.windows.Window(0, r0, side, h))
        dst.descriptions = descriptions
        dst.update_tags(**tags)
    x0, y0 = tf.c, tf.f
    rows = []
    for i, r in enumerate(range(0, side - 47, 64)):
        for j, c in enumerate(range(0, side - 47, 64)):
            box = shapely.box(x0 + 10 * (c + 8), y0 - 10 * (r + 56), x0 + 10 * (c + 56), y0 - 10 * (r + 8))
            rows.append({"parcel": f"{i}-{j}", "crop": CROPS[(i + j) % len(CROPS)], "geometry": box})
    parcels = folder / f"parcels_{side}.gpkg"
    gpd.GeoDataFrame(rows, geometry="geometry", crs=crs.to_wkt()).to_file(parcels)
    return stack, parcels


def tiny_bundle(path: Path) -> Path:
    """A linear bundle over the sample's bands and time grid (built with onnx.helper): the model costs next to
    nothing, so classify's wall time is its reading, gap fill and writing."""
    import dataclasses

    sys.path.insert(0, str(REPO / "tests" / "cropmap"))
    from stackkit import base_metadata, write_bundle

    from cropmap.models import DEFAULT_BUNDLE
    from cropmap.runtime import load_bundle

    shipped = load_bundle(DEFAULT_BUNDLE).metadata
    meta = base_metadata(
        bands=shipped.bands, time_grid=shipped.time_grid, min_valid_steps=shipped.min_valid_steps
    )
    return write_bundle(path, dataclasses.replace(meta, embedding=None), with_embedding=False)


def extract_args(stack: Path, parcels: Path, out: Path) -> list[str]:
    return [
        str(stack),
        str(parcels),
        "-o",
        str(out),
        "--label-column",
        "crop",
        "--id-column",
        "parcel",
        "--buffer",
        "0",
        "--block-size",
        str(TILE),
        "--cloud-band",
        "none",
        "--overwrite",
        "--no-progress",
    ]


def timed_extract(stack: Path, parcels: Path, out: Path) -> tuple[float, int, float]:
    """Wall seconds (in this process: open, polygons, read, validity, parquet written), pixels written, and the
    read stage's seconds (summed block read seconds / worker threads)."""
    from training.data.extract import ExtractOptions, extract

    opts = ExtractOptions(
        label_column="crop", id_column="parcel", buffer_m=0.0, block_size=TILE, cloud_band="none"
    )
    t0 = time.perf_counter()
    summary = extract(stack, parcels, out, opts, overwrite=True)
    return time.perf_counter() - t0, summary.pixels_kept, summary.read_s / summary.workers


def timed_classify(stack: Path, parcels: Path, model: Path, out: Path) -> tuple[float, dict]:
    """Wall seconds of :func:`cropmap.classify` in this process, and its summary."""
    from cropmap import classify

    t0 = time.perf_counter()
    summary = classify(
        stack,
        parcels,
        model=model,
        out=out,
        block_size=TILE,
        cloud_band="none",
        quicklook=False,
        overwrite=True,
    ).to_dict()
    return time.perf_counter() - t0, summary


def peak_extract_mb(stack: Path, parcels: Path, out: Path) -> float:
    """Peak RSS of the extraction command in a fresh process, as ``/usr/bin/time`` reports it.

    Not the ``ru_maxrss`` of a child of this process: Linux carries the parent's peak into a child started by
    vfork + exec (the child's maximum starts at the parent's), and this process holds the extractions it timed.
    ``/usr/bin/time`` is such a child too, but it forks the command from its own small process.
    """
    r = measure(
        [
            "/usr/bin/time",
            "-f",
            "peak_kb %M",
            sys.executable,
            "-m",
            "training.data.extract",
            *extract_args(stack, parcels, out),
        ]
    )
    if r.returncode:
        raise SystemExit(f"extraction failed: {r.stderr.strip()}")
    return int(r.stderr.strip().splitlines()[-1].split()[-1]) / 1024


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print (and optionally write) a markdown table."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--side", type=int, default=512, help="edge of the base stack in pixels (default 512)")
    p.add_argument("--repeat", type=int, default=3, help="turns on the base stack (every side once per turn)")
    p.add_argument("--markdown", type=Path, help="write the report to this file")
    args = p.parse_args(argv)
    import logging

    logging.disable(logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="bench_extract_") as tmp:
        folder = Path(tmp)
        base, base_parcels = build(folder, args.side)
        big, big_parcels = build(folder, 4 * args.side)
        model = tiny_bundle(folder / "tiny.onnx")
        ext_s, cls_s, read_s, ext_read_s = [], [], [], []
        n_ext = n_cls = 0
        executor = ""
        for _ in range(args.repeat):
            w, n_ext, r = timed_extract(base, base_parcels, folder / "base.parquet")
            ext_s.append(w)
            ext_read_s.append(r)
            w, summary = timed_classify(base, base_parcels, model, folder / "base.tif")
            n_cls = summary["pixels"]["classified"]
            executor = summary["executor"]
            n_workers = int(executor.split("(")[1].split()[0])
            cls_s.append(w)
            read_s.append(summary["timings_s"]["read"] / n_workers)
        big_ext_s, n_big, _ = timed_extract(big, big_parcels, folder / "big.parquet")
        base_runs, big_runs = [], []
        for _ in range(2):  # alternating, medians: the peak varies by a few percent from run to run
            base_runs.append(peak_extract_mb(base, base_parcels, folder / "base.parquet"))
            big_runs.append(peak_extract_mb(big, big_parcels, folder / "big.parquet"))
        base_mb, big_mb = median(base_runs), median(big_runs)
    e, c, rd, erd = median(ext_s), median(cls_s), median(read_s), median(ext_read_s)
    ext_rate, cls_rate, read_rate, ext_read_rate = n_ext / e, n_cls / c, n_cls / rd, n_ext / erd
    lines = [
        "| run | stack | pixel-series | seconds | pixel-series/s |",
        "|---|---|---:|---:|---:|",
        (
            f"| `training.data.extract` (every pixel, parquet written) | {args.side}^2 | {n_ext:,} | {e:.2f} | "
            f"{ext_rate:,.0f} |"
        ),
        (
            f"| `training.data.extract`, read stage alone (summed block read s / block workers) | {args.side}^2 | "
            f"{n_ext:,} | {erd:.2f} | {ext_read_rate:,.0f} |"
        ),
        (
            f"| `cropmap.classify` end to end (linear bundle: reading, gap fill, COG written) | {args.side}^2 | {n_cls:,} | "
            f"{c:.2f} | {cls_rate:,.0f} |"
        ),
        (
            f"| `cropmap.classify`, read stage alone (summed block read s / block workers) | {args.side}^2 | {n_cls:,} | "
            f"{rd:.2f} | {read_rate:,.0f} |"
        ),
        (
            f"| `training.data.extract`, 16x the pixels | {4 * args.side}^2 | {n_big:,} | {big_ext_s:.2f} | "
            f"{n_big / big_ext_s:,.0f} |"
        ),
        "",
        (
            f"Reading: the extraction's read stage takes **{ext_read_rate / read_rate:.2f}x** the pixel-series per second "
            f"of classify's (the same reader on the same blocks). End to end, with its parquet written, the extraction "
            f"runs at {ext_rate / cls_rate:.2f}x the pixel-series per second of classify with its COG written. Peak "
            f"RSS of `python -m training.data.extract` (fresh process, median of 2 alternating runs each): "
            f"{base_mb:,.0f} MB on the {args.side}^2 stack ({', '.join(f'{v:,.0f}' for v in base_runs)}), "
            f"{big_mb:,.0f} MB on the 16x stack ({', '.join(f'{v:,.0f}' for v in big_runs)}): **{big_mb / base_mb:.2f}x**."
        ),
        "",
        (
            f"Measured {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC on {platform.machine()} with "
            f"{os.cpu_count()} cores, Python {platform.python_version()}; stacks of the sample's 12 dates x 9 bands "
            f"(uint16, {TILE} px tiles, blocks of {TILE} px, no cloud band), parcels 48 x 48 px every 64 px; in-process "
            f"wall times (imports excluded), median of {args.repeat} turns on the base stack (both sides once per turn), "
            f"one run on the 16x stack; classify executor: {executor}."
        ),
    ]
    report = "\n".join(lines)
    print(report)
    if args.markdown:
        args.markdown.write_text(
            "# Extraction throughput and memory\n\n"
            f"Produced by `python bench/bench_extract.py --side {args.side} --repeat {args.repeat} --markdown "
            f"{args.markdown}`.\n\n{report}\n",
            encoding="utf-8",
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
