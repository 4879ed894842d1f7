"""Data-parallel pre-training: several processes (``torchrun``) share each batch of one pre-training run.

``torchrun --nproc-per-node N -m training.pretrain.run ...`` (one node) or ``srun torchrun --nnodes M ...``
(docs/scaling.md) starts ``N x M`` ranks; :func:`init_from_env` joins them (NCCL on GPUs, gloo on CPUs). Every
rank computes exactly what one process computes with the same configuration:

* ``batch_size`` is the **global** batch: every rank draws the same permutation and the same SCARF views of the
  whole batch (same seed, same generator; SCARF takes replacement values from other rows of the batch, so views
  need the whole batch), then encodes and projects only its own slice of rows (:func:`rank_rows`), which is
  where the compute is;
* the projections of all ranks are gathered and every rank evaluates the contrastive loss of the whole batch
  (negatives from every rank, as in one process); each rank back-propagates its slice's share of that loss,
  scaled by the number of ranks, and :class:`torch.nn.parallel.DistributedDataParallel` averages the gradients,
  which gives the single-process gradient;
* BatchNorm layers normalise with the statistics of the whole batch (:class:`GlobalBatchNorm1d`, gradients
  through the statistics included), so they see what one process sees;
* the learning rate is the configuration's, unchanged: the global batch does not change with the number of
  ranks, so neither does the learning-rate rule.

Losses therefore equal the single-process run's up to the order of floating-point sums (tests compare them with a
stated tolerance). Dropout masks are drawn by each rank for its own rows (the pre-training configs use none).
Rank 0 alone writes logs, checkpoints and the encoder; a resumed run restarts every rank from rank 0's
``pretrain_state.pt``. A rank that dies makes the others' next collective fail (or time out after
:data:`TIMEOUT_S`): they stop with one line, and the run resumes from its last checkpoint.
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypedDict

import torch
import torch.distributed as tdist
from torch import nn

if TYPE_CHECKING:
    from training.config import PretrainConfig
    from training.pretrain.loop import ContrastiveModel

TIMEOUT_S = 600
"""A collective that waits this long for another rank ends the run (a hung or unreachable rank)."""


@dataclass(frozen=True)
class Ranks:
    """This process's place in a data-parallel run."""

    rank: int
    world: int
    local_rank: int

    @property
    def main(self) -> bool:
        """Whether this rank writes the run's outputs."""
        return self.rank == 0


class RankStopped(Exception):
    """This rank was sent SIGTERM: torchrun stops every rank when one of them fails (or a job scheduler stops it)."""


def stop_on_sigterm() -> None:
    """Turn SIGTERM into :class:`RankStopped`, so that a rank stopped by torchrun says why in one line."""
    import signal

    def handler(signum: int, frame: object) -> None:
        raise RankStopped("was stopped by SIGTERM (torchrun stops every rank when one fails)")

    signal.signal(signal.SIGTERM, handler)


def collective_error(err: BaseException) -> str:
    """The gist of a failed collective's message: gloo's and NCCL's start with a source location and run on."""
    import re

    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    text = re.sub(r"^\[[^\]]*\]\s*", "", text)
    return text.split(". ")[0][:160]


def launched() -> bool:
    """Whether this process was started by ``torchrun`` (or another launcher that sets ``WORLD_SIZE`` > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_from_env(device: torch.device) -> Ranks:
    """Join the run described by torchrun's environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_*``).

    NCCL for CUDA devices, gloo otherwise. Raises ``ValueError`` when the environment is incomplete.
    """
    missing = [k for k in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise ValueError(
            f"WORLD_SIZE is {os.environ.get('WORLD_SIZE')} but {', '.join(missing)} is not set; "
            "start several ranks with torchrun (docs/scaling.md)"
        )
    ranks = Ranks(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"]))
    backend = "nccl" if device.type == "cuda" else "gloo"
    if not tdist.is_initialized():
        tdist.init_process_group(backend, timeout=dt.timedelta(seconds=TIMEOUT_S))
    return ranks


def rank_device(device: torch.device, ranks: Ranks) -> torch.device:
    """The device of this rank: ``cuda:LOCAL_RANK`` where ``device`` is CUDA, else ``device``."""
    if device.type == "cuda":
        if device.index not in (None, 0):
            raise ValueError(f"--device {device} with several ranks: give cuda (rank r uses cuda:LOCAL_RANK)")
        if ranks.local_rank >= torch.cuda.device_count():
            raise ValueError(
                f"local rank {ranks.local_rank} has no GPU: this node has {torch.cuda.device_count()}"
            )
        return torch.device("cuda", ranks.local_rank)
    return device


def rank_rows(batch: int, ranks: Ranks) -> slice:
    """This rank's rows of a global batch of ``batch`` rows (contiguous; sizes differ by at most one)."""
    if batch < ranks.world:
        raise ValueError(f"a batch of {batch} rows cannot be shared by {ranks.world} ranks; raise batch_size")
    base, extra = divmod(batch, ranks.world)
    start = ranks.rank * base + min(ranks.rank, extra)
    return slice(start, start + base + (1 if ranks.rank < extra else 0))


