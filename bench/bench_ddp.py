"""Data-parallel pre-training on this machine: two gloo ranks of one thread each against one process.

``python bench/bench_ddp.py [--pairs 65536] [--steps 24] [--markdown docs/benchmarks/ddp.md]``

Runs ``python -m training.pretrain`` at the default point-wise bi-modal size (ResMLP-8 x 256 per modality, batch
1024, ``training/configs/pretrain_pointwise.toml``) on the same random pairs, three ways, in turn:

* one process, one thread (``OMP_NUM_THREADS=1``);
* ``torchrun --standalone --nproc-per-node 2``, one thread per rank;
* one process, two threads.

The figure is each run's own pairs/s of its second epoch (the first pays for start-up and allocation), as
written to ``loss_log.jsonl``. The ratio of the two ranks to one single-threaded process is the scaling
efficiency that carries over to N GPUs (each GPU a rank); against one process using both cores it says what
two ranks buy on a CPU machine.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from _report import write_measured


def _run(cmd: list[str], threads: int, out: Path) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"error: {' '.join(cmd[:6])} ... failed: {proc.stderr.strip().splitlines()[-1]}")
    epochs = [json.loads(line) for line in (out / "loss_log.jsonl").read_text().splitlines()]
    return float([e for e in epochs if e["step"] is None][-1]["pairs_per_s"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=65536)
    parser.add_argument("--steps", type=int, default=24, help="steps per epoch (batch 1024)")
    parser.add_argument(
        "--repeat", type=int, default=2, help="turns of the three runs; the best of each is kept"
    )
    parser.add_argument("--markdown", type=Path, help="write the measured section of this page")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        rng = np.random.default_rng(0)
        s2 = (rng.normal(0, 1, (args.pairs, 12)) * 1000 + 3000).astype(np.float32)
        ps = (np.repeat(s2[:, :4], 9, axis=1) + rng.normal(0, 100, (args.pairs, 36))).astype(np.float32)
        np.savez(work / "pairs.npz", s2=s2, ps=ps)
        common = [
            "-m",
            "training.pretrain.run",
            "--data",
            str(work / "pairs.npz"),
            "--config",
            str(ROOT / "training/configs/pretrain_pointwise.toml"),
            "--mode",
            "bimodal",
            "--set",
            "epochs=2",
            "--set",
            f"steps_per_epoch={args.steps}",
            "--no-progress",
            "--device",
            "cpu",
            "--overwrite",
        ]
        torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
        sides = {
            "1 process, 1 thread": (lambda o: [sys.executable, *common, "--out", str(o)], 1),
            "2 gloo ranks, 1 thread each": (lambda o: [*torchrun, *common, "--out", str(o)], 1),
            "1 process, 2 threads": (lambda o: [sys.executable, *common, "--out", str(o)], 2),
        }
        best: dict[str, float] = {}
        for turn in range(args.repeat):
            for name, (cmd, threads) in sides.items():
                out = work / f"run-{turn}-{threads}-{len(best)}"
                speed = _run(cmd(out), threads, out)
                best[name] = max(best.get(name, 0.0), speed)
                print(f"turn {turn + 1}: {name}: {speed:,.0f} pairs/s", flush=True)
    one, two, both = (best[k] for k in sides)
    report = "\n".join(
        [
            (
                f"`python bench/bench_ddp.py --pairs {args.pairs} --steps {args.steps} --repeat {args.repeat}`, "
                f"{dt.datetime.now().strftime('%Y-%m-%d %H:%M')}, {platform.machine()}, {os.cpu_count()} cores; "
                "point-wise bi-modal at the default size (ResMLP-8 x 256 per modality, global batch 1024), pairs/s of "
                "the second epoch, best of the turns."
            ),
            "",
            "| run | pairs/s | ratio |",
            "|---|---:|---:|",
            f"| 1 process, 1 thread | {one:,.0f} | 1.00 |",
            f"| 2 gloo ranks, 1 thread each | {two:,.0f} | {two / one:.2f} |",
            f"| 1 process, 2 threads | {both:,.0f} | {both / one:.2f} |",
            "",
            (
                f"Two ranks against one single-threaded process: **{two / one:.2f}x**; against one process on both "
                f"cores: **{two / both:.2f}x**."
            ),
        ]
    )
    print(report)
    if args.markdown is not None:
        write_measured(args.markdown, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
