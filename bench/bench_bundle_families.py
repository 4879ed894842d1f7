"""Benchmark: `cropmap classify` with bundles of different families on the same stack, side by side.

Usage::

    python bench/bench_bundle_families.py NAME=BUNDLE.onnx [NAME=BUNDLE.onnx ...] [--tile 4] [--repeat 3]

Every bundle classifies the same stack (the sample stack, or the sample tiled ``--tile`` x ``--tile`` as
``bench/bench_precision.tiled_sample`` builds it) with :func:`cropmap.classify` (default options: every core),
one after another in each turn, ``--repeat`` turns; the figure is the median over the turns of the cropland pixels
per second of wall time that the run summary reports (open, read, mask, fill, model, outputs). The bundles must
share the stack's bands and grid (e.g. the shipped sample bundle and bundles trained on the Flanders parcels).
"""

from __future__ import annotations

import argparse
import datetime as dt
import platform
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))


def main(argv: list[str] | None = None) -> int:
    from cropmap import classify
    from cropmap.runtime import load_bundle

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("bundles", nargs="+", metavar="NAME=BUNDLE.onnx")
    parser.add_argument("--tile", type=int, default=None, help="tile the sample stack N x N")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    bundles = dict(b.split("=", 1) for b in args.bundles)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        stack = REPO / "sample_data/belgium_2021/s2_stack.tif"
        mask = REPO / "sample_data/belgium_2021/cropland.gpkg"
        if args.tile is not None:
            from bench_precision import tiled_sample

            stack, mask = tiled_sample(work, args.tile)
        speed: dict[str, list[float]] = {name: [] for name in bundles}
        pixels = 0
        for turn in range(args.repeat):
            for name, bundle in bundles.items():
                out = work / f"{name}-{turn}.tif"
                summary = classify(stack, mask=mask, model=bundle, out=out)
                speed[name].append(float(summary.throughput_cropland_px_per_s))
                pixels = int(summary.pixels.classified)
                print(f"turn {turn + 1}: {name}: {speed[name][-1]:,.0f} px/s", flush=True)
    ref = statistics.median(next(iter(speed.values())))
    print(
        f"\n`python bench/bench_bundle_families.py {' '.join(args.bundles)}"
        + (f" --tile {args.tile}" if args.tile else "")
        + f" --repeat {args.repeat}`, {dt.datetime.now().strftime('%Y-%m-%d %H:%M')}, {platform.machine()}; "
        f"{pixels:,} cropland pixels, median of {args.repeat} turns\n"
    )
    print("| bundle | family | size | cropland px/s | vs first |\n|---|---|---:|---:|---:|")
    for name, bundle in bundles.items():
        meta = load_bundle(bundle).metadata
        med = statistics.median(speed[name])
        size = Path(bundle).stat().st_size / 1e6
        print(f"| {name} | {meta.provenance.base_model} | {size:.1f} MB | {med:,.0f} | {med / ref:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
