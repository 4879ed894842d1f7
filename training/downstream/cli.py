"""``cropmap train downstream``, ``cropmap train tune`` and ``cropmap train sample-model``.

Torch-free: the options are declared here and each body imports the modules that train (torch, optuna) only when
the command runs, so ``--help`` is fast. ``python -m training.downstream``, ``python -m training.tune`` and
``python -m training.sample_model`` are aliases (their ``main(argv)`` runs these commands under the family's exit
policy, :func:`cropmap.cli_common.run_command`). See docs/downstream.md, docs/scaling.md and docs/cli.md.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from cropmap.cli_common import (
    DeviceType,
    alias_option,
    cluster_options,
    family_option,
    json_option,
    output_option,
    run_command,
    threads_option,
    verbosity_options,
)
from training.data.cli import required_output

__all__ = [
    "RECIPES",
    "downstream",
    "downstream_main",
    "rewrite_encoders",
    "sample_model",
    "tune",
    "tune_main",
]

RECIPES = ("papers", "robust")
"""``--recipe`` values (the keys of :data:`training.downstream.recipe.RECIPES`; a test keeps them equal)."""


def _encoders(ctx: click.Context, param: click.Parameter, value: tuple[str, ...]) -> tuple[str, ...]:
    """``--encoder`` values; one value may hold several, separated by commas or spaces (the old ``--encoders``)."""
    return tuple(item for v in value for item in v.replace(",", " ").split())


@click.command("downstream")
@click.option("--task", type=click.Choice(["1", "2", "real"]), default=None, help="Downstream task.")
@click.option(
    "--data",
    type=click.Path(path_type=Path),
    default=None,
    help="Simulated scene folder (tasks 1/2); a WorldCereal parquet, or a stack with --labels (real).",
)
@alias_option(
    "--encoder",
    "--encoders",
    "encoders",
    hidden_aliases=("--encoders",),
    multiple=True,
    metavar="METHOD_RATE=PATH",
    callback=_encoders,
    help="A pre-trained encoder, repeatable: --encoder unimodal_0.2=u02/encoder.pt --encoder bimodal_0.6=b06/encoder.pt.",
)
@family_option(help="A base model family (default: lstm, inception_time, transformer); repeat for several.")
@click.option("--variants", type=click.IntRange(min=0), default=None, help="Variants per family.")
@click.option("--epochs", type=click.IntRange(min=1), default=None, help="Epochs per run.")
@click.option(
    "--device",
    type=DeviceType(),
    default=None,
    help="Where runs train: auto (cuda if available), cpu, cuda, cuda:N (default: the configuration's, cpu). "
    "A CUDA device torch cannot see is an error, never a CPU run.",
)
@click.option("--seed", type=int, default=None, help="Seed of the variants, weights and batches (default 0).")
@click.option(
    "--recipe",
    type=click.Choice(list(RECIPES)),
    default=None,
    help="How base models train: robust (default) or papers (the papers' protocol, Table 1).",
)
@click.option("--no-baselines", is_flag=True, help="Skip the RandomForest and majority-class baselines.")
@click.option(
    "--refit/--no-refit",
    default=None,
    help="After the runs, train the same runs again on every training sample (no model-selection split) into "
    "OUT/refit; 'cropmap export best OUT' then exports the chosen runs from there. Default: on when the runs set a "
    "model-selection split aside (task real), off otherwise.",
)
@click.option(
    "--selection-folds",
    type=click.IntRange(min=2, max=20),
    default=None,
    metavar="K",
    help="Cross-validated selection: train the runs on every training sample into OUT and once per fold on the "
    "other K-1 folds into OUT/cv/fold<k>; 'cropmap export best OUT' then picks and calibrates on the out-of-fold "
    "predictions of all training samples instead of a selection split (K more trainings of every run).",
)
@click.option(
    "--precision",
    type=click.Choice(["fp32", "bf16"]),
    default=None,
    help="Compute precision: bf16 trains under bf16 autocast (GPUs); default fp32.",
)
@click.option(
    "--default-variant", is_flag=True, help="Also train each family with its default hyper-parameters."
)
@click.option(
    "--classes",
    metavar="N|CSV",
    default=None,
    help="Task real: the N most frequent labels (default 6), or a class map CSV match,name[,color].",
)
@click.option(
    "--label-column",
    default=None,
    help="Task real: integer label column (default ewoc_code); with --labels the polygons' label attribute.",
)
@click.option(
    "--grid",
    default=None,
    help="Task real: time grid: auto (default: the input's step, dekadal or monthly), monthly, dekadal, or "
    "comma-separated MM-DD stamps.",
)
@click.option(
    "--season", type=int, default=None, help="Task real: year the season starts in (default: most data)."
)
@click.option("--season-start", default=None, help="Task real: season start MM-DD (default 11-01).")
@click.option("--split-seed", type=int, default=None, help="Task real: seed of the train/validation split.")
@click.option(
    "--split-file",
    type=click.Path(path_type=Path),
    default=None,
    help="Task real: CSV sample_id,split (train/val) instead of a seeded split.",
)
@click.option(
    "--labels",
    type=click.Path(path_type=Path),
    default=None,
    metavar="POLYGONS",
    help="Task real: labelled polygons on the stack given as --data (any stack cropmap classify reads).",
)
@click.option("--id-column", default=None, help="With --labels: polygon attribute of unique parcel ids.")
@click.option("--layer", default=None, help="With --labels: layer of the polygon file.")
@click.option(
    "--pixels", default=None, help="With --labels: per polygon all (default), mean, or N random pixels."
)
@click.option(
    "--buffer",
    type=float,
    default=None,
    metavar="M",
    help="With --labels: shrink polygons by M metres (default 10).",
)
@required_output("Run directory: results.jsonl, models/, variants.db (a rerun resumes it).", metavar="FOLDER")
@click.option(
    "--config",
    type=click.Path(path_type=Path),
    default=None,
    help="TOML file with DownstreamConfig fields (training/configs/downstream*.toml).",
)
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="Configuration override, repeatable (--set n_train_per_class=500).",
)
@threads_option(
    help="CPU threads of OpenMP / BLAS and joblib (default: the usable CPUs other work leaves free; on a cluster: "
    "1 per run); torch trains on one thread per run unless --set deterministic=false."
)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=None,
    metavar="N",
    help="Run the runs as tasks of a local Dask cluster of N worker processes (with --device cuda: default one "
    "per GPU).",
)
@click.option(
    "--scheduler",
    default=None,
    metavar="ADDRESS",
    help="Run the runs on an existing dask.distributed cluster, e.g. tcp://10.0.0.5:8786 (the run directory must "
    "be on a file system its workers share).",
)
@cluster_options("run")
@click.option(
    "--gpus-per-task",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="GPU resources each run needs on a Dask cluster whose workers were started with --resources GPU=N.",
)
@click.option("--no-progress", is_flag=True, help="Hide progress bars.")
@json_option
@verbosity_options
def downstream(**options: Any) -> None:
    """Downstream comparison: supervised vs uni-modal vs bi-modal features for every base-model variant, in this
    process or as tasks of a Dask cluster (docs/downstream.md, docs/scaling.md)."""
    from training.downstream.run import run_command_line

    run_command_line(**options)


def rewrite_encoders(args: Sequence[str]) -> list[str]:
    """``--encoders A B C`` (the old form, several values after one flag) as ``--encoder A --encoder B ...``."""
    out: list[str] = []
    taking = False
    for arg in args:
        if arg == "--encoders":
            taking = True
            continue
        if taking and not arg.startswith("-"):
            out += ["--encoder", arg]
            continue
        taking = False
        out.append(arg)
    return out


def downstream_main(argv: Sequence[str] | None, prog_name: str) -> int:
    """The ``python -m`` alias of ``cropmap train downstream`` (old ``--encoders A B`` accepted)."""
    args = list(sys.argv[1:] if argv is None else argv)
    return run_command(downstream, rewrite_encoders(args), prog_name=prog_name)


@click.command("tune")
@click.option("--family", required=True, help="Base model family (lstm, inception_time, transformer...).")
@click.option(
    "--variants",
    type=click.IntRange(min=1),
    default=10,
    show_default=True,
    help="Variants to print (no --trials).",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the sampler.")
@click.option(
    "--storage",
    default=None,
    help="Where the study lives: FILE.db (SQLite), FILE.log (journal, shared file systems), sqlite:///, "
    "journal:///, postgresql://, mysql:// (docs/scaling.md).",
)
@click.option(
    "--trials",
    type=click.IntRange(min=1),
    default=None,
    help="Tune: run trials until the study holds this many.",
)
@click.option("--study", default=None, help="Study name (default tune-<family>-seed<seed>).")
@click.option(
    "--worker", type=int, default=0, show_default=True, help="This worker's number (e.g. $SLURM_PROCID)."
)
@click.option("--timeout", type=float, default=None, help="Stop this worker after this many seconds.")
@click.option(
    "--task", type=click.Choice(["1", "2", "real"]), default=None, help="Downstream task of the data."
)
@click.option(
    "--data",
    type=click.Path(path_type=Path),
    default=None,
    help="Task data, as cropmap train downstream --data.",
)
@click.option("--epochs", type=click.IntRange(min=1), default=None, help="Epochs per trial.")
@click.option(
    "--config", type=click.Path(path_type=Path), default=None, help="TOML file with DownstreamConfig fields."
)
@click.option(
    "--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Configuration override, repeatable."
)
@output_option("Also write the study summary (JSON) here.", required=False, aliases=(), metavar="FILE")
@verbosity_options
def tune(**options: Any) -> None:
    """Print the sampled hyper-parameter variants of one family as JSON lines, or fill a tuning study that several
    workers may share (--trials)."""
    from training.downstream.tune import run_command_line

    run_command_line(**options)


@click.command("sample-model")
@click.option(
    "--config",
    type=click.Path(path_type=Path),
    default=None,
    help="TOML config (default: training/configs/sample_model.toml).",
)
@output_option(
    "Run directory: encoder, classifier.pt (what cropmap export bundle exports), summary (never the installed "
    "package).",
    required=False,
    default=Path("runs") / "sample_model",
    metavar="FOLDER",
)
@click.option(
    "--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Configuration override, repeatable."
)
@click.option(
    "--device",
    type=DeviceType(),
    default="cpu",
    show_default=True,
    help="Where pre-training runs: auto, cpu, cuda, cuda:N (the base model trains on the CPU).",
)
@click.option("--no-progress", is_flag=True, help="Hide progress bars.")
@verbosity_options
def sample_model(**options: Any) -> None:
    """Train the shipped Flanders sample model end to end (pre-training, then the base model)."""
    from training.downstream.sample_model import run_command_line

    run_command_line(**options)


def tune_main(argv: Sequence[str] | None, prog_name: str) -> int:
    """The ``python -m`` alias of ``cropmap train tune`` (the old ``--json FILE`` is ``-o FILE``)."""
    args = list(sys.argv[1:] if argv is None else argv)
    return run_command(tune, ["-o" if a == "--json" else a for a in args], prog_name=prog_name)
