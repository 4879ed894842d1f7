"""Benchmark: memory that does not grow with the stack, and two workers against one.

Usage::

    python bench/bench_scale.py [--repeat 3] [--markdown docs/benchmarks/scale.md]

Stacks (built in a temporary folder from the shipped sample, 100 x 100 px, 12 dates x 9 bands, 64 px
tiles): the sample itself, and the sample tiled 4 x 4 (400 x 400 px, 16 times the pixels and the
cropland), with the cropland polygons copied onto each tile; for the regions, eight copies of the
sample tiled 2 x 2. The shipped bundle throughout.

* **Memory**: peak RSS of ``cropmap classify`` (a fresh process each run, ``--block-size 64``) on the
  16x stack and on the sample, with ``--workers 1`` and ``--workers 2``; runs alternate (16x, sample,
  16x, sample, ...) and the medians are compared.
* **Scaling, blocks**: :func:`cropmap.classify` on the 16x stack (49 blocks of 64 px) in this process,
  one worker thread with a single-threaded ONNX Runtime session (``workers=1, threads=1``) against two
  (``workers=2, threads=2``), alternating; wall time of the call.
* **Scaling, regions**: :func:`cropmap.classify_many` of eight regions on the batch's own local cluster
  (:func:`cropmap.batch.local_cluster`) of one single-threaded worker process against one of two, alternating;
  each cluster is started, its workers warmed up (imports, the bundle's session), then the call is timed;
  only one cluster exists at a time.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from _proc import measure, median

SAMPLE = REPO / "sample_data" / "belgium_2021"


def tiled(folder: Path, n: int, name: str) -> tuple[Path, Path]:
    """The sample stack tiled ``n x n`` and its cropland polygons copied onto every tile."""
    import geopandas as gpd
    from shapely import affinity

    with rasterio.open(SAMPLE / "s2_stack.tif") as src:
        data, prof, tags, desc = src.read(), src.profile, src.tags(), src.descriptions
    prof.update(width=100 * n, height=100 * n)
    stack = folder / f"{name}.tif"
    with rasterio.open(stack, "w", **prof) as ds:
        ds.write(np.tile(data, (1, n, n)))
        ds.update_tags(**tags)
        ds.descriptions = desc
    g = gpd.read_file(SAMPLE / "cropland.gpkg")
    res = prof["transform"].a * 100  # one sample tile in map units
    geoms = [affinity.translate(p, res * i, -res * j) for i in range(n) for j in range(n) for p in g.geometry]
    mask = folder / f"{name}.gpkg"
    gpd.GeoDataFrame(geometry=geoms, crs=g.crs).to_file(mask, engine="pyogrio")
    return stack, mask


def memory(folder: Path, repeat: int) -> list[str]:
    small = (SAMPLE / "s2_stack.tif", SAMPLE / "cropland.gpkg")
    big = tiled(folder, 4, "x16")
    lines = [
        "| workers | sample peak RSS MB | 16x stack peak RSS MB | ratio 16x / sample |",
        "|---:|---:|---:|---:|",
    ]
    for workers in (1, 2):
        peaks: dict[str, list[float]] = {"big": [], "small": []}
        for _ in range(repeat):
            for key, (stack, mask) in (("big", big), ("small", small)):
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
                        str(folder / f"m_{key}.tif"),
                        "--overwrite",
                        "-q",
                        "--block-size",
                        "64",
                        "--workers",
                        str(workers),
                        "--cloud-band",
                        "none",
                    ]
                )
                if r.returncode != 0:
                    sys.exit(f"cropmap classify failed: {r.stderr.strip()}")
                peaks[key].append(r.peak_mb)
        s, b = median(peaks["small"]), median(peaks["big"])
        lines.append(f"| {workers} | {s:.0f} | {b:.0f} | {b / s:.3f} |")
    return lines


def scaling_blocks(folder: Path, repeat: int) -> list[str]:
    import cropmap

    stack, mask = folder / "x16.tif", folder / "x16.gpkg"
    times: dict[int, list[float]] = {1: [], 2: []}
    for _ in range(repeat):
        for w in (1, 2):
            t0 = time.perf_counter()
            s = cropmap.classify(
                stack,
                mask,
                out=folder / f"b{w}.tif",
                overwrite=True,
                block_size=64,
                workers=w,
                threads=w,
                quicklook=False,
                cloud_band="none",
            ).to_dict()
            times[w].append(time.perf_counter() - t0)
    one, two = median(times[1]), median(times[2])
    return [
        (
            f"| blocks: `classify` of the 16x stack ({s['blocks']['processed']} blocks, "
            f"{s['pixels']['in_mask']:,} cropland px) | {one:.2f} | {two:.2f} | {one / two:.2f}x |"
        )
    ]


def _warm_worker(bundle: str) -> None:
    """Import what a region needs and open the bundle's session, so the clock sees no start-up."""
    import cropmap.pipeline  # noqa: F401
    from cropmap.predict import bundle_session

    with bundle_session(bundle, 1):
        pass


