"""Downstream comparison: supervised vs uni-modal vs bi-modal features for every base-model variant.

``python -m training.downstream --task 1 --data SIM_DIR --encoders unimodal_0.2=U2.pt unimodal_0.6=U6.pt
bimodal_0.2=B2.pt bimodal_0.6=B6.pt --families lstm,inception_time,transformer --variants 10 --epochs 20
--out runs/task1``

Protocol (PAPER.md section 4):

* ``variants`` hyper-parameter variants per family are sampled once (:func:`training.tune.sample_variants`,
  kept in ``OUT/variants.db``) and each is trained with every method using the same hyper-parameters.
* **supervised**: the base model on the raw bands, standardised with per-band statistics of the
  training set. **uni-modal / bi-modal**: the base model on the per-stamp embeddings of a frozen
  pre-trained S2 encoder, ``(B, T, C) -> (B, T, D)``, one run per encoder (corruption rate).
* Adam, learning rate decayed linearly from the variant's ``lr`` to 0 over all steps, cross-entropy,
  ``epochs`` epochs; validation accuracy, macro F1, Cohen's kappa and the confusion matrix after the
  last epoch (the accuracy after every ``eval_every`` epochs is kept as a curve).
* The encoder stays in eval mode with ``requires_grad=False`` throughout (its BatchNorm statistics
  never change). Its embeddings are computed once per encoder and kept in memory when the train and
  validation embeddings fit in ``embed_cache_gb`` (the papers' 54,000 x 144 x 256 float32 set needs
  8.0 GB); otherwise the encoder runs on every batch, still frozen.
* Each finished run is appended to ``OUT/results.jsonl`` at once; a rerun skips finished runs, and
  refuses to mix results produced with another set-up in the same file.

Task ``1`` / ``2`` read the simulated (DENETHOR-layout) scenes, task ``real`` the real WorldCereal
parcels (supervised vs uni-modal only: there is no PlanetScope for them).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from training.config import config_to_dict, load_config
from training.evaluate import confusion_matrix, metrics_from_confusion
from training.models import MODELS, build_model
from training.models.encoder import compute_norm_stats, load_frozen_encoder
from training.tune import sample_variants, split_lr

logger = logging.getLogger(__name__)

SSL_METHODS = ("unimodal", "bimodal")
"""Methods that read a pre-trained encoder."""


@dataclass(frozen=True)
class DownstreamConfig:
    """Settings of one downstream comparison (``training/configs/downstream*.toml``)."""

    task: Literal["1", "2", "real"] = "1"
    """``1``: same scene as pre-training; ``2``: the other scene; ``real``: WorldCereal parcels."""
    data: Path | None = None
    """Tasks 1/2: folder written by ``python -m training.simulate``. Task real: a WorldCereal parquet."""
    families: tuple[str, ...] = ("lstm", "inception_time", "transformer")
    """Base-model registry keys."""
    variants: int = 10
    """Hyper-parameter variants per family."""
    epochs: int = 20
    """Training epochs per run."""
    batch_size: int = 256
    """Mini-batch size."""
    n_train_per_class: int = 5000
    """Balanced training pixels per class (tasks 1/2; the papers use 5,000)."""
    n_val_per_class: int = 1000
    """Balanced validation pixels per class (tasks 1/2; the papers use 1,000)."""
    val_fraction: float = 0.3
    """Task real: fraction of parcels held out for validation (stratified by class)."""
    seed: int = 0
    """Seeds the variants, the data sets and every run."""
    device: Literal["cpu", "cuda"] = "cpu"
    """Where models train; ``cuda`` is an error when no GPU is visible."""
    embed_cache_gb: float = 4.0
    """Keep an encoder's train + val embeddings in memory when they fit in this many GB."""
    eval_every: int = 1
    """Record validation accuracy every this many epochs (the final epoch is always evaluated)."""
    threads: int = 0
    """torch CPU threads (0: torch's default)."""
    fill: Literal["none", "linear"] = "none"
    """Tasks 1/2: keep cloudy observations (``none``, as in the papers) or interpolate them (``linear``)."""

    def __post_init__(self) -> None:
        for name in ("variants", "epochs", "batch_size", "n_train_per_class", "n_val_per_class", "eval_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.families:
            raise ValueError("families must name at least one base model")
        unknown = sorted(set(self.families) - set(MODELS))
        if unknown:
            raise ValueError(f"unknown base model(s) {unknown} in families; choose from {sorted(MODELS)}")
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in (0, 1), got {self.val_fraction}")
        if self.embed_cache_gb < 0 or self.threads < 0:
            raise ValueError("embed_cache_gb and threads must be >= 0")


@dataclass(frozen=True)
class TaskData:
    """Labelled series of one downstream task, raw digital numbers."""

    x_train: np.ndarray
    """float32 ``(N, T, C)``."""
    y_train: np.ndarray
    """int64 ``(N,)`` in ``[0, K)``."""
    x_val: np.ndarray
    """float32 ``(M, T, C)``."""
    y_val: np.ndarray
    """int64 ``(M,)``."""
    class_names: tuple[str, ...]
    bands: tuple[str, ...]

    def __post_init__(self) -> None:
        for name in ("x_train", "x_val"):
            arr = getattr(self, name)
            if arr.ndim != 3 or arr.shape[-1] != len(self.bands):
                raise ValueError(f"{name} must be (N, T, {len(self.bands)}) for bands {self.bands}, got {arr.shape}")
            if not np.isfinite(arr).all():
                raise ValueError(f"{name} holds non-finite values; fill gaps before the downstream task")
        if self.x_train.shape[1] != self.x_val.shape[1]:
            raise ValueError(f"train has {self.x_train.shape[1]} stamps but val has {self.x_val.shape[1]}")
        k = len(self.class_names)
        for name, y, x in (("y_train", self.y_train, self.x_train), ("y_val", self.y_val, self.x_val)):
            if y.shape != (len(x),):
                raise ValueError(f"{name} has shape {y.shape}, expected ({len(x)},)")
            if len(y) and (y.min() < 0 or y.max() >= k):
                raise ValueError(f"{name} holds labels outside [0, {k}) for classes {self.class_names}")


@dataclass(frozen=True)
class EncoderSpec:
    """A pre-trained encoder given on the command line as ``<method>_<corruption>=PATH``."""

    method: str
    corruption: float
    path: Path

    @classmethod
    def parse(cls, text: str) -> EncoderSpec:
        """Parse ``unimodal_0.2=runs/u02/encoder.pt``."""
        key, sep, path = text.partition("=")
        method, _, rate = key.partition("_")
        try:
            corruption = float(rate)
        except ValueError:
            corruption = math.nan
        if not sep or not path or method not in SSL_METHODS or not 0.0 <= corruption < 1.0:
            raise ValueError(
                f"encoder {text!r} is not of the form <method>_<corruption>=PATH with method in "
                f"{list(SSL_METHODS)} and corruption in [0, 1), e.g. 'bimodal_0.2=runs/b02/encoder.pt'"
            )
        return cls(method, corruption, Path(path))


# ----------------------------------------------------------------------------------------------
# training one run
# ----------------------------------------------------------------------------------------------
def run_seed(*parts: object) -> int:
    """A stable 31-bit seed from the parts of a run key."""
    return zlib.crc32("/".join(map(str, parts)).encode()) & 0x7FFFFFFF


@torch.no_grad()
def encode(front: nn.Module, x: torch.Tensor, *, batch_size: int = 1024, device: str = "cpu") -> torch.Tensor:
    """Apply a frozen per-stamp front (normalisation or encoder) to ``(N, T, C)`` -> ``(N, T, D)`` on CPU."""
    front.eval()
    out = [front(x[i : i + batch_size].to(device)).cpu() for i in range(0, len(x), batch_size)]
    return torch.cat(out) if out else torch.empty(0)


def train_run(
    model: nn.Module,
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    x_val: torch.Tensor,
    y_val: torch.Tensor,
    *,
    lr: float,
    epochs: int,
    batch_size: int,
    seed: int,
    device: str = "cpu",
    front: nn.Module | None = None,
    eval_every: int = 1,
    progress: Any | None = None,
) -> dict[str, Any]:
    """Train a base model with Adam and a linear learning-rate decay to 0, then score it.

    Args:
        model: Base model ``(B, T, D) -> (B, K)``.
        x_train: ``(N, T, C)`` inputs: features already (``front`` None) or raw values for ``front``.
        y_train: ``(N,)`` int64 labels.
        x_val: ``(M, T, C)`` validation inputs, like ``x_train``.
        y_val: ``(M,)`` labels.
        lr: Initial learning rate.
        epochs: Number of epochs.
        batch_size: Mini-batch size.
        seed: Seeds the batch order.
        device: ``cpu`` or ``cuda``.
        front: Optional frozen module applied per batch under ``no_grad`` (kept in eval mode).
        eval_every: Validation accuracy is recorded every this many epochs and after the last one.
        progress: Optional tqdm bar updated once per epoch.

    Returns:
        ``val_accuracy``, ``macro_f1``, ``kappa``, ``confusion`` (list of lists), ``per_class_recall``,
        ``curve`` (``[epoch, val accuracy]`` pairs) and ``final_loss``.
    """
    model.to(device)
    if front is not None:
        front.to(device).eval()
    n_classes = int(model.n_classes)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    steps_per_epoch = math.ceil(len(x_train) / batch_size)
    total = max(1, steps_per_epoch * epochs)
    # Linear decay from lr (step 0) to 0 (after the last step).
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: max(0.0, 1.0 - step / total))
    gen = torch.Generator().manual_seed(seed)
    loss_fn = nn.CrossEntropyLoss()
    curve: list[list[float]] = []
    loss_sum, loss_n = 0.0, 0
    for epoch in range(1, epochs + 1):
        model.train()
        if front is not None:
            front.eval()
        order = torch.randperm(len(x_train), generator=gen)
        loss_sum, loss_n = 0.0, 0
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            xb, yb = x_train[idx].to(device, non_blocking=True), y_train[idx].to(device, non_blocking=True)
            if front is not None:
                with torch.no_grad():
                    xb = front(xb)
            loss = loss_fn(model(xb), yb)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            loss_sum += float(loss.detach()) * len(idx)
            loss_n += len(idx)
        if epoch % eval_every == 0 or epoch == epochs:
            pred = predict(model, x_val, batch_size=max(batch_size, 512), device=device, front=front)
            curve.append([epoch, float((pred == y_val).float().mean())])
        if progress is not None:
            progress.set_postfix(loss=f"{loss_sum / max(loss_n, 1):.3f}", acc=f"{curve[-1][1]:.3f}" if curve else "-")
            progress.update(1)
    pred = predict(model, x_val, batch_size=max(batch_size, 512), device=device, front=front)
    cm = confusion_matrix(y_val.numpy(), pred.numpy(), n_classes)
    m = metrics_from_confusion(cm)
    return {
        "val_accuracy": m.accuracy,
        "macro_f1": m.macro_f1,
        "kappa": m.kappa,
        "confusion": cm.tolist(),
        "per_class_recall": [None if math.isnan(r) else r for r in m.recall],
        "curve": curve,
        "final_loss": loss_sum / max(loss_n, 1),
    }


