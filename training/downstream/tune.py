"""The papers' hyper-parameter spaces and seeded, resumable sampling of model variants.

The downstream protocol (PAPER.md section 4) does not optimise: it samples ``n``
variants per base-model family with Optuna and trains every one of them with each
method (supervised, uni-modal, bi-modal) using the same hyper-parameters. The
variants are therefore sampled once per family and stored in an Optuna study
(SQLite), so an interrupted run reloads exactly the same variants.

Variant ``k`` of a family is drawn by a :class:`optuna.samplers.RandomSampler` seeded
from ``(seed, family, k)``, so the set does not depend on whether sampling was
interrupted, and families do not share their learning-rate draws.
Each variant is stored as a completed trial whose value is ``0.0``: the study is a
record of samples, not an optimisation.

Run ``python -m training.tune --family lstm --variants 10 --storage runs/variants.db``
to print the variants.

``python -m training.tune --family lstm --trials 40 --task real --data PARCELS --storage runs/tune.log``
tunes instead (:func:`run_study`): it trains trials and maximises their macro F1 on a selection split of the
training samples. Any number of workers (``--worker K``) on any number of machines may run that same command
against one storage (:mod:`training.downstream.studies`: SQLite, a journal file on a shared file system, or a database
server) and fill one study; rerunning it continues the study.
"""

from __future__ import annotations

import json
import logging
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from training.models import MODELS

if TYPE_CHECKING:  # optuna is imported where variants are sampled, so training imports without it
    import optuna

    from training.downstream.config import DownstreamConfig
    from training.downstream.tasks import TaskData

logger = logging.getLogger(__name__)

LR_RANGE = (1e-5, 1e-3)
"""Learning-rate range, sampled log-uniformly (all families)."""

SPACES: dict[str, dict[str, tuple[Any, ...]]] = {
    "lstm": {"hidden": (32, 64, 128, 256), "layers": (2, 3, 4, 5, 6)},
    "inception_time": {"layers": (2, 4, 8), "hidden": (128, 256, 512, 1024), "kernel": (40, 80, 120, 136)},
    "transformer": {"d_model": (32, 64, 128), "heads": (2, 4, 8), "layers": (2, 3, 4, 5, 6)},
}
"""The papers' search spaces per family (PAPER.md section 2); other model fields keep their defaults."""


def suggest(trial: optuna.Trial, family: str) -> dict[str, Any]:
    """Suggest one variant of a base-model family from the papers' space.

    Args:
        trial: The Optuna trial that records the choices.
        family: Registry key of the base model.

    Returns:
        ``{"lr": float, **model_hp}``; ``model_hp`` are keyword arguments of the
        family's builder.

    Raises:
        ValueError: On an unknown family.
    """
    if family not in SPACES:
        raise ValueError(f"unknown model family {family!r}; choose from {sorted(SPACES)}")
    params: dict[str, Any] = {
        name: trial.suggest_categorical(name, list(choices)) for name, choices in SPACES[family].items()
    }
    params["lr"] = trial.suggest_float("lr", *LR_RANGE, log=True)
    return params


def split_lr(variant: dict[str, Any]) -> tuple[float, dict[str, Any]]:
    """Split a variant into its learning rate and the builder's hyper-parameters."""
    hp = dict(variant)
    return float(hp.pop("lr")), hp


def variant_seed(seed: int, family: str, k: int) -> int:
    """The sampler seed of variant ``k`` of ``family`` (stable across runs and platforms)."""
    return zlib.crc32(f"{seed}/{family}/{k}".encode()) & 0x7FFFFFFF


def sample_variants(
    family: str, n: int = 10, *, seed: int = 0, storage: str | Path | None = None
) -> list[dict[str, Any]]:
    """Sample (or reload) ``n`` variants of a family.

    Args:
        family: Registry key of the base model.
        n: Number of variants.
        seed: Base seed; variant ``k`` uses a seed derived from ``(seed, family, k)``.
        storage: Where the study is kept (created when missing): a SQLite file, a journal file or a database
            URL (:func:`training.downstream.studies.open_storage`); ``None`` samples in memory.

    Returns:
        ``n`` dicts ``{"lr": float, **model_hp}``, in variant order. The same
        ``(family, seed)`` gives the same list, with or without storage, however
        often it is interrupted and resumed; asking for more variants extends the list.

    Raises:
        ValueError: On an unknown family or ``n < 1``.
    """
    if family not in SPACES or family not in MODELS:
        raise ValueError(f"unknown model family {family!r}; choose from {sorted(SPACES)}")
    if n < 1:
        raise ValueError(f"number of variants must be >= 1, got {n}")
    import optuna

    from training.downstream.studies import open_storage

    backend = open_storage(storage)
    name = f"variants-{family}-seed{seed}"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name=name, storage=backend, load_if_exists=True)
    done = {
        t.number: t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.COMPLETE
    }
    broken = [
        t.number for t in study.get_trials(deepcopy=False) if t.state != optuna.trial.TrialState.COMPLETE
    ]
    if broken:
        raise ValueError(
            f"study {name!r} in {storage} holds unfinished trials {broken}; it was not written by "
            "sample_variants or was corrupted - delete the file to resample"
        )
    if sorted(done) != list(range(len(done))):
        raise ValueError(f"study {name!r} in {storage} has non-contiguous trial numbers {sorted(done)}")
    for k in range(len(done), n):
        # A fresh sampler per variant, seeded by its index, keeps variant k independent of interruptions.
        sampler = optuna.samplers.RandomSampler(seed=variant_seed(seed, family, k))
        study_k = optuna.load_study(study_name=name, storage=backend, sampler=sampler)
        trial = study_k.ask()
        if trial.number != k:
            raise RuntimeError(
                f"study {name!r} is being extended concurrently (expected trial {k}, got {trial.number})"
            )
        suggest(trial, family)
        study_k.tell(trial, 0.0)
        done[k] = study_k.get_trials(deepcopy=False)[k]
        logger.info("sampled %s variant %d: %s", family, k, done[k].params)
    return [dict(done[k].params) for k in range(n)]