def scaling_regions(folder: Path, repeat: int, n_regions: int = 8) -> list[str]:
    from distributed import Client

    import cropmap
    from cropmap.batch import LEAN_LOCAL_CLUSTER, local_cluster
    from cropmap.models import DEFAULT_BUNDLE

    regions = []
    for i in range(n_regions):
        stack, mask = tiled(folder, 2, f"r{i}")
        regions.append({"name": f"r{i}", "stack": str(stack), "mask": str(mask)})
    # The batch's settings, and dask's defaults (statistical profiler and work stealing on) for comparison.
    kinds = {"": LEAN_LOCAL_CLUSTER, ", dask's default settings": {}}
    times: dict[tuple[str, int], list[float]] = {(kind, w): [] for kind in kinds for w in (1, 2)}
    for k in range(repeat):
        for kind, settings in kinds.items():
            for w in (1, 2):
                # One cluster at a time (an idle one's event loops would take CPU from the measured one), the
                # batch's own local cluster, its workers warmed up before the clock starts.
                with (
                    local_cluster(w, settings=settings) as cluster,
                    Client(cluster, set_as_default=False) as client,
                ):
                    client.run(_warm_worker, str(DEFAULT_BUNDLE))
                    t0 = time.perf_counter()
                    s = cropmap.classify_many(
                        regions,
                        out_dir=folder / f"batch{w}_{k}{kind[:2]}",
                        quicklook=False,
                        scheduler=cluster.scheduler_address,
                        cloud_band="none",
                    )
                    times[(kind, w)].append(time.perf_counter() - t0)
                assert s["totals"]["done"] == n_regions, s["regions"]
    rows = []
    for kind in kinds:
        one, two = median(times[(kind, 1)]), median(times[(kind, 2)])
        rows.append(
            f"| regions: `classify_many` of {n_regions} regions (2x2-tiled sample each){kind} | {one:.2f} | "
            f"{two:.2f} | {one / two:.2f}x |"
        )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--markdown", type=Path, default=None, help="write the measured section into this page")
    ap.add_argument("--only", choices=("memory", "scaling"), default=None)
    args = ap.parse_args()
    cmd = f"python bench/bench_scale.py --repeat {args.repeat}" + (
        f" --only {args.only}" if args.only else ""
    )
    lines = [f"`{cmd}` on {os.cpu_count()} cores; medians of {args.repeat} alternating runs.", ""]
    with tempfile.TemporaryDirectory(prefix="cropmap-scale-") as tmp:
        folder = Path(tmp)
        if args.only != "scaling":
            lines += [
                "Peak RSS of `cropmap classify --block-size 64` (fresh process):",
                "",
                *memory(folder, args.repeat),
                "",
            ]
        else:
            tiled(folder, 4, "x16")
        if args.only != "memory":
            lines += [
                "Two workers against one (each worker single-threaded):",
                "",
                "| work | 1 worker s | 2 workers s | speed-up |",
                "|---|---:|---:|---:|",
                *scaling_blocks(folder, args.repeat),
                *scaling_regions(folder, args.repeat),
            ]
    report = "\n".join(lines)
    print(report)
    if args.markdown is not None:
        from _report import write_measured

        write_measured(args.markdown, report)


if __name__ == "__main__":
    main()
