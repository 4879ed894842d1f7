"""Benchmark: `cropmap classify` end to end next to raw ONNX Runtime on the same pixels.

Usage::

    python bench/bench_classify.py                      # sample stack, shipped bundle
    python bench/bench_classify.py --tile 16 --repeat 1 # the sample tiled 16 x 16: 1,001,472 cropland pixels
    python bench/bench_classify.py --stack S.tif --mask M.gpkg --model B.onnx --repeat 3 \\
        --markdown docs/benchmarks/classify.md

All numbers are measured in one run on the same machine, every side once per turn
(``bench_precision.e2e_vs_raw``):

* end to end: :func:`cropmap.classify` (open, read, mask, fill, model, COG + legend +
  quick-look + summary, STAC item), cropland pixels per second of wall time;
* raw ONNX Runtime: the bundle alone on the same cropland pixels, pre-filled ``(N, T, C)``
  float32, on the same cores: one session with intra-op threads (at classify's batch and at
  4096; the faster counts), and single-threaded sessions side by side.
"""

from __future__ import annotations

import argparse
import datetime as dt
import platform
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from bench_precision import cores, e2e_vs_raw

from cropmap.contract.timegrid import fill_gaps, select_season
from cropmap.mask import load_polygons, rasterize_block
from cropmap.models import DEFAULT_BUNDLE
from cropmap.runtime import load_bundle
from cropmap.stack import open_stack
from cropmap.tiling import block_shape, plan_blocks


def prefilled_pixels(stack: Path, mask: Path, model: Path) -> np.ndarray:
    """The cropland pixels of ``stack`` as gap-filled float32 ``(N, T, C)``, exactly as classify feeds them."""
    meta = load_bundle(model).metadata
    st = open_stack(stack)
    idx, _season = select_season(st.dates, meta.time_grid)
    positions = np.array([meta.time_grid.position_of(st.dates[i]) for i in idx])
    left, top = st.transform @ (0, 0)
    right, bottom = st.transform @ (st.width, st.height)
    polys = load_polygons(
        mask, st.crs, (min(left, right), min(top, bottom), max(left, right), max(top, bottom))
    )
    out = []
    for b in plan_blocks(st.shape, block_shape(st.tile_shape, st.shape, None)):
        geoms = polys.select(b.bounds(st.transform))
        m = rasterize_block(geoms, (b.height, b.width), b.transform(st.transform))
        if not m.any():
            continue
        v = st.to_model_units(st.read(b.window, [int(i) for i in idx], meta.bands), meta.reflectance_scale)
        rr, cc = np.nonzero(m)
        filled, _, ok = fill_gaps(
            v[:, :, rr, cc].transpose(2, 0, 1),
            positions,
            meta.time_grid.day_of_season,
            min_valid=meta.min_valid_steps,
        )
        out.append(filled[ok])
    return np.concatenate(out)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print (and optionally write) a markdown table."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--stack", type=Path, default=REPO / "sample_data/belgium_2021/s2_stack.tif")
    p.add_argument("--mask", type=Path, default=REPO / "sample_data/belgium_2021/cropland.gpkg")
    p.add_argument("--model", type=Path, default=DEFAULT_BUNDLE)
    p.add_argument("--batch-size", type=int, default=None, help="default: classify's automatic batch")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--markdown", type=Path, default=None, help="write the table to this file")
    p.add_argument(
        "--tile",
        type=int,
        default=None,
        metavar="N",
        help="classify the sample stack and mask repeated N x N times (built once under runs/), so that "
        "fixed costs do not hide the steady state",
    )
    args = p.parse_args(argv)
    if args.tile is not None:
        from bench_precision import tiled_sample

        work = REPO / "runs/bench_precision"
        work.mkdir(parents=True, exist_ok=True)
        args.stack, args.mask = tiled_sample(work, args.tile)

    x = prefilled_pixels(args.stack, args.mask, args.model)
    work = REPO / "runs/bench_classify"
    work.mkdir(parents=True, exist_ok=True)
    r = e2e_vs_raw(
        args.stack,
        args.mask,
        args.model,
        x,
        args.repeat,
        work,
        batch_size=args.batch_size,
        bare=args.tile is None,
    )
    t = r["timings_s"]
    n = r["pixels"]
    rows = [("end to end `cropmap.classify`", r["e2e_px_per_s"])]
    if r["e2e_no_quicklook_px_per_s"]:
        rows.append(("end to end, `--no-quicklook`", r["e2e_no_quicklook_px_per_s"]))
    rows += [
        (f"raw ONNX Runtime session ({cores()} intra-op threads), pre-filled (N, T, C), batch {b}", v)
        for b, v in r["raw_px_per_s_by_batch"].items()
    ]
    rows.append(
        (
            (
                f"raw: {cores()} single-threaded sessions side by side (as classify runs them), batch "
                f"{r['raw_sessions_batch']}"
            ),
            r["raw_sessions_px_per_s"],
        )
    )
    lines = [
        "| path | cropland px/s | pixels | seconds |",
        "|---|---:|---:|---:|",
        *[f"| {name} | {v:,.0f} | {n:,} | {n / v:.3f} |" for name, v in rows],
        "",
        f"End to end reaches **{100 * r['ratio']:.1f} %** of the raw session (its fastest batch, {r['raw_batch']})"
        + (
            f", {100 * r['ratio_no_quicklook']:.1f} % without the quick-look"
            if r["ratio_no_quicklook"]
            else ""
        )
        + f", and {100 * r['ratio_sessions']:.1f} % of the raw sessions side by side. Stage times of the last "
        f"end-to-end run (s): read {t['read']:.3f}, fill {t['fill']:.3f}, model {t['model']:.3f}, write (COGs, "
        f"legend, quick-look) {t['write']:.3f}, total {t['total']:.3f}.",
        "",
        (
            f"Measured {dt.date.today().isoformat()} on {platform.machine()} with {cores()} cores, "
            f"{platform.python_implementation()} {platform.python_version()}, onnxruntime "
            f"{__import__('onnxruntime').__version__}; stack `{args.stack.name}`, model `{args.model.name}`, classify's "
            f"batch size {r['raw_sessions_batch']}, best of {args.repeat} turns (every side once per turn), executor: {r['executor']}."
        ),
    ]
    table = "\n".join(lines)
    print(table)
    if args.markdown:
        args.markdown.write_text(
            "# Classify throughput\n\n"
            "Produced by `python bench/bench_classify.py --markdown docs/benchmarks/classify.md`.\n\n"
            + table
            + "\n",
            encoding="utf-8",
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
