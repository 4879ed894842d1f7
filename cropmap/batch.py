"""Classifying many regions in parallel on dask.distributed, resumably.

Each region is one task: a worker runs :func:`cropmap.pipeline.classify` for it
(opening its own ONNX Runtime session and file handles) into ``<out_dir>/<name>/``.
By default the tasks run on a :class:`distributed.LocalCluster` of worker processes
on 127.0.0.1 sized to this machine; given an address they run on an existing
cluster (for instance one started by dask-jobqueue).

Progress is recorded in ``<out_dir>/batch_state.json`` (rewritten atomically after
every region) with each region's status, settings and the SHA-256 of each output.
A rerun skips the regions recorded as done whose outputs still match their
checksums and recomputes the others; outputs are deterministic, so a resumed
batch holds the same bytes as an uninterrupted one (the per-region summary JSON
excepted: it records creation time and timings). A region that fails is recorded
with its one-line error and does not stop the others.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import errno
import logging
import os
import time
import traceback
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from typing_extensions import Unpack

from cropmap import _batch_state as state_io
from cropmap.errors import BundleError, CropmapError, OptionValueError, OutputExistsError
from cropmap.options import ClassifyOptions, RegionOptionsKw
from cropmap.regions import Region, as_regions, read_manifest
from cropmap.safeio.folders import output_folder
from cropmap.safeio.locks import RunLock, lock_path
from cropmap.safeio.oserrors import file_system_error, io_step
from cropmap.safeio.overlap import mask_files, refuse_overlap
from cropmap.safeio.signals import deferred_interrupts
from cropmap.safeio.temporaries import is_debris, remove_stale

logger = logging.getLogger(__name__)

STATE_NAME = state_io.STATE_NAME
SUMMARY_NAME = "batch_summary.json"
SETTING_FIELDS = (
    "confidence",
    "embedding",
    "embedding_dtype",
    "quicklook",
    "reflectance_scale",
    "min_valid_steps",
)
"""Options that change a region's output bytes; a resumed batch must use the same values."""

WORKER_TIMEOUT_S = 600.0
"""Default of ``--worker-timeout``: how long regions may wait with no dask worker connected before the batch ends."""
PENDING_TIMEOUT_S = 3600.0
"""Default of ``--pending-timeout``: how long every HPC worker job may stay queued before the batch ends."""
_POLL_S = 2.0

REGION_LOCK_WAIT_S = 3600.0
"""How long a region task waits for a live task of an earlier (dead) driver that still writes the same region."""

BatchProgress = Callable[[int, int], None]
"""Called as ``progress(0, total)`` before the first region starts, then ``progress(done, total)``
after each region that ran (skipped regions are not counted)."""


@dataclass(frozen=True)
class RegionJob:
    """Everything a worker needs to classify one region (picklable)."""

    region: Region
    out_dir: Path
    model: Path
    options: ClassifyOptions


CLUSTER_KINDS = {
    "slurm": "SLURMCluster",
    "pbs": "PBSCluster",
    "sge": "SGECluster",
    "lsf": "LSFCluster",
    "htcondor": "HTCondorCluster",
}
"""``--cluster`` values and the dask-jobqueue cluster class each starts."""