@torch.no_grad()
def predict(
    model: nn.Module, x: torch.Tensor, *, batch_size: int, device: str = "cpu", front: nn.Module | None = None
) -> torch.Tensor:
    """Class predictions ``(M,)`` for ``(M, T, C)`` inputs, in eval mode."""
    model.eval()
    out = []
    for start in range(0, len(x), batch_size):
        xb = x[start : start + batch_size].to(device)
        if front is not None:
            xb = front(xb)
        out.append(model(xb).argmax(dim=-1).cpu())
    return torch.cat(out) if out else torch.empty(0, dtype=torch.long)


# ----------------------------------------------------------------------------------------------
# the comparison
# ----------------------------------------------------------------------------------------------
SETUP_KEYS = ("task", "epochs", "batch_size", "n_train", "n_val", "seed", "lr_schedule", "fill")
"""Record fields that must agree between runs stored in one results file."""


def _run_key(rec: dict[str, Any]) -> tuple[str, str, int, str, float | None]:
    c = rec["corruption"]
    return (str(rec["task"]), str(rec["family"]), int(rec["variant"]), str(rec["method"]), None if c is None else float(c))


def load_finished(path: Path) -> dict[tuple[str, str, int, str, float | None], dict[str, Any]]:
    """Finished runs in a results file, by run key (empty when the file does not exist)."""
    done: dict[tuple[str, str, int, str, float | None], dict[str, Any]] = {}
    if not path.is_file():
        return done
    for lineno, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(
                f"{path}:{lineno} is not valid JSON ({err}); remove the broken line to resume"
            ) from err
        done[_run_key(rec)] = rec
    return done


