"""``python -m training.sample_model``: train the shipped Flanders sample model into a run directory.

Everything comes from the real data in ``sample_data/``:

1. **Time grid**: 12 monthly stamps, season start 11-01 (Nov 2020 .. Oct 2021), the
   grid of ``sample_data/belgium_2021/s2_stack.tif``; 9 bands B02..B08, B11, B12.
2. **Labels**: the 100 Flanders 2021 LPIS parcels (WorldCereal extraction), their
   2020-11 .. 2021-10 observations put on the grid with :func:`cropmap.contract.timegrid.fill_gaps`
   (``min_valid_steps`` of 12, linear), mapped to the coarse legend
   :data:`training.data.worldcereal.FLANDERS_CLASSES`. Split by parcel (seeded,
   stratified by class) into training and validation parcels.
3. **Pre-training**: uni-modal SCARF + NT-Xent (:func:`training.pretrain.run.pretrain`) of a
   ResMLP on real unlabelled single-date pixels: every valid 9-band pixel of the sample
   stack (10 valid months x 10,000 px) plus the valid observations of the *training*
   parcels (validation parcels are held out of every step).
4. **Base model**: a BiLSTM (``training.models`` ``lstm``) on the frozen encoder's
   per-stamp embeddings of the training parcels, for a fixed number of epochs (no
   selection on the validation parcels).
5. **Evaluation** on the validation parcels (accuracy, macro F1, per-class counts) and a
   ``classifier`` checkpoint in the run directory (default ``runs/sample_model``, never the
   installed package) that ``python -m exporters RUN/classifier.pt -o model.onnx`` exports,
   parity-checked on the validation parcels and on real pixels of the sample stack.

Nothing runs at import; :func:`main` is the entry point.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import torch
from torch import nn

from cropmap.contract.bands import canonical_band
from cropmap.contract.metadata import (
    ClassInfo,
    EmbeddingInfo,
    TimeGrid,
)
from cropmap.contract.timegrid import fill_gaps
from training.config import PretrainConfig, ResMLPConfig, load_config
from training.data.worldcereal import FLANDERS_CLASSES, coarse_labels, on_time_grid, read_long
from training.device import resolve_device
from training.downstream.classifier import save_classifier
from training.metadata import bundle_metadata
from training.models import BaseModel, build_model
from training.models.encoder import load_frozen_encoder
from training.pretrain.run import PretrainArrays, pretrain

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[2]
"""The repository root: relative paths of the config (sample_data/...) are read from it."""
DEFAULT_CONFIG = ROOT / "training" / "configs" / "sample_model.toml"


@dataclass(frozen=True)
class SampleModelConfig:
    """Configuration of the sample model run (``training/configs/sample_model.toml``)."""

    stack: Path = Path("sample_data/belgium_2021/s2_stack.tif")
    """Sample S2 stack: unlabelled pre-training pixels and the time grid (relative to the repository)."""
    parcels: Path = Path("sample_data/worldcereal/2021_BEL_LPIS-Flanders_POLY_110_monthly.parquet")
    """Labelled parcels (WorldCereal long extraction)."""
    season: int = 2020
    """Year in which the season of the parcels starts (Nov 2020 - Oct 2021)."""
    season_start: str = "11-01"
    """Season start ``MM-DD``."""
    min_valid_steps: int = 6
    """Fewest valid monthly observations of 12 a parcel / pixel needs."""
    val_fraction: float = 0.3
    """Share of parcels of every class held out for validation."""
    calibration_fraction: float = 0.2
    """Share of the training parcels of every class held out of training (pre-training included) to fit the
    bundle's temperature on (``cropmap export bundle`` uses them): neither trained nor reported on."""
    seed: int = 0
    """Seed of the split, the weights and the batches."""
    corruption: float = 0.2
    """SCARF corruption rate."""
    pretrain_pixels: int = 16384
    """Unlabelled pixels drawn (seeded, uniformly) from the pool for pre-training; 0 = the whole pool."""
    pretrain_epochs: int = 2
    """Pre-training passes over the drawn pixels."""
    pretrain_batch_size: int = 1024
    """Pre-training pairs per step."""
    pretrain_lr: float = 1e-3
    """Adam learning rate of pre-training."""
    tau: float = 0.07
    """NT-Xent temperature."""
    encoder: ResMLPConfig = field(default_factory=ResMLPConfig)
    """ResMLP size (8 x 256 as in the paper)."""
    lstm_hidden: int = 32
    """BiLSTM hidden size per direction."""
    lstm_layers: int = 2
    """Stacked BiLSTM layers."""
    lstm_dropout: float = 0.2
    """Dropout of the BiLSTM."""
    epochs: int = 150
    """Base-model epochs (fixed; no selection on the validation parcels)."""
    batch_size: int = 16
    """Base-model batch size."""
    lr: float = 1e-3
    """Adam learning rate of the base model."""
    weight_decay: float = 1e-4
    """Adam weight decay of the base model."""
    parity_pixels: int = 2000
    """Sample-stack pixels used for the parity check."""
    atol: float = 1e-4
    """Parity tolerance on the logits."""


