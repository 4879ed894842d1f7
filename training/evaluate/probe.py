"""Probes of frozen representations: a linear (logistic-regression) probe and k-NN, in torch.

The probes answer "does pre-training help?" cheaply: the same probe is fitted on raw bands, on a
randomly initialised encoder and on pre-trained encoders, and the validation accuracies compared.
Series features: the frozen encoder is applied to every stamp ``(N, T, C) -> (N, T, D)`` and the
stamps are concatenated (``"flatten"``, the information a downstream model sees) or averaged
(``"mean"``).

``cropmap evaluate probe --data SIM_DIR --encoder bimodal=run/encoder.pt [...]`` (alias ``python -m training.probe``)
prints the
balanced accuracies of raw bands, a random encoder (the first given encoder's architecture and
normalisation, untrained) and each given encoder under :func:`scene_probe`: probes fitted on labelled
pixels of the pre-training pool and scored on the fields pre-training never saw. ``--device cuda`` runs
the encoders on the GPU (the probes themselves fit on the CPU).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from training.data.datasets import MAX_CLOUD_PROBABILITY
from training.data.denethor import Scene, read_scene
from training.models.encoder import (
    Normalize,
    NormalizedEncoder,
    ResMLP,
    compute_norm_stats,
)

logger = logging.getLogger(__name__)

Pooling = Literal["flatten", "mean"]
Metric = Literal["accuracy", "balanced"]


def score(pred: torch.Tensor, y: torch.Tensor, metric: Metric = "accuracy") -> float:
    """Accuracy, or balanced accuracy (mean per-class recall over the classes present in ``y``)."""
    if len(y) == 0:
        raise ValueError("cannot score an empty validation set")
    if metric == "accuracy":
        return float((pred == y).float().mean())
    if metric == "balanced":
        return float(np.mean([float((pred[y == c] == c).float().mean()) for c in torch.unique(y)]))
    raise ValueError(f"metric must be 'accuracy' or 'balanced', got {metric!r}")


@torch.no_grad()
def series_features(
    x: np.ndarray | torch.Tensor,
    encoder: nn.Module | None = None,
    *,
    pooling: Pooling = "flatten",
    batch_size: int = 2048,
) -> torch.Tensor:
    """Features of pixel series for a probe.

    Args:
        x: ``(N, T, C)`` raw digital numbers.
        encoder: Frozen encoder ``(..., C) -> (..., D)``; ``None`` uses the raw bands.
        pooling: ``"flatten"`` (``(N, T * D)``) or ``"mean"`` over time (``(N, D)``).
        batch_size: Series per forward pass.

    Returns:
        ``(N, F)`` float32 features.
    """
    xt = torch.as_tensor(np.asarray(x, dtype=np.float32)) if not isinstance(x, torch.Tensor) else x.float()
    if xt.ndim != 3:
        raise ValueError(f"series_features expects (N, T, C), got shape {tuple(xt.shape)}")
    if encoder is not None:
        encoder.eval()
        xt = torch.cat([encoder(xt[i : i + batch_size]) for i in range(0, len(xt), batch_size)])
    if pooling == "flatten":
        return xt.reshape(len(xt), -1)
    if pooling == "mean":
        return xt.mean(dim=1)
    raise ValueError(f"pooling must be 'flatten' or 'mean', got {pooling!r}")


def _standardize(train: torch.Tensor, val: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    mean = train.mean(dim=0)
    std = train.std(dim=0).clamp_min(1e-6)
    return (train - mean) / std, (val - mean) / std


def linear_probe(
    x_train: torch.Tensor,
    y_train: torch.Tensor | np.ndarray,
    x_val: torch.Tensor,
    y_val: torch.Tensor | np.ndarray,
    *,
    weight_decay: float = 1e-3,
    max_iter: int = 200,
    seed: int = 0,
    metric: Metric = "accuracy",
) -> float:
    """Validation accuracy of a multinomial logistic regression on standardised features.

    Fitted full-batch with L-BFGS on cross-entropy plus ``weight_decay * ||W||^2`` (fixed settings: a
    probe is not tuned, least of all on the validation pixels).

    Args:
        x_train: ``(N, F)`` training features.
        y_train: ``(N,)`` integer labels.
        x_val: ``(M, F)`` validation features.
        y_val: ``(M,)`` integer labels.
        weight_decay: L2 penalty on the weights.
        max_iter: L-BFGS iterations.
        seed: Seed of the (zero-mean) initialisation.
        metric: ``"accuracy"`` or ``"balanced"`` (mean recall over the classes present in ``y_val``).

    Returns:
        The metric, in ``[0, 1]``.
    """
    ytr = torch.as_tensor(np.asarray(y_train), dtype=torch.long)
    yva = torch.as_tensor(np.asarray(y_val), dtype=torch.long)
    xtr, xva = _standardize(x_train.float(), x_val.float())
    n_classes = int(max(ytr.max(), yva.max())) + 1
    gen = torch.Generator().manual_seed(seed)
    w = (torch.randn(xtr.shape[1], n_classes, generator=gen) * 0.01).requires_grad_(True)
    b = torch.zeros(n_classes, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=max_iter, history_size=20, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(xtr @ w + b, ytr) + weight_decay * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        return score((xva @ w + b).argmax(dim=1), yva, metric)


@torch.no_grad()
def knn_accuracy(
    x_train: torch.Tensor,
    y_train: torch.Tensor | np.ndarray,
    x_val: torch.Tensor,
    y_val: torch.Tensor | np.ndarray,
    *,
    k: int = 10,
    metric: Metric = "accuracy",
) -> float:
    """Validation accuracy (or balanced accuracy) of a cosine k-NN majority vote on standardised features."""
    ytr = torch.as_tensor(np.asarray(y_train), dtype=torch.long)
    yva = torch.as_tensor(np.asarray(y_val), dtype=torch.long)
    xtr, xva = _standardize(x_train.float(), x_val.float())
    xtr, xva = F.normalize(xtr, dim=1), F.normalize(xva, dim=1)
    n_classes = int(max(ytr.max(), yva.max())) + 1
    preds = []
    for i in range(0, len(xva), 1024):
        sims = xva[i : i + 1024] @ xtr.T
        nn_idx = sims.topk(min(k, len(xtr)), dim=1).indices
        votes = F.one_hot(ytr[nn_idx], n_classes).sum(dim=1)
        preds.append(votes.argmax(dim=1))
    return score(torch.cat(preds), yva, metric)


@dataclass(frozen=True)
class PixelDates:
    """Clear single-date S2 observations of labelled pixels (the unit a point-wise encoder embeds)."""

    x: np.ndarray
    """``(N, C)`` float32 raw digital numbers."""
    y: np.ndarray
    """``(N,)`` int64 class indices."""
    stamp: np.ndarray
    """``(N,)`` int64 index of the S2 stamp of each observation."""
    field: np.ndarray
    """``(N,)`` int64 field id of each observation."""


def pixel_dates(
    scene: Scene,
    field_ids: np.ndarray | Sequence[int],
    *,
    classes: tuple[str, ...],
    max_per_class: int | None = None,
    seed: int = 0,
    max_cloud_probability: float = MAX_CLOUD_PROBABILITY,
) -> PixelDates:
    """Every clear observation of the pixels of ``field_ids``, at most ``max_per_class`` per class and stamp.

    Args:
        scene: The scene.
        field_ids: Fields to take pixels from.
        classes: Class names that ``y`` indexes; every crop of the fields must be among them.
        max_per_class: Cap per class and stamp (a random subset, without replacement); ``None`` keeps all.
        seed: Seed of the subsets.
        max_cloud_probability: Cloudier observations, and no-data ones (every band 0), are left out.

    Returns:
        The observations, ordered by stamp.
    """
    ids = np.asarray(field_ids, dtype=np.int64)
    unknown = np.setdiff1d(ids, scene.field_ids)
    if unknown.size:
        raise ValueError(f"field ids {unknown[:5].tolist()} cover no S2 pixel of {scene.root}")
    rows, cols = np.nonzero(np.isin(scene.field_raster, ids))
    lookup = {cid: classes.index(name) if name in classes else -1 for cid, name in scene.crop_names.items()}
    crop = scene.crop_raster[rows, cols]
    y_pix = np.array([lookup[int(c)] for c in crop], dtype=np.int64)
    if (y_pix < 0).any():
        missing = sorted({scene.crop_names[int(c)] for c in crop[y_pix < 0]})
        raise ValueError(f"crops {missing} of {scene.root} are not among the classes {classes}")
    field_pix = scene.field_raster[rows, cols].astype(np.int64)
    rng = np.random.default_rng(seed)
    xs, ys, ts, fs = [], [], [], []
    for t in range(len(scene.dates)):
        x_t = np.asarray(scene.s2[t])[rows, cols].astype(np.float32)
        clear = (scene.cloud_probability(t)[rows, cols] <= max_cloud_probability) & ~np.all(x_t == 0, axis=-1)
        keep = np.flatnonzero(clear)
        if max_per_class is not None:
            parts = []
            for k in np.unique(y_pix[keep]):
                members = keep[y_pix[keep] == k]
                if members.size > max_per_class:
                    members = rng.choice(members, max_per_class, replace=False)
                parts.append(members)
            keep = np.sort(np.concatenate(parts)) if parts else keep
        xs.append(x_t[keep])
        ys.append(y_pix[keep])
        ts.append(np.full(keep.size, t, dtype=np.int64))
        fs.append(field_pix[keep])
    return PixelDates(np.concatenate(xs), np.concatenate(ys), np.concatenate(ts), np.concatenate(fs))


@torch.no_grad()
def embed(x: np.ndarray | torch.Tensor, encoder: nn.Module | None, *, batch_size: int = 4096) -> torch.Tensor:
    """``(N, C)`` raw values -> ``(N, D)`` frozen embeddings (the raw values for ``encoder=None``)."""
    xt = torch.as_tensor(np.asarray(x, dtype=np.float32))
    if encoder is None:
        return xt
    encoder.eval()
    return torch.cat([encoder(xt[i : i + batch_size]) for i in range(0, len(xt), batch_size)])


def _stamp_groups(stamp: np.ndarray, keep: np.ndarray) -> list[torch.Tensor]:
    return [torch.as_tensor(np.flatnonzero(stamp == t)) for t in keep]


def per_date_probe(
    fit: PixelDates,
    val: PixelDates,
    encoder: nn.Module | None,
    *,
    k: int = 10,
    min_per_class: int = 5,
    weight_decay: float = 1e-3,
    max_iter: int = 300,
    metric: Metric = "balanced",
) -> dict[str, float]:
    """Linear and k-NN probes fitted and scored stamp by stamp, averaged over stamps.

    Each stamp gets its own logistic regression on features standardised with that stamp's fitting
    statistics; the independent problems are solved together by one L-BFGS run on the sum of their
    objectives (the same optimum as separate fits, one batched optimiser loop). A stamp counts when every
    class has at least ``min_per_class`` fitting observations and the validation set has some there.

    Returns:
        ``{"linear": mean over stamps, "knn": ..., "stamps": number of stamps used}``.
    """
    f_fit, f_val = embed(fit.x, encoder), embed(val.x, encoder)
    n_classes = int(max(fit.y.max(), val.y.max())) + 1
    stamps = [
        t
        for t in np.unique(val.stamp)
        if np.bincount(fit.y[fit.stamp == t], minlength=n_classes).min() >= min_per_class
    ]
    if not stamps:
        raise ValueError(f"no stamp has {min_per_class} clear fitting observations of every class")
    g_fit, g_val = _stamp_groups(fit.stamp, np.array(stamps)), _stamp_groups(val.stamp, np.array(stamps))
    y_fit = torch.as_tensor(fit.y, dtype=torch.long)
    y_val = torch.as_tensor(val.y, dtype=torch.long)
    n_stamps, dim = len(stamps), f_fit.shape[1]
    size = max(len(i) for i in g_fit)
    # Stamps padded to one (S, size, D) block; padded rows carry zero weight in the loss.
    xb = torch.zeros(n_stamps, size, dim)
    yb = torch.zeros(n_stamps, size, dtype=torch.long)
    wb = torch.zeros(n_stamps, size)
    xs_val = []
    for s, (i_fit, i_val) in enumerate(zip(g_fit, g_val, strict=True)):
        a, b = _standardize(f_fit[i_fit].float(), f_val[i_val].float())
        xb[s, : len(i_fit)], yb[s, : len(i_fit)], wb[s, : len(i_fit)] = a, y_fit[i_fit], 1.0 / len(i_fit)
        xs_val.append(b)
    w = torch.zeros(n_stamps, dim, n_classes, requires_grad=True)
    bias = torch.zeros(n_stamps, 1, n_classes, requires_grad=True)
    opt = torch.optim.LBFGS(
        [w, bias], lr=1.0, max_iter=max_iter, history_size=20, line_search_fn="strong_wolfe"
    )

    def closure() -> torch.Tensor:
        opt.zero_grad()
        logits = torch.bmm(xb, w) + bias
        nll = F.cross_entropy(logits.reshape(-1, n_classes), yb.reshape(-1), reduction="none")
        loss = (nll * wb.reshape(-1)).sum() + weight_decay * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    lin, knn = [], []
    with torch.no_grad():
        for s, (i_fit, i_val) in enumerate(zip(g_fit, g_val, strict=True)):
            lin.append(score((xs_val[s] @ w[s] + bias[s]).argmax(dim=1), y_val[i_val], metric))
            args = (f_fit[i_fit], y_fit[i_fit], f_val[i_val], y_val[i_val])
            knn.append(knn_accuracy(*args, k=k, metric=metric))
    return {"linear": float(np.mean(lin)), "knn": float(np.mean(knn)), "stamps": float(n_stamps)}


def scene_probe(
    scene_root: str | Path,
    encoders: dict[str, nn.Module | None],
    *,
    max_per_class: int = 200,
    n_series: int = 100,
    poolings: Sequence[Pooling] = ("mean",),
    k: int = 10,
    seed: int = 0,
    split_seed: int = 0,
) -> dict[str, dict[str, float]]:
    """The evidence protocol on a training tile: do frozen embeddings separate the crops of unseen fields?

    Probes are fitted on labelled pixels of the pre-training pool (pre-training used them without labels, as
    in linear evaluation on ImageNet) and scored on the downstream ``train`` + ``val`` fields, which
    pre-training never saw (a field-level split). Metric: balanced accuracy (mean recall over the crops).

    * ``date_linear`` / ``date_knn``: one probe per stamp on clear single-date pixels (``max_per_class``
      per class and stamp on both sides), averaged over stamps;
    * ``series_mean_*`` / ``series_flatten_*`` (one pair per entry of ``poolings``): ``n_series`` pixel
      series per class (linear gap filling, as inference), per-stamp embeddings averaged over time or
      concatenated (``T * D`` features: slow for large encoders and many stamps).

    Args:
        scene_root: A scene folder, or a folder with ``scene_a/`` (what ``training.simulate.run`` writes).
        encoders: Name -> frozen encoder (raw DN ``(..., C) -> (..., D)``), ``None`` = raw bands.
        max_per_class: Single-date observations per class and stamp.
        n_series: Series per class for the series probes (classes with fewer pixels are drawn with
            replacement, see :func:`training.data.datasets.balanced_pixels`).
        poolings: Series probes to run; empty for single-date probes only.
        k: Neighbours of the k-NN probe.
        seed: Seed of the pixel draws.
        split_seed: Seed of the field split (the one pre-training used).

    Returns:
        ``{encoder name: {protocol: balanced accuracy}}``.
    """
    from training.data.datasets import balanced_pixels, scene_a_splits

    root = Path(scene_root)
    nested = (root / "scene_a").is_dir() and not (root / "s2").is_dir()
    scene = read_scene(root / "scene_a" if nested else root)
    splits = scene_a_splits(scene, seed=split_seed)
    held_out = np.concatenate([splits["train"], splits["val"]])
    classes = scene.class_names
    fit = pixel_dates(scene, splits["pretrain"], classes=classes, max_per_class=max_per_class, seed=seed)
    val = pixel_dates(scene, held_out, classes=classes, max_per_class=max_per_class, seed=seed + 1)
    if poolings:
        pool = splits["pretrain"]
        xs_fit, ys_fit = balanced_pixels(scene, pool, n_series, seed, classes=classes, fill="linear")
        xs_val, ys_val = balanced_pixels(scene, held_out, n_series, seed + 1, classes=classes, fill="linear")
    report: dict[str, dict[str, float]] = {}
    for name, enc in encoders.items():
        row = {}
        date = per_date_probe(fit, val, enc, k=k)
        row["date_linear"], row["date_knn"] = date["linear"], date["knn"]
        for pooling in poolings:
            tag = f"series_{pooling}"
            ftr = series_features(xs_fit, enc, pooling=pooling)
            fva = series_features(xs_val, enc, pooling=pooling)
            row[f"{tag}_linear"] = linear_probe(ftr, ys_fit, fva, ys_val, metric="balanced")
            row[f"{tag}_knn"] = knn_accuracy(ftr, ys_fit, fva, ys_val, k=k, metric="balanced")
        report[name] = row
        logger.info("%s: %s", name, row)
    return report


def random_encoder(x_train: np.ndarray, *, seed: int = 0, **resmlp_kwargs: int) -> NormalizedEncoder:
    """A randomly initialised ResMLP (paper size unless told) with statistics of ``x_train``, frozen.

    BatchNorm running statistics are left at their initial values, as an untrained network has them.
    """
    torch.manual_seed(seed)
    stats = compute_norm_stats(x_train)
    enc = ResMLP(int(x_train.shape[-1]), **resmlp_kwargs)
    return NormalizedEncoder(Normalize(stats["mean"], stats["std"]), enc, frozen=True)


def probe_report(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    encoders: dict[str, nn.Module | None],
    *,
    pooling: Pooling = "flatten",
    k: int = 10,
) -> dict[str, dict[str, float]]:
    """Linear-probe and k-NN accuracies for each named encoder (``None`` = raw bands)."""
    report = {}
    for name, enc in encoders.items():
        ftr = series_features(x_train, enc, pooling=pooling)
        fva = series_features(x_val, enc, pooling=pooling)
        report[name] = {
            "linear": linear_probe(ftr, y_train, fva, y_val),
            "knn": knn_accuracy(ftr, y_train, fva, y_val, k=k),
        }
        logger.info("%s: %s", name, report[name])
    return report


class OnDevice(nn.Module):
    """A frozen encoder run on ``device``: CPU inputs in, CPU embeddings out."""

    def __init__(self, module: nn.Module, device: torch.device) -> None:
        super().__init__()
        self.module = module.to(device)
        self.device = device

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Embed ``x`` on the device and return the result on the CPU."""
        return self.module(x.to(self.device)).cpu()


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m training.probe``: an alias of ``cropmap evaluate probe``; returns the exit status.

    Its old ``--json OUT`` (the file it wrote) is ``-o OUT`` there.
    """
    from cropmap.cli_common import json_path_as_output
    from training.evaluate.cli import probe as command
    from training.evaluate.cli import run_alias

    return run_alias(command, argv, prog_name="python -m training.probe", rewrite=json_path_as_output)


if __name__ == "__main__":
    raise SystemExit(main())
