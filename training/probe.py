"""Probes of frozen representations: a linear (logistic-regression) probe and k-NN, in torch.

The probes answer "does pre-training help?" cheaply: the same probe is fitted on raw bands, on a
randomly initialised encoder and on pre-trained encoders, and the validation accuracies compared.
Series features: the frozen encoder is applied to every stamp ``(N, T, C) -> (N, T, D)`` and the
stamps are concatenated (``"flatten"``, the information a downstream model sees) or averaged
(``"mean"``).

``python -m training.probe --data SIM_DIR --encoder bimodal=run/encoder.pt [...]`` prints the
accuracies of raw bands, a random encoder and each given encoder on downstream task 1 of a
simulated (or DENETHOR-layout) scene pair.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from training.models.encoder import (
    Normalize,
    NormalizedEncoder,
    ResMLP,
    compute_norm_stats,
    load_frozen_encoder,
)

logger = logging.getLogger(__name__)

Pooling = Literal["flatten", "mean"]


@torch.no_grad()
def series_features(
    x: np.ndarray | torch.Tensor, encoder: nn.Module | None = None, *, pooling: Pooling = "flatten", batch_size: int = 2048
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
) -> float:
    """Validation accuracy of a multinomial logistic regression on standardised features.

    Fitted full-batch with L-BFGS on cross-entropy plus ``weight_decay * ||W||^2``.

    Args:
        x_train: ``(N, F)`` training features.
        y_train: ``(N,)`` integer labels.
        x_val: ``(M, F)`` validation features.
        y_val: ``(M,)`` integer labels.
        weight_decay: L2 penalty on the weights.
        max_iter: L-BFGS iterations.
        seed: Seed of the (zero-mean) initialisation.

    Returns:
        Accuracy in ``[0, 1]``.
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
        return float(((xva @ w + b).argmax(dim=1) == yva).float().mean())


@torch.no_grad()
def knn_accuracy(
    x_train: torch.Tensor,
    y_train: torch.Tensor | np.ndarray,
    x_val: torch.Tensor,
    y_val: torch.Tensor | np.ndarray,
    *,
    k: int = 10,
) -> float:
    """Validation accuracy of a cosine k-NN majority vote on standardised features."""
    ytr = torch.as_tensor(np.asarray(y_train), dtype=torch.long)
    yva = torch.as_tensor(np.asarray(y_val), dtype=torch.long)
    xtr, xva = _standardize(x_train.float(), x_val.float())
    xtr, xva = F.normalize(xtr, dim=1), F.normalize(xva, dim=1)
    n_classes = int(max(ytr.max(), yva.max())) + 1
    correct = 0
    for i in range(0, len(xva), 1024):
        sims = xva[i : i + 1024] @ xtr.T
        nn_idx = sims.topk(min(k, len(xtr)), dim=1).indices
        votes = F.one_hot(ytr[nn_idx], n_classes).sum(dim=1)
        correct += int((votes.argmax(dim=1) == yva[i : i + 1024]).sum())
    return correct / len(xva)


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


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: probe raw bands, a random encoder and pre-trained encoders on task 1."""
    parser = argparse.ArgumentParser(prog="python -m training.probe", description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="folder with scene_a/ and scene_b/")
    parser.add_argument("--encoder", action="append", default=[], metavar="NAME=PATH", help="encoder checkpoint")
    parser.add_argument("--n-train", type=int, default=300, help="training pixels per class")
    parser.add_argument("--n-val", type=int, default=100, help="validation pixels per class")
    parser.add_argument("--pooling", choices=["flatten", "mean"], default="flatten")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write the report here")
    args = parser.parse_args(argv)
    from training.data.datasets import task_sets

    sets = task_sets(args.data, 1, n_train=args.n_train, n_val=args.n_val, seed=args.seed)
    encoders: dict[str, nn.Module | None] = {"raw bands": None, "random encoder": random_encoder(sets.x_train)}
    for item in args.encoder:
        name, sep, path = item.partition("=")
        if not sep:
            parser.error(f"--encoder expects NAME=PATH, got {item!r}")
        encoders[name] = load_frozen_encoder(path)
    report = probe_report(sets.x_train, sets.y_train, sets.x_val, sets.y_val, encoders, pooling=args.pooling)
    print(f"{'features':<20} {'linear':>8} {'k-NN':>8}")
    for name, acc in report.items():
        print(f"{name:<20} {acc['linear']:8.3f} {acc['knn']:8.3f}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
