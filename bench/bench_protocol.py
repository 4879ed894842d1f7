"""Benchmark: the downstream protocol on a 2-worker local Dask cluster against the same runs in one process.

Usage::

    python bench/bench_protocol.py [--families lstm,inception_time] [--variants 3] [--epochs 6] [--json OUT.json]

A synthetic task (3 classes x ``--per-class`` training series, 12 stamps x 4 bands) and one small frozen encoder
(``bimodal_0.2``): per family ``--variants`` sampled variants and the default one, with the supervised and the
encoder's features, the papers' recipe; the baselines (a RandomForest per method, the majority class) included.

* **sequential**: ``run_comparison`` in a fresh process with one torch thread (``threads=1``);
* **cluster**: ``run_on_cluster`` in a fresh process on :func:`cropmap.batch.local_cluster` of 2 single-threaded
  worker processes (``Executor(workers=2, threads=1)``); the cluster's start and its workers' imports are part
  of the measured wall time.

Each mode writes its own run directory; the records are then compared (metrics equal, run by run) and the
wall-time ratio printed with the per-run and per-epoch costs that docs/scaling.md's cost model uses.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

DRIVER = textwrap.dedent(
    """
    import logging, sys
    from pathlib import Path
    import numpy as np
    import torch
    from cropmap.contract.metadata import TimeGrid
    from training.downstream.config import DownstreamConfig, EncoderSpec
    from training.downstream.tasks import TaskData
    from training.models.encoder import ResMLP, compute_norm_stats, save_encoder

    mode, out, families, variants, epochs, per_class, workers, device = sys.argv[1:9]
    out = Path(out)
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(1)
    bands, t = ("B02", "B03", "B04", "B08"), 12
    rng = np.random.default_rng(0)

    def make(n):
        xs, ys = [], []
        for k in range(3):
            time = np.arange(t)[None, :, None]
            base = 1500 + 2500 * np.exp(-((time - (2 + 3 * k)) ** 2) / 3.0)
            xs.append((base + rng.normal(0, 300, size=(n, t, len(bands)))).astype(np.float32))
            ys.append(np.full(n, k))
        return np.concatenate(xs), np.concatenate(ys).astype(np.int64)

    x_tr, y_tr = make(int(per_class))
    x_va, y_va = make(int(per_class) // 2)
    grid = TimeGrid("01-01", tuple(15 + 30 * i for i in range(t)), tuple(f"2020-{i + 1:02d}-15" for i in range(t)))
    data = TaskData(x_tr, y_tr, x_va, y_va, class_names=("a", "b", "c"), bands=bands, time_grid=grid)
    enc_file = out.parent / "encoder.pt"
    if not enc_file.is_file():
        torch.manual_seed(0)
        save_encoder(enc_file, ResMLP(len(bands), hidden=32, n_layers=2, out_dim=16), compute_norm_stats(x_tr))
    cfg = DownstreamConfig(task="1", families=tuple(families.split(",")), variants=int(variants),
                           default_variant=True, epochs=int(epochs), batch_size=32, recipe="papers", seed=0,
                           threads=1, device=device)
    encoders = [EncoderSpec("bimodal", 0.2, enc_file)]
    if mode == "sequential":
        from training.downstream.protocol import run_comparison
        run_comparison(cfg, data, encoders, out, show_progress=False)
    else:
        from training.downstream.cluster import Executor, run_on_cluster
        run_on_cluster(cfg, data, encoders, out, Executor(workers=int(workers), threads=1))
    """
)

COMPARED = ("val_accuracy", "macro_f1", "kappa", "confusion", "curve", "final_loss")


def _run(mode: str, out: Path, args: argparse.Namespace) -> float:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    t0 = time.perf_counter()
    res = subprocess.run(
        [
            sys.executable,
            "-c",
            DRIVER,
            mode,
            str(out),
            args.families,
            str(args.variants),
            str(args.epochs),
            str(args.per_class),
            str(args.workers),
            args.device,
        ],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    wall = time.perf_counter() - t0
    if res.returncode != 0:
        raise SystemExit(f"Error: the {mode} run failed:\n{res.stderr[-3000:]}")
    return wall


def main(argv: list[str] | None = None) -> int:
    """Run both modes, compare their records, print (and optionally write) the figures."""
    from training.downstream.store import ResultsStore, run_key

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--families", default="lstm,inception_time")
    p.add_argument("--variants", type=int, default=3)
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--per-class", type=int, default=150)
    p.add_argument("--workers", type=int, default=2, help="worker processes of the local cluster")
    p.add_argument("--device", default="cpu", help="cpu, or cuda (each worker its own GPU)")
    p.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-protocol-") as tmp:
        walls = {}
        for mode in ("sequential", "cluster"):
            walls[mode] = _run(mode, Path(tmp) / mode / "run", args)
            print(f"{mode}: {walls[mode]:.1f} s", flush=True)
        seq = {run_key(r): r for r in ResultsStore.in_dir(Path(tmp) / "sequential" / "run").records()}
        dist = {run_key(r): r for r in ResultsStore.in_dir(Path(tmp) / "cluster" / "run").records()}
        equal = set(seq) == set(dist) and all(seq[k].get(f) == dist[k].get(f) for k in seq for f in COMPARED)
        base = [r for r in seq.values() if r.get("hp_source") in ("sampled", "defaults")]
        per_run = statistics.median(r["seconds"] for r in base)
        per_epoch = statistics.median(r["seconds"] / max(1, r["epochs_run"]) for r in base)
        train_s = sum(r["seconds"] for r in base)
    figures = {
        "runs": len(seq),
        "base_runs": len(base),
        "sequential_s": round(walls["sequential"], 1),
        "cluster_s": round(walls["cluster"], 1),
        "workers": args.workers,
        "speed_up": round(walls["sequential"] / walls["cluster"], 2),
        "records_equal": equal,
        "median_run_s": round(per_run, 2),
        "median_epoch_s": round(per_epoch, 3),
        "sequential_training_s": round(train_s, 1),
        "settings": vars(args) | {"json": None},
    }
    print(json.dumps(figures, indent=1, default=str))
    if args.json is not None:
        args.json.write_text(json.dumps(figures, indent=1, default=str) + "\n")
    return 0 if equal else 1


if __name__ == "__main__":
    raise SystemExit(main())
