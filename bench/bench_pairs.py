"""Pair building (``python -m training.pairs``): pairs/s and peak memory, and how memory grows with the pairs.

1. The default simulated scene (``python -m training.simulate``, preset ``default``: 60 x 60 S2 px, 36 stamps, the
   PlanetScope archive as real-shaped scenes in ``scene_a/planet_scenes/``, half of the days' second scene in
   another UTM zone): ``python -m training.pairs scene_a/s2_stack.tif scene_a/planet_scenes -o OUT`` (point- and
   time-wise), run in a child process, wall time, CPU time and peak resident memory (``ru_maxrss``) measured
   from outside.
2. Growth: the same command on scenes of 1x, 4x and 16x the pixels (``--size-px`` 64, 128, 256; PS only on the
   S2 days, ``--ps-interval-days 366``, which changes nothing the pairing reads but the simulation time); the
   peak memory ratio against the 1x scene shows whether memory stays bounded as the number of pairs grows.
   The simulator tiles a stack by its size (up to 256 px) and the reader's cache holds the tiles a window
   touches, so the growth scenes' stacks are rewritten with 64 px tiles (values, descriptions and tags
   unchanged) to hold everything but the number of pairs fixed; sides are multiples of the 64 px block.

The papers' 14.4 M point-wise pairs are projected from the measured rate (disk: 4 bytes per value plus the
index).

    python bench/bench_pairs.py                                   # simulate into a temporary folder
    python bench/bench_pairs.py --sim /tmp/pairs_bench --write docs/benchmarks/pairs.md
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _report import write_measured

PAPER_PAIRS = 14_400_000


def _measure(cmd: Sequence[str]) -> dict[str, float]:
    """Wall seconds, CPU seconds (user + system) and peak RSS (MB) of a child process."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(list(cmd), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {err.strip()[-400:]}")
    return {"wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime, "peak_mb": usage.ru_maxrss / 1024}


def _simulate(root: Path, size_px: int | None, interval: int | None) -> Path:
    if not (root / "scene_a" / "planet_scenes").is_dir():
        cmd = [sys.executable, "-m", "training.simulate", "--out", str(root)]
        if size_px is not None:
            cmd += ["--size-px", str(size_px), "--n-fields", str(max(40, round(40 * (size_px / 64) ** 2)))]
        if interval is not None:
            cmd += ["--ps-interval-days", str(interval)]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return root / "scene_a"


def _retile(stack: Path, tile: int = 64) -> Path:
    """A copy of ``stack`` with ``tile`` px tiles (same values, descriptions, tags), beside it."""
    import rasterio

    from cropmap.safeio.atomic import atomic_path

    dest = stack.with_name(f"s2_stack_tile{tile}.tif")
    if dest.exists():
        return dest
    with rasterio.open(stack) as src:
        profile = {**src.profile, "tiled": True, "blockxsize": tile, "blockysize": tile}
        with atomic_path(dest) as tmp, rasterio.open(tmp, "w", **profile) as dst:
            for b in range(1, src.count + 1):
                dst.write(src.read(b), b)
            dst.descriptions = src.descriptions
            dst.update_tags(**src.tags())
    return dest


def _pairs(scene: Path, out: Path, extra: Sequence[str] = (), stack: Path | None = None) -> dict[str, float]:
    if out.exists():
        shutil.rmtree(out)
    stack = stack or scene / "s2_stack.tif"
    cmd = [
        sys.executable,
        "-m",
        "training.data.pairs",
        str(stack),
        str(scene / "planet_scenes"),
        "-o",
        str(out),
        "--no-progress",
        *extra,
    ]
    run = _measure(cmd)
    counts = json.loads((out / "pairs.json").read_text())["counts"]
    run.update(point=counts["point_pairs"], series=counts["time_series"], inner_s=counts["seconds"])
    run["disk_mb"] = sum(f.stat().st_size for f in out.rglob("*") if f.is_file()) / 2**20
    return run


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print (optionally write) a markdown report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sim", type=Path, help="folder for the simulated scenes (kept; reused when present)"
    )
    parser.add_argument(
        "--sizes", type=int, nargs="+", default=[64, 128, 256], help="S2 px per side, growth run"
    )
    parser.add_argument("--write", type=Path, help="write the markdown report to this file")
    args = parser.parse_args(argv)
    root = args.sim or Path(tempfile.mkdtemp(prefix="bench_pairs_"))
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    scene = _simulate(root / "default", None, None)
    base = _pairs(scene, root / "out_default")
    print(f"default scene: {base}", flush=True)
    growth = []
    for size in args.sizes:
        sc = _simulate(root / f"size_{size}", size, 366)
        run = _pairs(sc, root / f"out_{size}", stack=_retile(sc / "s2_stack.tif"))
        growth.append((size, run))
        print(f"{size} px: {run}", flush=True)
    g0 = growth[0][1]
    machine = (
        f"{platform.machine()}, {os.cpu_count()} logical CPUs (shared), Python {platform.python_version()}"
    )
    rate_cpu = base["point"] / base["cpu_s"]
    lines = [
        f"Measured {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC on {machine}.",
        "",
        (
            f"Command: `python bench/bench_pairs.py{' --sim ' + str(args.sim) if args.sim else ''} "
            f"--sizes {' '.join(map(str, args.sizes))}`; each run is `python -m training.pairs "
            "scene_a/s2_stack.tif scene_a/planet_scenes -o OUT` (point- and time-wise, no polygons, blocks of 64 px) "
            "in a child process; the growth scenes' stacks with 64 px tiles."
        ),
        "",
        "| scene | point-wise pairs | time-wise series | wall s | CPU s | pairs/s (wall) | pairs/s (CPU) | peak MB | output MB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in [
        ("default (60 px, 36 stamps)", base),
        *[(f"{s} px ({(s / args.sizes[0]) ** 2:.0f}x px)", r) for s, r in growth],
    ]:
        lines.append(
            f"| {name} | {r['point']:,} | {r['series']:,} | {r['wall_s']:.1f} | {r['cpu_s']:.1f} | "
            f"{r['point'] / r['wall_s']:,.0f} | {r['point'] / r['cpu_s']:,.0f} | {r['peak_mb']:.0f} | "
            f"{r['disk_mb']:.1f} |"
        )
        rows.append((name, r))
    lines += ["", "Peak memory against the 1x growth scene (same command, pairs grow with the pixels):", ""]
    for s, r in growth[1:]:
        lines.append(
            f"- {s} px: {r['point'] / g0['point']:.1f}x the point-wise pairs, peak memory "
            f"**{r['peak_mb'] / g0['peak_mb']:.2f}x** ({r['peak_mb']:.0f} MB vs {g0['peak_mb']:.0f} MB)"
        )
    lines += [
        "",
        (
            f"The papers' {PAPER_PAIRS / 1e6:.1f} M point-wise pairs at the default scene's CPU rate: "
            f"{PAPER_PAIRS / rate_cpu / 60:.0f} CPU minutes on one core; output written to disk as it is built "
            f"(point-wise: {(12 + 36) * 4 + 24} bytes per pair, {PAPER_PAIRS * 216 / 1e9:.1f} GB)."
        ),
    ]
    report = "\n".join(lines)
    print(report)
    if args.write:
        write_measured(args.write, report)
    if args.sim is None:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
