"""Data-parallel pre-training: several processes (``torchrun``) share each batch of one pre-training run.

``torchrun --nproc-per-node N -m training.pretrain.run ...`` (one node) or ``srun torchrun --nnodes M ...``
(docs/scaling.md) starts ``N x M`` ranks; :func:`init_from_env` joins them (NCCL on GPUs, gloo on CPUs). Every
rank computes exactly what one process computes with the same configuration:

* ``batch_size`` is the **global** batch: every rank draws the same permutation and the same SCARF views of the
  whole batch (same seed, same generator; SCARF takes replacement values from other rows of the batch, so views
  need the whole batch), then encodes and projects only its own slice of rows (:func:`rank_rows`), which is
  where the compute is;
* the projections of all ranks are gathered and every rank evaluates its own anchors' share of the contrastive
  loss (against the negatives of every rank, as in one process); one all-reduce adds up the shares' gradients
  with respect to every projection; each rank back-propagates its rows' part of that gradient, scaled by the
  number of ranks, and :class:`torch.nn.parallel.DistributedDataParallel` averages the parameter gradients,
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
from typing import TYPE_CHECKING, Any, TypedDict

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


def stopping() -> None:
    """This rank is ending with its error being reported: torchrun's SIGTERM, which it sends every rank when one has
    failed and which may arrive now, changes nothing any more and is ignored, rather than raised as a second error
    (with its traceback) in the middle of the report or of the process group's teardown."""
    import signal

    signal.signal(signal.SIGTERM, signal.SIG_IGN)


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
    :class:`torch.nn.SyncBatchNorm` needs a GPU. One collective forward (every rank's count, mean and sum of
    squared deviations, merged exactly) and one backward (the two gradient sums), see :class:`_GlobalBatchNorm`.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and _distributed()):
            return super().forward(x)
        return joint_batchnorm([(self, x)])[0]


def _distributed() -> bool:
    return tdist.is_available() and tdist.is_initialized() and tdist.get_world_size() > 1


def joint_batchnorm(pairs: list[tuple[nn.Module, torch.Tensor]]) -> list[torch.Tensor]:
    """Global-batch BatchNorm of several ``(layer, rows)`` pairs with one collective forward and one backward.

    Each pair is normalised with the statistics of its own rows on every rank, exactly as
    :class:`GlobalBatchNorm1d` alone; only the communication is shared (:func:`lockstep_forward` passes the
    same layer of two encoders, or of one encoder's two views, together). Running statistics are updated in
    the order of ``pairs``.
    """
    layers: list[nn.BatchNorm1d] = []
    for layer, x in pairs:
        if not isinstance(layer, nn.BatchNorm1d) or not layer.affine:
            raise TypeError(f"global-batch BatchNorm takes affine BatchNorm1d layers, got {layer!r}")
        if x.ndim != 2:
            raise ValueError(f"GlobalBatchNorm1d expects (N, C) rows, got shape {tuple(x.shape)}")
        layers.append(layer)
    k = len(pairs)
    eps = [float(layer.eps) for layer in layers]
    out = _JointGlobalBatchNorm.apply(
        eps,
        *(x for _, x in pairs),
        *(layer.weight for layer in layers),
        *(layer.bias for layer in layers),
    )
    ys, means, variances, counts = out[:k], out[k : 2 * k], out[2 * k : 3 * k], out[3 * k :]
    for layer, mean, var, n in zip(layers, means, variances, counts, strict=True):
        tracked = layer.num_batches_tracked
        if (
            layer.track_running_stats
            and layer.running_mean is not None
            and layer.running_var is not None
            and tracked is not None
        ):
            with torch.no_grad():
                tracked.add_(1)
                m = layer.momentum if layer.momentum is not None else 1.0 / float(tracked)
                layer.running_mean.mul_(1 - m).add_(mean, alpha=m)
                layer.running_var.mul_(1 - m).add_(var * (n / (n - 1)), alpha=m)
    return list(ys)


