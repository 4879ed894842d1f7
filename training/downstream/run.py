"""Downstream comparison: supervised vs uni-modal vs bi-modal features for every base-model variant.

``cropmap train downstream --task 1 --data SIM_DIR --encoder unimodal_0.2=U2.pt --encoder unimodal_0.6=U6.pt
--encoder bimodal_0.2=B2.pt --encoder bimodal_0.6=B6.pt --family lstm --family inception_time --family transformer
--variants 10 --epochs 20 -o runs/task1`` (add ``--workers 2``, ``--scheduler ADDRESS`` or ``--cluster slurm`` to run
the runs as tasks of a Dask cluster, :mod:`training.downstream.cluster`).

Protocol (PAPER.md section 4):

* ``variants`` hyper-parameter variants per family are sampled once (:func:`training.downstream.tune.sample_variants`,
  kept in ``OUT/variants.db``) and each is trained with every method using the same hyper-parameters.
* **supervised**: the base model on the raw bands, standardised with per-band statistics of the
  training set. **uni-modal / bi-modal**: the base model on the per-stamp embeddings of a frozen
  pre-trained S2 encoder, ``(B, T, C) -> (B, T, D)``, one run per encoder (corruption rate).
* Adam, learning rate decayed linearly from the variant's ``lr`` to 0 over all steps, cross-entropy,
  ``epochs`` epochs; validation accuracy, macro F1, Cohen's kappa and the confusion matrix after the
  last epoch (the accuracy after every ``eval_every`` epochs is kept as a curve).
* The encoder stays in eval mode with ``requires_grad=False`` throughout (its BatchNorm statistics
  never change). Its embeddings are computed once per encoder and kept in memory when the train and
  validation embeddings fit in ``embed_cache_gb`` (the papers' 54,000 x 144 x 256 float32 set needs
  8.0 GB); otherwise the encoder runs on every batch, still frozen.
* Each finished run writes its trained model to ``OUT/models/<run>.pt`` (a ``classifier`` checkpoint,
  :mod:`training.downstream.classifier`: base model, frozen encoder weights and path, normalisation, classes,
  time grid, bands, parity inputs) and then its line to ``OUT/results.jsonl`` (``"model"`` names the
  file); ``OUT/validation-task<T>.npz`` keeps the validation series for exports. A rerun skips
  finished runs, and refuses to mix results produced with another set-up in the same file.
  ``cropmap export best OUT -o model.onnx`` exports the best run as a bundle.

Task ``1`` / ``2`` read the simulated (DENETHOR-layout) scenes, task ``real`` a user's labelled
parcels (a WorldCereal extraction; supervised, uni-modal, or bi-modal encoders pre-trained on pairs of their region),
with the legend, time grid and split of :mod:`training.data.parcels`. Task ``real`` also takes any stack
``cropmap classify`` reads with ``--labels POLYGONS --label-column COL``: the labelled series are extracted once
(:mod:`training.data.extract`) into ``OUT/extractions/`` under a key of the inputs' contents and the extraction
options, so a rerun reads them from there.

The code lives in one module per concern: :mod:`~training.downstream.config` (settings, encoders),
:mod:`~training.downstream.tasks` (task data), :mod:`~training.downstream.loop` (training one run),
:mod:`~training.downstream.store` (``results.jsonl``), :mod:`~training.downstream.protocol` (the plan and the
execution of each run) and :mod:`~training.downstream.cluster` (the runs as tasks of a Dask cluster). This module
keeps the names they had here and the ``main(argv)`` of ``python -m training.downstream``.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from training.config import ConfigError, load_config
from training.device import resolve_device
from training.downstream.config import SSL_METHODS, DownstreamConfig, EncoderSpec
from training.downstream.loop import encode, predict, predict_logits, run_seed, train_run
from training.downstream.protocol import (
    DEFAULT_LR,
    PARITY_ROWS,
    SETUP_KEYS,
    VAL_INPUTS,
    Protocol,
    RunSpec,
    check_setup,
    run_comparison,
    run_name,
)
from training.downstream.selection import holdout_fraction
from training.downstream.store import ResultsStore, run_key
from training.downstream.tasks import TaskData, load_real_task, load_sim_task, load_task, task_classes
from training.downstream.threads import decide_threads

__all__ = [
    "DEFAULT_LR",
    "PARITY_ROWS",
    "SETUP_KEYS",
    "SSL_METHODS",
    "VAL_INPUTS",
    "DownstreamConfig",
    "EncoderSpec",
    "Protocol",
    "ResultsStore",
    "RunSpec",
    "TaskData",
    "check_setup",
    "encode",
    "load_real_task",
    "load_sim_task",
    "load_task",
    "main",
    "predict",
    "predict_logits",
    "run_comparison",
    "run_key",
    "run_name",
    "run_seed",
    "task_classes",
    "train_run",
]

logger = logging.getLogger(__name__)

REFIT = "refit"
"""The folder inside ``--out`` that ``--refit`` trains the same runs into, on every training sample."""

CV = "cv"
"""The folder inside ``--out`` that a cross-validated selection (``--selection-folds K``) trains the runs of each
fold into: ``OUT/cv/fold<k>``, fold ``k`` held out (:mod:`training.downstream.selection`)."""


def fold_dir(output: Path, fold: int) -> Path:
    """Where the pass holding fold ``fold`` out writes its runs."""
    return output / CV / f"fold{fold}"


_check_setup = check_setup
"""Kept under its former name."""


def training_passes(
    cfg: DownstreamConfig, output: Path, *, refit: bool = False
) -> list[tuple[DownstreamConfig, Path, str]]:
    """What one command trains: ``(configuration, output folder, note for the console)`` per pass. The runs as
    configured into ``output``; with ``refit``, the same on every training sample into ``output/refit``; with
    ``selection_folds`` ``K``, the same once per fold with that fold held out into ``output/cv/fold<k>``."""
    passes: list[tuple[DownstreamConfig, Path, str]] = [(cfg, output, "")]
    if refit:
        passes.append(
            (
                dataclasses.replace(cfg, selection_holdout=0.0),
                output / REFIT,
                (
                    "refit: the same runs again on every training sample (no selection split), into "
                    f"{output / REFIT}; --no-refit skips it"
                ),
            )
        )
    for k in range(cfg.selection_folds):
        passes.append(
            (
                dataclasses.replace(cfg, selection_fold=k),
                fold_dir(output, k),
                (
                    f"cross-validated selection, fold {k} of 0-{cfg.selection_folds - 1}: the same runs with that "
                    f"fold of the training samples held out, into {fold_dir(output, k)}"
                ),
            )
        )
    return passes


def run_command_line(
    *,
    task: str | None,
    data: Path | None,
    encoders: Sequence[str],
    family: Sequence[str],
    variants: int | None,
    epochs: int | None,
    device: str | None,
    seed: int | None,
    recipe: str | None,
    no_baselines: bool,
    precision: str | None,
    refit: bool | None = None,
    selection_folds: int | None = None,
    default_variant: bool,
    classes: str | None,
    label_column: str | None,
    grid: str | None,
    season: int | None,
    season_start: str | None,
    split_seed: int | None,
    split_file: Path | None,
    labels: Path | None,
    id_column: str | None,
    layer: str | None,
    pixels: str | None,
    buffer: float | None,
    output: Path,
    config: Path | None,
    overrides: Sequence[str],
    threads: int | None,
    workers: int | None,
    scheduler: str | None,
    cluster: str | None,
    queue: str | None,
    account: str | None,
    cores: int | None,
    memory: str | None,
    walltime: str | None,
    jobs: int,
    job_extra: Sequence[str],
    gpus_per_task: int,
    dashboard: str | None,
    no_progress: bool,
    as_json: bool,
) -> None:
    """The body of ``cropmap train downstream`` (:mod:`training.downstream.cli`).

    Raises:
        click.BadParameter: A configuration, override or encoder that does not fit (exit 2).
        training.device.DeviceError: A CUDA device torch does not see (exit 1).
        click.UsageError: Cluster settings that contradict each other (exit 2).
        TrainingInputError: Task data or a results file that cannot be used (exit 1).
    """
    import click

    from cropmap.cli_common import echo_json, interrupt_note
    from training.data.cli import input_errors

    given = {
        "task": task,
        "data": data,
        "families": ",".join(family) if family else None,
        "variants": variants,
        "epochs": epochs,
        "device": device,
        "seed": seed,
        "label_column": label_column,
        "grid": grid,
        "season": season,
        "season_start": season_start,
        "split_seed": split_seed,
        "split_file": split_file,
        "recipe": recipe,
        "precision": precision,
        "labels": labels,
        "id_column": id_column,
        "layer": layer,
        "pixels": pixels,
        "buffer_m": buffer,
        "threads": threads,
        "selection_folds": selection_folds,
    }
    cfg_overrides = [f"{k}={v}" for k, v in given.items() if v is not None]
    if classes is not None:
        cfg_overrides.append(f"top_classes={classes}" if classes.isdigit() else f"class_map={classes}")
    if default_variant:
        cfg_overrides.append("default_variant=true")
    if no_baselines:
        cfg_overrides.append("baselines=false")
    try:
        cfg = load_config(DownstreamConfig, config, [*cfg_overrides, *overrides])
    except (ConfigError, ValueError) as err:
        raise click.BadParameter(" ".join(str(err).split()), param_hint="--config / --set") from err
    try:
        specs = [EncoderSpec.parse(e) for e in encoders]
    except ValueError as err:
        raise click.BadParameter(str(err), param_hint="--encoder") from err
    folds = cfg.selection_folds
    if folds and refit:
        raise click.BadParameter(
            f"trains the runs again without the model-selection split, and a cross-validated selection "
            f"(--selection-folds {folds}) trains them on every training sample already; expected --no-refit or no "
            "--refit with it",
            param_hint="--refit",
        )
    if folds:
        refit = False
    elif refit is None:
        refit = holdout_fraction(cfg) > 0
    elif refit and holdout_fraction(cfg) <= 0:
        raise click.BadParameter(
            f"trains the runs again without the model-selection split, and task {cfg.task} sets none aside "
            "(selection_holdout 0); expected --set selection_holdout=0.2 with it",
            param_hint="--refit",
        )
    for spec in specs:
        if not spec.path.is_file():
            raise click.BadParameter(
                f"encoder file {str(spec.path)!r} does not exist", param_hint="--encoder"
            )
    for name in ("class_map", "split_file", "labels"):
        path = getattr(cfg, name)
        if path is not None and not (path.exists() if name == "labels" else path.is_file()):
            flag = {"class_map": "--classes", "split_file": "--split-file", "labels": "--labels"}[name]
            raise click.BadParameter(
                f"{name.replace('_', ' ')} {str(path)!r} does not exist", param_hint=flag
            )
    # A CUDA device torch does not see is an error of the machine (one Error: line, exit 1), found before anything
    # is read or written.
    resolve_device(cfg.device)
    executor = _executor(
        workers=workers,
        scheduler=scheduler,
        cluster=cluster,
        threads=threads,
        gpus_per_task=gpus_per_task,
        dashboard=dashboard,
        settings={
            "queue": queue,
            "account": account,
            "cores": cores,
            "memory": memory,
            "walltime": walltime,
            "jobs": jobs,
            "job_extra": tuple(job_extra),
        },
    )
    with (
        interrupt_note("finished runs are kept in results.jsonl; rerun the same command to resume"),
        input_errors(),
    ):
        task_data = load_task(cfg, cache_dir=output / "extractions")
        notes = list(task_data.notes)
        if executor is None:
            choice = decide_threads(cfg.threads, deterministic=cfg.deterministic)
            cfg = dataclasses.replace(cfg, threads=choice.threads)
            notes.append(f"threads: {choice}")
        if logging.getLogger("training").isEnabledFor(logging.WARNING):
            for line in notes:
                click.echo(f"note: {line}", err=True)
        passes = training_passes(cfg, output, refit=refit)
        written = []
        for run_cfg, run_out, note in passes:
            if note:
                click.echo(f"note: {note}", err=True)
            if executor is None:
                written.append(
                    run_comparison(run_cfg, task_data, specs, run_out, show_progress=not no_progress)
                )
            else:
                from training.downstream.cluster import run_on_cluster

                written.append(run_on_cluster(run_cfg, task_data, specs, run_out, executor))
        results = written[0]
        n_runs = len(ResultsStore(results).records())
    summary = {
        "results": str(results),
        "runs": n_runs,
        "task": cfg.task,
        "report": f"cropmap evaluate protocol --results {results} -o {output / 'report'}",
        "best": f"cropmap export best {output} -o {output / 'model.onnx'}"
        + (f" --refit {output / REFIT}" if refit else ""),
    }
    if as_json:
        echo_json(summary)
        return
    click.echo(f"results: {results} ({n_runs} runs)")
    click.echo(f"report: {summary['report']}")
    click.echo(f"best model as a bundle: {summary['best']}")


def _executor(
    *,
    workers: int | None,
    scheduler: str | None,
    cluster: str | None,
    threads: int | None,
    gpus_per_task: int,
    dashboard: str | None,
    settings: dict[str, Any],
) -> Any:  # training.downstream.cluster.Executor | None
    """Where the runs execute: ``None`` for this process, else a cluster :class:`Executor` (options checked)."""
    import click

    job_given = [k for k, v in settings.items() if (v != 1 if k == "jobs" else v not in (None, ()))]
    if cluster is None and job_given:
        raise click.BadParameter(
            "applies to an HPC cluster only; expected --cluster with it",
            param_hint="--" + job_given[0].replace("_", "-"),
        )
    places = [f for f, v in (("--workers", workers), ("--scheduler", scheduler), ("--cluster", cluster)) if v]
    if len(places) > 1:
        raise click.UsageError(f"{' and '.join(places)} name different places to run; expected one of them")
    if not places:
        if gpus_per_task or dashboard is not None:
            flag = "--gpus-per-task" if gpus_per_task else "--dashboard"
            raise click.BadParameter(
                "applies to a Dask cluster; expected --workers, --scheduler or --cluster with it",
                param_hint=flag,
            )
        return None
    from training.downstream.cluster import Executor, hpc_cluster

    try:
        hpc = None if cluster is None else hpc_cluster(cluster, **settings)
    except ValueError as err:
        raise click.BadParameter(str(err), param_hint="--cluster") from err
    return Executor(
        workers=workers,
        scheduler=scheduler,
        cluster=hpc,
        threads=threads,
        gpus_per_task=gpus_per_task,
        dashboard=dashboard,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m training.downstream``: an alias of ``cropmap train downstream``; returns the exit status."""
    from training.downstream.cli import downstream_main

    return downstream_main(argv, prog_name="python -m training.downstream")


if __name__ == "__main__":
    raise SystemExit(main())