def _resolve(path: Path) -> Path:
    return path if path.is_absolute() else ROOT / path


def read_stack_pixels(path: Path) -> tuple[np.ndarray, list[dt.date], tuple[str, ...]]:
    """Read the sample stack as ``(T, C, N)`` float32 raw DN with NaN for nodata.

    Dates and bands come from the band descriptions ``YYYY-MM-DD_Bxx`` (time-major).

    Raises:
        ValueError: If a description is missing/malformed or the layout is not time-major.
    """
    with rasterio.open(path) as ds:
        raw = ds.read()
        nodata = ds.nodata
        desc = ds.descriptions
    if nodata is None:
        raise ValueError(f"{path} declares no nodata value")
    pairs = []
    for i, d in enumerate(desc):
        if not d or "_" not in d:
            raise ValueError(f"{path}: band {i + 1} description is {d!r}; expected 'YYYY-MM-DD_Bxx'")
        day, band = d.split("_", 1)
        pairs.append((dt.date.fromisoformat(day), canonical_band(band)))
    dates = sorted({p[0] for p in pairs})
    bands = tuple(dict.fromkeys(p[1] for p in pairs))
    if pairs != [(d, b) for d in dates for b in bands]:
        raise ValueError(f"{path}: bands are not time-major (date, band) ordered")
    values = raw.reshape(len(dates), len(bands), -1).astype(np.float32)
    values[raw.reshape(values.shape) == nodata] = np.nan
    return values, dates, bands


def make_time_grid(dates: Sequence[dt.date], season_start: str) -> TimeGrid:
    """The bundle grid at ``dates`` (the reference dates of the sample stack)."""
    probe = TimeGrid(season_start, (0,), ())
    return TimeGrid(
        season_start, tuple(probe.position_of(d) for d in dates), tuple(d.isoformat() for d in dates)
    )