@dataclass(frozen=True)
class HPCCluster:
    """Dask workers started as batch jobs of an HPC scheduler through dask-jobqueue, for one batch.

    Settings left ``None`` come from the dask-jobqueue configuration (``jobqueue.<kind>.*`` in
    ``~/.config/dask/jobqueue.yaml`` or ``$DASK_CONFIG``); ``cores`` and ``memory`` must be set in
    one place or the other. Each job runs ``cores`` single-threaded workers (one region each) when
    ``cores`` is given here, else the configuration's ``processes``.

    Raises:
        ValueError: From ``__post_init__`` for an unknown kind or an out-of-range value.
    """

    kind: str
    """``slurm``, ``pbs``, ``sge``, ``lsf`` or ``htcondor``."""
    queue: str | None = None
    """Queue (SLURM partition) the jobs go to."""
    account: str | None = None
    """Account (SLURM, PBS) or project (SGE, LSF) the jobs are charged to."""
    cores: int | None = None
    """Cores per job."""
    memory: str | None = None
    """Memory per job, e.g. ``"64GB"``."""
    walltime: str | None = None
    """Time limit per job, e.g. ``"04:00:00"``."""
    jobs: int = 1
    """Jobs to submit."""
    job_extra: tuple[str, ...] = ()
    """Extra scheduler directives, e.g. ``("--gres=gpu:1",)`` for SLURM (``#SBATCH --gres=gpu:1``)."""

    def __post_init__(self) -> None:
        if self.kind not in CLUSTER_KINDS:
            raise OptionValueError(
                "cluster", f"cluster is {self.kind!r}; expected one of {', '.join(CLUSTER_KINDS)}"
            )
        for name in ("cores", "jobs"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise OptionValueError(name, f"{name} is {value!r}; expected a positive integer")
        if self.kind == "htcondor" and (self.queue is not None or self.account is not None):
            raise OptionValueError(
                "queue",
                "queue / account do not apply to HTCondor; expected them unset with --cluster htcondor",
            )

    def keywords(self) -> dict[str, Any]:
        """Keyword arguments of the dask-jobqueue cluster class (only the settings given)."""
        kw: dict[str, Any] = {}
        if self.queue is not None:
            kw["queue"] = self.queue
        if self.account is not None:
            kw["account" if self.kind in ("slurm", "pbs") else "project"] = self.account
        if self.cores is not None:
            kw["cores"] = self.cores
            kw["processes"] = self.cores  # single-threaded workers: each region runs in one thread
        if self.memory is not None:
            kw["memory"] = self.memory
        if self.walltime is not None:
            kw["walltime"] = self.walltime
        if self.job_extra:
            kw["job_extra_directives"] = list(self.job_extra)
        return kw


def run_region(job: RegionJob) -> dict[str, Any]:
    """Classify one region on whatever process runs this (a dask worker).

    Temporaries left in the region's folder by an interrupted run are removed by
    :func:`cropmap.pipeline.classify` once it holds the output's lock. The folder
    itself is never removed here: after a driver dies, its running
    tasks may go on on the cluster's workers, and a task of the new run may be writing
    into the same folder; only the driver tidies up a failed region's empty folder
    (:func:`_remove_if_empty`). Errors in the region's inputs (:class:`~cropmap.errors.CropmapError`) and
    I/O errors are returned as a failed result with a one-line message; any other
    exception is returned the same way with its traceback, so that one region
    cannot stop the batch and the problem is still reported in full.

    Returns:
        ``{"status": "done", "seconds", "summary", "outputs", "pixels", "area_ha", "season"}``
        or ``{"status": "failed", "seconds", "error", "error_type"[, "traceback"]}``.
    """
    from cropmap.pipeline import classify

    t0 = time.perf_counter()
    folder = job.out_dir / job.region.name
    out = folder / f"{job.region.name}.tif"
    try:
        with io_step("create the region folder", folder):
            folder.mkdir(exist_ok=True)
        # A task of a driver that died may still be writing this region: wait for it, then recompute.
        with RunLock(out, "region output", wait_s=REGION_LOCK_WAIT_S):
            summary = classify(
                job.region.stack,
                job.region.mask,
                model=job.model,
                out=out,
                options=job.options,
                parcels=job.region.parcels,
                declared_column=job.region.declared_column,
            )
    except CropmapError as err:
        return _failed(err, time.perf_counter() - t0)
    except OSError as err:
        return _failed(
            file_system_error(err, "write the region's outputs in", folder), time.perf_counter() - t0
        )
    except Exception as err:  # noqa: BLE001 - isolate the region; the traceback travels with the result
        return _failed(err, time.perf_counter() - t0) | {"traceback": traceback.format_exc()}
    outputs = {Path(p).name: state_io.sha256(Path(p)) for p in summary.outputs.written()}
    return {
        "status": "done",
        "seconds": round(time.perf_counter() - t0, 3),
        "summary": f"{job.region.name}/{Path(summary.outputs.summary).name}",
        "outputs": outputs,
        "pixels": summary.pixels.to_dict(),
        "area_ha": {c.name: c.area_ha for c in summary.classes},
        "season": summary.season.year,
        "providers_used": summary.runtime.providers_used,
        "finished": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }


def _remove_if_empty(folder: Path) -> None:
    """Remove a failed region's folder if nothing is in it (run by the driver only)."""
    if folder.is_dir() and not any(folder.iterdir()):
        try:
            folder.rmdir()
        except OSError as err:
            if err.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOENT):
                raise file_system_error(err, "remove the empty folder of a failed region", folder) from err
            # Another run's task wrote there meanwhile, or removed it: leave the folder to it.
            logger.info("left %s in place: %s", folder, err)


def _failed(err: BaseException, seconds: float) -> dict[str, Any]:
    message = " ".join(str(err).split()) or type(err).__name__
    if not isinstance(err, CropmapError):
        message = f"{type(err).__name__}: {message}"
    return {
        "status": "failed",
        "seconds": round(seconds, 3),
        "error": message,
        "error_type": type(err).__name__,
    }