SELECTION_FRACTION = 0.25
"""Share of the training samples (stratified) a tuning study scores its trials on."""


def run_study(
    cfg: DownstreamConfig,
    data: TaskData,
    family: str,
    *,
    storage: str | Path | None,
    study_name: str,
    n_trials: int,
    timeout: float | None = None,
    worker: int = 0,
    show_progress: bool = False,
) -> optuna.Study:
    """Fill the study ``study_name`` in ``storage`` with trials of ``family`` until it holds ``n_trials``.

    Each trial samples a variant from the papers' space (:func:`suggest`; TPE, seeded by ``(cfg.seed, worker)``),
    trains it as the protocol (:mod:`training.downstream.protocol`) trains a supervised run (``cfg``'s recipe, epochs, batch size, device),
    on the task's training samples less a stratified selection split (:data:`SELECTION_FRACTION`, seeded by
    ``cfg.seed``), and returns the macro F1 on that selection split. Threads as the protocol decides them
    (:func:`training.downstream.threads.decide_threads`: ``cfg.threads``, torch one per trial when
    ``cfg.deterministic``). The task's validation samples are never
    seen, so a score reported on them after tuning stays honest.

    Any number of workers (processes, machines, jobs) may call this with the same storage and study name at
    once: Optuna gives each asked trial its own number, so no trial is run twice. A worker stops when the
    study's finished and running trials reach ``n_trials`` (workers that ask at the same instant may start
    one trial each past it), after ``timeout`` seconds, or on Ctrl-C (its running trial is marked failed).
    A later call with the same arguments continues the study.

    Raises:
        ValueError: On an unknown family, ``n_trials < 1``, or a study of this name made for another family.
        training.downstream.studies.StorageError: On a storage string naming no storage.
    """
    import os
    import socket
    import time

    import numpy as np
    import optuna
    import torch

    from training.device import resolve_device
    from training.downstream import loop
    from training.downstream.recipe import selection_split
    from training.downstream.studies import fail_orphaned_trials, open_storage
    from training.models import build_model
    from training.models.encoder import Normalize, compute_norm_stats

    if family not in SPACES or family not in MODELS:
        raise ValueError(f"unknown model family {family!r}; choose from {sorted(SPACES)}")
    if n_trials < 1:
        raise ValueError(f"number of trials must be >= 1, got {n_trials}")
    from training.downstream.threads import apply_threads, decide_threads

    threads = decide_threads(cfg.threads, deterministic=cfg.deterministic)
    apply_threads(threads)
    logger.info("threads: %s", threads)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = optuna.samplers.TPESampler(seed=variant_seed(cfg.seed, family, worker), constant_liar=True)
    study = optuna.create_study(
        study_name=study_name,
        storage=open_storage(storage),
        direction="maximize",
        sampler=sampler,
        load_if_exists=True,
    )
    made_for = study.user_attrs.get("family")
    if made_for is None:
        study.set_user_attr("family", family)
    elif made_for != family:
        raise ValueError(
            f"study {study_name!r} in {storage} tunes {made_for}, not {family}; use another --study"
        )

    fit, sel = selection_split(
        np.asarray(data.y_train), SELECTION_FRACTION, cfg.seed, groups=data.groups_train
    )
    stats = compute_norm_stats(np.asarray(data.x_train)[fit])
    front = Normalize(stats["mean"], stats["std"])
    x = torch.from_numpy(np.ascontiguousarray(data.x_train, dtype=np.float32))
    y = torch.from_numpy(np.asarray(data.y_train, dtype=np.int64))
    x_fit, x_sel = loop.encode(front, x[fit]), loop.encode(front, x[sel])
    y_fit, y_sel = y[fit], y[sel]
    recipe = cfg.training_recipe()
    n_stamps, n_classes = int(x.shape[1]), len(data.class_names)

    def objective(trial: optuna.Trial) -> float:
        trial.set_user_attr("host", socket.gethostname())
        trial.set_user_attr("pid", os.getpid())
        lr, hp = split_lr(suggest(trial, family))
        hp = recipe.adapt_hp(family, hp, n_stamps)
        seed = loop.run_seed(cfg.seed, "study", study_name, trial.number)
        torch.manual_seed(seed)
        model = build_model(family, int(x_fit.shape[2]), n_classes, **hp)
        t0 = time.perf_counter()
        res = loop.train_run(
            model,
            x_fit,
            y_fit,
            x_sel,
            y_sel,
            lr=lr,
            epochs=cfg.epochs,
            batch_size=cfg.batch_size,
            seed=seed,
            device=str(resolve_device(cfg.device)),
            eval_every=cfg.eval_every,
            recipe=recipe,
            precision=cfg.precision,
        )
        attrs = {
            "selection_accuracy": res["val_accuracy"],
            "epochs_run": res["epochs_run"],
            "seconds": time.perf_counter() - t0,
            "worker": worker,
            "hp": hp,
        }
        for key, value in attrs.items():
            trial.set_user_attr(key, value)
        logger.info(
            "%s trial %d (worker %d): selection macro F1 %.4f",
            study_name,
            trial.number,
            worker,
            res["macro_f1"],
        )
        return float(res["macro_f1"])

    orphaned = fail_orphaned_trials(study)
    if orphaned:
        logger.warning(
            "study %s: running trials %s belonged to workers that are gone; marked failed",
            study_name,
            orphaned,
        )
    counted = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.RUNNING)
    if len(study.get_trials(deepcopy=False, states=counted)) < n_trials:
        study.optimize(
            objective,
            timeout=timeout,
            callbacks=[optuna.study.MaxTrialsCallback(n_trials, states=counted)],
            catch=(),
            show_progress_bar=show_progress,
            gc_after_trial=True,
        )
    return study


