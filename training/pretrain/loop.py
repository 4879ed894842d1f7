"""The contrastive model and its training step, shared by ``training.pretrain.run`` and the benchmark.

:class:`ContrastiveModel` holds one :class:`~training.models.encoder.NormalizedEncoder` and one
:class:`~training.models.encoder.Projector` per modality (separate weights). Inputs are raw digital
numbers; SCARF corruption is applied to the raw values (a per-feature affine normalisation commutes
with replacing a value by another row's value of the same feature).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from training.config import PretrainConfig, config_to_dict
from training.models.encoder import Normalize, NormalizedEncoder, Projector, TimeWiseEncoder, build_encoder
from training.pretrain.augment import scarf_corrupt
from training.pretrain.losses import bimodal_loss, nt_xent

logger = logging.getLogger(__name__)

__all__ = [
    "PRECISIONS",
    "ContrastiveModel",
    "autocast_context",
    "batch_indices",
    "contrastive_step",
    "encoder_spec",
    "precision_context",
]


def encoder_spec(cfg: PretrainConfig, in_dim: int) -> tuple[str, dict[str, Any]]:
    """The encoder's registry name and builder kwargs for a run configuration and input size."""
    if cfg.alignment == "point":
        return "resmlp", {"in_dim": in_dim, **config_to_dict(cfg.encoder)}
    return "timewise", {"in_dim": in_dim, **config_to_dict(cfg.timewise)}


