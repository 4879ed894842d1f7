"""Benchmark: precisions, providers and the runtime against its alternatives, each ratio measured side by side in one run.

Usage (each part is one process that measures both sides of its ratios; results go to ``--out`` as JSON,
``--report`` turns them into the markdown page)::

    python bench/bench_precision.py --part e2e-sample     # classify vs raw ORT, sample stack (3,912 px)
    python bench/bench_precision.py --part e2e-large      # the same on the sample tiled 16 x 16 (1,001,472 px)
    python bench/bench_precision.py --part e2e-paper      # the same at the papers' size (144 stamps, ResMLP-8 x 256)
    python bench/bench_precision.py --part families --model sample|lstm|inception_time|transformer
                                                          # precision x model: agreement, accuracy, px/s
    python bench/bench_precision.py --part torch          # ONNX Runtime vs torch eager / compile / int8
    python bench/bench_precision.py --part paper          # the papers' model size: px/s, km2/h/core, FLOP share
    python bench/bench_precision.py --part gpu            # fp16 bundle on CUDA and TensorRT (needs a GPU)
    python bench/bench_precision.py --report --markdown docs/benchmarks/precision.md

Models: the shipped sample bundle (ResMLP-8 x 256 + BiLSTM, 12 monthly stamps, 9 bands) and the best run of each
family in ``--runs`` (``python -m training.downstream --task real`` on the France 2022 parcels, one run directory
per family: ``RUNS/fra-lstm`` ...). Every throughput is best-of-``--repeat`` on the same pixels with the same total
threads (the cores of this machine), batch 4096; the end-to-end parts measure the raw session at classify's batch
(256) as well and compare with the faster of the two.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

STACK = REPO / "sample_data/belgium_2021/s2_stack.tif"
MASK = REPO / "sample_data/belgium_2021/cropland.gpkg"
PIXEL_M2 = 100.0  # 10 m Sentinel-2 pixels
BATCH = 4096
FAMILIES = ("lstm", "inception_time", "transformer")
COMPILE = False
"""Also measure ``torch.compile`` (``--torch-compile``)."""


def cores() -> int:
    """Cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def km2_per_h_per_core(px_per_s: float) -> float:
    """Cropland km2 per hour per core at ``px_per_s`` on all cores."""
    return px_per_s * PIXEL_M2 * 3600 / 1e6 / cores()


def ort_px_per_s(
    path: Path,
    x: np.ndarray,
    repeat: int,
    provider: str = "cpu",
    threads: int | None = None,
    batch: int = BATCH,
) -> float:
    """Best-of-``repeat`` pixels/s of a bundle's session alone on ``x`` in batches of ``batch``."""
    from cropmap.runtime import load_bundle

    b = load_bundle(path, provider=provider, intra_op_threads=threads or cores())
    b.run(x[:batch])
    best = 0.0
    for _ in range(repeat):
        t0 = time.perf_counter()
        for s in range(0, len(x), batch):
            b.run(x[s : s + batch])
        best = max(best, len(x) / (time.perf_counter() - t0))
    return best


def interleaved_px_per_s(paths: dict[str, Path], x: np.ndarray, repeat: int) -> dict[str, float]:
    """Best-of-``repeat`` pixels/s of several bundles on ``x``, their passes taken in turn (A B C A B C ...) so that a
    change in the machine's load hits them alike."""
    from cropmap.runtime import load_bundle

    sessions = {k: load_bundle(p, intra_op_threads=cores()) for k, p in paths.items()}
    for b in sessions.values():
        b.run(x[:BATCH])
    best = dict.fromkeys(paths, 0.0)
    for _ in range(repeat):
        for k, b in sessions.items():
            t0 = time.perf_counter()
            for s in range(0, len(x), BATCH):
                b.run(x[s : s + BATCH])
            best[k] = max(best[k], len(x) / (time.perf_counter() - t0))
    return best


def logits_of(path: Path, x: np.ndarray) -> np.ndarray:
    from cropmap.runtime import load_bundle

    b = load_bundle(path, intra_op_threads=cores())
    return np.concatenate([b.run(x[s : s + BATCH]) for s in range(0, len(x), BATCH)])


def batch_consistency(path: Path, x: np.ndarray, small: int = 512) -> float:
    """Share of ``x`` whose class is the same in batches of ``small`` as in batches of :data:`BATCH` (below 1 only
    when the graph's result depends on the batch, as dynamic int8 does)."""
    from cropmap.runtime import load_bundle

    b = load_bundle(path, intra_op_threads=cores())
    big = np.concatenate([b.run(x[s : s + BATCH]) for s in range(0, len(x), BATCH)])
    little = np.concatenate([b.run(x[s : s + small]) for s in range(0, len(x), small)])
    return float((big.argmax(1) == little.argmax(1)).mean())