def study_summary(study: optuna.Study) -> dict[str, Any]:
    """The study as JSON: trials by state, the best trial's number, value and parameters."""
    import optuna

    trials = study.get_trials(deepcopy=False)
    states = {s.name.lower(): sum(t.state == s for t in trials) for s in optuna.trial.TrialState}
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    best = study.best_trial if complete else None
    return {
        "study": study.study_name,
        "family": study.user_attrs.get("family"),
        "trials": {k: v for k, v in states.items() if v},
        "best": None
        if best is None
        else {
            "number": best.number,
            "value": best.value,
            "params": best.params,
            "worker": best.user_attrs.get("worker"),
        },
    }


def run_command_line(
    *,
    family: str,
    variants: int,
    seed: int,
    storage: str | None,
    trials: int | None,
    study: str | None,
    worker: int,
    timeout: float | None,
    task: str | None,
    data: Path | None,
    epochs: int | None,
    config: Path | None,
    overrides: Sequence[str],
    output: Path | None,
) -> None:
    """The body of ``cropmap train tune`` (:mod:`training.downstream.cli`).

    Raises:
        click.BadParameter / click.UsageError: An unknown family, study options without ``--trials``, ``--trials``
            without ``--data``, a configuration that does not fit (exit 2).
        TrainingInputError: A storage, study or task data that cannot be used (exit 1).
    """
    import sys

    import click

    from cropmap.cli_common import interrupt_note
    from training.data.cli import input_errors

    if family not in SPACES:
        raise click.BadParameter(
            f"{family!r}; expected one of {', '.join(sorted(SPACES))}", param_hint="--family"
        )
    if trials is None:
        if data is not None or study is not None:
            raise click.UsageError("--data and --study tune a study: give --trials N too")
        with input_errors():
            sampled = sample_variants(family, variants, seed=seed, storage=storage)
        for k, variant in enumerate(sampled):
            click.echo(json.dumps({"family": family, "variant": k, **variant}))
        return
    if data is None:
        raise click.UsageError("--trials needs --data (and --task) to train the trials on")
    from training.config import ConfigError, load_config
    from training.downstream.config import DownstreamConfig
    from training.downstream.tasks import load_task

    cfg_overrides = [f"seed={seed}", f"families={family}"]
    cfg_overrides += [f"{k}={v}" for k, v in (("task", task), ("data", data), ("epochs", epochs)) if v]
    name = study or f"tune-{family}-seed{seed}"
    try:
        cfg = load_config(DownstreamConfig, config, [*cfg_overrides, *overrides])
    except (ConfigError, ValueError) as err:
        raise click.BadParameter(" ".join(str(err).split()), param_hint="--config / --set") from err
    with (
        interrupt_note(f"study {name!r} keeps its finished trials; rerun the same command to continue it"),
        input_errors(),
    ):
        task_data = load_task(cfg)
        result = run_study(
            cfg,
            task_data,
            family,
            storage=storage,
            study_name=name,
            n_trials=trials,
            timeout=timeout,
            worker=worker,
            show_progress=sys.stderr.isatty(),
        )
        summary = study_summary(result)
        if output is not None:
            from cropmap.safeio.atomic import atomic_write

            atomic_write(output, json.dumps(summary, indent=2) + "\n")
    click.echo(json.dumps(summary))


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m training.tune``: an alias of ``cropmap train tune``; returns the exit status."""
    from training.downstream.cli import tune_main

    return tune_main(argv, prog_name="python -m training.tune")


if __name__ == "__main__":
    raise SystemExit(main())
