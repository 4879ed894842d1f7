"""The downstream protocol on a Dask cluster: each run is one task on the executors ``cropmap batch`` uses.

:func:`run_on_cluster` plans the comparison as :func:`~training.downstream.protocol.run_comparison` does and
submits every :class:`~training.downstream.protocol.RunSpec` as a task to a local cluster of worker processes, an
existing ``dask.distributed`` scheduler, or HPC jobs through dask-jobqueue; the cluster is the one
:mod:`cropmap.batch` builds (one construction for both). The ensembles of a family wait for that family's runs.

* **Same results as a sequential run.** Each run seeds itself from its key, runs with a fixed torch thread count
  (``threads``, default ``cfg.threads`` or 1) and reads the same series (sent by this process to every worker), so
  its record equals the sequential one for the same thread count, apart from the timings.
* **Safe concurrent writes.** Workers append to one :class:`~training.downstream.store.ResultsStore` (a file lock
  around each line; a run already recorded is never appended twice) and write model files under a temporary name,
  then rename them. The run directory must be on a file system every worker sees (and, on a cluster, one that
  honours ``flock``: a local disk, NFS v4, Lustre or GPFS with locking enabled).
* **Resumable.** Runs already recorded are not submitted again; a task whose worker was killed is retried by the
  scheduler on another worker; a killed driver loses nothing that was recorded.
* **GPUs.** With ``device`` ``cuda`` each worker of a local cluster takes its own GPU (worker ``i`` uses
  ``cuda:i % n``; the local cluster has one worker per GPU unless ``workers`` says otherwise). HPC jobs request
  their GPUs with a job directive (SLURM: ``job_extra=("--gres=gpu:1",)``, one worker per job: ``cores=1``).
  ``gpus_per_task`` makes every task require that many ``GPU`` resources, for schedulers whose workers were
  started with ``--resources GPU=N``.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cropmap.errors import CropmapError
from training.downstream.config import DownstreamConfig, EncoderSpec
from training.downstream.protocol import Protocol, RunSpec
from training.downstream.tasks import TaskData

__all__ = ["Executor", "hpc_cluster", "run_on_cluster", "run_task"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Executor:
    """Where the runs execute: a local cluster (``workers``), an existing scheduler, or HPC jobs.

    Raises:
        ValueError: From ``__post_init__`` for more than one place, or an out-of-range value.
    """

    workers: int | None = None
    """Worker processes of a local cluster (default: one per core, or one per GPU with ``device`` ``cuda``)."""
    scheduler: str | None = None
    """Address of an existing ``dask.distributed`` scheduler, e.g. ``tcp://10.0.0.5:8786``."""
    cluster: Any = None
    """A :class:`cropmap.batch.HPCCluster`: workers started as jobs of an HPC scheduler."""
    threads: int | None = None
    """torch threads of each run (default: the configuration's ``threads``, or 1)."""
    gpus_per_task: int = 0
    """``GPU`` resources each task requires (workers started with ``--resources GPU=N``)."""
    dashboard: str | None = None
    """Serve the Dask dashboard of a cluster this process starts at this address."""

    def __post_init__(self) -> None:
        places = [n for n in ("workers", "scheduler", "cluster") if getattr(self, n) is not None]
        if len(places) > 1:
            raise ValueError(f"give one of workers, scheduler and cluster, got {', '.join(places)}")
        for name in ("workers", "threads"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} is {value!r}; expected a positive integer")
        if self.gpus_per_task < 0:
            raise ValueError(f"gpus_per_task is {self.gpus_per_task}; expected 0 or more")


@dataclass(frozen=True)
class _Job:
    """What every task of one comparison shares (sent once to each worker)."""

    token: str
    cfg: DownstreamConfig
    encoders: tuple[EncoderSpec, ...]
    out: Path
    variants: dict[str, list[dict[str, Any]]]
    threads: int


_PROTOCOLS: dict[str, Protocol] = {}
"""The protocol of the comparison a worker process serves (its features are kept between tasks)."""


def run_task(job: _Job, data: TaskData, spec: RunSpec, *after: object) -> list[dict[str, Any]]:
    """Execute one spec on whatever process runs this (a Dask worker); ``after``: tasks it waits for.

    Returns:
        The records it appended (none when the run was recorded already, e.g. by a task retried after its worker
        was lost).
    """
    from training.downstream.threads import ThreadChoice, apply_threads

    apply_threads(ThreadChoice(job.threads, "per run", job.cfg.deterministic))
    protocol = _PROTOCOLS.get(job.token)
    if protocol is None:
        _PROTOCOLS.clear()
        protocol = Protocol(
            job.cfg, data, job.encoders, job.out, device=_worker_device(job.cfg.device), variants=job.variants
        )
        _PROTOCOLS[job.token] = protocol
    done = protocol.store.finished()
    return protocol.execute(spec, done)


def _worker_device(name: str) -> str:
    """The device of this worker: ``cuda`` becomes ``cuda:i`` for local worker ``i`` when torch sees several GPUs."""
    import torch

    from training.device import resolve_device

    device = resolve_device(name)
    if device.type != "cuda" or device.index is not None or torch.cuda.device_count() < 2:
        return str(device)
    try:
        from distributed import get_worker

        worker = get_worker().name
    except ValueError:  # not on a worker
        return str(device)
    if isinstance(worker, int) or str(worker).isdigit():
        return f"cuda:{int(worker) % torch.cuda.device_count()}"
    return str(device)


