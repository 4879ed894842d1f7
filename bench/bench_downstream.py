"""Downstream epoch time per base model on this machine, raw bands vs per-stamp embeddings.

Times full training steps (forward, backward, Adam) at the papers' series shape (T = 144 stamps) and
batch size, on 12 raw bands and on 256-d embeddings, for one representative configuration per family
(the model's ``<Name>Config`` defaults unless ``--hp`` says otherwise), and extrapolates to an epoch of
the papers' 45,000 training series. Also times the frozen ResMLP-8 x 256 encoder that produces the
embeddings (computed once per encoder). Measured steps follow warm-up steps; the median is reported.

    python bench/bench_downstream.py --steps 5 --out docs/benchmarks/downstream_table.md
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

# Runs from a checkout without installing the package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _report import write_measured

from training.models import build_model
from training.models.encoder import ResMLP

PAPER_TRAIN_SERIES = 45_000
"""Training series per epoch in the papers (5,000 per class x 9 classes)."""

DEFAULT_HP = {
    "lstm": {"hidden": 128, "layers": 2},
    "inception_time": {"layers": 4, "hidden": 128, "kernel": 40},
    "transformer": {"d_model": 64, "heads": 4, "layers": 3},
}


def clock(device: torch.device) -> float:
    """Seconds for timing on ``device``.

    CPU: this process's CPU time, so that other processes sharing the cores do not inflate it; with
    ``--threads 1`` it equals the wall time of an unloaded core. CUDA: wall time after a synchronise.
    """
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        return time.perf_counter()
    return time.process_time()


def time_steps(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, steps: int, warmup: int) -> float:
    """Median seconds (see :func:`clock`) for one training step (forward, backward, Adam)."""
    device = x.device
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    times = []
    for i in range(warmup + steps):
        t0 = clock(device)
        loss = loss_fn(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i >= warmup:
            times.append(clock(device) - t0)
    return statistics.median(times)


@torch.no_grad()
def time_encoder(batch: int, t: int, *, steps: int, device: torch.device) -> tuple[float, int]:
    """Median seconds to embed ``batch`` series of ``t`` stamps with the paper's ResMLP, and its size."""
    enc = ResMLP(12, hidden=256, n_layers=8, out_dim=256).eval().to(device)
    x = torch.randn(batch, t, 12, device=device)
    enc(x)
    times = []
    for _ in range(steps):
        t0 = clock(device)
        enc(x)
        times.append(clock(device) - t0)
    return statistics.median(times), sum(p.numel() for p in enc.parameters())


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print (and optionally write) a markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--families", default="lstm,inception_time,transformer")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--t", type=int, default=144, help="stamps per series")
    parser.add_argument("--steps", type=int, default=5, help="measured steps per case")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    parser.add_argument("--out", type=Path, help="write the markdown table here")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: torch sees no CUDA device")
    if args.threads:
        torch.set_num_threads(args.threads)
    unit = "GPU s" if device.type == "cuda" else "CPU s"
    machine = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    )
    torch.manual_seed(0)
    steps_per_epoch = -(-PAPER_TRAIN_SERIES // args.batch)
    lines = [
        (
            f"Machine: {machine}, torch {torch.__version__}; "
            f"{'wall time after CUDA synchronise' if device.type == 'cuda' else 'process CPU time'}; batch {args.batch}, T = {args.t}, "
            f"{args.steps} measured steps (median) after {args.warmup} warm-up; epoch = {steps_per_epoch} steps ({PAPER_TRAIN_SERIES:,} series)."
        ),
        "",
        (
            f"| base model | config | params (12 / 256 in) | step, 12 bands ({unit}) | step, 256-d ({unit}) | "
            f"epoch, 12 bands ({unit[:3]} min) | epoch, 256-d ({unit[:3]} min) | 20 epochs, 256-d ({unit[:3]} h) |"
        ),
        "|---|---|---|---|---|---|---|---|",
    ]
    y = torch.randint(0, 9, (args.batch,), device=device)
    for family in args.families.split(","):
        hp = DEFAULT_HP[family]
        cells = []
        params = []
        for c in (12, 256):
            model = build_model(family, c, 9, **hp).to(device)
            params.append(sum(p.numel() for p in model.parameters()))
            x = torch.randn(args.batch, args.t, c, device=device)
            cells.append(time_steps(model, x, y, steps=args.steps, warmup=args.warmup))
            print(f"{family} in={c}: {cells[-1]:.3f} s/step", flush=True)
        hp_text = ", ".join(f"{k}={v}" for k, v in hp.items())
        lines.append(
            f"| {family} | {hp_text} | {params[0]:,} / {params[1]:,} | {cells[0]:.3f} | {cells[1]:.3f} | "
            f"{cells[0] * steps_per_epoch / 60:.1f} | {cells[1] * steps_per_epoch / 60:.1f} | "
            f"{cells[1] * steps_per_epoch * 20 / 3600:.1f} |"
        )
    enc_s, enc_params = time_encoder(args.batch, args.t, steps=args.steps, device=device)
    n_val = PAPER_TRAIN_SERIES // 5
    lines += [
        "",
        (
            f"Frozen ResMLP encoder (n_layers=8, hidden 256, {enc_params:,} parameters): {enc_s:.3f} {unit} per {args.batch} series of {args.t} stamps "
            f"({args.batch * args.t / enc_s:,.0f} stamps/s); embedding the {PAPER_TRAIN_SERIES + n_val:,} train + val "
            f"series once takes {enc_s * (PAPER_TRAIN_SERIES + n_val) / args.batch / 60:.1f} min."
        ),
    ]
    table = "\n".join(lines) + "\n"
    print(table)
    if args.out:
        write_measured(args.out, table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
