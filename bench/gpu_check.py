"""One prepared GPU check of the fast pre-training path and the downstream training cost.

``bash bench/gpu_check.sh OUT_DIR`` runs this on a machine with an NVIDIA GPU in at most 8 minutes and
writes ``OUT_DIR/gpu_check.md`` (markdown tables) and ``OUT_DIR/gpu_check.json``. It needs only torch,
numpy and this source tree (no geospatial package, nothing installed): the pair set is synthetic, of the
papers' shape (14.4 M point-wise pairs of 12 S2 and 36 PlanetScope values, 2.8 GB) and created on the device.

Measured, in priority order (each row is skipped, and says so, once the time budget is spent):

1. the reference step and the fast step (:mod:`training.pretrain.fastpath`), bi-modal point-wise, the papers' model
   (ResMLP-8 x 256 per modality, projector 256 -> 256 -> 256, journal Eq. 1): steady-state pairs/s for fp32,
   TF32 and bf16, eager and ``torch.compile`` (and CUDA graphs), at the papers' batch 1024 and larger
   batches; the projected wall time of the papers' full run (14.4 M pairs x 100 epochs); the share of the
   GPU's nominal dense bf16 peak and of a bf16 GEMM measured in the same run;
2. that the fast step makes no host synchronisation (``torch.cuda.set_sync_debug_mode("error")``);
3. GPU vs CPU agreement of the loss over the first steps (same initial weights, same batches and views,
   fp32 with TF32 off; and bf16 on the GPU against fp32 on the CPU);
4. downstream: seconds per epoch of each base-model family (``training.downstream.run.train_run``) on synthetic
   per-stamp embeddings of the papers' shape (144 stamps x 256), extrapolated to an epoch of 45,000 series.

``--multi-gpu`` measures, on a machine with several GPUs, instead (as is: every visible GPU is used):

5. data-parallel pre-training under ``torchrun`` (:mod:`training.pretrain.distributed`), one rank per GPU (NCCL)
   against one rank, same global batch: wall time of an epoch of synthetic point-wise pairs and the speed-up;
6. the downstream protocol (:mod:`training.downstream.cluster`) on a local Dask cluster with one worker per GPU
   against the same runs in one process on one GPU (``bench/bench_protocol.py``'s runs), records compared.

On the CPU (``--device cpu --tiny --multi-gpu``) the same code runs two gloo ranks and two CPU workers.
The markdown file is rewritten after every row, so whatever ran is kept even if the run is cut short.
``--device cpu --tiny`` runs the same code at toy sizes (the test suite does, to keep the script working).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import sys
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cropmap.safeio.atomic import atomic_write
from training.config import PretrainConfig, load_config
from training.pretrain.fastpath import FastOptions, FastStep, make_optimizer, run_epoch
from training.pretrain.loop import ContrastiveModel, batch_indices, contrastive_step, precision_context

PAPER_PAIRS = 14_400_000
PAPER_EPOCHS = 100
PAPER_SERIES = 45_000
TARGET_S = 300.0

# Nominal dense (no sparsity) bf16 tensor-core peaks from NVIDIA's data sheets, TFLOP/s; matched in order.
_BF16_PEAK = (
    ("GH200", 989.0),
    ("H200", 989.0),
    ("H100 NVL", 835.0),
    ("H100 PCIe", 756.0),
    ("H100", 989.0),
    ("A100", 312.0),
    ("L40S", 362.0),
    ("L40", 181.0),
    ("L4", 121.0),
    ("A10G", 70.0),
    ("A10", 125.0),
    ("RTX 4090", 165.0),
    ("V100", 0.0),
)


def nominal_bf16_peak(name: str) -> float | None:
    """The data-sheet dense bf16 peak (FLOP/s) of a GPU by name; ``None`` when unknown, 0 without bf16."""
    for key, tflops in _BF16_PEAK:
        if key in name:
            return tflops * 1e12
    return None


@dataclass
class Report:
    """Rows measured so far, written as markdown and JSON after every row."""

    out: Path
    json_out: Path | None
    header: list[str] = field(default_factory=list)
    sections: dict[str, dict[str, Any]] = field(default_factory=dict)

    def section(self, key: str, title: str, columns: Sequence[str], note: str = "") -> None:
        self.sections[key] = {"title": title, "columns": list(columns), "rows": [], "note": note}
        self.write()

    def row(self, key: str, *cells: Any, data: dict[str, Any] | None = None) -> None:
        self.sections[key]["rows"].append({"cells": [str(c) for c in cells], "data": data or {}})
        print(" | ".join(str(c) for c in cells), flush=True)
        self.write()

    def note(self, key: str, text: str) -> None:
        self.sections[key]["note"] = (self.sections[key]["note"] + "\n\n" + text).strip()
        self.write()

    def write(self) -> None:
        lines = [*self.header, ""]
        for sec in self.sections.values():
            lines += [f"### {sec['title']}", ""]
            if sec["rows"]:
                lines.append("| " + " | ".join(sec["columns"]) + " |")
                lines.append("|" + "---|" * len(sec["columns"]))
                lines += ["| " + " | ".join(r["cells"]) + " |" for r in sec["rows"]]
                lines.append("")
            if sec["note"]:
                lines += [sec["note"], ""]
        _atomic_write(self.out, "\n".join(lines))
        if self.json_out is not None:
            _atomic_write(
                self.json_out, json.dumps({"header": self.header, "sections": self.sections}, indent=1)
            )


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, text + "\n")


class Budget:
    """The wall-clock budget of the whole check."""

    def __init__(self, seconds: float) -> None:
        self.t0 = time.perf_counter()
        self.seconds = seconds

    @property
    def left(self) -> float:
        return self.seconds - (time.perf_counter() - self.t0)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def gemm_flops(device: torch.device, dtype: torch.dtype, n: int, repeats: int = 10) -> float:
    """Best FLOP/s of an ``n x n`` matrix multiply (TF32 follows the current backend flag)."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    _sync(device)
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


