"""Contrastive pre-training: ``cropmap train pretrain`` (alias ``python -m training.pretrain``).

Uni-modal (SCARF + NT-Xent on Sentinel-2) or bi-modal (Sentinel-2 vs PlanetScope, journal Eq. 1),
point-wise (ResMLP per stamp) or time-wise (transformer per series). Reads a plain ``.npz``
with arrays ``s2`` (and ``ps`` for bi-modal), a pairs folder written by ``python -m training.pairs``
(memory-mapped), or a DENETHOR-layout scene through :mod:`training.data.datasets`. Writes into ``--out``:

* ``encoder.pt``: the final S2 encoder (``"encoder"`` checkpoint, read by
  :func:`training.models.encoder.load_frozen_encoder`);
* ``checkpoints/last.pt``: the resumable state (``"pretrain_state"``), every ``checkpoint_every`` epochs;
* ``loss_log.jsonl``: one JSON line per ``log_every`` steps and per epoch;
* ``config.json``: the resolved configuration.

``--fast`` runs :class:`training.pretrain.fastpath.FastStep` (same losses, no host synchronisation inside an epoch,
fused Adam, optional ``--compile`` / ``--cuda-graphs``); ``--pair-cache DIR`` keeps the pairs drawn from a
scene on disk for reruns (:mod:`training.pretrain.paircache`). See docs/pretraining.md.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from cropmap.cli_common import run_command
from cropmap.errors import CropmapError, OutputExistsError
from training.checkpoint import git_revision, load_checkpoint, save_checkpoint
from training.config import ConfigError, PretrainConfig, config_from_dict, config_to_dict, load_config
from training.device import resolve_device
from training.models.encoder import compute_norm_stats, save_encoder
from training.pretrain.distributed import (
    Ranks,
    RankStopped,
    collective_error,
    distributed_step,
    global_batchnorm,
    init_from_env,
    launched,
    no_buffer_sync,
    rank_device,
    rank_rows,
    stop_on_sigterm,
    stopping,
)
from training.pretrain.fastpath import FastOptions, FastStep, make_optimizer, run_epoch
from training.pretrain.loop import (
    ContrastiveModel,
    batch_indices,
    contrastive_step,
    encoder_spec,
    precision_context,
)

logger = logging.getLogger(__name__)

LOG_NAME = "loss_log.jsonl"
STATE_NAME = "checkpoints/last.pt"
ENCODER_NAME = "encoder.pt"
# Keys that may differ between the original run and a resumed one (they do not change the result).
_RESUMABLE_KEYS = {"epochs", "checkpoint_every", "log_every"}


@dataclass(frozen=True)
class PretrainArrays:
    """Pre-training pairs as raw digital numbers."""

    s2: np.ndarray
    """``(N, C)`` point-wise or ``(N, T, C)`` time-wise Sentinel-2 values."""
    ps: np.ndarray | None
    """The aligned PlanetScope values (``(N, 36)`` / ``(N, T, 36)``), ``None`` for uni-modal runs."""
    source: str
    """Where the pairs came from (for provenance)."""
    bands: tuple[str, ...] | None = None
    """S2 band names in the order of the C axis, when the source says."""


def load_pretrain_arrays(
    data: str | Path, cfg: PretrainConfig, *, pair_cache: Path | None = None
) -> PretrainArrays:
    """Read pre-training pairs from an ``.npz`` file or a DENETHOR-layout scene folder.

    Args:
        data: ``.npz`` with ``s2`` (and ``ps``; optional ``bands``), a pairs folder written by
            ``python -m training.pairs`` (``pairs.json`` inside; its ``cfg.alignment`` pairs are memory-mapped,
            never read whole), or a scene folder.
        cfg: The run configuration (mode, alignment, sampling sizes).
        pair_cache: For a scene folder: keep the drawn pairs in this folder and memory-map them on
            reruns with the same scene and drawing settings (:mod:`training.pretrain.paircache`).

    Returns:
        The validated arrays (float32).

    Raises:
        FileNotFoundError: If ``data`` does not exist.
        ValueError: For missing arrays, wrong ranks, mismatched lengths or non-finite values.
    """
    path = Path(data)
    if not path.exists():
        raise FileNotFoundError(f"pre-training data {str(path)!r} does not exist")
    if path.is_file():
        if path.suffix != ".npz":
            raise ValueError(f"pre-training data must be an .npz file or a scene folder, got {str(path)!r}")
        with np.load(path, allow_pickle=False) as npz:
            if "s2" not in npz.files:
                raise ValueError(
                    f"{str(path)!r} has arrays {npz.files}; expected 's2' (and 'ps' for bi-modal)"
                )
            s2 = np.asarray(npz["s2"], dtype=np.float32)
            ps = None
            if cfg.mode == "bimodal":
                if "ps" not in npz.files:
                    raise ValueError(
                        f"bi-modal pre-training needs an array 'ps' in {str(path)!r} (found {npz.files})"
                    )
                ps = np.asarray(npz["ps"], dtype=np.float32)
            bands = tuple(str(b) for b in npz["bands"]) if "bands" in npz.files else None
        arrays = PretrainArrays(s2=s2, ps=ps, source=str(path), bands=bands)
    elif (path / "pairs.json").is_file():
        from training.data.pairs import read_pairs

        s2, ps, manifest = read_pairs(path, cfg.alignment)
        arrays = PretrainArrays(
            s2=s2,
            ps=ps if cfg.mode == "bimodal" else None,
            source=str(path),
            bands=tuple(manifest["s2_bands"]),
        )
    else:
        arrays = _scene_arrays(path, cfg, pair_cache)
    _validate(arrays, cfg)
    return arrays


def _scene_arrays(path: Path, cfg: PretrainConfig, pair_cache: Path | None = None) -> PretrainArrays:
    """Pairs from the pre-training pool (70 % of the fields) of a DENETHOR-layout scene.

    ``path`` is a scene folder (``s2/bands.npy`` inside) or the output of ``python -m training.simulate``
    (``scene_a/`` inside, the training tile).
    """
    scene_dir = path / "scene_a" if (path / "scene_a").is_dir() and not (path / "s2").is_dir() else path

    def build() -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
        from training.data.datasets import pointwise_pairs, scene_a_splits, timewise_pairs
        from training.data.denethor import read_scene

        scene = read_scene(scene_dir)
        pool = scene_a_splits(scene, seed=cfg.data.split_seed)["pretrain"]
        if cfg.alignment == "point":
            s2, ps = pointwise_pairs(scene, pool, n_per_stamp=cfg.data.pixels_per_stamp, seed=cfg.data.seed)
        else:
            s2, ps = timewise_pairs(scene, pool, n_pixels=cfg.data.n_series, seed=cfg.data.seed)
        logger.info("%d pre-training samples from %d pool fields of %s", len(s2), len(pool), scene_dir)
        return s2, ps, {"bands": list(scene.band_names)}

    if pair_cache is None:
        s2, ps, info = build()
    else:
        from training.pretrain.paircache import cached_scene_pairs

        s2, ps, info, _ = cached_scene_pairs(scene_dir, cfg, pair_cache, build)
    return PretrainArrays(
        s2=np.asarray(s2, dtype=np.float32),
        ps=np.asarray(ps, dtype=np.float32) if cfg.mode == "bimodal" else None,
        source=str(scene_dir),
        bands=tuple(info["bands"]),
    )


def _validate(arrays: PretrainArrays, cfg: PretrainConfig) -> None:
    rank = 2 if cfg.alignment == "point" else 3
    layout = "(N, C)" if rank == 2 else "(N, T, C)"
    if arrays.s2.ndim != rank:
        raise ValueError(
            f"{cfg.alignment}-wise pre-training expects s2 {layout}, got shape {arrays.s2.shape}"
        )
    if arrays.s2.shape[0] < 2:
        raise ValueError(f"need at least 2 pre-training samples, got {arrays.s2.shape[0]}")
    if arrays.bands is not None and len(arrays.bands) != arrays.s2.shape[-1]:
        raise ValueError(f"{len(arrays.bands)} band names for {arrays.s2.shape[-1]} S2 features")
    named = {"s2": arrays.s2}
    if arrays.ps is not None:
        if arrays.ps.ndim != rank or arrays.ps.shape[:-1] != arrays.s2.shape[:-1]:
            raise ValueError(
                f"ps must align with s2 on every axis but the last: s2 {arrays.s2.shape}, ps {arrays.ps.shape}"
            )
        named["ps"] = arrays.ps
    for name, arr in named.items():
        step = max(
            1, (1 << 24) // max(1, arr[0].size)
        )  # about 16 M values at a time: memory-mapped pairs stay on disk
        bad = sum(int((~np.isfinite(arr[i : i + step])).sum()) for i in range(0, arr.shape[0], step))
        if bad:
            raise ValueError(f"{name} holds {bad} non-finite values; pre-training pairs must be gap-free")


def _config_diff(a: dict[str, Any], b: dict[str, Any], prefix: str = "") -> list[str]:
    out = []
    for key in sorted(set(a) | set(b)):
        full = f"{prefix}{key}"
        va, vb = a.get(key), b.get(key)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += _config_diff(va, vb, f"{full}.")
        elif va != vb and full not in _RESUMABLE_KEYS:
            out.append(f"{full}: checkpoint {va!r} vs now {vb!r}")
    return out


class _LossLog:
    """Append-only JSON-lines loss log; on resume, lines after the resumed epoch are dropped."""

    def __init__(self, path: Path, resume_epoch: int | None, *, write: bool = True) -> None:
        self.path = path
        self.enabled = write
        if not write:  # another rank of a data-parallel run: rank 0 keeps the log
            return
        if resume_epoch is None:
            path.write_text("")
        elif path.exists():
            kept = [
                ln for ln in path.read_text().splitlines() if ln and json.loads(ln)["epoch"] <= resume_epoch
            ]
            path.write_text("".join(f"{ln}\n" for ln in kept))

    def write(self, **record: Any) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as fh:
            fh.write(json.dumps(record) + "\n")


def pretrain(
    cfg: PretrainConfig,
    arrays: PretrainArrays,
    out: Path,
    *,
    device: torch.device,
    precision: str = "fp32",
    resume: Path | None = None,
    progress: bool = True,
    fast: FastOptions | None = None,
    ranks: Ranks | None = None,
) -> Path:
    """Run pre-training and write the outputs listed in the module docstring.

    Args:
        cfg: The run configuration.
        arrays: The pairs.
        out: Output folder.
        device: Where the pairs and the model live.
        precision: ``fp32``, ``tf32`` (CUDA) or ``bf16`` (autocast; the loss stays float32).
        resume: A ``pretrain_state`` checkpoint to continue from.
        progress: Show a progress bar.
        fast: Run the fast step (:mod:`training.pretrain.fastpath`) with these options; ``None`` = the reference
            step (:func:`training.pretrain.loop.contrastive_step`, one host read of the loss per step).
        ranks: This process's rank in a data-parallel run (:mod:`training.pretrain.distributed`, a process group
            already joined); ``None``: one process. Only rank 0 writes.

    Returns:
        The path of the final S2 encoder checkpoint.
    """
    precision_context(device, precision)  # an unknown precision or tf32 off CUDA fails before any work
    if fast is not None:
        fast.check(device)
        if ranks is not None:
            raise ValueError(
                "--fast runs one process; several ranks run the reference step (leave out --fast)"
            )
    main_rank = ranks is None or ranks.main
    out.mkdir(parents=True, exist_ok=True)
    state = None
    if resume is not None:
        state = load_checkpoint(resume, kind="pretrain_state", map_location="cpu")
        diff = _config_diff(state["config"], config_to_dict(cfg))
        if diff:
            raise ConfigError(
                f"--resume {str(resume)!r} was written with another configuration: {'; '.join(diff)}"
            )
        s2_stats, ps_stats = state["norm_stats"], state.get("ps_norm_stats")
    else:
        s2_stats = compute_norm_stats(arrays.s2, divisor=cfg.norm_divisor)
        ps_stats = compute_norm_stats(arrays.ps, divisor=cfg.norm_divisor) if arrays.ps is not None else None

    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    model = ContrastiveModel(cfg, s2_stats, ps_stats).to(device)
    if fast is None:
        optimizer: torch.optim.Optimizer = torch.optim.Adam(
            model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay
        )
    else:
        optimizer = make_optimizer(model, cfg, device, fused=fast.fused)
    generator = torch.Generator(device=device)
    generator.manual_seed(cfg.seed)
    start_epoch = 1
    if ranks is not None:
        global_batchnorm(model)
        model.lockstep = True
    if state is not None:
        model.load_state_dict(state["state_dict"])
        optimizer.load_state_dict(state["optimizer"])
        generator.set_state(state["rng"]["generator"].cpu())
        torch.set_rng_state(state["rng"]["torch"].cpu())
        if device.type == "cuda" and state["rng"].get("cuda") is not None:
            torch.cuda.set_rng_state(state["rng"]["cuda"].cpu(), device)
        start_epoch = int(state["epoch"]) + 1
        logger.info("resuming from %s after epoch %d", resume, start_epoch - 1)

    # Data stays resident on the device: one copy, batches are index gathers.
    s2 = torch.from_numpy(arrays.s2).to(device)
    ps = torch.from_numpy(arrays.ps).to(device) if arrays.ps is not None else None
    n = s2.shape[0]
    steps_per_epoch = n // min(cfg.batch_size, n)
    if cfg.steps_per_epoch is not None:
        steps_per_epoch = min(steps_per_epoch, cfg.steps_per_epoch)
    name, enc_kwargs = encoder_spec(cfg, s2.shape[-1])
    cfg_dict = config_to_dict(cfg)
    git_sha = git_revision()
    log = _LossLog(out / LOG_NAME, start_epoch - 1 if state is not None else None, write=main_rank)
    if main_rank:
        (out / "config.json").write_text(json.dumps(cfg_dict, indent=2) + "\n")
    ddp = None
    if ranks is not None:
        ddp = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None, **no_buffer_sync()
        )
        logger.info(
            "rank %d of %d: rows %s of each global batch of %d",
            ranks.rank,
            ranks.world,
            rank_rows(min(cfg.batch_size, n), ranks),
            min(cfg.batch_size, n),
        )
    logger.info(
        "%s %s-wise pre-training on %d samples (%s), %d steps/epoch, device %s, %s, %s step",
        cfg.mode,
        cfg.alignment,
        n,
        arrays.source,
        steps_per_epoch,
        device,
        precision,
        "reference" if fast is None else "fast",
    )
    step_fn = FastStep(model, optimizer, cfg, precision=precision, options=fast) if fast is not None else None

    t_start = time.perf_counter()
    for epoch in range(start_epoch, cfg.epochs + 1):
        model.train()
        t0 = time.perf_counter()
        if step_fn is not None:
            losses = _fast_epoch(step_fn, s2, ps, cfg, generator, epoch, progress)
            for step, loss in enumerate(losses, start=1):
                if step % cfg.log_every == 0:
                    log.write(epoch=epoch, step=step, loss=loss)
        else:
            losses = []
            bar = tqdm(
                batch_indices(n, cfg.batch_size, generator, device, cfg.steps_per_epoch),
                total=steps_per_epoch,
                desc=f"epoch {epoch}/{cfg.epochs}",
                disable=not progress,
                leave=False,
            )
            for step, idx in enumerate(bar, start=1):
                if ddp is not None and ranks is not None:
                    loss = distributed_step(
                        ddp,
                        optimizer,
                        s2[idx],
                        ps[idx] if ps is not None else None,
                        cfg,
                        ranks,
                        generator=generator,
                        precision=precision,
                    )
                else:
                    loss = contrastive_step(
                        model,
                        optimizer,
                        s2[idx],
                        ps[idx] if ps is not None else None,
                        cfg,
                        generator=generator,
                        precision=precision,
                    )
                if not math.isfinite(loss):
                    raise FloatingPointError(_nonfinite(loss, epoch, step))
                losses.append(loss)
                bar.set_postfix(loss=f"{loss:.4f}")
                if step % cfg.log_every == 0:
                    log.write(epoch=epoch, step=step, loss=loss)
        seconds = time.perf_counter() - t0
        pairs = len(losses) * min(cfg.batch_size, n)
        record = {
            "epoch": epoch,
            "step": None,
            "loss": float(np.mean(losses)),
            "pairs_per_s": pairs / seconds if seconds > 0 else None,
            "elapsed_s": time.perf_counter() - t_start,
        }
        log.write(**record)
        logger.info(
            "epoch %d: mean loss %.4f, %.0f pairs/s", epoch, record["loss"], record["pairs_per_s"] or 0
        )
        if main_rank and (epoch % cfg.checkpoint_every == 0 or epoch == cfg.epochs):
            save_checkpoint(
                out / STATE_NAME,
                {
                    "kind": "pretrain_state",
                    "model_name": name,
                    "model_config": enc_kwargs,
                    "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                    "norm_stats": s2_stats,
                    "ps_norm_stats": ps_stats,
                    "optimizer": optimizer.state_dict(),
                    "epoch": epoch,
                    "config": cfg_dict,
                    "rng": {
                        "generator": generator.get_state(),
                        "torch": torch.get_rng_state(),
                        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
                    },
                    "data": arrays.source,
                    "git_sha": git_sha,
                },
            )

    encoder = model.s2_encoder.encoder
    provenance: dict[str, Any] = {
        "config": cfg_dict,
        "pretrain_mode": cfg.mode,
        "alignment": cfg.alignment,
        "corruption": cfg.corruption,
        "data": arrays.source,
        "n_pairs": n,
        "epochs": cfg.epochs,
        "git_sha": git_sha,
    }
    if arrays.bands is not None:
        provenance["bands"] = list(arrays.bands)
    if arrays.ps is not None:
        # The second modality's width comes from the pairs (36 for 3 x 3 x 4 PlanetScope, 2 for S1 VV/VH).
        provenance["ps_in_dim"] = int(arrays.ps.shape[-1])
    if ranks is not None:
        provenance["ranks"] = ranks.world
    if not main_rank:
        return out / ENCODER_NAME
    return save_encoder(out / ENCODER_NAME, encoder, s2_stats, **provenance)


def _nonfinite(loss: float, epoch: int, step: int) -> str:
    return f"loss became {loss} at epoch {epoch} step {step}; lower lr or use fp32"


def _fast_epoch(
    step_fn: FastStep,
    s2: torch.Tensor,
    ps: torch.Tensor | None,
    cfg: PretrainConfig,
    generator: torch.Generator,
    epoch: int,
    progress: bool,
) -> list[float]:
    """One epoch of the fast step; the losses are read from the device once, at the end."""
    n = s2.shape[0]
    steps = n // min(cfg.batch_size, n)
    if cfg.steps_per_epoch is not None:
        steps = min(steps, cfg.steps_per_epoch)
    with tqdm(total=steps, desc=f"epoch {epoch}/{cfg.epochs}", disable=not progress, leave=False) as bar:
        losses = run_epoch(
            step_fn,
            s2,
            ps,
            batch_size=cfg.batch_size,
            generator=generator,
            max_steps=cfg.steps_per_epoch,
            progress=bar,
        ).tolist()  # the epoch's one host synchronisation
    for step, loss in enumerate(losses, start=1):
        if not math.isfinite(loss):
            raise FloatingPointError(_nonfinite(loss, epoch, step))
    return losses


class PretrainError(CropmapError, ValueError):
    """Pre-training cannot run on these data or settings, or its loss stopped being finite (one line)."""


def run_command_line(
    *,
    data: Path,
    output: Path,
    config: Path | None,
    mode: str | None,
    alignment: str | None,
    corruption: float | None,
    overrides: Sequence[str],
    resume: Path | None,
    device: str,
    precision: str,
    fast: bool,
    compile: bool,
    cuda_graphs: bool,
    pair_cache: Path | None,
    overwrite: bool,
    no_progress: bool,
) -> int:
    """The body of ``cropmap train pretrain`` (:mod:`training.pretrain.cli`); returns the exit status.

    Raises:
        click.BadParameter: A configuration or override that does not fit, a precision or fast-path option the
            device cannot run (exit 2).
        training.device.DeviceError: A CUDA device torch does not see (exit 1).
        cropmap.errors.OutputExistsError: ``output`` holds earlier outputs and neither ``--overwrite`` nor
            ``--resume`` was given.
        PretrainError: Data that cannot be pre-trained on, a loss that is not finite.
    """
    import click

    all_overrides = list(overrides)
    for key, value in (("mode", mode), ("alignment", alignment), ("corruption", corruption)):
        if value is not None:
            all_overrides.append(f"{key}={value}")
    try:
        cfg = load_config(PretrainConfig, config, all_overrides)
    except (ConfigError, ValueError) as err:
        raise click.BadParameter(" ".join(str(err).split()), param_hint="--config / --set") from err
    fast_options = None
    if fast or compile or cuda_graphs:
        fast_options = FastOptions(compile=compile, cuda_graphs=cuda_graphs)
    ranks = None
    torch_device = resolve_device(device)  # a DeviceError (exit 1, one line): the machine lacks that device
    if launched():
        if fast_options is not None:
            raise click.UsageError(
                "--fast runs one process; several ranks run the reference step (leave out --fast)"
            )
        try:
            ranks = init_from_env(torch_device)
            torch_device = rank_device(torch_device, ranks)
        except ValueError as err:
            raise click.BadParameter(str(err), param_hint="--device") from err
        stop_on_sigterm()
    try:
        precision_context(torch_device, precision)
    except ValueError as err:
        raise click.BadParameter(str(err), param_hint="--precision") from err
    if fast_options is not None:
        try:
            fast_options.check(torch_device)
        except ValueError as err:
            raise click.UsageError(str(err)) from err
    existing = [p for p in (ENCODER_NAME, LOG_NAME, STATE_NAME) if (output / p).exists()]
    if existing and resume is None and not overwrite:
        raise OutputExistsError(f"{output} already holds {existing}; pass --overwrite or --resume")
    try:
        arrays = load_pretrain_arrays(data, cfg, pair_cache=pair_cache)
        encoder_path = pretrain(
            cfg,
            arrays,
            output,
            device=torch_device,
            precision=precision,
            resume=resume,
            progress=not no_progress and (ranks is None or ranks.main),
            fast=fast_options,
            ranks=ranks,
        )
    except (ValueError, FloatingPointError) as err:
        # The data, the configuration or the run's numbers (a non-finite loss): the message names what was
        # found and what was expected.
        if isinstance(err, CropmapError):
            raise
        raise PretrainError(" ".join(str(err).split())) from err
    except (RuntimeError, RankStopped) as err:
        if ranks is None:
            raise
        stopping()
        # A collective failed (another rank died, hung past the timeout, or lost its connection), or the
        # launcher stopped this rank because another one failed.
        state = output / STATE_NAME
        again = (
            f"resume with --resume {state}"
            if state.exists()
            else "no checkpoint was written yet; start again"
        )
        why = str(err) if isinstance(err, RankStopped) else f"lost the other ranks ({collective_error(err)})"
        click.echo(f"Error: rank {ranks.rank} of {ranks.world} {why}; the run stops; {again}", err=True)
        return 143 if isinstance(err, RankStopped) else 1
    finally:
        if ranks is not None and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    if ranks is not None and not ranks.main:
        return 0
    last = json.loads((output / LOG_NAME).read_text().splitlines()[-1])
    click.echo(
        f"pre-training done: {cfg.mode} {cfg.alignment}-wise, final epoch loss {last['loss']:.4f}; "
        f"encoder -> {encoder_path}"
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m training.pretrain``: an alias of ``cropmap train pretrain``; returns the exit status."""
    from training.pretrain.cli import pretrain as command

    return run_command(command, argv, prog_name="python -m training.pretrain")


def config_from_checkpoint(path: str | Path) -> PretrainConfig:
    """The configuration stored in a ``pretrain_state`` or ``encoder`` checkpoint."""
    return config_from_dict(PretrainConfig, load_checkpoint(path)["config"])


if __name__ == "__main__":
    raise SystemExit(main())
