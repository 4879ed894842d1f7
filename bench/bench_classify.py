"""Benchmark: `cropmap classify` end to end next to raw ONNX Runtime on the same pixels.

Usage::

    python bench/bench_classify.py                      # sample stack, shipped bundle
    python bench/bench_classify.py --tile 16 --repeat 1 # the sample tiled 16 x 16: 1,001,472 cropland pixels
    python bench/bench_classify.py --stack S.tif --mask M.gpkg --model B.onnx --repeat 3 \\
        --markdown docs/benchmarks/classify.md

Both numbers are measured in one run on the same machine:

* end to end: :func:`cropmap.classify` (open, read, mask, fill, model, COG + legend +
  quick-look + summary), cropland pixels per second of wall time;
* raw ONNX Runtime: the bundle's session alone on the same cropland pixels,
  pre-filled ``(N, T, C)`` float32, same batch size and the same total threads.
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

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import cropmap
from cropmap.bundle import load_bundle
from cropmap.mask import load_polygons, rasterize_block
from cropmap.models import DEFAULT_BUNDLE
from cropmap.options import DEFAULT_BATCH_SIZE
from cropmap.stack import open_stack
from cropmap.tiling import block_shape, plan_blocks
from cropmap.timegrid import fill_gaps, select_season

from bench_precision import ort_px_per_s  # noqa: E402 - the raw-session timing both benchmarks use


def prefilled_pixels(stack: Path, mask: Path, model: Path) -> np.ndarray:
    """The cropland pixels of ``stack`` as gap-filled float32 ``(N, T, C)``, exactly as classify feeds them."""
    meta = load_bundle(model).metadata
    st = open_stack(stack)
    idx, _season = select_season(st.dates, meta.time_grid)
    positions = np.array([meta.time_grid.position_of(st.dates[i]) for i in idx])
    left, top = st.transform @ (0, 0)
    right, bottom = st.transform @ (st.width, st.height)
    polys = load_polygons(mask, st.crs, (min(left, right), min(top, bottom), max(left, right), max(top, bottom)))
    out = []
    for b in plan_blocks(st.shape, block_shape(st.tile_shape, st.shape, None)):
        geoms = polys.select(b.bounds(st.transform))
        m = rasterize_block(geoms, (b.height, b.width), b.transform(st.transform))
        if not m.any():
            continue
        v = st.to_model_units(st.read(b.window, [int(i) for i in idx], meta.bands), meta.reflectance_scale)
        rr, cc = np.nonzero(m)
        filled, _, ok = fill_gaps(v[:, :, rr, cc].transpose(2, 0, 1), positions, meta.time_grid.day_of_season,
                                  min_valid=meta.min_valid_steps)  # fmt: skip
        out.append(filled[ok])
    return np.concatenate(out)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print (and optionally write) a markdown table."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--stack", type=Path, default=REPO / "sample_data/belgium_2021/s2_stack.tif")
    p.add_argument("--mask", type=Path, default=REPO / "sample_data/belgium_2021/cropland.gpkg")
    p.add_argument("--model", type=Path, default=DEFAULT_BUNDLE)
    p.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--markdown", type=Path, default=None, help="write the table to this file")
    p.add_argument("--tile", type=int, default=None, metavar="N",
                   help="classify the sample stack and mask repeated N x N times (built once under runs/), so that "
                        "fixed costs do not hide the steady state")  # fmt: skip
    args = p.parse_args(argv)
    if args.tile is not None:
        from bench_precision import tiled_sample

        work = REPO / "runs/bench_precision"
        work.mkdir(parents=True, exist_ok=True)
        args.stack, args.mask = tiled_sample(work, args.tile)

    cores = os.cpu_count() or 1
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.repeat):
            s = cropmap.classify(args.stack, args.mask, model=args.model, out=Path(tmp) / f"m{i}.tif",
                                 batch_size=args.batch_size)  # fmt: skip
            runs.append(s)
    best = max(runs, key=lambda s: s["throughput_cropland_px_per_s"])
    x = prefilled_pixels(args.stack, args.mask, args.model)
    threads = cores  # classify uses workers x ORT threads = cores; the raw session gets the same total
    raw = ort_px_per_s(args.model, x, args.repeat, threads=threads, batch=args.batch_size)
    e2e = best["throughput_cropland_px_per_s"]
    t = best["timings_s"]
    rows = [
        ("end to end `cropmap.classify`", f"{e2e:,.0f}", f"{best['pixels']['in_mask']:,}", f"{t['total']:.2f}"),
        ("raw ONNX Runtime, pre-filled (N, T, C)", f"{raw:,.0f}", f"{len(x):,}", f"{len(x) / raw:.2f}"),
    ]
    lines = [
        "| path | cropland px/s | pixels | seconds |",
        "|---|---:|---:|---:|",
        *[f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows],
        "",
        f"End to end reaches {100 * e2e / raw:.1f} % of the raw model throughput. Stage times of the best "
        f"end-to-end run (s): read {t['read']:.3f}, fill {t['fill']:.3f}, model {t['model']:.3f}, "
        f"write (COGs, legend, quick-look) {t['write']:.3f}, total {t['total']:.3f}.",
        "",
        f"Measured {dt.date.today().isoformat()} on {platform.machine()} with {cores} cores, "
        f"{platform.python_implementation()} {platform.python_version()}, onnxruntime "
        f"{__import__('onnxruntime').__version__}; stack `{args.stack.name}`, model `{args.model.name}` "
        f"({best['bundle']['model_name']}), batch size {args.batch_size}, best of {args.repeat}, "
        f"executor: {best['executor']}; raw ORT with {threads} intra-op threads.",
    ]
    table = "\n".join(lines)
    print(table)
    if args.markdown:
        args.markdown.write_text(
            "# Classify throughput\n\n"
            "Produced by `python bench/bench_classify.py --markdown docs/benchmarks/classify.md`.\n\n" + table + "\n",
            encoding="utf-8",
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