def gemm_ceiling(repeat: int = 5, n: int = 2048) -> float:
    """fp32 GEMM FLOP/s of this machine, all cores (numpy's BLAS, n x n x n), best of ``repeat``."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    a @ b
    best = 0.0
    for _ in range(repeat):
        t0 = time.perf_counter()
        a @ b
        best = max(best, 2 * n**3 / (time.perf_counter() - t0))
    return best


def graph_flops_per_px(path: Path) -> float:
    """Multiply-add FLOPs (x2) of one pixel through the graph: Gemm, MatMul, LSTM and Conv nodes, from the shapes
    ONNX shape inference gives at batch 1 (element-wise operators are not counted)."""
    import onnx
    from onnx import numpy_helper, shape_inference

    model = onnx.load(str(path))
    inp = model.graph.input[0]
    inp.type.tensor_type.shape.dim[0].dim_value = 1
    model = shape_inference.infer_shapes(model)
    shapes: dict[str, list[int]] = {}
    for vi in [*model.graph.input, *model.graph.value_info, *model.graph.output]:
        dims = vi.type.tensor_type.shape.dim
        shapes[vi.name] = [d.dim_value if d.HasField("dim_value") else 1 for d in dims]
    for init in model.graph.initializer:
        shapes[init.name] = list(numpy_helper.to_array(init).shape)
    total = 0.0
    for node in model.graph.node:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        ins = [shapes.get(n) for n in node.input]
        outs = [shapes.get(n) for n in node.output]
        if node.op_type == "Gemm" and ins[0] and ins[1]:
            m, k = ins[0][::-1] if attrs.get("transA") else ins[0]
            n = ins[1][0] if attrs.get("transB") else ins[1][1]
            total += 2 * m * n * k
        elif node.op_type == "MatMul" and ins[0] and outs[0]:
            total += 2 * float(np.prod(outs[0])) * ins[0][-1]
        elif node.op_type == "LSTM" and ins[0] and ins[1] and ins[2]:
            t, batch, i = ins[0]
            dirs, four_h, _ = ins[1]
            h = four_h // 4
            total += 2 * t * batch * dirs * four_h * (i + h)
        elif node.op_type == "Conv" and ins[1] and outs[0]:
            w = ins[1]
            total += 2 * float(np.prod(outs[0])) * w[1] * float(np.prod(w[2:]))
    return total


def sample_pixels() -> tuple[np.ndarray, np.ndarray]:
    """(cropland pixels as classify feeds them, other stack pixels with enough data) of the sample stack."""
    from bench_classify import prefilled_pixels

    from cropmap.contract.timegrid import fill_gaps, select_season
    from cropmap.models import DEFAULT_BUNDLE
    from cropmap.runtime import load_bundle
    from cropmap.stack import open_stack

    crop = prefilled_pixels(STACK, MASK, DEFAULT_BUNDLE)
    meta = load_bundle(DEFAULT_BUNDLE).metadata
    st = open_stack(STACK)
    idx, _ = select_season(st.dates, meta.time_grid)
    positions = np.array([meta.time_grid.position_of(st.dates[i]) for i in idx])
    from rasterio.windows import Window

    v = st.to_model_units(
        st.read(Window(0, 0, st.width, st.height), [int(i) for i in idx], meta.bands), meta.reflectance_scale
    )
    from cropmap.mask import load_polygons, rasterize_block

    left, top = st.transform @ (0, 0)
    right, bottom = st.transform @ (st.width, st.height)
    bounds = (min(left, right), min(top, bottom), max(left, right), max(top, bottom))
    polys = load_polygons(MASK, st.crs, bounds)
    m = rasterize_block(polys.select(bounds), (st.height, st.width), st.transform)
    rr, cc = np.nonzero(~m)
    filled, _, ok = fill_gaps(
        v[:, :, rr, cc].transpose(2, 0, 1),
        positions,
        meta.time_grid.day_of_season,
        min_valid=meta.min_valid_steps,
    )
    return crop, filled[ok]


def machine() -> str:
    import onnxruntime as ort

    return (
        f"{dt.date.today().isoformat()}, {platform.machine()} with {cores()} cores, Python "
        f"{platform.python_version()}, onnxruntime {ort.__version__}"
    )


# ----------------------------------------------------------------------------------------------------- parts


def _time_raw(b: Any, x: np.ndarray, batch: int) -> float:
    """Seconds of one pass of the session ``b`` over ``x`` in batches of ``batch``."""
    t0 = time.perf_counter()
    for s in range(0, len(x), batch):
        b.run(x[s : s + batch])
    return time.perf_counter() - t0


def _time_sessions(sessions: list[Any], x: np.ndarray, batch: int) -> float:
    """Seconds of one pass over ``x`` with its batches shared among single-threaded ``sessions`` running at once."""
    from cropmap.predict import run_batches

    t0 = time.perf_counter()
    run_batches(sessions, x, batch)
    return time.perf_counter() - t0


def e2e_vs_raw(
    stack: Path,
    mask: Path,
    model: Path,
    x: np.ndarray,
    repeat: int,
    work: Path,
    *,
    batch_size: int | None = None,
    bare: bool = True,
) -> dict[str, Any]:
    """classify end to end vs the raw session(s) of ``model`` on the same pixels ``x`` (pre-filled, as classify feeds
    them).

    Each repeat runs every side once, in turn (classify; without the quick-look when ``bare``; the raw session at
    classify's batch and at 4096; the raw single-threaded sessions side by side), so that a change in the machine's
    load hits all sides alike; each side's best pass counts. Two references:

    * one session with as many intra-op threads as cores, as a script would run the bundle (the fastest of
      classify's batch, 256 and 4096): the issue's ratio;
    * as many single-threaded sessions as cores sharing the batches, which is how classify runs the model: this
      ratio is the cost of everything around the model.
    """
    import cropmap
    from cropmap.options import DEFAULT_BATCH_SIZE, auto_batch_size
    from cropmap.runtime import load_bundle

    one = load_bundle(model, provider="cpu", intra_op_threads=cores())
    batch_size = batch_size or auto_batch_size(one.metadata.n_timesteps)
    many = [load_bundle(model, provider="cpu", intra_op_threads=1) for _ in range(cores())]
    for b in (one, *many):
        b.run(x[:batch_size])
    batches = sorted({batch_size, DEFAULT_BATCH_SIZE, BATCH})
    best: dict[str, float] = {}
    runs: list[dict[str, Any]] = []

    def keep(key: str, seconds: float) -> None:
        best[key] = max(best.get(key, 0.0), len(x) / seconds)

    with tempfile.TemporaryDirectory(dir=work) as tmp:
        for i in range(repeat):
            t0 = time.perf_counter()
            runs.append(
                cropmap.classify(
                    stack,
                    mask,
                    model=model,
                    out=Path(tmp) / f"m{i}.tif",
                    provider="cpu",
                    batch_size=batch_size,
                ).to_dict()
            )
            assert runs[-1]["runtime"]["batch_size"] == batch_size
            keep("e2e", time.perf_counter() - t0)
            if bare:  # and without the quick-look (--no-quicklook)
                t0 = time.perf_counter()
                cropmap.classify(
                    stack,
                    mask,
                    model=model,
                    out=Path(tmp) / f"n{i}.tif",
                    provider="cpu",
                    batch_size=batch_size,
                    quicklook=False,
                )
                keep("e2e_no_quicklook", time.perf_counter() - t0)
            for batch in batches:
                keep(f"raw_{batch}", _time_raw(one, x, batch))
            keep("raw_sessions", _time_sessions(many, x, batch_size))
    summary = runs[-1]
    assert summary["pixels"]["in_mask"] == len(x), (summary["pixels"], len(x))
    raw_by_batch = {str(b): best[f"raw_{b}"] for b in batches}
    raw_batch, raw = max(raw_by_batch.items(), key=lambda kv: kv[1])
    e2e, no_ql = best["e2e"], best.get("e2e_no_quicklook")
    return {
        "stack": stack.name,
        "model": model.name,
        "pixels": len(x),
        "e2e_px_per_s": e2e,
        "raw_px_per_s": raw,
        "ratio": e2e / raw,
        "raw_px_per_s_by_batch": raw_by_batch,
        "raw_batch": int(raw_batch),
        "raw_sessions_px_per_s": best["raw_sessions"],
        "raw_sessions_batch": batch_size,
        "ratio_sessions": e2e / best["raw_sessions"],
        "timings_s": summary["timings_s"],
        "executor": summary["executor"],
        "e2e_no_quicklook_px_per_s": no_ql,
        "ratio_no_quicklook": None if no_ql is None else no_ql / raw,
        "repeat": repeat,
        "km2_h_core_e2e": km2_per_h_per_core(e2e),
        "machine": machine(),
    }


def part_e2e(large: bool, repeat: int, work: Path) -> dict[str, Any]:
    """classify end to end vs the raw sessions on the sample stack (or the sample tiled 16 x 16), fp32 shipped
    bundle (:func:`e2e_vs_raw`)."""
    from cropmap.models import DEFAULT_BUNDLE

    crop, _ = sample_pixels()
    if large:
        stack, mask = tiled_sample(work, 16)
        x = np.tile(crop, (256, 1, 1))  # the tiles are copies: the same pixels classify reads
        return e2e_vs_raw(stack, mask, DEFAULT_BUNDLE, x, 1, work, bare=False)
    return e2e_vs_raw(STACK, MASK, DEFAULT_BUNDLE, crop, repeat, work)


def paper_stack(work: Path, grid: Any, bands: tuple[str, ...]) -> Path:
    """The sample stack stretched to the papers' 144 stamps (cached in ``work``): stamp ``i`` of ``grid``'s dates
    holds the sample's nearest earlier monthly observation; bands the sample lacks copy a neighbour (B01 <- B02,
    B8A and B09 <- B08). Real reflectance at the papers' size, for throughput only."""
    import rasterio

    path = work / "paper144_s2_stack.tif"
    if path.exists():
        return path
    with rasterio.open(STACK) as src:
        data = src.read()
        prof = dict(src.profile)
        have = src.tags()["bands"].split(",")
    monthly = data.reshape(-1, len(have), *data.shape[1:])
    source = {b: have.index({"B01": "B02", "B8A": "B08", "B09": "B08"}.get(b, b)) for b in bands}
    n = len(grid.day_of_season)
    month, day = grid.season_start_month_day()
    start = dt.date(2021, month, day)
    dates = [start + dt.timedelta(days=int(p)) for p in grid.day_of_season]
    out = np.stack(
        [monthly[min(len(monthly) - 1, i * len(monthly) // n)][[source[b] for b in bands]] for i in range(n)]
    ).reshape(n * len(bands), *data.shape[1:])
    prof.update(count=len(out))
    tmp = path.with_name(".tmp_" + path.name)
    with rasterio.open(tmp, "w", **prof) as dst:
        dst.write(out)
        dst.update_tags(
            dates=",".join(d.isoformat() for d in dates), bands=",".join(bands), reflectance_scale="10000"
        )
    tmp.replace(path)
    return path


def part_e2e_paper(repeat: int, work: Path) -> dict[str, Any]:
    """classify end to end vs the raw sessions at the papers' size: ResMLP-8 x 256 over 144 stamps x 12 bands + BiLSTM
    (untrained), on the sample stack stretched to 144 stamps, the sample's 3,912 cropland pixels."""
    from bench_classify import prefilled_pixels

    from exporters.to_onnx import export_bundle

    (enc, base, stats, meta), x_rand, _graph = paper_model()
    bundle = work / "paper_fp32.onnx"
    if not bundle.exists():
        export_bundle(
            encoder=enc, base_model=base, norm_stats=stats, metadata=meta, out=bundle, example=x_rand[:256]
        )
    stack = paper_stack(work, meta.time_grid, meta.bands)
    x = prefilled_pixels(stack, MASK, bundle)
    return e2e_vs_raw(stack, MASK, bundle, x, repeat, work, bare=False)


def tiled_sample(work: Path, n: int) -> tuple[Path, Path]:
    """The sample stack and mask repeated ``n x n`` times side by side (cached in ``work``)."""
    import geopandas as gpd
    import rasterio
    import shapely.affinity

    stack, mask = work / f"tiled{n}_s2_stack.tif", work / f"tiled{n}_cropland.gpkg"
    if stack.exists() and mask.exists():
        return stack, mask
    with rasterio.open(STACK) as src:
        data = src.read()
        prof = src.profile | {"width": src.width * n, "height": src.height * n, "BIGTIFF": "IF_SAFER"}
        desc, tags = src.descriptions, src.tags()
        w_m, h_m = src.width * src.transform.a, src.height * -src.transform.e
    tmp = stack.with_name(".tmp_" + stack.name)
    with rasterio.open(tmp, "w", **prof) as dst:
        for r in range(n):
            for c in range(n):
                dst.write(
                    data,
                    window=rasterio.windows.Window(
                        c * data.shape[2], r * data.shape[1], data.shape[2], data.shape[1]
                    ),
                )
        for i, d in enumerate(desc, start=1):
            dst.set_band_description(i, d)
        dst.update_tags(**tags)
    tmp.replace(stack)
    g = gpd.read_file(MASK)
    parts = [
        g.geometry.apply(lambda p, r=r, c=c: shapely.affinity.translate(p, c * w_m, -r * h_m))
        for r in range(n)
        for c in range(n)
    ]
    gpd.GeoDataFrame(geometry=np.concatenate([p.values for p in parts]), crs=g.crs).to_file(
        mask, layer="cropland"
    )
    return stack, mask


def _fra_data(run: Path) -> tuple[Any, np.ndarray, np.ndarray, np.ndarray]:
    """(best choice, training series, validation series, validation labels) of a downstream run directory."""
    from exporters.best import select_best
    from training.downstream.run import DownstreamConfig, load_real_task

    choice = select_best(run)
    cfg_doc = json.loads((run / "config_taskreal.json").read_text())["config"]
    cfg = DownstreamConfig(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in cfg_doc.items()})
    task = load_real_task(cfg.data, cfg)
    xt = task.x_train[np.isfinite(task.x_train).all(axis=(1, 2))]
    with np.load(run / "validation-taskreal.npz") as d:
        xv, yv = d["x"], d["y"]
    return choice, xt.astype(np.float32), xv.astype(np.float32), yv


def _sample_row(
    fp32: Path,
    crop: np.ndarray,
    other: np.ndarray,
    bench_x: np.ndarray,
    repeat: int,
    work: Path,
    ceiling: float,
) -> dict[str, Any]:
    """The shipped sample model: calibrated on stack pixels outside the cropland mask, checked on the cropland ones."""
    from exporters.quantize import reduce_precision

    row: dict[str, Any] = {"model": "sample (resmlp-8x256 + lstm)", "flops_per_px": graph_flops_per_px(fp32)}
    want = logits_of(fp32, crop)
    row["fp32"] = {}
    for p in ("fp16", "int8"):
        out = work / f"sample_{p}.onnx"
        rec = reduce_precision(
            fp32,
            out,
            p,
            calib_x=other,
            eval_x=crop,
            data="sample stack: calibrated on pixels "
            "outside the cropland mask, agreement on the 3,912 cropland pixels",
            overwrite=True,
        )
        row[p] = {
            "agreement_val": None,
            "agreement_px": rec.argmax_agreement,
            "max_abs_logit_diff": rec.max_abs_logit_diff,
            "method": rec.method,
        }
        got = logits_of(out, crop)
        assert abs(float((got.argmax(1) == want.argmax(1)).mean()) - rec.argmax_agreement) < 1e-9
        row[p]["batch_consistency"] = batch_consistency(out, crop)
    # Side by side in one run, in turn: fp32, fp16 and int8 of the same model on the same pixels.
    rates = interleaved_px_per_s(
        {"fp32": fp32, "fp16": work / "sample_fp16.onnx", "int8": work / "sample_int8.onnx"}, bench_x, repeat
    )
    for p, v in rates.items():
        row[p]["px_per_s"] = v
    row["int8_speedup"] = row["int8"]["px_per_s"] / row["fp32"]["px_per_s"]
    row["fp32_gemm_share"] = row["flops_per_px"] * row["fp32"]["px_per_s"] / ceiling
    return row


def part_families(repeat: int, work: Path, runs: Path, model: str) -> dict[str, Any]:
    """precision x model (``sample`` or a family): agreement with fp32 (validation series and stack pixels),
    accuracy change, px/s."""
    from cropmap.models import DEFAULT_BUNDLE
    from exporters.to_onnx import ExportError, export_checkpoint

    crop, other = sample_pixels()
    bench_x = np.tile(crop, (4, 1, 1))  # 15,648 px
    rows = []
    ceiling = gemm_ceiling()
    families = () if model == "sample" else (model,)
    # The shipped sample model: calibrated on stack pixels outside the cropland mask, checked on the cropland ones.
    fp32 = DEFAULT_BUNDLE
    if not families:
        rows.append(_sample_row(fp32, crop, other, bench_x, repeat, work, ceiling))
    for fam in families:
        run = runs / f"fra-{fam}"
        if not run.is_dir():
            continue
        choice, xt, xv, yv = _fra_data(run)
        fp32 = work / f"fra_{fam}_fp32.onnx"
        export_checkpoint(choice.model, fp32, overwrite=True)
        hp = "default hp" if int(choice.record["variant"]) < 0 else f"variant {choice.record['variant']}"
        row = {"model": f"{fam} ({hp}, France 2022 parcels)", "flops_per_px": graph_flops_per_px(fp32)}
        w_val, w_px = logits_of(fp32, xv), logits_of(fp32, crop)
        row["fp32"] = {"val_accuracy": float((w_val.argmax(1) == yv).mean())}
        for p in ("fp16", "int8"):
            out = work / f"fra_{fam}_{p}.onnx"
            refused = None
            try:
                rep = export_checkpoint(choice.model, out, overwrite=True, precision=p, train_x=xt)
            except ExportError as err:  # below the default threshold: record the refusal, then measure anyway
                refused = str(err)
                rep = export_checkpoint(
                    choice.model, out, overwrite=True, precision=p, train_x=xt, min_agreement=1e-6
                )
            rec = rep.precision
            g_px = logits_of(out, crop)
            consistency = batch_consistency(out, crop)
            row[p] = {
                "agreement_val": rec.argmax_agreement,
                "n_val": rec.n,
                "accuracy_fp32": rec.accuracy_fp32,
                "accuracy": rec.accuracy,
                "max_abs_logit_diff": rec.max_abs_logit_diff,
                "method": rec.method,
                "agreement_px": float((g_px.argmax(1) == w_px.argmax(1)).mean()),
                "batch_consistency": consistency,
                "refused_at_default_threshold": refused,
            }
        rates = interleaved_px_per_s(
            {p: work / f"fra_{fam}_{p}.onnx" for p in ("fp32", "fp16", "int8")}, bench_x, repeat
        )
        for p, v in rates.items():
            row[p]["px_per_s"] = v
        row["int8_speedup"] = row["int8"]["px_per_s"] / row["fp32"]["px_per_s"]
        row["fp32_gemm_share"] = row["flops_per_px"] * row["fp32"]["px_per_s"] / ceiling
        rows.append(row)
    return {"rows": rows, "gemm_ceiling_flops": ceiling, "pixels": len(bench_x), "machine": machine()}


TORCH_BATCHES = (16, 64, 256, 1024, 4096)
"""Batch sizes both runtimes are timed at in ``--part torch`` / ``--part paper`` (those that give every core at least
one batch); each side's best counts. Small batches matter: at the papers' size torch eager runs 1.6x faster at 16
pixels per call than at 256, its activations then staying in cache."""


def _torch_pass(fn: Any, x: Any, batch: int, parallel: bool) -> float:
    """Seconds of one pass of ``fn`` over ``x``: one call at a time on all cores' intra-op threads, or (``parallel``)
    the batches shared among as many threads as cores, each call single-threaded (torch releases the GIL)."""
    from concurrent.futures import ThreadPoolExecutor

    import torch

    starts = list(range(0, len(x), batch))
    t0 = time.perf_counter()
    with torch.inference_mode():
        if not parallel:
            torch.set_num_threads(cores())
            for s in starts:
                fn(x[s : s + batch])
        else:
            torch.set_num_threads(1)

            def work(k: int) -> None:
                with torch.inference_mode():
                    for s in starts[k :: cores()]:
                        fn(x[s : s + batch])

            with ThreadPoolExecutor(cores()) as pool:
                for f in [pool.submit(work, k) for k in range(cores())]:
                    f.result()
            torch.set_num_threads(cores())
    return time.perf_counter() - t0


def _vs_torch(name: str, graph: Any, fp32: Path, int8: Path, x: np.ndarray, repeat: int) -> dict[str, Any]:
    """ONNX Runtime fp32/int8 vs torch eager, torch.compile and torch dynamic int8 on the same pixels and cores.

    Every runtime is timed at each of :data:`TORCH_BATCHES` and in both ways of using the cores (one call at a time
    with intra-op threads; single-threaded calls side by side, the way classify runs sessions); the passes of all
    configurations are taken in turn per repeat, so a change in load hits them alike. Each runtime's figure is its
    best configuration (all of them are kept under ``configs``)."""
    import torch

    from cropmap.runtime import load_bundle
    from exporters.to_onnx import _LogitsOnly, _no_mha_fast_path

    xt = torch.from_numpy(x)
    module = _LogitsOnly(graph).eval()
    qmod = torch.ao.quantization.quantize_dynamic(module, {torch.nn.Linear, torch.nn.LSTM}, dtype=torch.qint8)
    batches = [b for b in TORCH_BATCHES if b * cores() <= len(x)]
    passes: dict[str, Any] = {}
    for prec, path in (("fp32", fp32), ("int8", int8)):
        one = load_bundle(path, intra_op_threads=cores())
        many = [load_bundle(path, intra_op_threads=1) for _ in range(cores())]
        for b in batches:
            passes[f"ort_{prec} b{b} threads"] = lambda b=b, s=one: _time_raw(s, x, b)
            passes[f"ort_{prec} b{b} side-by-side"] = lambda b=b, s=many: _time_sessions(s, x, b)
    for key, fn in (("torch_eager", module), ("torch_int8_dynamic", qmod)):
        for b in batches:
            passes[f"{key} b{b} threads"] = lambda b=b, fn=fn: _torch_pass(fn, xt, b, False)
            passes[f"{key} b{b} side-by-side"] = lambda b=b, fn=fn: _torch_pass(fn, xt, b, True)
    compile_error = "not run (pass --torch-compile; inductor compiles with the C++ compiler first)"
    if COMPILE:
        try:
            with _no_mha_fast_path():
                compiled = torch.compile(module, dynamic=True)
                _torch_pass(compiled, xt, batches[0], False)
            compile_error = None
            for b in batches:
                passes[f"torch_compile b{b} threads"] = lambda b=b: _torch_pass(compiled, xt, b, False)
        except Exception as err:  # noqa: BLE001 - inductor needs a C++ compiler; record why it failed
            compile_error = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
    for f in passes.values():  # warm-up
        f()
    configs = dict.fromkeys(passes, 0.0)
    for _ in range(repeat):
        for k, f in passes.items():
            configs[k] = max(configs[k], len(x) / f())
    res: dict[str, Any] = {"model": name, "pixels": len(x), "threads": cores(), "configs": configs}
    for key in ("ort_fp32", "ort_int8", "torch_eager", "torch_int8_dynamic", "torch_compile"):
        mine = {k: v for k, v in configs.items() if k.split(" ")[0] == key}
        res[key] = max(mine.values()) if mine else None
        res[f"{key}_config"] = max(mine, key=mine.get).split(" ", 1)[1] if mine else None  # type: ignore[arg-type]
    res["torch_compile_error"] = compile_error
    torch_best = max(
        v for k, v in res.items() if k in ("torch_eager", "torch_int8_dynamic", "torch_compile") and v
    )
    res["torch_best"] = torch_best
    res["ort_fp32_vs_eager"] = res["ort_fp32"] / res["torch_eager"]
    res["ort_best_vs_torch_best"] = max(res["ort_fp32"], res["ort_int8"]) / torch_best
    return res


def paper_model(seed: int = 0) -> tuple[Any, np.ndarray, Any]:
    """The papers' size (untrained): ResMLP-8 x 256 per stamp over 144 stamps of 12 bands, BiLSTM 128 x 2; with
    bundle metadata and raw inputs."""
    import torch

    from cropmap.contract.metadata import ClassInfo, TimeGrid
    from exporters.to_onnx import build_graph
    from training.downstream.classifier import classifier_metadata
    from training.models import build_model
    from training.models.encoder import ResMLP

    torch.manual_seed(seed)
    bands = ("B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12", "B01", "B09")
    t, k = 144, 10
    enc = ResMLP(len(bands), hidden=256, n_layers=8, out_dim=256).eval()
    base = build_model("lstm", 256, k).eval()
    rng = np.random.default_rng(seed)
    x = rng.uniform(100, 6000, (3072, t, len(bands))).astype(np.float32)
    stats = {
        "mean": x.reshape(-1, len(bands)).mean(0).tolist(),
        "std": x.reshape(-1, len(bands)).std(0).tolist(),
    }
    grid = TimeGrid(
        "01-01",
        tuple(range(0, 2 * t, 2)),
        tuple((dt.date(2020, 1, 1) + dt.timedelta(2 * i)).isoformat() for i in range(t)),
    )
    classes = tuple(ClassInfo(i + 1, f"class {i + 1}", "#808080") for i in range(k))
    meta = classifier_metadata(
        encoder=enc,
        base_model=base,
        family="lstm",
        pretraining="none",
        bands=bands,
        time_grid=grid,
        classes=classes,
        min_valid_steps=10,
        training_data="random (benchmark)",
        metrics={},
        nodata=0.0,
    )
    graph = build_graph(encoder=enc, base_model=base, norm_stats=stats)
    return (enc, base, stats, meta), x, graph


def part_paper(repeat: int, work: Path) -> dict[str, Any]:
    """The papers' model size: raw px/s fp32/int8, km2/h/core, FLOP share, and torch alongside."""
    from exporters.quantize import reduce_precision
    from exporters.to_onnx import export_bundle

    (enc, base, stats, meta), x, graph = paper_model()
    fp32 = work / "paper_fp32.onnx"
    # The bench's own scratch bundle (part_e2e_paper may have written it): replaced on purpose.
    export_bundle(
        encoder=enc,
        base_model=base,
        norm_stats=stats,
        metadata=meta,
        out=fp32,
        example=x[:256],
        overwrite=True,
    )
    int8 = work / "paper_int8.onnx"
    # Untrained weights: the agreement is not a quality figure here, only the throughput is.
    rec = reduce_precision(
        fp32, int8, "int8", calib_x=x[:256], eval_x=x[256:1280], min_agreement=0.01, overwrite=True
    )
    ceiling = gemm_ceiling()
    flops = graph_flops_per_px(fp32)
    xb = x[2048:3072]  # 1,024 px: about 0.3 GFLOP each
    res = _vs_torch(
        "papers' size: resmlp-8x256 + lstm 128x2, 144 stamps x 12 bands (untrained)",
        graph,
        fp32,
        int8,
        xb,
        repeat,
    )
    res.update(
        {
            "flops_per_px": flops,
            "gemm_ceiling_flops": ceiling,
            "fp32_gemm_share": flops * res["ort_fp32"] / ceiling,
            "int8_method": rec.method,
            "int8_speedup": res["ort_int8"] / res["ort_fp32"],
            "km2_h_core_fp32": km2_per_h_per_core(res["ort_fp32"]),
            "km2_h_core_int8": km2_per_h_per_core(res["ort_int8"]),
            "machine": machine(),
        }
    )
    return res


def part_torch(repeat: int, work: Path, runs: Path) -> dict[str, Any]:
    """ONNX Runtime vs torch on the trained France BiLSTM and InceptionTime (real validation series, tiled)."""
    from exporters.to_onnx import build_graph, export_checkpoint
    from training.downstream.classifier import load_classifier

    out = []
    for fam in ("lstm", "inception_time"):
        run = runs / f"fra-{fam}"
        if not run.is_dir():
            continue
        choice, xt, xv, _ = _fra_data(run)
        fp32, int8 = work / f"torch_{fam}_fp32.onnx", work / f"torch_{fam}_int8.onnx"
        export_checkpoint(choice.model, fp32, overwrite=True)
        # Speed only: the int8 graph's agreement is measured and reported by --part families (InceptionTime's
        # is below the default threshold there, so the exporter would refuse it at the default).
        export_checkpoint(
            choice.model, int8, overwrite=True, precision="int8", train_x=xt, min_agreement=0.01
        )
        clf = load_classifier(choice.model)
        graph = build_graph(encoder=clf.encoder, base_model=clf.base_model, norm_stats=clf.norm_stats)
        x = np.tile(xv, (int(np.ceil(4 * BATCH / len(xv))), 1, 1))[: 4 * BATCH]
        row = _vs_torch(f"{fam} (France 2022, trained)", graph, fp32, int8, x, repeat)
        row["flops_per_px"], row["gemm_ceiling_flops"] = graph_flops_per_px(fp32), gemm_ceiling()
        out.append(row)
    return {"rows": out, "machine": machine()}


def part_gpu(repeat: int, work: Path) -> dict[str, Any]:
    """fp16 sample bundle on CUDA and TensorRT vs fp32 on CUDA, with the agreement of their logits with the CPU."""
    from cropmap.models import DEFAULT_BUNDLE
    from exporters.quantize import reduce_precision

    crop, other = sample_pixels()
    fp16 = work / "sample_fp16.onnx"
    reduce_precision(DEFAULT_BUNDLE, fp16, "fp16", calib_x=other, eval_x=crop, overwrite=True)
    x = np.tile(crop, (16, 1, 1))
    cpu = logits_of(DEFAULT_BUNDLE, crop)
    res: dict[str, Any] = {"machine": machine()}
    from cropmap.runtime import load_bundle

    for name, path, provider in (
        ("fp32 cuda", DEFAULT_BUNDLE, "cuda"),
        ("fp16 cuda", fp16, "cuda"),
        ("fp16 tensorrt", fp16, "tensorrt"),
    ):
        b = load_bundle(path, provider=provider)
        got = np.concatenate([b.run(crop[s : s + BATCH]) for s in range(0, len(crop), BATCH)])
        res[name] = {
            "provider": b.provider,
            "px_per_s": ort_px_per_s(path, x, repeat, provider=provider),
            "agreement_with_cpu_fp32": float((got.argmax(1) == cpu.argmax(1)).mean()),
            "max_abs_logit_diff": float(np.abs(got - cpu).max()),
        }
    return res


# ---------------------------------------------------------------------------------------------------- report


def _f(v: float | None, fmt: str = ",.0f") -> str:
    return "n/a" if v is None else format(v, fmt)


def report(out: Path) -> str:
    """The markdown of every part measured so far."""
    get = {p.stem: json.loads(p.read_text()) for p in out.glob("*.json")}
    fam_parts = [get[k] for k in (f"families-{m}" for m in ("sample", *FAMILIES)) if k in get]
    for f in fam_parts:
        for r in f["rows"]:
            r["model"] = r["model"].replace("(-1 hp,", "(default hp,")
    if fam_parts:
        get["families"] = {
            **fam_parts[0],
            "rows": [r for f in fam_parts for r in f["rows"]],
            "gemm_ceiling_flops": [f["gemm_ceiling_flops"] for f in fam_parts],
        }
    lines = []
    if "families" in get:
        f = get["families"]
        lines += [
            "### Precision x model (`--part families`)",
            "",
            (
                f"Raw ONNX Runtime on {f['pixels']:,} real sample-stack pixels (the 3,912 cropland pixels x 4), batch "
                f"{BATCH}, CPU provider, all cores. Agreement: share of series whose class equals the fp32 graph's; "
                "'val' on the run's held-out validation parcels (calibrated on its training parcels), 'px' on the 3,912 "
                "cropland pixels of the sample stack. fp16 is meant for GPUs: its CPU px/s is shown only to be complete."
            ),
            "",
            "| model | precision | agreement (val) | agreement (px) | val. accuracy fp32 -> reduced | max abs logit diff | px/s | int8 method | same class at batch 512 and 4096 |",
            "|---|---|---:|---:|---|---:|---:|---|---:|",
        ]
        for r in f["rows"]:
            lines.append(
                f"| {r['model']} | fp32 | - | - | {_f(r['fp32'].get('val_accuracy'), '.4f')} | - | "
                f"{_f(r['fp32']['px_per_s'])} | | |"
            )
            for p in ("fp16", "int8"):
                d = r[p]
                agv = (
                    "n/a"
                    if d.get("agreement_val") is None
                    else f"{100 * d['agreement_val']:.2f} % of {d['n_val']}"
                )
                acc = (
                    "n/a (unlabelled)"
                    if d.get("accuracy") is None
                    else f"{d['accuracy_fp32']:.4f} -> {d['accuracy']:.4f} ({100 * (d['accuracy'] - d['accuracy_fp32']):+.1f} pt)"
                )
                meth = d["method"].split(" (")[0] if p == "int8" else ""
                if d.get("refused_at_default_threshold"):
                    agv += " (**refused** at 99 %)"
                lines.append(
                    f"| | {p} | {agv} | {100 * d['agreement_px']:.2f} % | {acc} | {d['max_abs_logit_diff']:.3g} | "
                    f"{_f(d['px_per_s'])} | {meth} | {100 * d['batch_consistency']:.2f} % |"
                )
        lines += [
            "",
            "| model | int8 / fp32 px/s | fp32 GFLOP per px | fp32 share of the GEMM ceiling |",
            "|---|---:|---:|---:|",
        ]
        for r in f["rows"]:
            lines.append(
                f"| {r['model']} | **{r['int8_speedup']:.2f}x** | {r['flops_per_px'] / 1e9:.4f} | "
                f"{100 * r['fp32_gemm_share']:.1f} % |"
            )
        ceil = ", ".join(f"{c / 1e9:.1f}" for c in f["gemm_ceiling_flops"])
        lines += [
            "",
            (
                f"fp32 GEMM ceiling measured in the same run as each model's row (one run per model, in the "
                f"order above): {ceil} GFLOP/s (numpy BLAS, 2048^3, all cores). {f['machine']}."
            ),
            "",
        ]
    for key, title in (
        ("e2e-sample", "sample stack"),
        ("e2e-large", "sample stack tiled 16 x 16"),
        ("e2e-paper", "the papers' size, sample stack stretched to 144 stamps"),
    ):
        if key in get:
            e = get[key]
            t = e["timings_s"]
            lines += [
                f"### Classify end to end vs raw ONNX Runtime: {title} (`--part {key}`)",
                "",
                "| path | cropland px | px/s | cropland km2 / h / core |",
                "|---|---:|---:|---:|",
                (
                    f"| `cropmap.classify` end to end (fp32 bundle `{e.get('model', 'flanders_sample.onnx')}`) | {e['pixels']:,} | {_f(e['e2e_px_per_s'])} | "
                    f"{e['km2_h_core_e2e']:.2f} |"
                ),
                *(
                    [
                        (
                            f"| the same with `quicklook=False` | {e['pixels']:,} | {_f(e['e2e_no_quicklook_px_per_s'])} | "
                            f"{km2_per_h_per_core(e['e2e_no_quicklook_px_per_s']):.2f} |"
                        )
                    ]
                    if e.get("e2e_no_quicklook_px_per_s")
                    else []
                ),
                *(
                    f"| raw ONNX Runtime session ({cores()} intra-op threads), same pixels pre-filled, batch {b} | "
                    f"{e['pixels']:,} | {_f(v)} | {km2_per_h_per_core(v):.2f} |"
                    for b, v in e.get("raw_px_per_s_by_batch", {str(BATCH): e["raw_px_per_s"]}).items()
                ),
                *(
                    [
                        (
                            f"| raw single-threaded sessions side by side (as classify runs them), batch {e['raw_sessions_batch']} | "
                            f"{e['pixels']:,} | {_f(e['raw_sessions_px_per_s'])} | "
                            f"{km2_per_h_per_core(e['raw_sessions_px_per_s']):.2f} |"
                        )
                    ]
                    if e.get("raw_sessions_px_per_s")
                    else []
                ),
                "",
                f"End to end / raw session (its fastest batch, {e.get('raw_batch', BATCH)}): **{e['ratio']:.3f}**"
                + (
                    f" ({e['ratio_no_quicklook']:.3f} without the quick-look)"
                    if e.get("ratio_no_quicklook")
                    else ""
                )
                + (
                    f"; end to end / raw sessions side by side: **{e['ratio_sessions']:.3f}**"
                    if e.get("ratio_sessions")
                    else ""
                )
                + (f"; best of {e['repeat']} turns" if e.get("repeat") else "")
                + f". Stage times (s, summed over blocks): read {t['read']:.2f}, "
                f"fill {t['fill']:.2f}, model {t['model']:.2f}, write {t['write']:.2f}; wall {t['total']:.2f}. "
                f"{e['executor']}. {e['machine']}.",
                "",
            ]
    tables = [get["paper"]] if "paper" in get else []
    tables += get["torch"]["rows"] if "torch" in get else []
    if tables:
        lines += [
            "### ONNX Runtime vs torch on the same model, pixels and threads (`--part torch`, `--part paper`)",
            "",
            "| model | ORT fp32 | ORT int8 | torch eager fp32 | torch.compile fp32 | torch dynamic int8 | ORT fp32 / eager | best ORT / best torch |",
            "|---|---:|---:|---:|---:|---:|---:|---:|",
        ]

        def cell(r: dict[str, Any], key: str) -> str:
            how = r.get(f"{key}_config")
            return _f(r[key]) + (f" ({how})" if how else "")

        for r in tables:
            lines.append(
                f"| {r['model']} | {cell(r, 'ort_fp32')} | {cell(r, 'ort_int8')} | {cell(r, 'torch_eager')} | "
                f"{cell(r, 'torch_compile')} | {cell(r, 'torch_int8_dynamic')} | **{r['ort_fp32_vs_eager']:.2f}x** | "
                f"**{r['ort_best_vs_torch_best']:.2f}x** |"
            )
        lines += [
            "",
            (
                "Pixels per second on the same pixels and cores, each runtime at its best configuration (in "
                f"brackets) of batch {', '.join(map(str, TORCH_BATCHES))} (those that give every core a call) and "
                "threading: `threads` = one call at a time using every core's intra-op thread, `side-by-side` = "
                "single-threaded calls on as many threads as cores, as classify runs its sessions. Best of the "
                "repeats, all configurations taken in turn. torch runs under `torch.inference_mode()`; torch "
                "dynamic int8 is `torch.ao.quantization.quantize_dynamic` on Linear and LSTM."
            ),
            "",
        ]
        for r in tables:
            if r.get("flops_per_px") and r.get("gemm_ceiling_flops"):
                share = {
                    k: r["flops_per_px"] * r[k] / r["gemm_ceiling_flops"] for k in ("ort_fp32", "torch_eager")
                }
                lines.append(
                    f"{r['model']}: {r['flops_per_px'] / 1e6:.1f} MFLOP per pixel; the fp32 GEMM ceiling "
                    f"measured in the same run is {r['gemm_ceiling_flops'] / 1e9:.1f} GFLOP/s, of which ONNX "
                    f"Runtime fp32 reaches {100 * share['ort_fp32']:.0f} % and torch eager "
                    f"{100 * share['torch_eager']:.0f} %."
                )
                lines.append("")
        for r in tables:
            if r.get("torch_compile_error"):
                lines += [f"torch.compile for {r['model']}: {r['torch_compile_error']}.", ""]
    if "paper" in get:
        p = get["paper"]
        lines += [
            "### The papers' model size (`--part paper`)",
            "",
            (
                f"{p['model']}: {p['flops_per_px'] / 1e9:.3f} GFLOP per pixel; ONNX Runtime fp32 {_f(p['ort_fp32'])} px/s = "
                f"**{100 * p['fp32_gemm_share']:.1f} %** of the fp32 GEMM ceiling measured in the same run "
                f"({p['gemm_ceiling_flops'] / 1e9:.1f} GFLOP/s); int8 ({p['int8_method'].split(' (')[0]}) {_f(p['ort_int8'])} px/s "
                f"= {p['int8_speedup']:.2f}x. Model-only throughput: **{p['km2_h_core_fp32']:.2f} km2/h/core fp32, "
                f"{p['km2_h_core_int8']:.2f} km2/h/core int8** (10 m pixels). {p['machine']}."
            ),
            "",
        ]
    if "gpu" in get:
        g = get["gpu"]
        lines += [
            "### GPU (`--part gpu`)",
            "",
            "| bundle, provider | px/s | agreement with CPU fp32 | max abs logit diff |",
            "|---|---:|---:|---:|",
        ]
        for k, v in g.items():
            if isinstance(v, dict):
                lines.append(
                    f"| {k} ({v['provider']}) | {_f(v['px_per_s'])} | {100 * v['agreement_with_cpu_fp32']:.2f} % "
                    f"| {v['max_abs_logit_diff']:.3g} |"
                )
        lines += ["", g["machine"], ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run one part, or write the report."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--part", choices=("e2e-sample", "e2e-large", "e2e-paper", "families", "torch", "paper", "gpu")
    )
    p.add_argument(
        "--report", action="store_true", help="print (and with --markdown write) the measured tables"
    )
    p.add_argument("--markdown", type=Path, help="page whose measured section the report replaces")
    p.add_argument("--out", type=Path, default=REPO / "runs/bench_precision", help="results and work folder")
    p.add_argument(
        "--runs", type=Path, default=REPO / "runs", help="folder holding the fra-<family> run directories"
    )
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--model", choices=("sample", *FAMILIES), default="sample", help="with --part families")
    p.add_argument("--torch-compile", action="store_true", help="with --part torch/paper: also torch.compile")
    args = p.parse_args(argv)
    global COMPILE
    COMPILE = args.torch_compile
    args.out.mkdir(parents=True, exist_ok=True)
    if args.part:
        t0 = time.perf_counter()
        fn = {
            "e2e-sample": lambda: part_e2e(False, args.repeat, args.out),
            "e2e-large": lambda: part_e2e(True, args.repeat, args.out),
            "e2e-paper": lambda: part_e2e_paper(args.repeat, args.out),
            "families": lambda: part_families(args.repeat, args.out, args.runs, args.model),
            "torch": lambda: part_torch(args.repeat, args.out, args.runs),
            "paper": lambda: part_paper(args.repeat, args.out),
            "gpu": lambda: part_gpu(args.repeat, args.out),
        }[args.part]
        res = fn()
        res["wall_s"] = time.perf_counter() - t0
        name = f"families-{args.model}" if args.part == "families" else args.part
        (args.out / f"{name}.json").write_text(json.dumps(res, indent=1, default=float) + "\n")
        print(json.dumps(res, indent=1, default=float)[:3000])
    if args.report:
        text = report(args.out)
        print(text)
        if args.markdown:
            from _report import write_measured

            write_measured(args.markdown, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