def _check_setup(done: dict[Any, dict[str, Any]], setup: dict[str, Any], path: Path) -> None:
    for rec in done.values():
        if str(rec["task"]) != setup["task"]:
            continue
        diff = {k: (rec.get(k), setup[k]) for k in SETUP_KEYS if rec.get(k) != setup[k]}
        if diff:
            pretty = ", ".join(f"{k}: stored {a!r}, now {b!r}" for k, (a, b) in diff.items())
            raise ValueError(f"{path} holds task {setup['task']} runs made with another set-up ({pretty}); use another --out")


def _fronts(
    data: TaskData, encoders: Sequence[EncoderSpec], device: str
) -> list[tuple[str, float | None, nn.Module, dict[str, Any]]]:
    """The per-stamp fronts: training-set standardisation (supervised) and each frozen encoder."""
    stats = compute_norm_stats(data.x_train)
    from training.models.encoder import Normalize

    fronts: list[tuple[str, float | None, nn.Module, dict[str, Any]]] = [
        ("supervised", None, Normalize(stats["mean"], stats["std"]), {"norm_stats": stats})
    ]
    for spec in encoders:
        enc = load_frozen_encoder(spec.path, map_location=device)
        if enc.in_dim != len(data.bands):
            raise ValueError(
                f"encoder {spec.path} expects {enc.in_dim} input bands but task data has {len(data.bands)} "
                f"({', '.join(data.bands)}); pre-train it on the same bands"
            )
        fronts.append((spec.method, spec.corruption, enc, {"encoder": str(spec.path)}))
    return fronts


