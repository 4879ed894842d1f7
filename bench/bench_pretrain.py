"""Throughput of bi-modal point-wise pre-training, against the machine's matrix-multiply ceiling.

One step = SCARF corruption of both modalities, two ResMLP-8 x 256 encoders (S2 12 -> 256, PS 36 -> 256),
two projectors, journal Eq. 1 loss, backward and an Adam step: exactly ``training.pretrain.loop.contrastive_step``.

FLOPs per pair are counted analytically: every ``nn.Linear`` costs ``2 * in * out`` per sample forward,
the loss ``2 * 2 * N * P`` per anchor (the S2-S2 and S2-PS similarity rows); forward + backward is
taken as 3x forward. The ceiling is the fp32 GEMM rate measured in the same run (``torch.matmul`` and
numpy's BLAS on square 2048 matrices), so ratios are comparable even when the machine is shared.

``--step reference fast compile`` measures the reference step and the fast step of
:mod:`training.pretrain.fastpath` (eager and ``torch.compile``) side by side on the same batches from the same
initial weights, and reports how far each fast run's losses are from the reference run's.

    python bench/bench_pretrain.py                      # CPU, batches 1024 and 2048, fp32 and bf16
    python bench/bench_pretrain.py --device cuda        # GPU
    python bench/bench_pretrain.py --step reference fast compile --batch 1024 --precision fp32
    python bench/bench_pretrain.py --write docs/benchmarks/pretrain.md
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _report import write_measured

from training.config import PretrainConfig, load_config
from training.pretrain.fastpath import FastOptions, FastStep, make_optimizer
from training.pretrain.loop import ContrastiveModel, contrastive_step

PAPER_PAIRS = 14_400_000
PAPER_EPOCHS = 100
PAPER_V100_HOURS = 6.0


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def gemm_ceiling_torch(
    device: torch.device, n: int = 2048, repeats: int = 5, dtype: torch.dtype = torch.float32
) -> float:
    """Best FLOP/s of an ``n x n`` matmul in torch."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    _sync(device)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


def gemm_ceiling_numpy(n: int = 2048, repeats: int = 5) -> float:
    """Best FLOP/s of an ``n x n`` fp32 matmul in numpy's BLAS."""
    rng = np.random.default_rng(0)
    a = rng.random((n, n), dtype=np.float32)
    b = rng.random((n, n), dtype=np.float32)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


def linear_flops_per_sample(module: nn.Module) -> int:
    """Forward FLOPs per sample of every ``nn.Linear`` in ``module``."""
    return sum(2 * m.in_features * m.out_features for m in module.modules() if isinstance(m, nn.Linear))


def step_flops_per_pair(model: ContrastiveModel, batch: int, proj_dim: int) -> float:
    """Analytic forward+backward FLOPs per pair of one bi-modal step (3x forward)."""
    forward = linear_flops_per_sample(model) + 2 * 2 * batch * proj_dim
    return 3.0 * forward


