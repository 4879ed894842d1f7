"""Training one base model: the epoch loop of a run, encoding through a frozen front, and prediction.

Every run seeds itself from its own key (:func:`run_seed`), so a run gives the same model wherever and in whatever
order it executes (sequentially, or as a task on a cluster worker with the same thread count).
"""

from __future__ import annotations

import math
import zlib
from typing import Any, Literal

import torch
from torch import nn

from training.downstream.baselines import score
from training.downstream.recipe import RECIPES, Recipe, augment_batch, class_weights, correct_prior, lr_lambda
from training.evaluate.run import confusion_matrix, metrics_from_confusion

__all__ = ["encode", "predict", "predict_logits", "run_seed", "train_run"]


def _n_classes(model: nn.Module) -> int:
    """The number of classes a base model predicts (its ``n_classes`` attribute)."""
    n = model.n_classes
    if not isinstance(n, int):
        raise TypeError(f"{type(model).__name__}.n_classes is {n!r}; expected an int")
    return n


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
    recipe: Recipe | None = None,
    x_sel: torch.Tensor | None = None,
    y_sel: torch.Tensor | None = None,
    precision: Literal["fp32", "bf16"] = "fp32",
) -> dict[str, Any]:
    """Train a base model with a :class:`~training.downstream.recipe.Recipe`, then score it on the validation set.

    With ``recipe.prior_correction`` the head's bias is corrected after training (see
    :func:`~training.downstream.recipe.correct_prior`); the final scores include it, the per-epoch ``curve`` does not.

    Args:
        model: Base model ``(B, T, D) -> (B, K)``.
        x_train: ``(N, T, C)`` inputs: features already (``front`` None) or raw values for ``front``.
        y_train: ``(N,)`` int64 labels.
        x_val: ``(M, T, C)`` validation inputs, like ``x_train``; never used for any training decision.
        y_val: ``(M,)`` labels.
        lr: Peak learning rate.
        epochs: Number of epochs asked for (the recipe may raise it to reach its ``min_steps``).
        batch_size: Mini-batch size asked for (the recipe may cap it for small training sets).
        seed: Seeds the batch order and the augmentation.
        device: ``cpu`` or ``cuda``.
        front: Optional frozen module applied per batch under ``no_grad`` (kept in eval mode).
        eval_every: Validation accuracy is recorded every this many epochs and after the last one.
        progress: Optional tqdm bar updated once per epoch.
        recipe: How to train (default: the papers' protocol, ``RECIPES["papers"]``).
        x_sel: Selection inputs carved out of the training set: the model of the epoch with the best
            selection macro F1 (ties: lower selection loss) is kept, and ``recipe.patience`` stops early.
        y_sel: Selection labels.
        precision: ``bf16`` trains under bf16 autocast (the loss stays fp32); ``fp32`` does not.

    Returns:
        ``val_accuracy``, ``macro_f1``, ``kappa``, ``confusion`` (list of lists), ``per_class_recall``,
        ``curve`` (``[epoch, val accuracy]`` pairs), ``final_loss``, ``epochs_run``, ``best_epoch``,
        ``steps``, ``effective_batch_size`` and ``selection_f1`` (None without a selection split).
    """
    import copy

    from training.pretrain.loop import autocast_context

    recipe = recipe or RECIPES["papers"]
    if (x_sel is None) != (y_sel is None):
        raise ValueError("give both x_sel and y_sel, or neither")
    model.to(device)
    if front is not None:
        front.to(device).eval()
    n_classes = _n_classes(model)
    bs = recipe.batch_size(batch_size, len(x_train))
    n_epochs = recipe.epochs(epochs, len(x_train), bs)
    if recipe.optimizer == "adamw":
        optimizer: torch.optim.Optimizer = torch.optim.AdamW(
            model.parameters(), lr=lr, weight_decay=recipe.weight_decay
        )
    else:
        optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=recipe.weight_decay)
    steps_per_epoch = math.ceil(len(x_train) / bs)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(recipe, steps_per_epoch * n_epochs))
    gen = torch.Generator().manual_seed(seed)
    weight = class_weights(y_train, n_classes).to(device) if recipe.balanced else None
    loss_fn = nn.CrossEntropyLoss(weight=weight, label_smoothing=recipe.label_smoothing)
    # Augmentation acts on what x_train holds: model inputs, or raw values before a per-batch front.
    scale = (
        x_train.reshape(-1, x_train.shape[-1]).float().std(dim=0).clamp(min=1e-6) if recipe.augments else None
    )
    curve: list[list[float]] = []
    loss_sum, loss_n = 0.0, 0
    best: tuple[float, float] | None = None
    best_state: dict[str, torch.Tensor] | None = None
    best_epoch, since_best, steps, epoch = n_epochs, 0, 0, 0
    for epoch in range(1, n_epochs + 1):
        model.train()
        if front is not None:
            front.eval()
        order = torch.randperm(len(x_train), generator=gen)
        loss_acc = torch.zeros((), device=device)
        loss_n = 0
        for start in range(0, len(order), bs):
            idx = order[start : start + bs]
            xb, yb = x_train[idx].to(device, non_blocking=True), y_train[idx].to(device, non_blocking=True)
            if scale is not None:
                xb = augment_batch(xb, recipe, scale, gen)
            if front is not None:
                with torch.no_grad():
                    xb = front(xb)
            with autocast_context(torch.device(device), precision):
                logits = model(xb)
            loss = loss_fn(logits.float(), yb)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            loss_acc += loss.detach() * len(idx)
            loss_n += len(idx)
            steps += 1
        loss_sum = float(loss_acc)
        if epoch % eval_every == 0 or epoch == n_epochs:
            pred = predict(model, x_val, batch_size=max(bs, 512), device=device, front=front)
            curve.append([epoch, float((pred == y_val).float().mean())])
        if x_sel is not None and y_sel is not None:
            sel_score = _selection_score(model, x_sel, y_sel, n_classes, device=device, front=front)
            if best is None or sel_score > best:
                best, best_epoch, since_best = sel_score, epoch, 0
                best_state = copy.deepcopy(model.state_dict())
            else:
                since_best += 1
        if progress is not None:
            progress.set_postfix(
                loss=f"{loss_sum / max(loss_n, 1):.3f}", acc=f"{curve[-1][1]:.3f}" if curve else "-"
            )
            progress.update(1)
        if recipe.patience and since_best >= recipe.patience:
            break
    epochs_run = epoch
    if best_state is not None:
        model.load_state_dict(best_state)
    if recipe.prior_correction:
        correct_prior(model, y_train, recipe.prior_correction)
    pred = predict(model, x_val, batch_size=max(bs, 512), device=device, front=front)
    return {
        **score(y_val.numpy(), pred.numpy(), n_classes),
        "curve": curve,
        "final_loss": loss_sum / max(loss_n, 1),
        "epochs_run": epochs_run,
        "best_epoch": best_epoch if best_state is not None else epochs_run,
        "steps": steps,
        "effective_batch_size": bs,
        "selection_f1": None if best is None else best[0],
    }