def classify_many(
    regions: str | Path | Iterable[Region | Mapping[str, Any]],
    *,
    out_dir: str | Path,
    model: str | Path | None = None,
    scheduler: str | None = None,
    workers: int | None = None,
    options: ClassifyOptions | None = None,
    progress: BatchProgress | None = None,
    cluster: HPCCluster | None = None,
    dashboard: str | None = None,
    worker_timeout: float = WORKER_TIMEOUT_S,
    pending_timeout: float = PENDING_TIMEOUT_S,
    **option_kw: Unpack[RegionOptionsKw],
) -> dict[str, Any]:
    """Classify many regions with one bundle and one set of options, in parallel and resumably.

    Each region's outputs go to ``<out_dir>/<name>/<name>.tif`` and the files
    :func:`cropmap.classify` writes beside it. Regions recorded as done in
    ``<out_dir>/batch_state.json`` whose outputs still match their checksums are
    skipped; the rest (new, failed, interrupted, or with changed/missing outputs)
    are computed. With ``overwrite=True`` every region is recomputed.

    A :class:`distributed.LocalCluster` is started on 127.0.0.1 when no scheduler is
    given; call this under ``if __name__ == "__main__":`` in scripts, as for any
    process-based dask cluster.

    Args:
        regions: A manifest (``.csv``, ``.toml``, ``.json``; see :mod:`cropmap.regions`)
            or :class:`~cropmap.regions.Region` objects / dicts with ``name``, ``stack``,
            ``mask`` and optionally ``season``.
        out_dir: The batch folder (created if missing).
        model: A cropmap bundle; default the sample bundle shipped with cropmap.
        scheduler: Address of an existing dask.distributed scheduler
            (``tcp://host:8786``); each region then runs single-threaded in one worker thread.
        workers: Regions classified at once on the local cluster (worker processes);
            default the number of cores, never more than there are regions to run.
            The cores are shared out between them.
        options: Per-region options; or pass them as keywords. ``workers``,
            ``scheduler`` and ``threads`` are set by the batch and must be left unset;
            ``season`` is the default for regions that do not name one.
        progress: Called as ``progress(0, total)`` before the first region starts, then
            ``progress(done, total)`` after each region that ran.
        cluster: Start the workers as HPC batch jobs (dask-jobqueue, the ``hpc`` extra) for this
            batch and stop them at the end; not with ``scheduler`` or ``workers``.
        dashboard: Address of the Dask dashboard of the cluster this batch starts (``":8787"``);
            default none (its scheduler's HTTP endpoint then listens on a free loopback port).
        worker_timeout: Seconds the remaining regions may wait with no dask worker connected (every worker
            job ended, the workers of ``scheduler`` gone) before the batch stops with an error; it resumes later.
        pending_timeout: Seconds every worker job of ``cluster`` may stay queued before the batch stops with
            an error giving the scheduler's reason (SLURM: ``squeue -o %r``).
        **option_kw: Fields of :class:`~cropmap.options.ClassifyOptions`.

    Returns:
        The batch summary (also written to ``<out_dir>/batch_summary.json``); regions
        that failed have ``status == "failed"`` and an ``error``.

    Raises:
        CropmapError: For a bad manifest or bundle, unreachable scheduler, or an
            output folder whose outputs were made with other settings (no region runs).
    """
    t_start = time.perf_counter()
    opts = _batch_options(options, dict(option_kw))
    if scheduler is not None:
        ClassifyOptions(scheduler=scheduler)  # validates the address
        if workers is not None:
            raise ValueError(
                "workers applies to the local cluster only; with a scheduler address, size the cluster"
            )
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise ValueError(f"workers is {workers!r}; expected a positive integer")
    if cluster is not None and (scheduler is not None or workers is not None):
        raise ValueError("cluster starts its own workers; expected neither scheduler nor workers with it")
    if dashboard is not None and scheduler is not None:
        raise ValueError(
            "dashboard applies to a cluster the batch starts; the cluster at scheduler has its own"
        )
    for name, value in (("worker_timeout", worker_timeout), ("pending_timeout", pending_timeout)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise ValueError(f"{name} is {value!r}; expected a positive number of seconds")
    region_list = read_manifest(regions) if isinstance(regions, (str, Path)) else as_regions(regions)
    model_path = _check_bundle(model, opts, provider=opts.provider if scheduler is None else "cpu")
    out = Path(out_dir).expanduser().resolve()
    if out.exists() and not out.is_dir():
        raise OutputExistsError(
            f"output folder (-o) {out} is a file; expected a folder (it is created if missing)"
        )

    _refuse_batch_overlap(out, regions, region_list, model_path, opts)
    settings = {"model_sha256": state_io.sha256(model_path)} | {f: getattr(opts, f) for f in SETTING_FIELDS}
    with output_folder(out), RunLock(out / STATE_NAME, "batch folder"):
        remove_stale(out, {STATE_NAME, SUMMARY_NAME})
        where = _Where(
            scheduler=scheduler,
            workers=workers,
            cluster=cluster,
            dashboard=dashboard,
            worker_timeout=float(worker_timeout),
            pending_timeout=float(pending_timeout),
        )
        return _classify_many_locked(region_list, out, model_path, settings, where, opts, progress, t_start)


def _refuse_batch_overlap(
    out: Path, regions: Any, region_list: list[Region], model: Path, opts: ClassifyOptions
) -> None:
    """Refuse a batch that would write over one of its inputs, before any region runs.

    Every file the batch may write (its state, summary and lock, and every region's map, side files and
    lock) is checked against every input of every region (stack, mask with its sidecars), the bundle and
    the manifest, with or without ``overwrite``: one region's outputs never replace another region's inputs.
    """
    from cropmap.writer import output_paths

    inputs: dict[Path, str] = {model: "model bundle"}
    if isinstance(regions, (str, Path)):
        inputs[Path(regions)] = "regions manifest"
    for r in region_list:
        inputs.setdefault(Path(r.stack), f"stack of region {r.name!r}")
        inputs.update({m: f"mask of region {r.name!r}" for m in mask_files(Path(r.mask))})
        if r.parcels is not None:
            inputs.update({m: f"parcels of region {r.name!r}" for m in mask_files(Path(r.parcels))})
    outputs = [out / STATE_NAME, out / SUMMARY_NAME, lock_path(out / STATE_NAME)]
    for r in region_list:
        paths = output_paths(
            out / r.name / f"{r.name}.tif",
            confidence=opts.confidence,
            embedding=opts.embedding,
            quicklook=opts.quicklook,
            probabilities=opts.probabilities,
            uncertainty=opts.uncertainty is not None,
        )
        outputs += [*paths.all(), lock_path(paths.map)]
    refuse_overlap(outputs, inputs, hint="choose another output folder (-o)")


@dataclass(frozen=True)
class _Where:
    """Where the regions run: a local cluster (``workers``), an existing one (``scheduler``) or an HPC one."""

    scheduler: str | None = None
    workers: int | None = None
    cluster: HPCCluster | None = None
    dashboard: str | None = None
    worker_timeout: float = WORKER_TIMEOUT_S
    pending_timeout: float = PENDING_TIMEOUT_S


def _classify_many_locked(
    region_list: list[Region],
    out: Path,
    model_path: Path,
    settings: dict[str, Any],
    where: _Where,
    opts: ClassifyOptions,
    progress: BatchProgress | None,
    t_start: float,
) -> dict[str, Any]:
    """The batch, run while this process holds the batch folder's lock."""
    from cropmap import __version__

    state = state_io.load(out, settings, overwrite=opts.overwrite)
    todo, skipped = _plan(region_list, state, out, opts)
    if skipped:
        logger.info("%d of %d regions already done in %s; skipping them", len(skipped), len(region_list), out)

    executor = "none (every region was already done)"
    if not todo:
        state_io.save(out, state)
    else:
        with (
            # Ctrl-C and SIGTERM act between dask calls, never inside one (a traceback from dask's event loop)
            deferred_interrupts("once the current dask call returns") as interrupted,
            _cluster(where, len(todo)) as (client, executor, threads, job_states),
        ):
            state_io.save(out, state)  # the regions to run are recorded as pending before any starts
            logger.info("classifying %d regions on %s", len(todo), executor)
            if progress is not None:
                progress(0, len(todo))
            jobs = {
                r.name: RegionJob(
                    region=r,
                    out_dir=out,
                    model=model_path,
                    options=dataclasses.replace(
                        opts, season=_season(r, opts), threads=threads, overwrite=True
                    ),
                )
                for r in todo
            }
            for done, (name, result) in enumerate(
                _run(client, jobs, where, job_states, interrupted), start=1
            ):
                state["regions"][name].update(result)
                state_io.save(out, state)
                if result["status"] == "done":
                    logger.info("region %s done in %.1f s", name, result["seconds"])
                else:
                    _remove_if_empty(out / name)
                    logger.warning("region %s failed: %s", name, result["error"])
                    if "traceback" in result:
                        logger.error("region %s: unexpected error\n%s", name, result["traceback"])
                if progress is not None:
                    progress(done, len(todo))

    summary = _summary(
        region_list,
        state,
        {r.name for r in skipped},
        out,
        model_path,
        opts,
        executor,
        time.perf_counter() - t_start,
        __version__,
    )
    state_io.write_json(out / SUMMARY_NAME, summary)
    return summary


def _batch_options(options: ClassifyOptions | None, kwargs: dict[str, Any]) -> ClassifyOptions:
    if options is not None and kwargs:
        raise TypeError(f"pass either options= or keyword options, not both (got {sorted(kwargs)})")
    opts = options if options is not None else ClassifyOptions.from_kwargs(**kwargs)
    for name in ("workers", "scheduler", "threads"):
        if getattr(opts, name) is not None:
            raise ValueError(
                f"{name} is set in the region options; the batch sets it (pass workers= or scheduler= to classify_many)"
            )
    return opts


def _check_bundle(model: str | Path | None, opts: ClassifyOptions, provider: str = "cpu") -> Path:
    """Open the bundle once here (on ``provider``) so that a bad bundle or a provider that cannot start stops
    the batch before any region runs."""
    from cropmap.models import DEFAULT_BUNDLE
    from cropmap.runtime import load_bundle

    path = Path(model).expanduser().resolve() if model is not None else DEFAULT_BUNDLE
    if model is None and not path.is_file():
        raise BundleError(
            f"the sample model shipped with cropmap ({path}) is missing from this installation; "
            "expected it there, or pass --model BUNDLE"
        )
    meta = load_bundle(path, intra_op_threads=1, provider=provider).metadata
    if opts.embedding and meta.embedding is None:
        raise BundleError(f"--embedding was requested but bundle {path} has no embedding output")
    return path


def _season(region: Region, opts: ClassifyOptions) -> int | None:
    return region.season if region.season is not None else opts.season


def _region_settings(region: Region, opts: ClassifyOptions) -> dict[str, Any]:
    settings: dict[str, Any] = {
        "stack": str(region.stack),
        "mask": str(region.mask),
        "season": _season(region, opts),
    }
    if region.parcels is not None:  # only then: batches resumed from earlier states keep their settings
        settings |= {"parcels": str(region.parcels), "declared_column": region.declared_column}
    return settings


def _plan(
    regions: list[Region], state: dict[str, Any], out: Path, opts: ClassifyOptions
) -> tuple[list[Region], list[Region]]:
    """Split the regions into those to run and those already done; register the former as pending.

    Raises:
        OutputExistsError: If a region's folder holds outputs this batch did not
            record, or a done region was made from other inputs, and overwrite is off.
    """
    todo, skipped = [], []
    entries = state["regions"]
    for r in regions:
        settings = _region_settings(r, opts)
        entry = entries.get(r.name)
        if entry is None and not opts.overwrite:
            folder = out / r.name
            if folder.is_dir() and any(not is_debris(p.name) for p in folder.iterdir()):
                raise OutputExistsError(
                    f"{folder} already holds files that {out / STATE_NAME} does not record; expected an empty or "
                    "new folder for region " + repr(r.name) + " (pass --overwrite to replace them)"
                )
        if entry is not None and not opts.overwrite and entry.get("settings") != settings:
            changed = {
                k: (entry.get("settings", {}).get(k), v)
                for k, v in settings.items()
                if entry.get("settings", {}).get(k) != v
            }
            raise OutputExistsError(
                f"region {r.name!r} in {out} was made with other inputs {changed} (recorded, now); expected the same "
                "inputs to resume (pass --overwrite to recompute, or use another output folder (-o))"
            )
        if entry is not None and not opts.overwrite and entry.get("status") == "done":
            problem = state_io.verify_outputs(out / r.name, entry.get("outputs", {}))
            if problem is None:
                skipped.append(r)
                continue
            logger.warning("region %s was done but %s; recomputing it", r.name, problem)
        entries[r.name] = {"status": "pending", "settings": settings}
        todo.append(r)
    return todo, skipped


@contextmanager
def _cluster(
    where: _Where, n_tasks: int
) -> Iterator[tuple[Any, str, int, Callable[[], list[JobState]] | None]]:
    """Yield ``(client, description, threads per region, job states)`` for a local, existing or HPC cluster.

    ``job states`` (HPC clusters only) lists the worker jobs with their state and the scheduler's reason.
    """
    from distributed import Client

    if where.cluster is not None:
        with _hpc_cluster(where.cluster, where.dashboard) as (client, description, states):
            yield client, description, 1, states
        return
    scheduler = where.scheduler
    if scheduler is not None:
        try:
            client = Client(scheduler, timeout="10s", set_as_default=False)
        except OSError as err:
            raise CropmapError(
                f"could not connect to the dask scheduler at {scheduler} ({err}); expected a running "
                "dask.distributed scheduler"
            ) from err
        try:
            threads = sum(w["nthreads"] for w in client.scheduler_info()["workers"].values())
            if threads == 0:
                logger.warning(
                    "the dask scheduler at %s has no workers yet; regions wait for workers", scheduler
                )
            description = f"dask.distributed at {scheduler} ({threads} worker threads, 1 thread per region)"
            yield client, description, 1, None
        finally:
            client.close()
        return
    cores = os.cpu_count() or 1
    n_proc = max(1, min(where.workers or cores, n_tasks))
    threads = max(1, cores // n_proc)
    with local_cluster(n_proc, where.dashboard) as cluster, Client(cluster, set_as_default=False) as client:
        board = f", dashboard {cluster.dashboard_link}" if where.dashboard is not None else ""
        yield (
            client,
            (
                f"dask LocalCluster at {cluster.scheduler_address} ({n_proc} worker processes, "
                f"{threads} threads per region{board})"
            ),
            threads,
            None,
        )


LEAN_LOCAL_CLUSTER = {
    "distributed.worker.profile.enabled": False,
    "distributed.scheduler.work-stealing": False,
}
"""Dask settings of the local cluster a batch starts. Its tasks are whole regions, each running for
seconds to hours: the statistical profiler (which samples every worker thread's stack every 10 ms, for
the dashboard) and work stealing (the scheduler queues the regions and hands each to the next free
worker) only take CPU from the regions. Measured in docs/benchmarks.md (``bench/bench_scale.py``)."""


@contextmanager
def local_cluster(
    n_workers: int, dashboard: str | None = None, settings: Mapping[str, Any] = LEAN_LOCAL_CLUSTER
) -> Iterator[Any]:
    """The :class:`distributed.LocalCluster` a batch runs its regions on: ``n_workers`` single-threaded
    worker processes on 127.0.0.1 with the dask ``settings`` (:data:`LEAN_LOCAL_CLUSTER`), no dashboard
    unless asked."""
    import dask
    from distributed import LocalCluster

    from cropmap._quiet_close import QuietClose

    with dask.config.set(dict(settings)):  # read by the scheduler and passed to the workers at start
        cluster = LocalCluster(
            n_workers=n_workers,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            plugins=[QuietClose()],
            **_dashboard_options(dashboard),
        )
    with cluster:
        yield cluster


def _dashboard_options(dashboard: str | None) -> dict[str, Any]:
    """Scheduler keywords for a dashboard at ``dashboard``, or none.

    A dask scheduler always serves HTTP (health checks, metrics); without a dashboard it gets a
    free port on the loopback interface, so it never tries a port another program holds (8787).
    """
    if dashboard is not None:
        return {"dashboard_address": dashboard}
    return {"dashboard_address": "127.0.0.1:0", "scheduler_kwargs": {"dashboard": False}}


@contextmanager
def _hpc_cluster(
    spec: HPCCluster, dashboard: str | None
) -> Iterator[tuple[Any, str, Callable[[], list[JobState]]]]:
    """Start a dask-jobqueue cluster of ``spec.jobs`` jobs, yield ``(client, description, job states)``, then stop it.

    Stopping it cancels the jobs (``scancel`` ...), also on Ctrl-C, SIGTERM or an error.

    Raises:
        CropmapError: If dask-jobqueue is not installed, the scheduler's commands are not on ``PATH``, its
            settings are incomplete, or the scheduler's submit command fails (its message is kept).
    """
    import shutil
    import signal
    import threading

    import dask
    from distributed import Client

    main_thread = threading.current_thread() is threading.main_thread()
    sigint = signal.getsignal(signal.SIGINT) if main_thread else None
    try:
        import dask_jobqueue
    except ImportError as err:
        raise CropmapError(
            f"--cluster {spec.kind} needs dask-jobqueue, which is not installed here; expected it installed "
            "(pip install 'cropmap[hpc]')"
        ) from err
    finally:
        # Importing dask-jobqueue installs a SIGINT handler that calls sys.exit() (exit status 0 with regions
        # still pending); Ctrl-C must stay a KeyboardInterrupt: clean-up, jobs cancelled, exit 130.
        if main_thread and signal.getsignal(signal.SIGINT) is not sigint:
            signal.signal(signal.SIGINT, sigint if callable(sigint) else signal.default_int_handler)
    cls = getattr(dask_jobqueue, CLUSTER_KINDS[spec.kind])
    commands = [str(c).split()[0] for c in (cls.job_cls.submit_command, cls.job_cls.cancel_command) if c]
    missing = [c for c in commands if shutil.which(c) is None]
    if missing:
        raise CropmapError(
            f"--cluster {spec.kind}: the job scheduler's command {', '.join(missing)} is not on PATH; expected "
            f"{spec.kind.upper()}'s commands ({', '.join(commands)}) on this machine (run the batch where jobs can "
            "be submitted, e.g. on a login node)"
        )
    config = f"jobqueue.{spec.kind}"
    sched_opts = dict(dask.config.get(f"{config}.scheduler-options", default=None) or {})
    if dashboard is not None:
        sched_opts["dashboard_address"] = dashboard
    elif "dashboard_address" not in sched_opts:
        sched_opts.update(dashboard=False, dashboard_address="127.0.0.1:0")
    try:
        cluster = cls(scheduler_options=sched_opts, **spec.keywords())
    except ValueError as err:  # e.g. cores / memory set neither by flag nor in the configuration
        raise CropmapError(
            f"--cluster {spec.kind}: {' '.join(str(err).split())}; expected --cores and --memory, or "
            f"{config}.cores and {config}.memory in the dask-jobqueue configuration (~/.config/dask/jobqueue.yaml)"
        ) from err
    try:
        # Submit the jobs now, in this call, so that a failing submit command is an error here (cluster.scale
        # would submit them in the background and only log the failure while the batch waits for workers).
        while len(cluster.worker_spec) < spec.jobs:
            cluster.worker_spec.update(cluster.new_worker_spec())
        try:
            cluster.sync(cluster._correct_state)
        except RuntimeError as err:
            _forget_unsubmitted(cluster)
            raise CropmapError(
                f"--cluster {spec.kind}: submitting the worker jobs failed ({' '.join(str(err).split())}); "
                "expected the job scheduler to accept them (check --queue, --account and the job settings)"
            ) from err
        with Client(cluster, set_as_default=False) as client:
            description = (
                f"dask-jobqueue {cls.__name__} ({spec.jobs} jobs; scheduler at "
                f"{cluster.scheduler_address}; 1 thread per region)"
            )
            logger.info("submitted %d %s jobs; regions start as their workers join", spec.jobs, spec.kind)
            logger.debug("job script:\n%s", cluster.job_script())
            yield client, description, lambda: _job_states(spec.kind, cluster)
    finally:
        cluster.close()


@dataclass(frozen=True)
class JobState:
    """A worker job of an HPC cluster as its scheduler reports it."""

    job_id: str
    state: str
    """``PENDING``, ``RUNNING``, ... or ``GONE`` (no longer listed), ``UNKNOWN`` (no answer)."""
    reason: str = ""
    """The scheduler's reason (SLURM: ``squeue -o %r``, e.g. ``Resources``, ``Priority``, ``BeginTime``)."""


def _job_states(kind: str, cluster: Any) -> list[JobState]:
    """The state of each submitted job; SLURM's reason through ``squeue -h -j ID -o %T|%r``."""
    import subprocess

    ids = [str(j.job_id) for j in list(cluster.workers.values()) if getattr(j, "job_id", None)]
    if kind != "slurm":
        return [JobState(i, "UNKNOWN") for i in ids]
    states = []
    for job_id in ids:
        try:
            proc = subprocess.run(
                ["squeue", "-h", "-j", job_id, "-o", "%T|%r"],
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )
        except (OSError, subprocess.SubprocessError):
            states.append(JobState(job_id, "UNKNOWN"))
            continue
        lines = [ln.strip() for ln in proc.stdout.splitlines() if ln.strip()]
        fields = next((ln.split("|", 1) for ln in lines if "|" in ln), None)
        if fields is not None:
            states.append(JobState(job_id, fields[0].upper(), fields[1]))
        elif (proc.returncode == 0 and not lines) or "Invalid job id" in proc.stderr:
            states.append(JobState(job_id, "GONE"))
        else:
            words = " ".join(lines).upper()
            state = next((w for w in ("PENDING", "RUNNING", "COMPLETING") if w in words), "UNKNOWN")
            states.append(JobState(job_id, state))
    return states


def _forget_unsubmitted(cluster: Any) -> None:
    """Drop the jobs whose submission failed, so that closing the cluster cancels only the submitted ones."""
    from distributed.core import Status

    for name, job in list(cluster.workers.items()):
        if job.status == Status.created:
            del cluster.workers[name]
    for name in [n for n in cluster.worker_spec if n not in cluster.workers]:
        del cluster.worker_spec[name]
    for job in [j for j in getattr(cluster, "_created", ()) if j.status == Status.created]:
        cluster._created.discard(job)


def _run(
    client: Any,
    jobs: dict[str, RegionJob],
    where: _Where | None = None,
    job_states: Callable[[], list[JobState]] | None = None,
    interrupted: Callable[[], None] = lambda: None,
) -> Iterator[tuple[str, dict[str, Any]]]:
    """Submit every job and yield ``(name, result)`` as regions finish.

    ``interrupted`` is called after each wait on the scheduler (at most ``_POLL_S`` apart): it raises a
    Ctrl-C or SIGTERM held back by :func:`~cropmap.safeio.signals.deferred_interrupts`.

    Between results the cluster is watched: no worker connected for ``where.worker_timeout`` s, every
    HPC job queued for ``where.pending_timeout`` s, or the scheduler lost ends the batch with one line
    (:class:`~cropmap.errors.CropmapError`; the finished regions are recorded, a rerun resumes).
    """
    from concurrent.futures import CancelledError

    from distributed import KilledWorker, wait

    where = where or _Where()
    with client.as_current():
        futures = {
            client.submit(
                run_region, job, key=f"cropmap-region-{name}-{os.urandom(4).hex()}", pure=False
            ): name
            for name, job in jobs.items()
        }
        pending = set(futures)
        idle_since: float | None = None
        while pending:
            try:
                done, pending = wait(pending, timeout=_POLL_S, return_when="FIRST_COMPLETED")
            except TimeoutError:
                done = set()
            except (CancelledError, OSError) as err:  # FuturesCancelledError: "scheduler-connection-lost"
                raise _lost_scheduler(client, err) from err
            for fut in done:
                name = futures[fut]
                try:
                    result = fut.result()
                except KilledWorker as err:
                    result = {
                        "status": "failed",
                        "seconds": None,
                        "error_type": "KilledWorker",
                        "error": f"the dask worker died while classifying this region ({err}); out of memory?",
                    }
                except (
                    CancelledError,
                    OSError,
                ) as err:  # the client lost the scheduler: its futures are cancelled
                    raise _lost_scheduler(client, err) from err
                fut.release()
                yield name, result
            interrupted()  # after recording what finished
            if not pending or done:
                idle_since = None
                continue
            n_workers = _count_workers(client)
            now = time.monotonic()
            if n_workers:
                idle_since = None
                continue
            idle_since = now if idle_since is None else idle_since
            _check_idle(now - idle_since, len(pending), where, job_states)


def _count_workers(client: Any) -> int:
    """Workers connected to the scheduler now (asked of the scheduler, at most 30 s)."""
    try:
        return len(client.nthreads(callback_timeout=30))
    except (OSError, TimeoutError) as err:
        raise _lost_scheduler(client, err) from err


def _lost_scheduler(client: Any, err: BaseException) -> CropmapError:
    address = getattr(getattr(client, "scheduler", None), "address", None) or "of the batch"
    return CropmapError(
        f"lost the dask scheduler {address} ({type(err).__name__}: {' '.join(str(err).split()) or 'no answer'}); "
        "expected it to run until the batch ends; the regions finished so far are recorded, rerun the same "
        "command to resume"
    )


def _check_idle(
    waited: float, n_pending: int, where: _Where, job_states: Callable[[], list[JobState]] | None
) -> None:
    """End a batch whose regions have waited too long without a worker (see :func:`_run`)."""
    states = job_states() if job_states is not None else []
    queued = [s for s in states if s.state in ("PENDING", "CONFIGURING")]
    kind = where.cluster.kind if where.cluster is not None else ""
    if queued:
        if waited < where.pending_timeout:
            return
        why = "; ".join(f"job {s.job_id}: {s.reason or 'no reason given'}" for s in queued)
        raise CropmapError(
            f"--cluster {kind}: every worker job has been queued for {waited:.0f} s (--pending-timeout "
            f"{where.pending_timeout:g}) and none started; {kind.upper()}'s reason: {why}; expected the jobs to "
            "start (ask for fewer cores, less memory or a shorter walltime, another --queue, or a longer "
            "--pending-timeout); the jobs are cancelled, the regions finished so far are recorded, rerun the same "
            "command to resume"
        )
    if waited < where.worker_timeout:
        return
    if states:
        jobs = ", ".join(f"{s.job_id} ({s.state.lower()})" for s in states)
        detail = (
            f"; worker jobs {jobs}: they ended (cancelled, out of walltime or failed; see their job logs)"
        )
    elif where.scheduler is not None:
        detail = f"; the cluster at {where.scheduler} has no workers"
    else:
        detail = ""
    raise CropmapError(
        f"no dask worker has been connected for {waited:.0f} s (--worker-timeout {where.worker_timeout:g}) while "
        f"{n_pending} regions wait{detail}; expected workers to run the regions; the regions finished so far are "
        "recorded, rerun the same command to resume"
    )


def _summary(
    regions: list[Region],
    state: dict[str, Any],
    skipped: set[str],
    out: Path,
    model: Path,
    opts: ClassifyOptions,
    executor: str,
    wall_s: float,
    version: str,
) -> dict[str, Any]:
    from cropmap.models import SAMPLE_NOTE, is_sample_bundle

    rows = []
    area: dict[str, float] = {}
    ran_in_mask = 0
    for r in regions:
        e = state["regions"][r.name]
        status = "skipped" if r.name in skipped else e["status"]
        px = e.get("pixels", {})
        row = {
            "name": r.name,
            "status": status,
            "stack": str(r.stack),
            "mask": str(r.mask),
            "season": e.get("season", _season(r, opts)),
            "summary": str(out / e["summary"]) if "summary" in e else None,
            "pixels_in_mask": px.get("in_mask"),
            "pixels_classified": px.get("classified"),
            "pixels_insufficient_data": px.get("insufficient_data"),
            "area_ha": e.get("area_ha"),
            "seconds": e.get("seconds"),
            "error": e.get("error"),
            "providers_used": e.get("providers_used"),
        }
        rows.append(row)
        if status in ("done", "skipped"):
            for name, ha in e["area_ha"].items():
                area[name] = round(area.get(name, 0.0) + ha, 4)
        if status == "done":
            ran_in_mask += px["in_mask"]
    ran = [r for r in rows if r["status"] != "skipped"]
    n_done = sum(r["status"] == "done" for r in rows)
    return {
        "cropmap_version": version,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "out_dir": str(out),
        "state": str(out / STATE_NAME),
        "model": str(model),
        **({"model_note": SAMPLE_NOTE} if is_sample_bundle(model) else {}),
        "executor": executor,
        "options": dataclasses.asdict(opts),
        "regions": rows,
        "totals": {
            "regions": len(rows),
            "done": n_done,
            "skipped": len(skipped),
            "failed": sum(r["status"] == "failed" for r in rows),
            "pixels_classified": sum(r["pixels_classified"] or 0 for r in rows if r["status"] != "failed"),
            "area_ha": area,
            "wall_s": round(wall_s, 3),
            "region_s": round(sum(r["seconds"] or 0.0 for r in ran), 3),
        },
        "throughput": {
            "regions_per_hour": round(len(ran) / wall_s * 3600, 1) if ran and wall_s > 0 else None,
            "cropland_px_per_s": round(ran_in_mask / wall_s, 1) if n_done and wall_s > 0 else None,
            "note": "over the regions run in this call (skipped ones excluded), wall time including cluster start-up",
        },
    }


def format_report(summary: Mapping[str, Any]) -> list[str]:
    """Console lines for a batch summary: one row per region, totals, then failures."""
    rows = summary["regions"]
    width = max([len("region"), *(len(r["name"]) for r in rows)])
    lines = [f"{'region':<{width}}  {'status':<8} {'classified px':>14} {'cropland ha':>12} {'seconds':>8}"]
    for r in rows:
        px = f"{r['pixels_classified']:,}" if r["pixels_classified"] is not None else "-"
        ha = f"{sum(r['area_ha'].values()):.2f}" if r["area_ha"] else "-"
        sec = f"{r['seconds']:.1f}" if r["seconds"] is not None else "-"
        lines.append(f"{r['name']:<{width}}  {r['status']:<8} {px:>14} {ha:>12} {sec:>8}")
    t, tp = summary["totals"], summary["throughput"]
    rate = f", {tp['cropland_px_per_s']:,.0f} cropland px/s" if tp["cropland_px_per_s"] else ""
    lines.append(
        f"{t['regions']} regions: {t['done']} done, {t['skipped']} skipped (done before), {t['failed']} failed; "
        f"{t['pixels_classified']:,} px classified in all; {t['wall_s']:.1f} s{rate}"
    )
    failed = [r for r in rows if r["status"] == "failed"]
    if failed:
        lines.append("failed regions:")
        lines += [f"  {r['name']:<{width}}  {r['error']}" for r in failed]
    return lines