def hpc_cluster(kind: str, **settings: Any) -> Any:
    """A :class:`cropmap.batch.HPCCluster` of ``kind`` with the job ``settings`` (queue, account, cores, memory,
    walltime, jobs, job_extra).

    Raises:
        ValueError: For an unknown kind or an out-of-range setting.
    """
    from cropmap.batch import HPCCluster

    return HPCCluster(kind=kind, **settings)


def run_on_cluster(
    cfg: DownstreamConfig,
    data: TaskData,
    encoders: Sequence[EncoderSpec],
    out_dir: str | Path,
    executor: Executor,
) -> Path:
    """Execute every run of the comparison not yet recorded as a task of a Dask cluster; return the results file.

    Raises:
        ValueError: As :func:`~training.downstream.protocol.run_comparison`.
        CropmapError: If the cluster cannot be reached or started, or no worker offers the GPUs a task needs.
        Exception: The first error a run raised (the other tasks are cancelled; recorded runs stay recorded).
    """
    from distributed import as_completed

    from cropmap.batch import _cluster, _Where

    protocol = Protocol(cfg, data, encoders, out_dir, device="cpu")  # plans only: trains nothing here
    done = protocol.prepare()
    specs = protocol.plan(done)
    logger.info(
        "task %s: %d of the comparison's tasks to run (%d base-model runs in all)",
        cfg.task,
        len(specs),
        protocol.n_runs(),
    )
    if not specs:
        return protocol.store.path
    if protocol.recipe.ensemble and not protocol.save:
        raise ValueError(
            f"recipe {protocol.recipe.name} averages each family's runs, which on a cluster are read back from their "
            "model files, but this run saves no models (save_models off, or task data without a time grid); "
            "expected save_models on, or the comparison run in one process"
        )
    assert protocol.variants is not None
    workers = executor.workers
    if workers is None and executor.scheduler is None and executor.cluster is None and cfg.device == "cuda":
        import torch

        workers = max(1, torch.cuda.device_count())
    job = _Job(
        token=uuid.uuid4().hex,
        cfg=cfg,
        encoders=tuple(encoders),
        out=Path(out_dir).resolve(),
        variants=protocol.variants,
        threads=executor.threads or cfg.threads or 1,
    )
    where = _Where(
        scheduler=executor.scheduler, workers=workers, cluster=executor.cluster, dashboard=executor.dashboard
    )
    t0 = time.perf_counter()
    with _cluster(where, len(specs)) as (client, description, _threads, _states):
        logger.info("downstream runs on %s, %d torch thread(s) per run", description, job.threads)
        resources = {"GPU": executor.gpus_per_task} if executor.gpus_per_task else None
        if resources is not None and executor.cluster is None:
            _check_gpu_workers(client, executor.gpus_per_task)
        if executor.cluster is not None or executor.scheduler is not None:
            # The series go to a worker once; jobs still queued get them from their peers when they start.
            logger.info("waiting for the first worker to connect")
            client.wait_for_workers(1)
        data_f = client.scatter(data, broadcast=True, hash=False)
        futures: dict[Any, RunSpec] = {}
        runs: dict[tuple[str, float | None, str], list[Any]] = {}
        for spec in specs:
            after = (
                runs.get((spec.method, spec.corruption, spec.family), []) if spec.kind == "ensemble" else []
            )
            fut = client.submit(
                run_task,
                job,
                data_f,
                spec,
                *after,
                key=f"downstream-{spec.label().replace(' ', '-')}-{job.token[:8]}",
                pure=False,
                resources=resources,
            )
            futures[fut] = spec
            if spec.kind == "base":
                runs.setdefault((spec.method, spec.corruption, spec.family), []).append(fut)
        n_records = 0
        try:
            for fut in as_completed(list(futures), loop=client.loop):
                spec = futures[fut]
                try:
                    recs = fut.result()
                except Exception as err:
                    lost = _task_error(spec, err)
                    if lost is err:
                        raise
                    raise lost from err
                n_records += len(recs)
                logger.info(
                    "%s done (%d record(s); %.0f s since the start)",
                    spec.label(),
                    len(recs),
                    time.perf_counter() - t0,
                )
        finally:
            client.cancel(list(futures))
    logger.info("task %s: %d records appended by the cluster's workers", cfg.task, n_records)
    return protocol.store.path


def _task_error(spec: RunSpec, err: Exception) -> Exception:
    """The error of a failed task: a lost worker becomes a :class:`CropmapError`; other errors are logged with
    the run they came from and raised as they are."""
    from distributed.scheduler import KilledWorker

    if isinstance(err, KilledWorker):
        return CropmapError(
            f"run {spec.label()} lost its worker several times ({err}); expected workers that survive a run "
            "(check their memory); recorded runs are kept, rerun the same command to resume"
        )
    logger.error("run %s failed on its worker: %s", spec.label(), err)
    return err


def _check_gpu_workers(client: Any, gpus: int) -> None:
    """Refuse tasks needing GPUs when no connected worker offers that many (they would wait for ever)."""
    workers = client.scheduler_info()["workers"].values()
    offered = [w.get("resources", {}).get("GPU", 0) for w in workers]
    if not any(n >= gpus for n in offered):
        raise CropmapError(
            f"every task needs {gpus} GPU resource(s) but no worker offers them (workers offer {offered or 'none'}); "
            f"expected workers started with --resources GPU={gpus}"
        )
