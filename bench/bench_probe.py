"""Does pre-training learn? Probe accuracies of raw bands, a random encoder, uni-modal and bi-modal encoders.

Simulates one scene pair (``training.simulate.run``), then for each seed pre-trains a uni-modal (SCARF) and a
bi-modal (journal Eq. 1) point-wise ResMLP on the pre-training pool of scene A (70 % of the fields) and
probes the frozen encoders with :func:`training.evaluate.probe.scene_probe`: probes fitted on labelled pool pixels,
scored (balanced accuracy) on the downstream fields that pre-training never saw. The random encoder has the
same architecture and the pool's normalisation. Prints and optionally writes a markdown table of
mean +- std over seeds.

    python bench/bench_probe.py --preset default --epochs 20 --seeds 0 1 2 --write docs/benchmarks/probe.md
"""

from __future__ import annotations

import argparse
import logging
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

# Runs from a checkout without installing the package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from training.config import PretrainConfig, load_config
from training.evaluate.probe import scene_probe
from training.models.encoder import Normalize, NormalizedEncoder, ResMLP, load_frozen_encoder
from training.pretrain.run import load_pretrain_arrays, pretrain
from training.simulate.run import PRESETS, simulate

FEATURES = ("raw bands", "random ResMLP", "uni-modal (SCARF)", "bi-modal (Eq. 1)")
COLUMNS = {
    "date_linear": "single date, linear",
    "date_knn": "single date, 10-NN",
    "series_mean_linear": "series mean, linear",
    "series_mean_knn": "series mean, 10-NN",
    "series_flatten_linear": "series concat., linear",
    "series_flatten_knn": "series concat., 10-NN",
}


def run_seed(
    sim: Path, work: Path, seed: int, overrides: list[str]
) -> tuple[dict[str, dict[str, float]], dict[str, float]]:
    """Pre-train both modes with one seed, then probe all four feature sets."""
    encoders: dict[str, torch.nn.Module | None] = {FEATURES[0]: None}
    info: dict[str, float] = {}
    for mode, name in (("unimodal", FEATURES[2]), ("bimodal", FEATURES[3])):
        cfg = load_config(PretrainConfig, None, [f"mode={mode}", f"seed={seed}", *overrides])
        arrays = load_pretrain_arrays(sim, cfg)
        t0 = time.perf_counter()
        path = pretrain(cfg, arrays, work / f"{mode}_{seed}", device=torch.device("cpu"), progress=False)
        info[f"{mode}_s"] = time.perf_counter() - t0
        info["pairs"] = len(arrays.s2)
        encoders[name] = load_frozen_encoder(path)
        if mode == "unimodal":
            torch.manual_seed(seed)
            stats = encoders[name].normalize.norm_stats()  # the pool's statistics
            random = ResMLP(arrays.s2.shape[-1], **{k: v for k, v in vars(cfg.encoder).items()})
            norm = Normalize(stats["mean"], stats["std"])
            encoders[FEATURES[1]] = NormalizedEncoder(norm, random, frozen=True)
    encoders = {name: encoders[name] for name in FEATURES}
    t0 = time.perf_counter()
    report = scene_probe(sim, encoders, seed=seed, poolings=POOLINGS)
    info["probe_s"] = time.perf_counter() - t0
    return report, info


POOLINGS: tuple[str, ...] = ("mean",)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; print (and optionally write) the table."""
    global POOLINGS
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="default", help="simulated scene preset")
    parser.add_argument("--scene-seed", type=int, default=0)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="pre-training, probe seeds")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--hidden", type=int, default=64, help="ResMLP width (paper 256)")
    parser.add_argument("--layers", type=int, default=2, help="ResMLP Linear layers (paper 8)")
    parser.add_argument("--corruption", type=float, default=0.2)
    parser.add_argument("--flatten", action="store_true", help="also probe concatenated per-stamp embeddings")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--write", type=Path, help="write the markdown table here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
    POOLINGS = ("mean", "flatten") if args.flatten else ("mean",)
    h = args.hidden
    overrides = [
        f"epochs={args.epochs}",
        f"batch_size={args.batch}",
        f"corruption={args.corruption}",
        f"encoder.hidden={h}",
        f"encoder.n_layers={args.layers}",
        f"encoder.out_dim={h}",
        f"projector.hidden={h}",
        f"projector.out={h}",
    ]
    t_start = time.perf_counter()
    reports, infos = [], []
    with tempfile.TemporaryDirectory() as tmp:
        sim = Path(tmp) / "sim"
        cfg = PRESETS[args.preset]
        simulate(sim, type(cfg)(**{**vars(cfg), "seed": args.scene_seed}))
        for seed in args.seeds:
            report, info = run_seed(sim, Path(tmp), seed, overrides)
            reports.append(report)
            infos.append(info)
            print(
                f"seed {seed}: "
                + "; ".join(
                    f"{n}: " + ", ".join(f"{k} {v:.3f}" for k, v in r.items()) for n, r in report.items()
                ),
                flush=True,
            )
    wall = time.perf_counter() - t_start
    cols = [c for c in COLUMNS if c in reports[0][FEATURES[0]]]

    def mean_of(key: str) -> float:
        return float(np.mean([i[key] for i in infos]))

    lines = [
        (
            f"Scene: `training.simulate.run` preset `{args.preset}` (scene seed {args.scene_seed}), "
            f"{int(infos[0]['pairs']):,} point-wise pool pairs. Encoders: ResMLP {args.layers} x {h} (out {h}), "
            f"projectors {h} -> {h} -> {h}, batch {args.batch}, {args.epochs} epochs, "
            f"corruption {args.corruption}, "
            f"other settings as `PretrainConfig` defaults. Seeds (pre-training, random init, probe pixels): "
            f"{', '.join(map(str, args.seeds))}."
        ),
        "",
        (
            f"Machine: {platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads "
            f"(shared with other jobs). Wall time {wall / 60:.1f} min in all; per seed: uni-modal pre-training "
            f"{mean_of('unimodal_s'):.0f} s, bi-modal {mean_of('bimodal_s'):.0f} s, "
            f"probes {mean_of('probe_s'):.0f} s."
        ),
        "",
        "Balanced accuracy (9 classes, chance 0.111), mean +- std over seeds:",
        "",
        "| features | " + " | ".join(COLUMNS[c] for c in cols) + " |",
        "|---|" + "---|" * len(cols),
    ]
    for name in FEATURES:
        cells = []
        for c in cols:
            vals = np.array([r[name][c] for r in reports])
            cells.append(f"{vals.mean():.3f} +- {vals.std():.3f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    command = "python bench/bench_probe.py " + " ".join(sys.argv[1:] if argv is None else argv)
    lines += ["", f"Command: `{command}`"]
    text = "\n".join(lines)
    print(text)
    if args.write:
        args.write.parent.mkdir(parents=True, exist_ok=True)
        header = "# Probe benchmark: does pre-training learn on the simulated scene?\n\n"
        args.write.write_text(header + __doc__.split("\n\n")[1].replace("\n", " ") + "\n\n" + text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