def flops_per_pair(model: nn.Module, batch: int, proj_dim: int) -> float:
    """Forward + backward (3 x forward) FLOPs per pair: every Linear layer plus Eq. 1's two similarity rows."""
    linear = sum(2 * m.in_features * m.out_features for m in model.modules() if isinstance(m, nn.Linear))
    return 3.0 * (linear + 2 * 2 * batch * proj_dim)


def synthetic_pairs(n: int, device: torch.device, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` point-wise pairs of raw digital numbers created on the device (S2 12 values, PS 36 values)."""
    gen = torch.Generator(device=device).manual_seed(seed)
    s2 = torch.rand(n, 12, device=device, generator=gen).mul_(4000.0).add_(200.0)
    ps = torch.rand(n, 36, device=device, generator=gen).mul_(4000.0).add_(200.0)
    return s2, ps


def _stats(x: torch.Tensor) -> dict[str, list[float]]:
    sub = x[: min(len(x), 100_000)].double()
    return {"mean": sub.mean(0).tolist(), "std": sub.std(0).clamp_min(1.0).tolist()}


def build_model(
    cfg: PretrainConfig, s2: torch.Tensor, ps: torch.Tensor, device: torch.device
) -> ContrastiveModel:
    torch.manual_seed(0)
    return ContrastiveModel(cfg, _stats(s2), _stats(ps)).to(device).train()


def measure_fast(
    cfg: PretrainConfig,
    s2: torch.Tensor,
    ps: torch.Tensor,
    *,
    batch: int,
    precision: str,
    options: FastOptions,
    min_seconds: float,
    warmup_steps: int,
) -> tuple[float, float, float, int]:
    """Steady-state pairs/s of the fast step: returns (pairs/s, first-call seconds, last loss, steps)."""
    device = s2.device
    model = build_model(cfg, s2, ps, device)
    step = FastStep(
        model,
        make_optimizer(model, cfg, device, fused=options.fused),
        cfg,
        precision=precision,
        options=options,
    )
    gen = torch.Generator(device=device).manual_seed(0)
    t0 = time.perf_counter()
    run_epoch(step, s2, ps, batch_size=batch, generator=gen, max_steps=warmup_steps)
    _sync(device)
    first = time.perf_counter() - t0
    # Time a fixed number of steps, sized from a short probe so the run lasts about min_seconds.
    t0 = time.perf_counter()
    run_epoch(step, s2, ps, batch_size=batch, generator=gen, max_steps=warmup_steps)
    _sync(device)
    per_step = max((time.perf_counter() - t0) / warmup_steps, 1e-6)
    steps = max(warmup_steps, min(int(min_seconds / per_step), len(s2) // batch))
    t0 = time.perf_counter()
    losses = run_epoch(step, s2, ps, batch_size=batch, generator=gen, max_steps=steps)
    _sync(device)
    seconds = time.perf_counter() - t0
    return steps * batch / seconds, first, float(losses[-1]), steps


def measure_reference(
    cfg: PretrainConfig,
    s2: torch.Tensor,
    ps: torch.Tensor,
    *,
    batch: int,
    min_seconds: float,
    warmup_steps: int,
) -> float:
    """Pairs/s of the reference step (``contrastive_step``: per-step host read of the loss, for-each Adam)."""
    device = s2.device
    model = build_model(cfg, s2, ps, device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    gen = torch.Generator(device=device).manual_seed(0)

    def run(steps: int) -> float:
        _sync(device)
        t0 = time.perf_counter()
        for idx in batch_indices(len(s2), batch, gen, device, steps):
            contrastive_step(model, opt, s2[idx], ps[idx], cfg, generator=gen)
        _sync(device)
        return time.perf_counter() - t0

    run(warmup_steps)
    per_step = run(warmup_steps) / warmup_steps
    steps = max(warmup_steps, min(int(min_seconds / per_step), len(s2) // batch))
    return steps * batch / run(steps)


def check_no_sync(
    cfg: PretrainConfig, s2: torch.Tensor, ps: torch.Tensor, batch: int
) -> list[tuple[str, str]]:
    """Run fast steps, then a whole epoch, with CUDA's synchronisation debug mode set to ``error``."""
    device = s2.device
    if device.type != "cuda":
        return [("fast step", "n/a (CUDA only; on the CPU the test suite blocks every host read instead)")]
    model = build_model(cfg, s2, ps, device)
    step = FastStep(model, make_optimizer(model, cfg, device), cfg, precision="bf16")
    gen = torch.Generator(device=device).manual_seed(0)
    run_epoch(step, s2, ps, batch_size=batch, generator=gen, max_steps=3)  # lazy initialisation outside
    perm = torch.randperm(len(s2), device=device, generator=gen)
    buf = torch.empty(5, device=device)
    _sync(device)
    out = []
    for what in (
        "5 fast steps (gather, corruption, forward, backward, fused Adam), bf16",
        "run_epoch of 5 steps (adds the device permutation)",
    ):
        torch.cuda.set_sync_debug_mode("error")
        try:
            if what.startswith("5 fast"):
                for k in range(5):
                    idx = perm[k * batch : (k + 1) * batch]
                    buf[k] = step(s2[idx], ps[idx], gen)
            else:
                buf = run_epoch(step, s2, ps, batch_size=batch, generator=gen, max_steps=5)
            result = "no host synchronisation"
        except RuntimeError as err:
            result = f"**synchronises**: {_one_line(err)}"
        finally:
            torch.cuda.set_sync_debug_mode("default")
        out.append((what, result))
    return out


def loss_agreement(
    cfg: PretrainConfig, device: torch.device, *, batch: int, steps: int, precision: str
) -> tuple[list[float], list[float]]:
    """Losses of the first ``steps`` steps on the CPU (fp32) and on ``device`` from the same start.

    The batches and views are drawn once on the CPU and copied to the device, so only the arithmetic of the
    model, the loss and Adam differs between the two runs (TF32 is off for ``fp32``).
    """
    cpu = torch.device("cpu")
    s2, ps = synthetic_pairs(batch * steps, cpu, seed=1)
    torch.manual_seed(0)
    ref_model = ContrastiveModel(cfg, _stats(s2), _stats(ps)).train()
    dev_model = ContrastiveModel(cfg, _stats(s2), _stats(ps)).train()
    dev_model.load_state_dict(ref_model.state_dict())
    dev_model.to(device)
    ref = FastStep(ref_model, make_optimizer(ref_model, cfg, cpu), cfg)
    dev = FastStep(dev_model, make_optimizer(dev_model, cfg, device), cfg, precision=precision)
    gen = torch.Generator().manual_seed(0)
    a, b = [], []
    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        for idx in batch_indices(len(s2), batch, gen, cpu):
            v1, v2 = ref.views(s2[idx], ps[idx], gen)
            a.append(ref.update(v1, v2))
            b.append(dev.update(v1.to(device), v2.to(device)))
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
    return torch.stack(a).tolist(), torch.stack(b).cpu().tolist()


def downstream_epochs(
    report: Report,
    budget: Budget,
    device: torch.device,
    *,
    n: int,
    t: int,
    d: int,
    batches: Sequence[int],
    precisions: Sequence[str],
    min_left: float,
) -> None:
    """Seconds per epoch of each family via ``training.downstream.run.train_run`` on synthetic embeddings."""
    key = "downstream"
    report.section(
        key,
        "Downstream: one epoch per base-model family (training.downstream.run.train_run)",
        [
            "family",
            "params",
            "precision",
            "batch",
            "series timed",
            "s (epoch + validation)",
            f"s per epoch of {PAPER_SERIES:,}",
        ],
        note=(
            f"Synthetic per-stamp embeddings ({t} stamps x {d}, 9 classes) created on the device once, as "
            "the comparison keeps an encoder's embeddings; each family with its default hyper-parameters and the "
            "papers' recipe (Adam, linear decay); bf16 = train_run's autocast (loss in fp32). The time covers one epoch over the timed series "
            f"plus the validation pass on {min(1024, n):,} series, after a warm-up call; the last column scales it by "
            f"{PAPER_SERIES:,} / series timed."
        ),
    )
    try:
        from training.downstream.run import train_run
        from training.models import MODELS, build_model
    except ModuleNotFoundError as err:
        report.row(
            key, "all", "", "", "", "", f"not run: importing training.downstream.run failed: {err}", ""
        )
        return
    gen = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(n, t, d, device=device, generator=gen)
    y = torch.randint(0, 9, (n,), device=device, generator=gen)
    n_val = min(1024, n)
    xv, yv = x[:n_val], y[:n_val].cpu()
    for family in sorted(MODELS):
        for precision in precisions:
            for batch in batches:
                if budget.left < min_left:
                    report.row(key, family, "", precision, batch, "", "not run: time budget spent", "")
                    continue
                try:
                    torch.manual_seed(0)
                    model = build_model(family, d, 9)
                    params = sum(p.numel() for p in model.parameters())
                    common = {"lr": 1e-3, "epochs": 1, "batch_size": batch, "seed": 0, "device": device.type}
                    if precision != "fp32":
                        common["precision"] = precision
                    train_run(model, x[: batch * 2], y[: batch * 2].cpu(), xv[:64], yv[:64], **common)
                    _sync(device)
                    t0 = time.perf_counter()
                    train_run(model, x, y.cpu(), xv, yv, **common)
                    _sync(device)
                    sec = time.perf_counter() - t0
                    report.row(
                        key,
                        family,
                        f"{params:,}",
                        precision,
                        batch,
                        f"{n:,}",
                        f"{sec:.2f}",
                        f"{sec * PAPER_SERIES / n:.1f}",
                        data={"seconds": sec, "n": n},
                    )
                except Exception as err:  # noqa: BLE001 - a failed row is reported and the check goes on
                    report.row(key, family, "", precision, batch, f"{n:,}", f"failed: {_one_line(err)}", "")
                    traceback.print_exc()


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"[:160].replace("|", "/")


def _fmt_time(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def _timed(cmd: list[str], env: dict[str, str], timeout: float) -> tuple[float, str]:
    """Run ``cmd``; its wall time, or raise with its last stderr lines."""
    import subprocess

    t0 = time.perf_counter()
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False, timeout=timeout)
    wall = time.perf_counter() - t0
    if res.returncode != 0:
        tail = " / ".join(res.stderr.strip().splitlines()[-3:])
        raise RuntimeError(f"exit {res.returncode}: {tail}")
    return wall, res.stdout


def multi_gpu(args: argparse.Namespace) -> int:
    """The multi-GPU mode: torchrun pre-training over every GPU, the protocol with one worker per GPU."""
    import tempfile

    from training.device import resolve_device

    try:
        device = resolve_device(args.device)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    cuda = device.type == "cuda"
    n = torch.cuda.device_count() if cuda else 2
    tiny = args.tiny
    budget = Budget(args.budget_s)
    report = Report(args.out, args.json)
    name = torch.cuda.get_device_name(0) if cuda else (platform.processor() or platform.machine())
    report.header = [
        (
            f"Measured {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC on {n} x {name} "
            f"({'GPUs' if cuda else 'CPU processes'}), torch {torch.__version__}."
        ),
        "",
        "Command: `python bench/gpu_check.py " + " ".join(sys.argv[1:]) + "`",
    ]
    report.write()
    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(repo), "OMP_NUM_THREADS": "1" if not cuda else "4"}
    failed = 0
    with tempfile.TemporaryDirectory(prefix="gpu-check-multi-") as tmp:
        # 5. Data-parallel pre-training: 1 rank against n ranks, same global batch.
        key = "ddp"
        report.section(
            key,
            "Data-parallel pre-training (torchrun, bi-modal point-wise, same global batch)",
            ["ranks", "backend", "pairs", "batch", "wall (s)", "pairs/s", "speed-up"],
            note="Wall time of the whole command (start-up, one epoch, checkpoint); pairs/s = pairs / wall.",
        )
        pairs = 16_384 if tiny else 4_000_000
        batch = 256 if tiny else 4096
        rng = np.random.default_rng(0)
        s2 = (rng.normal(0, 1, (pairs, 12)) * 1000 + 3000).astype(np.float32)
        ps = (np.repeat(s2[:, :4], 9, axis=-1) + rng.normal(0, 100, (pairs, 36))).astype(np.float32)
        data = Path(tmp) / "pairs.npz"
        np.savez(data, s2=s2, ps=ps)
        sizes = ["--set", "encoder.hidden=32", "--set", "encoder.n_layers=2", "--set", "encoder.out_dim=16"]
        base_s = None
        for ranks in sorted({1, n}):
            if budget.left < 30:
                report.row(key, ranks, "", pairs, batch, "not run: time budget spent", "", "")
                failed += 1
                continue
            cmd = [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--standalone",
                "--nproc-per-node",
                str(ranks),
                "-m",
                "training.pretrain.run",
                "--data",
                str(data),
                "-o",
                str(Path(tmp) / f"pretrain-{ranks}"),
                "--mode",
                "bimodal",
                "--device",
                "cuda" if cuda else "cpu",
                "--set",
                "epochs=1",
                "--set",
                f"batch_size={batch}",
                "--no-progress",
                *(sizes if tiny else []),
            ]
            try:
                wall, _ = _timed(cmd, env, timeout=max(30.0, budget.left))
                base_s = wall if ranks == 1 else base_s
                report.row(
                    key,
                    ranks,
                    "nccl" if cuda else "gloo",
                    pairs,
                    batch,
                    f"{wall:.1f}",
                    f"{pairs / wall:,.0f}",
                    f"{base_s / wall:.2f}x" if base_s else "",
                    data={"wall_s": wall},
                )
            except Exception as err:  # noqa: BLE001 - a failed row is reported and the check goes on
                report.row(key, ranks, "", pairs, batch, f"failed: {_one_line(err)}", "", "")
                failed += 1
        # 6. The protocol: one worker per GPU against one process.
        key = "protocol"
        report.section(
            key,
            "Downstream protocol: a local Dask cluster, one worker per GPU, against one process",
            ["mode", "workers", "wall (s)", "speed-up", "records equal"],
            note="bench/bench_protocol.py's runs (synthetic task, papers' recipe); cluster start-up included.",
        )
        sys.path.insert(0, str(repo / "bench"))
        try:
            import bench_protocol

            settings = ["--variants", "1" if tiny else "4", "--epochs", "2" if tiny else "8"]
            settings += ["--per-class", "60" if tiny else "2000", "--workers", str(n)]
            settings += ["--device", "cuda" if cuda else "cpu", "--json", str(Path(tmp) / "protocol.json")]
            if budget.left < 60:
                raise RuntimeError("time budget spent")
            rc = bench_protocol.main(settings)
            figures = json.loads((Path(tmp) / "protocol.json").read_text())
            report.row(key, "one process", 1, f"{figures['sequential_s']:.1f}", "", "")
            report.row(
                key,
                "cluster",
                n,
                f"{figures['cluster_s']:.1f}",
                f"{figures['speed_up']:.2f}x",
                "yes" if figures["records_equal"] else "**no**",
                data=figures,
            )
            failed += rc != 0
        except Exception as err:  # noqa: BLE001
            report.row(key, "cluster", n, f"failed: {_one_line(err)}", "", "")
            failed += 1
            traceback.print_exc()
    report.write()
    print(f"report: {args.out}")
    return 3 if failed else 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the check; exit 0 when every row ran, 3 when some row failed or was skipped."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--out", type=Path, required=True, help="markdown file")
    parser.add_argument("--json", type=Path, help="JSON file with the same figures")
    parser.add_argument(
        "--budget-s", type=float, default=420.0, help="stop starting rows after this many seconds"
    )
    parser.add_argument("--seconds", type=float, default=2.0, help="timed seconds per throughput row")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile / CUDA graph rows")
    parser.add_argument(
        "--tiny", action="store_true", help="toy sizes (a smoke run of this script on the CPU)"
    )
    parser.add_argument(
        "--multi-gpu",
        action="store_true",
        help="data-parallel pre-training over every visible GPU and the protocol with one worker per GPU",
    )
    args = parser.parse_args(argv)
    if args.multi_gpu:
        return multi_gpu(args)

    from training.device import resolve_device

    try:
        device = resolve_device(args.device)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    budget = Budget(args.budget_s)
    cuda = device.type == "cuda"
    tiny = args.tiny
    sizes = (
        [
            "encoder.hidden=32",
            "encoder.n_layers=2",
            "encoder.out_dim=32",
            "projector.hidden=32",
            "projector.out=32",
        ]
        if tiny
        else []
    )
    cfg = load_config(PretrainConfig, None, sizes)
    n_pairs = 8192 if tiny else PAPER_PAIRS
    paper_batch = 256 if tiny else 1024
    big_batches = [1024] if tiny else [4096, 16384]
    warmup = 3 if tiny else 10

    if cuda:
        props = torch.cuda.get_device_properties(device)
        name = props.name
        machine = (
            f"{name} ({props.total_memory / 2**30:.0f} GiB, compute capability {props.major}.{props.minor}), "
            f"torch {torch.__version__}, CUDA {torch.version.cuda}"
        )
    else:
        name = platform.processor() or platform.machine()
        machine = f"{name}, {os.cpu_count()} logical CPUs, torch {torch.__version__}, {torch.get_num_threads()} threads"
    peak = nominal_bf16_peak(name) if cuda else None
    report = Report(args.out, args.json)
    cmd = (
        "bash bench/gpu_check.sh OUT_DIR"
        if cuda and not tiny
        else "python bench/gpu_check.py " + " ".join(sys.argv[1:] if argv is None else argv)
    )
    report.header = [
        f"Measured {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC on {machine}.",
        "",
        f"Command: `{cmd}`",
    ]
    report.write()

    # GEMM references.
    report.section("gemm", "Matrix-multiply references (same run)", ["dtype", "n", "TFLOP/s"])
    n_gemm = 1024 if tiny or not cuda else 8192
    gemm_bf16 = gemm_flops(device, torch.bfloat16, n_gemm)
    report.row("gemm", "bf16", n_gemm, f"{gemm_bf16 / 1e12:.1f}", data={"flops": gemm_bf16})
    report.row("gemm", "fp32", n_gemm, f"{gemm_flops(device, torch.float32, n_gemm) / 1e12:.1f}")
    if cuda:
        with precision_context(device, "tf32"):
            report.row(
                "gemm", "fp32 with TF32", n_gemm, f"{gemm_flops(device, torch.float32, n_gemm) / 1e12:.1f}"
            )
    if peak is not None:
        report.note(
            "gemm",
            f"Nominal dense bf16 peak of this GPU (data sheet): {peak / 1e12:.0f} TFLOP/s; the bf16 "
            f"GEMM above reaches {gemm_bf16 / peak:.0%} of it.",
        )
    elif cuda:
        report.note(
            "gemm", f"No data-sheet bf16 peak known for {name!r}: shares below use the measured bf16 GEMM."
        )

    # Pair set on the device.
    t0 = time.perf_counter()
    s2, ps = synthetic_pairs(n_pairs, device)
    _sync(device)
    t_pairs = time.perf_counter() - t0
    size_gb = (s2.numel() + ps.numel()) * 4 / 1e9
    report.header += [
        "",
        (
            f"Pair set: {n_pairs:,} synthetic point-wise pairs (12 + 36 float32 values, {size_gb:.2f} GB) "
            f"created on the device in {t_pairs:.1f} s; batches are index gathers on the device."
        ),
    ]
    report.write()

    # Throughput rows, by priority.
    key = "pretrain"
    cols = [
        "step",
        "precision",
        "compile",
        "batch",
        "pairs/s",
        "first call (s)",
        "papers' full run",
        "share of bf16 peak",
        "share of bf16 GEMM",
        "last loss",
    ]
    report.section(
        key,
        "Pre-training throughput: bi-modal point-wise, ResMLP-8 x 256 per modality, Eq. 1",
        cols,
        note=(
            f"Steady state: {warmup} warm-up steps, then steps for about {args.seconds:g} s between two "
            "device synchronisations. 'papers' full run' = 14.4 M pairs x 100 epochs at this rate "
            f"(target <= {TARGET_S / 60:.0f} min). FLOPs per pair = 3 x forward (Linear layers + "
            "the two similarity products of Eq. 1), so the shares grow with the batch."
        ),
    )
    precisions = ["fp32", "tf32", "bf16"] if cuda else ["fp32", "bf16"]
    best = [0.0]

    def throughput(plan: list[tuple[str, str, str, int]]) -> None:
        for kind, precision, comp, batch in plan:
            if budget.left < (90 if comp != "eager" else 20):
                report.row(
                    key, kind, precision, comp, batch, "not run: time budget spent", "", "", "", "", ""
                )
                continue
            try:
                model = build_model(cfg, s2[:2], ps[:2], torch.device("cpu"))
                flops = flops_per_pair(model, batch, cfg.projector.out)
                first, loss = float("nan"), float("nan")
                if kind == "reference":
                    pairs_s = measure_reference(
                        cfg, s2, ps, batch=batch, min_seconds=args.seconds, warmup_steps=warmup
                    )
                else:
                    options = FastOptions(compile=comp == "compile", cuda_graphs=comp == "cuda graphs")
                    pairs_s, first, loss, _ = measure_fast(
                        cfg,
                        s2,
                        ps,
                        batch=batch,
                        precision=precision,
                        options=options,
                        min_seconds=args.seconds,
                        warmup_steps=warmup,
                    )
                best[0] = max(best[0], pairs_s)
                run_s = PAPER_PAIRS * PAPER_EPOCHS / pairs_s
                achieved = pairs_s * flops
                report.row(
                    key,
                    kind,
                    precision,
                    comp,
                    batch,
                    f"{pairs_s:,.0f}",
                    f"{first:.1f}",
                    _fmt_time(run_s),
                    f"{achieved / peak:.1%}" if peak else "n/a",
                    f"{achieved / gemm_bf16:.1%}",
                    f"{loss:.3f}",
                    data={"pairs_per_s": pairs_s, "flops_per_pair": flops, "full_run_s": run_s},
                )
            except Exception as err:  # noqa: BLE001 - a failed row is reported and the check goes on
                report.row(key, kind, precision, comp, batch, f"failed: {_one_line(err)}", "", "", "", "", "")
                traceback.print_exc()
            if cuda:
                torch.cuda.empty_cache()

    # 1. Eager rows: the reference step, the fast step per precision, larger batches.
    throughput(
        [("reference", "fp32", "eager", paper_batch)]
        + [("fast", p, "eager", paper_batch) for p in precisions]
        + [("fast", "bf16", "eager", b) for b in big_batches]
    )

    # 2. No host synchronisation.
    report.section("sync", "Host synchronisation inside the fast step", ["check", "result"])
    try:
        for what, result in check_no_sync(cfg, s2, ps, paper_batch):
            report.row("sync", what, result)
    except Exception as err:  # noqa: BLE001
        report.row("sync", "fast step", f"failed: {_one_line(err)}")

    # 3. Loss agreement with the CPU.
    agree = "agree"
    steps = 5 if tiny else 20
    agree_batch = 64 if tiny else paper_batch
    report.section(
        agree,
        f"Loss agreement with the CPU over the first {steps} steps (same weights, batches and views)",
        [
            "device run",
            "batch",
            "max abs diff",
            "max rel diff",
            "first loss (CPU / device)",
            f"loss at step {steps} (CPU / device)",
        ],
    )
    for precision in ["fp32", "bf16"] if cuda else ["bf16"]:
        if budget.left < 30:
            report.row(agree, precision, agree_batch, "not run: time budget spent", "", "", "")
            continue
        try:
            a, b = loss_agreement(cfg, device, batch=agree_batch, steps=steps, precision=precision)
            diff = np.abs(np.array(a) - np.array(b))
            rel = diff / np.maximum(np.abs(a), 1e-12)
            report.row(
                agree,
                f"{device.type} {precision}" + (" (TF32 off)" if precision == "fp32" else ""),
                agree_batch,
                f"{diff.max():.2e}",
                f"{rel.max():.2e}",
                f"{a[0]:.5f} / {b[0]:.5f}",
                f"{a[-1]:.5f} / {b[-1]:.5f}",
                data={"cpu": a, "device": b},
            )
        except Exception as err:  # noqa: BLE001
            report.row(agree, precision, agree_batch, f"failed: {_one_line(err)}", "", "", "")
            traceback.print_exc()

    # 4. Downstream epoch time per family.
    if tiny:
        downstream_epochs(
            report, budget, device, n=128, t=12, d=16, batches=[64], precisions=["fp32", "bf16"], min_left=5
        )
    else:
        downstream_epochs(
            report,
            budget,
            device,
            n=16_384,
            t=144,
            d=256,
            batches=[256, 1024],
            precisions=["fp32", "bf16"],
            min_left=25,
        )

    # 5. Compiled rows, most informative first, while the budget lasts.
    if not args.no_compile:
        plan = [("fast", "bf16", "compile", paper_batch)]
        if cuda:
            plan += [("fast", "bf16", "cuda graphs", paper_batch)]
        plan += [("fast", "bf16", "compile", big_batches[-1])]
        if cuda:
            plan += [("fast", "bf16", "cuda graphs", big_batches[-1])]
        plan += [("fast", p, "compile", paper_batch) for p in precisions if p != "bf16"]
        plan += [("fast", "bf16", "compile", b) for b in big_batches[:-1]]
        throughput(plan)
    if best[0]:
        run_s = PAPER_PAIRS * PAPER_EPOCHS / best[0]
        report.note(
            key,
            f"Best: {best[0]:,.0f} pairs/s, the papers' full run in {_fmt_time(run_s)} "
            f"({'meets' if run_s <= TARGET_S else 'misses'} the 5 min target; the papers' V100 run "
            "took 6 h).",
        )
    rows = [r for sec in report.sections.values() for r in sec["rows"]]
    failed = sum(any(c.startswith(("failed", "not run", "**synchronises")) for c in r["cells"]) for r in rows)
    report.header += [
        "",
        (
            f"Wall time of the check: {time.perf_counter() - budget.t0:.0f} s; "
            f"{failed} row(s) failed or skipped."
        ),
    ]
    report.write()
    print(f"report: {args.out}")
    return 3 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