@torch.no_grad()
def _selection_score(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    n_classes: int,
    *,
    device: str,
    front: nn.Module | None,
) -> tuple[float, float]:
    """(macro F1, -mean cross-entropy) on the selection split: larger is better."""
    model.eval()
    logits = predict_logits(model, x, batch_size=512, device=device, front=front)
    nll = float(nn.functional.cross_entropy(logits, y))
    cm = confusion_matrix(y.numpy(), logits.argmax(-1).numpy(), n_classes)
    return metrics_from_confusion(cm).macro_f1, -nll


@torch.no_grad()
def predict_logits(
    model: nn.Module, x: torch.Tensor, *, batch_size: int, device: str = "cpu", front: nn.Module | None = None
) -> torch.Tensor:
    """Logits ``(M, K)`` (float32, on CPU) for ``(M, T, C)`` inputs, in eval mode."""
    model.eval()
    out = []
    for start in range(0, len(x), batch_size):
        xb = x[start : start + batch_size].to(device)
        if front is not None:
            xb = front(xb)
        out.append(model(xb).float().cpu())
    return torch.cat(out) if out else torch.empty(0, _n_classes(model))


def predict(
    model: nn.Module, x: torch.Tensor, *, batch_size: int, device: str = "cpu", front: nn.Module | None = None
) -> torch.Tensor:
    """Class predictions ``(M,)`` for ``(M, T, C)`` inputs, in eval mode."""
    return predict_logits(model, x, batch_size=batch_size, device=device, front=front).argmax(dim=-1)