def run_comparison(
    cfg: DownstreamConfig,
    data: TaskData,
    encoders: Sequence[EncoderSpec],
    out_dir: str | Path,
    *,
    show_progress: bool = True,
) -> Path:
    """Train every (family, variant, method) on one task and append the results.

    Args:
        cfg: The run settings.
        data: The task's train / validation series (raw digital numbers).
        encoders: Pre-trained encoders, one per (method, corruption rate).
        out_dir: Folder for ``results.jsonl``, ``variants.db`` and ``config.json``.
        show_progress: Show tqdm bars.

    Returns:
        The results file.

    Raises:
        ValueError: On a bi-modal encoder for the real task, duplicated encoders, a results file made
            with another set-up, or an encoder that does not fit the task's bands.
    """
    from tqdm.auto import tqdm

    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but torch sees no CUDA device; use --device cpu")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if cfg.task == "real" and any(e.method == "bimodal" for e in encoders):
        raise ValueError("task 'real' has no PlanetScope data: give only unimodal_<rate> encoders")
    keys = [(e.method, e.corruption) for e in encoders]
    if len(set(keys)) != len(keys):
        raise ValueError(f"encoders repeat a (method, corruption) pair: {keys}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    results = out / "results.jsonl"
    (out / f"config_task{cfg.task}.json").write_text(
        json.dumps({"config": config_to_dict(cfg), "encoders": [dataclasses.asdict(e) for e in encoders]}, default=str, indent=1)
    )
    setup = {
        "task": cfg.task,
        "epochs": cfg.epochs,
        "batch_size": cfg.batch_size,
        "n_train": len(data.y_train),
        "n_val": len(data.y_val),
        "seed": cfg.seed,
        "lr_schedule": "linear-to-zero",
        "fill": cfg.fill,
    }
    done = load_finished(results)
    _check_setup(done, setup, results)
    variants = {f: sample_variants(f, cfg.variants, seed=cfg.seed, storage=out / "variants.db") for f in cfg.families}
    x_train = torch.from_numpy(np.ascontiguousarray(data.x_train, dtype=np.float32))
    x_val = torch.from_numpy(np.ascontiguousarray(data.x_val, dtype=np.float32))
    y_train = torch.from_numpy(data.y_train.astype(np.int64))
    y_val = torch.from_numpy(data.y_val.astype(np.int64))
    n_total = (1 + len(encoders)) * len(cfg.families) * cfg.variants
    logger.info(
        "task %s: %d train / %d val series of %d stamps x %d bands, %d classes; %d runs",
        cfg.task, len(y_train), len(y_val), x_train.shape[1], x_train.shape[2], len(data.class_names), n_total,
    )  # fmt: skip
    bar = tqdm(total=n_total, desc=f"task {cfg.task}", unit="run", disable=not show_progress)
    for method, corruption, front, extra in _fronts(data, encoders, cfg.device):
        todo = [
            (f, v)
            for f in cfg.families
            for v in range(cfg.variants)
            if (cfg.task, f, v, method, corruption) not in done
        ]
        bar.update(len(cfg.families) * cfg.variants - len(todo))
        if not todo:
            continue
        d = int(getattr(front, "out_dim", x_train.shape[2]))
        cache_gb = (len(x_train) + len(x_val)) * x_train.shape[1] * d * 4 / 1e9
        t0 = time.perf_counter()
        if cache_gb <= cfg.embed_cache_gb:
            feats_train = encode(front, x_train, device=cfg.device)
            feats_val = encode(front, x_val, device=cfg.device)
            run_front, mode = None, "precomputed"
            logger.info("%s %s: features precomputed (%.2f GB) in %.1f s", method, corruption, cache_gb, time.perf_counter() - t0)
        else:
            feats_train, feats_val, run_front, mode = x_train, x_val, front, "per_batch"
            logger.info("%s %s: features need %.2f GB > embed_cache_gb=%.2f, encoding per batch", method, corruption, cache_gb, cfg.embed_cache_gb)
        encode_s = time.perf_counter() - t0
        for family, v in todo:
            lr, hp = split_lr(variants[family][v])
            seed = run_seed(cfg.seed, cfg.task, family, v, method, corruption)
            torch.manual_seed(seed)
            model = build_model(family, d, len(data.class_names), **hp)
            bar.set_description(f"task {cfg.task} {family} v{v} {method} {corruption if corruption is not None else ''}")
            epoch_bar = tqdm(total=cfg.epochs, desc="epochs", unit="ep", leave=False, disable=not show_progress)
            t_run = time.perf_counter()
            res = train_run(
                model, feats_train, y_train, feats_val, y_val,
                lr=lr, epochs=cfg.epochs, batch_size=cfg.batch_size, seed=seed, device=cfg.device,
                front=run_front, eval_every=cfg.eval_every, progress=epoch_bar,
            )  # fmt: skip
            epoch_bar.close()
            rec = {
                **setup,
                "family": family,
                "variant": v,
                "method": method,
                "corruption": corruption,
                "hp": hp,
                "lr": lr,
                **res,
                "seconds": time.perf_counter() - t_run,
                "encode_seconds": encode_s,
                "embedding_mode": mode,
                "in_dim": d,
                "class_names": list(data.class_names),
                "device": cfg.device,
                **extra,
            }
            with results.open("a") as fh:
                fh.write(json.dumps(rec) + "\n")
            done[_run_key(rec)] = rec
            bar.update(1)
            logger.info("task %s %s v%d %s %s: val acc %.4f (%.1f s)", cfg.task, family, v, method, corruption, res["val_accuracy"], rec["seconds"])
        _check_front_frozen(front, method)
    bar.close()
    return results


def _check_front_frozen(front: nn.Module, method: str) -> None:
    """Internal invariant: a frozen front never trains and never accumulates gradients."""
    if front.training or any(p.requires_grad or p.grad is not None for p in front.parameters()):
        raise RuntimeError(f"the {method} encoder left eval mode or received gradients during downstream training")


# ----------------------------------------------------------------------------------------------
# task data
# ----------------------------------------------------------------------------------------------
REAL_SEASON_START = "11-01"
"""Task real: season start (Nov-Oct), the calendar of the shipped Flanders stack."""


def monthly_grid(season: int, *, season_start: str = REAL_SEASON_START, months: int = 12) -> Any:
    """A time grid of ``months`` first-of-month stamps starting at ``season_start`` of ``season``."""
    import datetime as dt

    from cropmap.bundle import TimeGrid

    month, day = (int(p) for p in season_start.split("-"))
    start = dt.date(season, month, day)
    dates = [dt.date(season + (month - 1 + i) // 12, (month - 1 + i) % 12 + 1, day) for i in range(months)]
    return TimeGrid(
        season_start=season_start,
        day_of_season=tuple((d - start).days for d in dates),
        reference_dates=tuple(d.isoformat() for d in dates),
    )


def stratified_split(labels: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded per-class split of sample indices into (train, val).

    Every class with at least two samples puts ``round(val_fraction * n)`` (at least one) samples
    into validation; a class with one sample stays in training.
    """
    rng = np.random.default_rng(seed)
    train, val = [], []
    for k in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == k))
        n_val = 0 if len(idx) < 2 else min(len(idx) - 1, max(1, round(val_fraction * len(idx))))
        val.extend(idx[:n_val].tolist())
        train.extend(idx[n_val:].tolist())
    return np.sort(np.array(train, dtype=np.int64)), np.sort(np.array(val, dtype=np.int64))


def load_real_task(path: str | Path, *, season: int, val_fraction: float, seed: int, min_valid: int = 6) -> TaskData:
    """Real WorldCereal parcels on the monthly Nov-Oct grid, coarse Flanders legend, stratified split.

    Args:
        path: A WorldCereal extraction (parquet, long or wide layout).
        season: Calendar year in which the Nov-Oct season starts.
        val_fraction: Share of parcels per class held out for validation.
        seed: Split seed.
        min_valid: Parcels with fewer valid monthly observations in the season are dropped.

    Returns:
        The split series (parcels, not pixels: each parcel is one sample, so the split is by field).
    """
    from training.data.worldcereal import FLANDERS_CLASSES, coarse_labels, on_time_grid, read_extraction

    series = read_extraction(path)
    gridded = on_time_grid(series, monthly_grid(season), season=season, min_valid=min_valid)
    if not gridded.ok.any():
        raise ValueError(f"{path}: no parcel has {min_valid} valid observations in season {season}")
    codes = coarse_labels(gridded.labels[gridded.ok])
    order = [c.code for c in FLANDERS_CLASSES]
    y = np.array([order.index(int(c)) for c in codes], dtype=np.int64)
    x = gridded.x[gridded.ok]
    logger.info("%s: %d of %d parcels usable in season %d", path, len(y), len(gridded.ok), season)
    tr, va = stratified_split(y, val_fraction, seed)
    return TaskData(
        x_train=x[tr], y_train=y[tr], x_val=x[va], y_val=y[va],
        class_names=tuple(c.name for c in FLANDERS_CLASSES), bands=tuple(gridded.bands),
    )  # fmt: skip


def load_sim_task(
    root: str | Path, task: str, *, n_train: int, n_val: int, seed: int, fill: Literal["none", "linear"] = "none"
) -> TaskData:
    """Balanced pixel sets of a simulated scene pair (task 1: ``scene_a``, task 2: ``scene_b``).

    Args:
        root: Folder written by ``python -m training.simulate``.
        task: ``"1"`` or ``"2"``.
        n_train: Training pixels per class.
        n_val: Validation pixels per class.
        seed: Sampling seed (the field splits use the data layer's fixed split seed).
        fill: ``"none"`` keeps cloudy / no-data observations as the papers' base models saw them;
            ``"linear"`` interpolates them in time as inference does.
    """
    from training.data.datasets import task_sets
    from training.data.denethor import S2_BAND_NAMES

    sets = task_sets(root, int(task), n_train, n_val, seed, fill=fill)
    return TaskData(
        x_train=np.asarray(sets.x_train, dtype=np.float32),
        y_train=np.asarray(sets.y_train, dtype=np.int64),
        x_val=np.asarray(sets.x_val, dtype=np.float32),
        y_val=np.asarray(sets.y_val, dtype=np.int64),
        class_names=tuple(sets.class_names),
        bands=tuple(S2_BAND_NAMES),
    )


def load_task(cfg: DownstreamConfig, *, real_season: int = 2020) -> TaskData:
    """The task's data as configured (``cfg.data`` must be set)."""
    if cfg.data is None:
        raise ValueError(
            f"task {cfg.task} needs data: a simulated scene folder (tasks 1/2) or a WorldCereal parquet (real); "
            "pass --data"
        )
    if not cfg.data.exists():
        raise FileNotFoundError(f"data path {str(cfg.data)!r} does not exist")
    if cfg.task == "real":
        return load_real_task(cfg.data, season=real_season, val_fraction=cfg.val_fraction, seed=cfg.seed)
    return load_sim_task(
        cfg.data, cfg.task, n_train=cfg.n_train_per_class, n_val=cfg.n_val_per_class, seed=cfg.seed, fill=cfg.fill
    )


# ----------------------------------------------------------------------------------------------
# entry point
# ----------------------------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m training.downstream``."""
    parser = argparse.ArgumentParser(prog="python -m training.downstream", description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", choices=("1", "2", "real"), help="downstream task")
    parser.add_argument("--data", type=Path, help="simulated scene folder (tasks 1/2) or WorldCereal parquet (real)")
    parser.add_argument("--encoders", nargs="*", default=[], metavar="METHOD_RATE=PATH",
                        help="pre-trained encoders, e.g. unimodal_0.2=u02/encoder.pt bimodal_0.6=b06/encoder.pt")  # fmt: skip
    parser.add_argument("--families", help="comma-separated base models (default: all three)")
    parser.add_argument("--variants", type=int, help="variants per family")
    parser.add_argument("--epochs", type=int, help="epochs per run")
    parser.add_argument("--device", choices=("cpu", "cuda"))
    parser.add_argument("--season", type=int, default=2020, help="task real: year the Nov-Oct season starts")
    parser.add_argument("--out", type=Path, required=True, help="output folder (results.jsonl, variants.db)")
    parser.add_argument("--config", type=Path, help="TOML file with DownstreamConfig fields")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    overrides = []
    for flag, key in (("task", "task"), ("data", "data"), ("families", "families"), ("variants", "variants"),
                      ("epochs", "epochs"), ("device", "device")):  # fmt: skip
        value = getattr(args, flag)
        if value is not None:
            overrides.append(f"{key}={value}")
    try:
        cfg = load_config(DownstreamConfig, args.config, [*overrides, *args.set])
        encoders = [EncoderSpec.parse(e) for e in args.encoders]
    except ValueError as err:
        parser.error(str(err))
    for spec in encoders:
        if not spec.path.is_file():
            parser.error(f"encoder file {str(spec.path)!r} does not exist")
    data = load_task(cfg, real_season=args.season)
    results = run_comparison(cfg, data, encoders, args.out, show_progress=not args.no_progress)
    print(f"results: {results} ({len(results.read_text().splitlines())} runs); report: python -m training.evaluate "
          f"--results {results} --out {args.out / 'report'}")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