def gather_rows(x: torch.Tensor, ranks: Ranks, batch: int) -> torch.Tensor:
    """The rows of every rank, in rank order (no gradient: see :func:`distributed_step`)."""
    base, extra = divmod(batch, ranks.world)
    sizes = [base + (r < extra) for r in range(ranks.world)]  # as rank_rows shares them out
    width = max(sizes)
    padded = torch.zeros((width, *x.shape[1:]), dtype=x.dtype, device=x.device)
    padded[: len(x)] = x.detach()
    parts = [torch.empty_like(padded) for _ in range(ranks.world)]
    tdist.all_gather(parts, padded)
    return torch.cat([p[:n] for p, n in zip(parts, sizes, strict=True)])


class GlobalBatchNorm1d(nn.BatchNorm1d):
    """BatchNorm over the rows of every rank: the statistics of the global batch, gradients through them.

    Same parameters and buffers as :class:`torch.nn.BatchNorm1d` (checkpoints load into either). Outside a
    process group, or in eval mode, it is exactly ``BatchNorm1d``. Works on CPU (gloo) and GPU alike, where
    :class:`torch.nn.SyncBatchNorm` needs a GPU.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (
            self.training and tdist.is_available() and tdist.is_initialized() and tdist.get_world_size() > 1
        ):
            return super().forward(x)
        if x.ndim != 2:
            raise ValueError(f"GlobalBatchNorm1d expects (N, C) rows, got shape {tuple(x.shape)}")
        xf = x.float()
        c = x.shape[1]
        # Two passes (mean, then squared deviations) as BatchNorm1d computes them: E[x^2] - E[x]^2 loses the
        # variance to cancellation once activations sit far from zero.
        first = _SumOverRanks.apply(torch.cat([xf.sum(0), xf.new_tensor([x.shape[0]])]))
        n = first[c]
        mean = first[:c] / n
        var = _SumOverRanks.apply(((xf - mean) ** 2).sum(0)) / n
        tracked = self.num_batches_tracked
        if (
            self.track_running_stats
            and self.running_mean is not None
            and self.running_var is not None
            and tracked is not None
        ):
            with torch.no_grad():
                tracked.add_(1)
                m = self.momentum if self.momentum is not None else 1.0 / float(tracked)
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                self.running_var.mul_(1 - m).add_(var.detach() * (n / (n - 1)).detach(), alpha=m)
        y = (xf - mean) / torch.sqrt(var + self.eps)
        if self.affine:
            y = y * self.weight + self.bias
        return y.to(x.dtype)


class _SumOverRanks(torch.autograd.Function):
    """``all_reduce(SUM)`` with its gradient: the gradient of a sum over ranks is the sum of the ranks' gradients."""

    @staticmethod
    def forward(ctx: object, x: torch.Tensor) -> torch.Tensor:
        out = x.clone()
        tdist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx: object, grad: torch.Tensor) -> torch.Tensor:
        out = grad.clone()
        tdist.all_reduce(out)
        return out


def global_batchnorm(module: nn.Module) -> nn.Module:
    """Make every ``BatchNorm1d`` of ``module`` a :class:`GlobalBatchNorm1d`, in place.

    The layers keep their parameter and buffer tensors (an optimizer made before still updates them).
    """
    for child in module.modules():
        if type(child) is nn.BatchNorm1d:
            child.__class__ = GlobalBatchNorm1d
    return module


class BufferSync(TypedDict, total=False):
    """The keyword of ``DistributedDataParallel`` that turns buffer broadcasting off (its name changed in torch)."""

    forward_sync_buffers: bool
    broadcast_buffers: bool


def no_buffer_sync() -> BufferSync:
    """DDP's keyword that skips broadcasting buffers before each forward (every rank computes the same ones)."""
    import inspect

    params = inspect.signature(nn.parallel.DistributedDataParallel.__init__).parameters
    return (
        {"forward_sync_buffers": False} if "forward_sync_buffers" in params else {"broadcast_buffers": False}
    )


def distributed_step(
    ddp: nn.parallel.DistributedDataParallel,
    optimizer: torch.optim.Optimizer,
    s2: torch.Tensor,
    ps: torch.Tensor | None,
    cfg: PretrainConfig,
    ranks: Ranks,
    *,
    generator: torch.Generator | None,
    precision: str = "fp32",
) -> float:
    """One optimisation step of a global batch shared by the ranks; returns the (global) loss value.

    Every rank draws the views of the whole batch, projects its rows, gathers the others' projections and
    evaluates the whole batch's loss; it back-propagates ``world x`` its rows' share (the loss's gradient with
    respect to its rows' projections), and DDP averages the parameter gradients.
    """
    from training.pretrain.loop import precision_context

    model: ContrastiveModel = ddp.module
    optimizer.zero_grad(set_to_none=True)
    a, b = model.views(s2, ps, cfg, generator)
    rows = rank_rows(a.shape[0], ranks)
    with precision_context(a.device, precision):
        z_a, z_b = ddp(a[rows], b[rows])
    full_a = gather_rows(z_a, ranks, a.shape[0]).float().requires_grad_()
    full_b = gather_rows(z_b, ranks, a.shape[0]).float().requires_grad_()
    loss = model.criterion(full_a, full_b, cfg)
    g_a, g_b = torch.autograd.grad(loss, [full_a, full_b])
    torch.autograd.backward(
        [z_a, z_b], [(g_a[rows] * ranks.world).to(z_a.dtype), (g_b[rows] * ranks.world).to(z_b.dtype)]
    )
    optimizer.step()
    return float(loss.detach())