def split_by_parcel(labels: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified split of parcel indices; every class keeps at least one training parcel.

    Returns:
        ``(train_idx, val_idx)``, sorted.
    """
    rng = np.random.default_rng(seed)
    train, val = [], []
    for cls in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == cls))
        n_val = min(round(val_fraction * len(idx)), len(idx) - 1)
        val.extend(idx[:n_val].tolist())
        train.extend(idx[n_val:].tolist())
    return np.sort(train), np.sort(val)


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray, codes: Sequence[int]) -> dict[str, Any]:
    """Accuracy, macro F1 over the classes present in ``y_true``, per-class counts and F1."""
    per_class = {}
    f1s = []
    for c in codes:
        tp = int(((y_pred == c) & (y_true == c)).sum())
        n_true, n_pred = int((y_true == c).sum()), int((y_pred == c).sum())
        prec = tp / n_pred if n_pred else 0.0
        rec = tp / n_true if n_true else 0.0
        f1 = 2 * prec * rec / (prec + rec) if prec + rec else 0.0
        per_class[int(c)] = {"n_true": n_true, "n_pred": n_pred, "correct": tp, "f1": round(f1, 4)}
        if n_true:
            f1s.append(f1)
    return {
        "accuracy": float((y_true == y_pred).mean()),
        "macro_f1": float(np.mean(f1s)),
        "per_class": per_class,
        "confusion": [[int(((y_true == a) & (y_pred == b)).sum()) for b in codes] for a in codes],
    }


def _embed(encoder: nn.Module, x: np.ndarray) -> torch.Tensor:
    with torch.no_grad():
        return encoder(torch.from_numpy(x))  # (N, T, D)


def train_base_model(
    z: torch.Tensor, y: np.ndarray, n_classes: int, cfg: SampleModelConfig
) -> tuple[BaseModel, list[float]]:
    """Train the BiLSTM on embeddings ``(N, T, D)`` with labels ``0..K-1`` (class-weighted CE)."""
    torch.manual_seed(cfg.seed)
    model = build_model(
        "lstm",
        z.shape[-1],
        n_classes,
        hidden=cfg.lstm_hidden,
        layers=cfg.lstm_layers,
        dropout=cfg.lstm_dropout,
    )
    counts = np.bincount(y, minlength=n_classes).astype(np.float64)
    weights = torch.tensor(len(y) / (n_classes * np.maximum(counts, 1)), dtype=torch.float32)
    loss_fn = nn.CrossEntropyLoss(weight=weights)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    target = torch.from_numpy(y.astype(np.int64))
    gen = torch.Generator().manual_seed(cfg.seed)
    losses = []
    model.train()
    for _ in range(cfg.epochs):
        order = torch.randperm(len(y), generator=gen)
        total = 0.0
        for start in range(0, len(y), cfg.batch_size):
            idx = order[start : start + cfg.batch_size]
            opt.zero_grad()
            loss = loss_fn(model(z[idx]), target[idx])
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
        losses.append(total / len(y))
    model.eval()
    return model, losses


def run(
    cfg: SampleModelConfig, work: Path, *, progress: bool = True, device: torch.device | None = None
) -> dict[str, Any]:
    """Train and evaluate the sample model into the run directory ``work``; returns the run summary.

    ``device`` is where pre-training runs (default CPU); the base model trains on the CPU.

    The run directory holds ``classifier.pt``; ``python -m exporters work/classifier.pt -o model.onnx``
    turns it into the bundle (training never imports the exporters).
    """
    t0 = time.perf_counter()
    stack, dates, bands = read_stack_pixels(_resolve(cfg.stack))
    grid = make_time_grid(dates, cfg.season_start)
    classes = tuple(ClassInfo(c.code, c.name, c.color) for c in FLANDERS_CLASSES)
    codes = [c.code for c in classes]

    series = read_long(_resolve(cfg.parcels), bands=bands)
    gridded = on_time_grid(series, grid, season=cfg.season, min_valid=cfg.min_valid_steps)
    usable = np.flatnonzero(gridded.ok)
    y_all = coarse_labels(series.labels[usable])
    x_all = gridded.x[usable]
    tr, va = split_by_parcel(y_all, cfg.val_fraction, cfg.seed)
    cal = np.array([], dtype=np.int64)
    if cfg.calibration_fraction > 0:
        fit, held = split_by_parcel(y_all[tr], cfg.calibration_fraction, cfg.seed)
        tr, cal = tr[fit], tr[held]
    logger.info(
        "parcels: %d usable of %d; %d training, %d calibration, %d validation",
        len(usable),
        len(series),
        len(tr),
        len(cal),
        len(va),
    )

    # Unlabelled single-date pixels: the stack's valid observations + the training parcels' ones
    # inside the season (calibration and validation parcels are never seen).
    stack_px = stack.transpose(0, 2, 1).reshape(-1, len(bands))
    stack_px = stack_px[np.isfinite(stack_px).all(axis=1)]
    season_obs = np.array(
        [grid.season_of(dt.date.fromisoformat(str(d))) == cfg.season for d in series.dates[0]]
    )
    parcel_px = series.values[usable[tr]][:, season_obs].reshape(-1, len(bands))
    parcel_px = parcel_px[np.isfinite(parcel_px).all(axis=1)]
    pool = np.concatenate([stack_px, parcel_px]).astype(np.float32)
    take = len(pool) if cfg.pretrain_pixels <= 0 else min(cfg.pretrain_pixels, len(pool))
    pixels = pool[np.sort(np.random.default_rng(cfg.seed).permutation(len(pool))[:take])]
    logger.info(
        "pre-training pool: %d stack pixels + %d training-parcel pixels; drawn %d",
        len(stack_px),
        len(parcel_px),
        len(pixels),
    )

    pcfg = PretrainConfig(
        mode="unimodal",
        alignment="point",
        corruption=cfg.corruption,
        epochs=cfg.pretrain_epochs,
        batch_size=cfg.pretrain_batch_size,
        lr=cfg.pretrain_lr,
        tau=cfg.tau,
        seed=cfg.seed,
        encoder=cfg.encoder,
    )
    t_pre = time.perf_counter()
    enc_path = pretrain(
        pcfg,
        PretrainArrays(
            s2=pixels, ps=None, source=f"{cfg.stack} + {cfg.parcels} (training parcels)", bands=bands
        ),
        work / "pretrain",
        device=device if device is not None else torch.device("cpu"),
        progress=progress,
    )
    t_pre = time.perf_counter() - t_pre
    frozen = load_frozen_encoder(enc_path)  # NormalizedEncoder, eval, no grad
    norm_stats = frozen.normalize.norm_stats()

    # Base model on the frozen per-stamp embeddings.
    z_all = _embed(frozen, x_all)
    t_base = time.perf_counter()
    base, losses = train_base_model(z_all[tr], y_all[tr] - 1, len(classes), cfg)
    t_base = time.perf_counter() - t_base
    with torch.no_grad():
        pred = base(z_all).argmax(dim=1).numpy() + 1
    val = classification_metrics(y_all[va], pred[va], codes)
    train_m = classification_metrics(y_all[tr], pred[tr], codes)
    majority = float((y_all[va] == np.bincount(y_all[tr]).argmax()).mean())
    logger.info(
        "validation accuracy %.3f, macro F1 %.3f (majority-class baseline %.3f)",
        val["accuracy"],
        val["macro_f1"],
        majority,
    )

    # Real pixels of the sample stack on the grid, as inference sees them.
    filled, _, ok = fill_gaps(
        stack.transpose(2, 0, 1),
        np.array(grid.day_of_season),
        grid.day_of_season,
        min_valid=cfg.min_valid_steps,
    )
    px = filled[ok]
    px = px[np.random.default_rng(cfg.seed).permutation(len(px))[: cfg.parity_pixels]]

    cal_m = classification_metrics(y_all[cal], pred[cal], codes) if len(cal) else None
    metrics = {
        "val_accuracy": round(val["accuracy"], 4),
        "val_macro_f1": round(val["macro_f1"], 4),
        "val_majority_baseline": round(majority, 4),
        "train_accuracy": round(train_m["accuracy"], 4),
        "n_train_parcels": float(len(tr)),
        "n_calibration_parcels": float(len(cal)),
        "n_val_parcels": float(len(va)),
        "n_pretrain_pixels": float(len(pixels)),
    }
    meta = bundle_metadata(
        model_name="resmlp_lstm",
        input_name="s2",
        bands=bands,
        time_grid=grid,
        classes=classes,
        min_valid_steps=cfg.min_valid_steps,
        nodata=65535.0,
        embedding=EmbeddingInfo(
            "embedding",
            2 * cfg.lstm_hidden,
            f"BiLSTM features before the linear head: last-layer forward state after the last stamp and backward "
            f"state after the first stamp ({2 * cfg.lstm_hidden} values)",
        ),
        encoder=f"resmlp-{cfg.encoder.n_layers}x{cfg.encoder.hidden}",
        base_model="lstm",
        pretraining=f"unimodal-scarf-{cfg.corruption:g}",
        training_data=(
            f"WorldCereal Flanders 2021 LPIS parcels ({len(tr)} training / {len(cal)} calibration / {len(va)} "
            f"validation of {len(usable)} usable), season {cfg.season}-{cfg.season_start}; SCARF pre-training on "
            f"{len(pixels)} single-date pixels drawn from sample_data/belgium_2021/s2_stack.tif "
            f"({len(stack_px)} valid) and the training parcels ({len(parcel_px)})"
        ),
        metrics=metrics,
        created=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    )
    # Parity inputs: the validation parcels and real pixels of the sample stack, as inference sees them.
    parity_inputs = np.concatenate([x_all[va], px[:500]])
    ckpt = save_classifier(
        work / "classifier.pt",
        encoder=frozen.encoder,
        encoder_name="resmlp",
        base_model=base,
        base_model_name="lstm",
        base_model_config={"hidden": cfg.lstm_hidden, "layers": cfg.lstm_layers, "dropout": cfg.lstm_dropout},
        norm_stats=norm_stats,
        metadata=meta,
        parity_inputs=parity_inputs,
        calibration_inputs=torch.from_numpy(np.ascontiguousarray(x_all[cal], dtype=np.float32))
        if len(cal)
        else None,
        calibration_labels=torch.from_numpy((y_all[cal] - 1).astype(np.int64)) if len(cal) else None,
        calibration_note=f"{len(cal)} calibration parcels of the Flanders sample (held out of training and of the "
        f"{len(va)} validation parcels)",
        config=dataclasses.asdict(cfg) | {"stack": str(cfg.stack), "parcels": str(cfg.parcels)},
    )
    summary = {
        "checkpoint": str(ckpt),
        "metrics": metrics,
        "validation": val,
        "training": {k: train_m[k] for k in ("accuracy", "macro_f1")},
        "calibration_parcels": None if cal_m is None else {k: cal_m[k] for k in ("accuracy", "macro_f1")},
        "class_counts": {
            c.name: {
                "train": int((y_all[tr] == c.code).sum()),
                "calibration": int((y_all[cal] == c.code).sum()),
                "val": int((y_all[va] == c.code).sum()),
            }
            for c in classes
        },
        "final_train_loss": round(losses[-1], 4),
        "seconds": {
            "pretrain": round(t_pre, 1),
            "base_model": round(t_base, 1),
            "total": round(time.perf_counter() - t0, 1),
        },
    }
    (work / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def run_command_line(
    *, config: Path | None, output: Path, overrides: Sequence[str], device: str, no_progress: bool
) -> None:
    """The body of ``cropmap train sample-model`` (:mod:`training.downstream.cli`).

    Raises:
        click.BadParameter: A configuration that does not fit (exit 2).
        training.device.DeviceError: A CUDA device torch does not see (exit 1).
    """
    import click

    from training.config import ConfigError
    from training.data.cli import input_errors

    torch_device = resolve_device(device)  # a CUDA device torch does not see: one Error: line, exit 1
    try:
        cfg = load_config(SampleModelConfig, config if config is not None else DEFAULT_CONFIG, overrides)
    except (ConfigError, ValueError) as err:
        raise click.BadParameter(" ".join(str(err).split()), param_hint="--config / --set") from err
    from training.downstream.threads import apply_threads, decide_threads

    threads = decide_threads(
        0, deterministic=True
    )  # the shipped model must not depend on the machine's cores
    apply_threads(threads)
    click.echo(
        f"threads: {threads.threads} for OpenMP / BLAS ({threads.why.split(';')[0]}); torch 1, so that the model does not "
        "depend on the machine's core count"
    )
    with input_errors():
        summary = run(cfg, output, progress=not no_progress, device=torch_device)
    m = summary["metrics"]
    click.echo(f"classifier {summary['checkpoint']} in {summary['seconds']['total']} s")
    click.echo(
        f"parcels: {int(m['n_train_parcels'])} training, {int(m['n_calibration_parcels'])} calibration, "
        f"{int(m['n_val_parcels'])} validation; "
        f"validation accuracy {m['val_accuracy']:.3f}, macro F1 {m['val_macro_f1']:.3f} "
        f"(majority baseline {m['val_majority_baseline']:.3f}); training accuracy {m['train_accuracy']:.3f}"
    )
    click.echo(
        f"bundle: cropmap export bundle {summary['checkpoint']} -o {output / 'flanders_sample.onnx'}  "
        "(to refresh the shipped bundle: -o cropmap/models/flanders_sample.onnx --overwrite)"
    )


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m training.sample_model``: an alias of ``cropmap train sample-model``; returns the exit status."""
    from cropmap.cli_common import run_command
    from training.downstream.cli import sample_model

    return run_command(sample_model, argv, prog_name="python -m training.sample_model")


if __name__ == "__main__":
    sys.exit(main())