def sum_over_ranks(x: torch.Tensor) -> torch.Tensor:
    """The sum of ``x`` over the ranks, added up in rank order (the same bits on every rank).

    An all-gather and a local sum: for the small tensors of the BatchNorm statistics gloo's all-gather is about
    twice as fast as its all-reduce (measured on loopback: 0.7-0.9 ms against 1.6-1.9 ms).
    """
    return _gathered(x).sum(0)


def _gathered(x: torch.Tensor) -> torch.Tensor:
    """``(world, *x.shape)``: every rank's ``x``, in rank order."""
    parts = [torch.empty_like(x) for _ in range(tdist.get_world_size())]
    tdist.all_gather(parts, x.contiguous())
    return torch.stack(parts)


class _JointGlobalBatchNorm(torch.autograd.Function):
    """Batch normalisation of ``k`` row tensors ``(N_i, C_i)``, each with the statistics of every rank's rows.

    Forward: for every tensor, every rank's row count, mean and sum of squared deviations from its mean, in one
    all-gather, merged per tensor (Chan et al.'s pairwise update, as stable as the two-pass variance of one
    process). Backward: the global sums of ``dy`` and ``dy * x_hat`` of every tensor in one all-gather; the
    gradients of the affine parameters are this rank's (DDP averages them like any other parameter's).
    Arguments after ``eps``: the ``k`` inputs, then their ``k`` weights, then their ``k`` biases. Returns the
    ``k`` outputs, then the ``k`` means, variances (biased) and global row counts.
    """

    @staticmethod
    def forward(ctx: Any, eps: list[float], *args: torch.Tensor) -> tuple[torch.Tensor, ...]:
        k = len(eps)
        xs, weights, biases = args[:k], args[k : 2 * k], args[2 * k :]
        xfs = [x.float() for x in xs]
        local_means = [xf.mean(0) for xf in xfs]
        local = torch.cat(
            [
                torch.cat([xf.new_tensor([xf.shape[0]]), mu, ((xf - mu) ** 2).sum(0)])
                for xf, mu in zip(xfs, local_means, strict=True)
            ]
        )
        stats = _gathered(local)  # (world, sum of 1 + 2 C_i)
        ys, x_hats, invstds, means, variances, counts = [], [], [], [], [], []
        start = 0
        for xf, w, b, e in zip(xfs, weights, biases, eps, strict=True):
            c = xf.shape[1]
            part = stats[:, start : start + 1 + 2 * c]
            start += 1 + 2 * c
            cnt, mus, m2 = part[:, :1], part[:, 1 : 1 + c], part[:, 1 + c :]
            n = cnt.sum()
            mean = (cnt * mus).sum(0) / n
            var = (m2.sum(0) + (cnt * (mus - mean) ** 2).sum(0)) / n
            invstd = torch.rsqrt(var + e)
            x_hat = (xf - mean) * invstd
            ys.append(x_hat * w.float() + b.float())
            x_hats.append(x_hat)
            invstds.append(invstd)
            means.append(mean)
            variances.append(var)
            counts.append(n)
        ctx.save_for_backward(*x_hats, *invstds, *weights)
        ctx.k = k
        ctx.counts = counts
        ctx.in_dtypes = [x.dtype for x in xs]
        ctx.mark_non_differentiable(*means, *variances, *counts)
        return (*(y.to(x.dtype) for y, x in zip(ys, xs, strict=True)), *means, *variances, *counts)

    @staticmethod
    def backward(ctx: Any, *grads: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        k = ctx.k
        saved = ctx.saved_tensors
        x_hats, invstds, weights = saved[:k], saved[k : 2 * k], saved[2 * k :]
        dys = [g.float() for g in grads[:k]]
        sums_dy = [dy.sum(0) for dy in dys]
        sums_dy_xhat = [(dy * xh).sum(0) for dy, xh in zip(dys, x_hats, strict=True)]
        total = sum_over_ranks(
            torch.cat([v for pair in zip(sums_dy, sums_dy_xhat, strict=True) for v in pair])
        )
        dxs = []
        start = 0
        for dy, xh, invstd, w, n, dtype in zip(
            dys, x_hats, invstds, weights, ctx.counts, ctx.in_dtypes, strict=True
        ):
            c = dy.shape[1]
            s_dy, s_dy_xhat = total[start : start + c], total[start + c : start + 2 * c]
            start += 2 * c
            dxs.append((invstd * w.float() * (dy - s_dy / n - xh * (s_dy_xhat / n))).to(dtype))
        return (None, *dxs, *sums_dy_xhat, *sums_dy)


def lockstep_forward(
    model: ContrastiveModel, a: torch.Tensor, b: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The two views' projections with the two ResMLP encoders (or one encoder's two views) run layer by layer
    together, so that each pair of corresponding BatchNorm layers shares one collective each way.

    Every view is computed exactly as :meth:`ContrastiveModel.forward` computes it (its own BatchNorm statistics);
    only the communication is merged, which halves the synchronisations per step. ``None`` when the encoders are
    not two ResMLPs of the same depth (time-wise encoders have no BatchNorm): the caller runs the plain forward.
    """
    from training.models.encoder import ResMLP

    second = model.s2_encoder if model.mode == "unimodal" else model.ps_encoder
    second_proj = model.s2_projector if model.mode == "unimodal" else model.ps_projector
    if second is None or second_proj is None:
        return None
    encoders = (model.s2_encoder, second)
    res = [e.encoder for e in encoders]
    if not (isinstance(res[0], ResMLP) and isinstance(res[1], ResMLP)) or len(res[0].blocks) != len(
        res[1].blocks
    ):
        return None
    stacks: list[ResMLP] = [res[0], res[1]]
    hs = [
        net.stem(enc.normalize(x).reshape(-1, net.in_dim))
        for net, enc, x in zip(stacks, encoders, (a, b), strict=True)
    ]
    for k in range(len(stacks[0].blocks)):
        fs: list[nn.Sequential] = [net.blocks[k].f for net in stacks]  # type: ignore[misc]
        ys = joint_batchnorm([(fs[0][0], hs[0]), (fs[1][0], hs[1])])
        hs = [h + f[1:](y) for h, f, y in zip(hs, fs, ys, strict=True)]
    heads = [net.head for net in stacks]
    ys = joint_batchnorm([(heads[0][0], hs[0]), (heads[1][0], hs[1])])
    z = [head[1:](y) for head, y in zip(heads, ys, strict=True)]
    return model.s2_projector(z[0]), second_proj(z[1])


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
    evaluates its rows' share of the loss (its anchors against every rank's samples); one all-reduce sums the
    shares' gradients with respect to all projections (and the shares themselves, the loss). Each rank
    back-propagates ``world x`` the gradient of its rows' projections, and DDP averages the parameter gradients.
    """
    from training.pretrain.loop import precision_context

    model: ContrastiveModel = ddp.module
    optimizer.zero_grad(set_to_none=True)
    a, b = model.views(s2, ps, cfg, generator)
    rows = rank_rows(a.shape[0], ranks)
    with precision_context(a.device, precision):
        z_a, z_b = ddp(a[rows], b[rows])
    both = gather_rows(torch.cat([z_a, z_b], dim=1), ranks, a.shape[0]).float()  # one collective for the two
    full_a = both[:, : z_a.shape[1]].contiguous().requires_grad_()
    full_b = both[:, z_a.shape[1] :].contiguous().requires_grad_()
    share = model.criterion(full_a, full_b, cfg, rows=rows)
    g_a, g_b = torch.autograd.grad(share, [full_a, full_b])
    # The loss's gradient with respect to every projection is the sum of the ranks' shares' gradients; one
    # all-reduce carries both of them and the loss itself.
    flat = torch.cat([g_a.reshape(-1), g_b.reshape(-1), share.detach().reshape(1)])
    tdist.all_reduce(flat)
    size = g_a.numel()
    g_a = flat[:size].view_as(g_a)
    g_b = flat[size : 2 * size].view_as(g_b)
    torch.autograd.backward(
        [z_a, z_b], [(g_a[rows] * ranks.world).to(z_a.dtype), (g_b[rows] * ranks.world).to(z_b.dtype)]
    )
    optimizer.step()
    return float(flat[-1])
