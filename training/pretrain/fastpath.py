"""The fast pre-training step: device-resident pairs, no host synchronisation, fused Adam, optional compile.

:class:`FastStep` computes exactly what :func:`training.pretrain.loop.contrastive_step` computes (same views from
the same random draws in the same order, same model, same loss), restructured for a GPU:

* the pair set lives on the device and batches are index gathers of a device permutation
  (:func:`run_epoch`); SCARF corruption runs on the device with the run's device generator;
* the step never reads a value back to the host: the loss stays a device tensor, :func:`run_epoch`
  writes every step's loss into a device buffer that the caller reads once per epoch (so a non-finite
  loss is found at the end of the epoch, with the step that produced it, instead of at that step);
* Adam is the fused implementation where torch has one for the device (CPU and CUDA);
* ``precision="bf16"`` runs the encoders under autocast; the contrastive losses compute in float32;
  ``"tf32"`` lets CUDA matrix multiplies use TF32 (a CUDA setting, refused on the CPU);
* ``compile=True`` compiles the projections and the loss with :func:`torch.compile` (the corruption,
  which draws from an explicit generator, stays eager); ``cuda_graphs=True`` compiles with
  ``mode="reduce-overhead"``, which replays the compiled forward and backward as CUDA graphs (CUDA only).

The same code runs on the CPU, where the tests compare its losses with the reference step's. Nothing
here imports the geospatial packages, so a GPU machine with only torch and numpy can run it
(``bench/gpu_check.py``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch

from training.config import PretrainConfig
from training.pretrain.augment import scarf_corrupt
from training.pretrain.loop import PRECISIONS, ContrastiveModel, batch_indices, precision_context
from training.pretrain.losses import bimodal_loss, nt_xent

logger = logging.getLogger(__name__)

__all__ = [
    "PRECISIONS",
    "FastOptions",
    "FastStep",
    "fused_supported",
    "make_optimizer",
    "precision_context",
    "run_epoch",
]


@dataclass(frozen=True)
class FastOptions:
    """How the fast step runs (none of these change the configuration of the run)."""

    compile: bool = False
    """Compile projections and loss with :func:`torch.compile` (``mode="default"``)."""
    cuda_graphs: bool = False
    """Compile with ``mode="reduce-overhead"`` (CUDA graphs; CUDA devices only)."""
    fused: bool = True
    """Use fused Adam (one kernel for all parameters) where torch supports it on the device."""

    def check(self, device: torch.device) -> None:
        """Refuse options the device cannot honour (one-line ValueError)."""
        if self.cuda_graphs and device.type != "cuda":
            raise ValueError(f"--cuda-graphs needs a CUDA device, the run is on {device}")


def fused_supported(device: torch.device) -> bool:
    """Whether torch has a fused Adam for float32 parameters on ``device`` (CPU and CUDA in torch >= 2.4)."""
    return device.type in ("cpu", "cuda")


def make_optimizer(
    model: torch.nn.Module, cfg: PretrainConfig, device: torch.device, *, fused: bool = True
) -> torch.optim.Adam:
    """The run's Adam, fused when asked and supported on ``device`` (else the default implementation)."""
    use_fused = fused and fused_supported(device)
    if fused and not use_fused:
        logger.info("no fused Adam for %s; using the default implementation", device)
    kwargs: dict[str, Any] = {"fused": True} if use_fused else {}
    return torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, **kwargs)


class FastStep:
    """One optimisation step of the contrastive model that returns the loss as a device tensor.

    Args:
        model: The model, already on its device.
        optimizer: Its optimizer (:func:`make_optimizer`).
        cfg: The run configuration (mode, corruption, tau, loss options).
        precision: ``fp32``, ``tf32`` or ``bf16``.
        options: Compile / CUDA graph options.
    """

    def __init__(
        self,
        model: ContrastiveModel,
        optimizer: torch.optim.Optimizer,
        cfg: PretrainConfig,
        *,
        precision: str = "fp32",
        options: FastOptions = FastOptions(),
    ) -> None:
        self.device = next(model.parameters()).device
        options.check(self.device)
        precision_context(self.device, precision)  # validates precision / device now, not at the first step
        self.model = model
        self.optimizer = optimizer
        self.cfg = cfg
        self.precision = precision
        self.options = options
        self._loss = self._views_loss
        if options.compile or options.cuda_graphs:
            mode = "reduce-overhead" if options.cuda_graphs else "default"
            self._loss = torch.compile(self._views_loss, mode=mode, dynamic=False)

    def views(
        self, s2: torch.Tensor, ps: torch.Tensor | None, generator: torch.Generator | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The two views of a batch, drawn exactly as :meth:`ContrastiveModel.loss` draws them.

        Uni-modal: (clean S2, corrupted S2). Bi-modal: (corrupted S2, corrupted PS), S2 drawn first.
        """
        cfg = self.cfg

        def corrupt(x: torch.Tensor) -> torch.Tensor:
            return scarf_corrupt(
                x,
                cfg.corruption,
                per_batch=cfg.corruption_per_batch,
                p_apply=cfg.corruption_p_apply,
                generator=generator,
            )

        if cfg.mode == "unimodal":
            return s2, corrupt(s2)
        if ps is None:
            raise ValueError("bi-modal loss needs the PlanetScope batch")
        return corrupt(s2), corrupt(ps)

    def _views_loss(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        model, cfg = self.model, self.cfg
        if cfg.mode == "unimodal":
            return nt_xent(model.project_s2(a), model.project_s2(b), cfg.tau)
        return bimodal_loss(
            model.project_s2(a),
            model.project_ps(b),
            cfg.tau,
            symmetric=cfg.symmetric,
            include_positive=cfg.include_positive,
        )

    def update(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Forward, backward and optimizer step on given views; the detached loss stays on the device."""
        if self.options.cuda_graphs:
            torch.compiler.cudagraph_mark_step_begin()
        self.optimizer.zero_grad(set_to_none=True)
        with precision_context(self.device, self.precision):
            loss = self._loss(a, b)
        loss.backward()
        self.optimizer.step()
        return loss.detach()

    def __call__(
        self, s2: torch.Tensor, ps: torch.Tensor | None, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """One step on a batch of raw values (corruption included); returns the loss as a device tensor."""
        return self.update(*self.views(s2, ps, generator))


def run_epoch(
    step: FastStep,
    s2: torch.Tensor,
    ps: torch.Tensor | None,
    *,
    batch_size: int,
    generator: torch.Generator,
    max_steps: int | None = None,
    progress: Any | None = None,
) -> torch.Tensor:
    """One epoch over device-resident pairs; returns the per-step losses as a device tensor ``(steps,)``.

    The permutation is drawn on the device with ``generator`` (:func:`training.pretrain.loop.batch_indices`, so
    the batches are those of the reference loop), each batch is an index gather, and each step's loss is
    written into a device buffer: nothing in the loop waits for the device. Read the result once
    (``.tolist()``) at the end of the epoch.
    """
    n = s2.shape[0]
    size = min(batch_size, n)
    steps = n // size if max_steps is None else min(n // size, max_steps)
    losses = torch.empty(steps, dtype=torch.float32, device=s2.device)
    for k, idx in enumerate(batch_indices(n, batch_size, generator, s2.device, max_steps)):
        losses[k] = step(s2[idx], ps[idx] if ps is not None else None, generator)
        if progress is not None:
            progress.update(1)
    return losses