def bench_step(
    cfg: PretrainConfig,
    device: torch.device,
    batch: int,
    precision: str,
    *,
    steps: int,
    warmup: int,
    seed: int = 0,
    step_kind: str = "reference",
) -> tuple[float, ContrastiveModel, list[float]]:
    """Pairs per second of one step kind at ``batch`` on ``device``, and the losses of every step.

    ``step_kind``: ``reference`` (``contrastive_step``), ``fast`` (:class:`training.pretrain.fastpath.FastStep`,
    eager) or ``compile`` (the fast step under ``torch.compile``; its first call compiles, in the warm-up).
    Every kind sees the same four batches in turn, the same initial weights and the same generator.
    """
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    n = batch * 4
    s2 = torch.from_numpy((rng.random((n, 12)) * 4000).astype(np.float32)).to(device)
    ps = torch.from_numpy((rng.random((n, 36)) * 4000).astype(np.float32)).to(device)
    stats = lambda x: {"mean": x.mean(0).tolist(), "std": x.std(0).tolist()}
    model = ContrastiveModel(cfg, stats(s2), stats(ps)).to(device).train()
    gen = torch.Generator(device=device).manual_seed(seed)
    if step_kind == "reference":
        opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)

        def one(sl: slice) -> torch.Tensor | float:
            return contrastive_step(model, opt, s2[sl], ps[sl], cfg, generator=gen, precision=precision)
    elif step_kind in ("fast", "compile"):
        fast = FastStep(
            model,
            make_optimizer(model, cfg, device),
            cfg,
            precision=precision,
            options=FastOptions(compile=step_kind == "compile"),
        )

        def one(sl: slice) -> torch.Tensor | float:
            return fast(s2[sl], ps[sl], gen)
    else:
        raise ValueError(f"unknown step kind {step_kind!r}")
    losses = []
    for k in range(warmup):
        sl = slice((k % 4) * batch, (k % 4 + 1) * batch)
        losses.append(one(sl))
    _sync(device)
    t0 = time.perf_counter()
    for k in range(warmup, warmup + steps):
        sl = slice((k % 4) * batch, (k % 4 + 1) * batch)
        losses.append(one(sl))
    _sync(device)
    seconds = time.perf_counter() - t0
    return steps * batch / seconds, model, [float(v) for v in losses]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print (optionally write) a markdown report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--step",
        nargs="+",
        default=["reference"],
        choices=["reference", "fast", "compile"],
        help="step kinds to measure side by side",
    )
    parser.add_argument("--hidden", type=int, default=256, help="ResMLP and projector width (paper 256)")
    parser.add_argument("--layers", type=int, default=8, help="ResMLP Linear layers (paper 8)")
    parser.add_argument("--batch", type=int, nargs="+", default=[1024, 2048])
    parser.add_argument("--precision", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--write", type=Path, help="write the markdown report to this file")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda requested but torch sees no CUDA device")
    sizes = [
        f"encoder.hidden={args.hidden}",
        f"encoder.out_dim={args.hidden}",
        f"encoder.n_layers={args.layers}",
        f"projector.hidden={args.hidden}",
        f"projector.out={args.hidden}",
    ]
    cfg = load_config(PretrainConfig, None, sizes)

    ceil_torch = gemm_ceiling_torch(device)
    ceil_numpy = gemm_ceiling_numpy() if device.type == "cpu" else float("nan")
    rows = []
    for batch in args.batch:
        for precision in args.precision:
            ref_losses = None
            for kind in args.step:
                pairs_s, model, losses = bench_step(
                    cfg, device, batch, precision, steps=args.steps, warmup=args.warmup, step_kind=kind
                )
                if kind == "reference":
                    ref_losses = losses
                agree = "-"
                if ref_losses is not None and kind != "reference":
                    rel = np.abs(np.array(losses) - ref_losses) / np.abs(ref_losses)
                    agree = f"{rel.max():.1e}"
                flops = step_flops_per_pair(model, batch, cfg.projector.out)
                rows.append((kind, batch, precision, pairs_s, flops, pairs_s * flops, agree))
                print(
                    f"{kind} batch {batch} {precision}: {pairs_s:,.0f} pairs/s, {pairs_s * flops / 1e9:.1f} GFLOP/s,"
                    f" losses vs reference {agree}",
                    flush=True,
                )
    ceil_torch_after = gemm_ceiling_torch(device)

    if device.type == "cuda":
        machine = f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}"
    else:
        machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} logical CPUs, torch {torch.__version__}, {torch.get_num_threads()} threads"
    lines = [
        f"Measured {dt.date.today().isoformat()} on {machine}.",
        "",
        (
            f"Command: `python bench/bench_pretrain.py --device {args.device} --batch {' '.join(map(str, args.batch))} "
            f"--precision {' '.join(args.precision)} --steps {args.steps} --warmup {args.warmup} "
            f"--step {' '.join(args.step)} --hidden {args.hidden} --layers {args.layers}`"
        ),
        "",
        f"fp32 GEMM ceiling (2048^3, best of 5): torch.matmul {ceil_torch / 1e9:.0f} GFLOP/s before the runs, "
        f"{ceil_torch_after / 1e9:.0f} GFLOP/s after"
        + (f"; numpy {ceil_numpy / 1e9:.0f} GFLOP/s" if device.type == "cpu" else "")
        + ".",
        (
            f"Model FLOPs per pair (fwd+bwd = 3 x fwd, Linear layers + Eq. 1 similarity rows): "
            f"{rows[0][4] / 1e6:.1f} MFLOP at batch {rows[0][1]} (ResMLP-{args.layers} x {args.hidden})."
        ),
        "",
        (
            "| step | batch | precision | pairs/s | GFLOP/s | / torch fp32 GEMM | / numpy fp32 GEMM "
            "| paper run (14.4 M x 100 ep.) | losses vs reference (max rel.) |"
        ),
        "|---|---|---|---|---|---|---|---|---|",
    ]
    ceiling = max(ceil_torch, ceil_torch_after)
    for kind, batch, precision, pairs_s, _flops, achieved, agree in rows:
        hours = PAPER_PAIRS * PAPER_EPOCHS / pairs_s / 3600
        np_ratio = f"{achieved / ceil_numpy:.0%}" if device.type == "cpu" else "n/a"
        lines.append(
            f"| {kind} | {batch} | {precision} | {pairs_s:,.0f} | {achieved / 1e9:.1f} | {achieved / ceiling:.0%} | "
            f"{np_ratio} | {hours:,.1f} h | {agree} |"
        )
    v100 = PAPER_PAIRS * PAPER_EPOCHS / (PAPER_V100_HOURS * 3600)
    lines += ["", f"The paper's 6 h on one V100 corresponds to {v100:,.0f} pairs/s."]
    report = "\n".join(lines)
    print(report)
    if args.write:
        write_measured(args.write, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