class ContrastiveModel(nn.Module):
    """Encoders and projectors of a uni-modal or bi-modal contrastive run.

    Args:
        cfg: The run configuration (mode, alignment, sizes).
        s2_stats: ``{"mean", "std"}`` of the S2 pool (raw digital numbers).
        ps_stats: The same for PlanetScope (bi-modal only).
    """

    def __init__(
        self,
        cfg: PretrainConfig,
        s2_stats: dict[str, list[float]],
        ps_stats: dict[str, list[float]] | None = None,
    ) -> None:
        super().__init__()
        if (cfg.mode == "bimodal") != (ps_stats is not None):
            raise ValueError(f"mode {cfg.mode!r} needs PlanetScope statistics exactly when bi-modal")
        self.mode = cfg.mode
        self.alignment = cfg.alignment
        self.s2_encoder = self._encoder(cfg, s2_stats)
        self.s2_projector = Projector(self.s2_encoder.out_dim, cfg.projector.hidden, cfg.projector.out)
        self.ps_encoder: NormalizedEncoder | None = None
        self.ps_projector: Projector | None = None
        if ps_stats is not None:
            self.ps_encoder = self._encoder(cfg, ps_stats)
            self.ps_projector = Projector(self.ps_encoder.out_dim, cfg.projector.hidden, cfg.projector.out)

    @staticmethod
    def _encoder(cfg: PretrainConfig, stats: dict[str, list[float]]) -> NormalizedEncoder:
        name, kwargs = encoder_spec(cfg, len(stats["mean"]))
        return NormalizedEncoder(Normalize(stats["mean"], stats["std"]), build_encoder(name, **kwargs))

    def _embed(self, encoder: NormalizedEncoder, x: torch.Tensor) -> torch.Tensor:
        if isinstance(encoder.encoder, TimeWiseEncoder):
            return encoder.encoder.pooled(encoder.normalize(x))  # (B, D)
        return encoder(x)  # (B, D)

    def project_s2(self, x: torch.Tensor) -> torch.Tensor:
        """S2 raw values ``(B, C)`` or ``(B, T, C)`` -> projections ``(B, P)``."""
        return self.s2_projector(self._embed(self.s2_encoder, x))

    def project_ps(self, x: torch.Tensor) -> torch.Tensor:
        """PlanetScope raw values -> projections ``(B, P)`` (bi-modal only)."""
        if self.ps_encoder is None or self.ps_projector is None:
            raise RuntimeError("project_ps needs a bi-modal model")
        return self.ps_projector(self._embed(self.ps_encoder, x))

    def views(
        self,
        s2: torch.Tensor,
        ps: torch.Tensor | None,
        cfg: PretrainConfig,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The two raw views of one batch that :meth:`forward` projects (corruption drawn here).

        Uni-modal: the clean S2 sample and its SCARF-corrupted copy. Bi-modal: the corrupted S2 sample and
        the corrupted PlanetScope sample. SCARF replaces values by other rows' values of the batch, so views
        are drawn on the whole batch, also when several processes share its projections
        (:mod:`training.pretrain.distributed`).
        """

        def corrupt(x: torch.Tensor) -> torch.Tensor:
            return scarf_corrupt(
                x,
                cfg.corruption,
                per_batch=cfg.corruption_per_batch,
                p_apply=cfg.corruption_p_apply,
                generator=generator,
            )

        if self.mode == "unimodal":
            return s2, corrupt(s2)
        if ps is None:
            raise ValueError("bi-modal loss needs the PlanetScope batch")
        return corrupt(s2), corrupt(ps)

    lockstep: bool = False
    """Data-parallel training sets this: ResMLP encoders then run the two views layer by layer together, so that
    their global-batch BatchNorm layers share collectives (:func:`training.pretrain.distributed.lockstep_forward`;
    the same numbers as the plain forward)."""

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Projections ``(B, P)`` of the two views (each view its own forward pass: BatchNorm sees one view)."""
        if self.lockstep and self.training:
            from training.pretrain.distributed import lockstep_forward

            both = lockstep_forward(self, a, b)
            if both is not None:
                return both
        if self.mode == "unimodal":
            return self.project_s2(a), self.project_s2(b)
        return self.project_s2(a), self.project_ps(b)

    def criterion(
        self, z_a: torch.Tensor, z_b: torch.Tensor, cfg: PretrainConfig, rows: slice | None = None
    ) -> torch.Tensor:
        """The contrastive loss of the two views' projections: NT-Xent (uni-modal) or journal Eq. 1 (bi-modal).

        ``rows``: only those samples' anchors, as their share of the whole batch's loss (see the losses).
        """
        if self.mode == "unimodal":
            return nt_xent(z_a, z_b, cfg.tau, rows=rows)
        return bimodal_loss(
            z_a, z_b, cfg.tau, symmetric=cfg.symmetric, include_positive=cfg.include_positive, rows=rows
        )

    def loss(
        self,
        s2: torch.Tensor,
        ps: torch.Tensor | None,
        cfg: PretrainConfig,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Contrastive loss of one batch of raw values (corruption included).

        Uni-modal: the anchor is the clean S2 sample and the positive its SCARF-corrupted copy
        (NT-Xent). Bi-modal: both modalities are corrupted, then journal Eq. 1.
        """
        z_a, z_b = self(*self.views(s2, ps, cfg, generator))
        return self.criterion(z_a, z_b, cfg)


PRECISIONS = ("fp32", "tf32", "bf16")
"""``fp32``: plain float32. ``tf32``: float32 storage, TF32 matrix multiplies (CUDA). ``bf16``: autocast."""


def precision_context(device: torch.device, precision: str) -> contextlib.AbstractContextManager[Any]:
    """The numeric mode of a step: nothing (``fp32``), TF32 matrix multiplies (``tf32``, CUDA only) or
    bf16 autocast (``bf16``; the contrastive losses still compute in float32).

    Raises:
        ValueError: For an unknown precision, or ``tf32`` off CUDA.
    """
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    if precision == "tf32":
        if device.type != "cuda":
            raise ValueError(f"precision tf32 is a CUDA setting; the run is on {device} (use fp32 or bf16)")
        return _tf32()
    raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")


autocast_context = precision_context
"""The former name of :func:`precision_context`."""


@contextlib.contextmanager
def _tf32() -> Iterator[None]:
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn


def contrastive_step(
    model: ContrastiveModel,
    optimizer: torch.optim.Optimizer,
    s2: torch.Tensor,
    ps: torch.Tensor | None,
    cfg: PretrainConfig,
    *,
    generator: torch.Generator | None = None,
    precision: str = "fp32",
) -> float:
    """One optimisation step (forward, backward, optimizer step); returns the loss value."""
    optimizer.zero_grad(set_to_none=True)
    with precision_context(s2.device, precision):
        loss = model.loss(s2, ps, cfg, generator)
    loss.backward()
    optimizer.step()
    return float(loss.detach())


def batch_indices(
    n: int, batch_size: int, generator: torch.Generator, device: torch.device, max_steps: int | None = None
) -> Iterator[torch.Tensor]:
    """Shuffled index batches for one epoch; the last incomplete batch is dropped when ``n > batch_size``.

    A set smaller than one batch gives a single batch of all ``n`` samples.
    """
    perm = torch.randperm(n, generator=generator, device=device)
    size = min(batch_size, n)
    steps = n // size
    if max_steps is not None:
        steps = min(steps, max_steps)
    for k in range(steps):
        yield perm[k * size : (k + 1) * size]
