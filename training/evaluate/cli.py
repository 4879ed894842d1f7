"""``cropmap evaluate protocol | probe | mapscore | seedtable | season-transfer | s1-bimodal``.

The commands of the ``cropmap evaluate`` group (:mod:`training.cli`). This module imports click and light modules
only, so ``--help`` never imports torch, scikit-learn or rasterio: the work is imported inside each command.
The old ``python -m`` forms (``python -m training.evaluate``, ``python -m training.probe``, ``.mapscore``,
``.seedtable``, ``.season_transfer``, ``.s1_bimodal``) run the same commands through
:func:`cropmap.cli_common.run_command`; their old spellings stay accepted: ``--out`` for ``-o``, ``--seeds 0 1 2``
and ``--datasets a b`` in s1-bimodal, and in the ``python -m`` forms of probe and mapscore ``--json OUT`` (the
file they wrote before ``-o``) as ``-o OUT`` (:func:`cropmap.cli_common.json_path_as_output`).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

import click

from cropmap.cli_common import (
    alias_option,
    device_option,
    echo_json,
    json_option,
    output_option,
    overwrite_option,
    refuse_existing,
    seed_option,
    threads_option,
    verbosity_options,
)
from cropmap.errors import OutputExistsError
from cropmap.safeio.atomic import atomic_write
from training.data.cli import TrainingInputError, input_errors, required_output

__all__ = [
    "S1_DATASETS",
    "mapscore",
    "probe",
    "protocol",
    "run_alias",
    "s1_bimodal",
    "season_transfer",
    "seedtable",
]

S1_DATASETS = ("flanders2021", "france2022")
"""The data sets of s1-bimodal (:data:`training.evaluate.s1_bimodal.DATASETS`), kept here for ``--help``;
tests/training/test_s1pairs.py checks that they agree."""
S1_DEFAULT_DATASETS = ("france2022", "flanders2021")
S1_DEFAULT_SEEDS = (0, 1, 2, 3, 4)
ARGV_KEY = "training.evaluate.cli.argv"
"""``ctx.meta`` key of the arguments a :class:`ListOptionsCommand` was given (as typed, for run records)."""


# ---------------------------------------------------------------------------------------------- old spellings


def run_alias(
    command: click.Command,
    argv: Sequence[str] | None,
    prog_name: str,
    rewrite: Callable[[Sequence[str]], list[str]] | None = None,
) -> int:
    """:func:`cropmap.cli_common.run_command` for a ``python -m`` alias, its arguments first rewritten."""
    from cropmap.cli_common import run_command

    args = list(sys.argv[1:] if argv is None else argv)
    return run_command(command, rewrite(args) if rewrite is not None else args, prog_name=prog_name)


class ListOptionsCommand(click.Command):
    """A command whose options in :attr:`list_options` also take several values after one flag, as argparse's
    ``nargs="+"`` did (``--seeds 0 1 2`` is read as ``--seeds 0 --seeds 1 --seeds 2``)."""

    list_options: tuple[str, ...] = ()

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        spread: list[str] = []
        current: str | None = None
        for arg in args:
            if arg.startswith("-"):
                current = arg if arg in self.list_options else None
                spread.append(arg)
                continue
            if current is not None and spread[-1] != current:
                spread.append(current)  # a further value of the same list option
            spread.append(arg)
        ctx.meta[ARGV_KEY] = list(args)
        return super().parse_args(ctx, spread)


# ---------------------------------------------------------------------------------------------- protocol


REPORT_FILES = ("report.md", "table1.md", "per_class.md", "summary.json")
"""The report files of every protocol run (the figures, ``gain_<task>.png`` and ``win_<task>_<family>.png``, follow
the tasks and families of the results)."""


def _refuse_report_files(output: Path, names: Sequence[str], overwrite: bool) -> None:
    existing = [output / name for name in names if (output / name).exists()]
    if existing and not overwrite:
        shown = ", ".join(p.name for p in existing[:4]) + (" ..." if len(existing) > 4 else "")
        raise OutputExistsError(
            f"{output} holds a report already ({shown}); pass --overwrite to replace its files"
        )


@click.command("protocol")
@click.option(
    "--results",
    type=click.Path(path_type=Path),
    required=True,
    help="results.jsonl written by 'cropmap train downstream'.",
)
@required_output(
    "Report folder: report.md, table1.md, per_class.md, summary.json and the figures are written into it "
    "(other files in it stay).",
    metavar="DIR",
)
@overwrite_option(help="Replace the report files an earlier run left in the folder.")
@verbosity_options
def protocol(results: Path, output: Path, overwrite: bool) -> None:
    """The papers' comparison report of downstream runs: win matrices, relative gains, Table 1 and per-class
    metrics. Each report file appears complete, after all of them were written."""
    from training.evaluate.run import table1_markdown, write_report

    _refuse_report_files(output, REPORT_FILES, overwrite)
    made = not output.exists()
    output.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".report.", suffix=".tmp", dir=output))  # one file system: renames
    try:
        with input_errors():
            summary = write_report(results, tmp)
        names = sorted(p.name for p in tmp.iterdir())
        _refuse_report_files(output, names, overwrite)  # the figures, named after the results
        for name in names:
            os.replace(tmp / name, output / name)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if made and not any(output.iterdir()):
            output.rmdir()
        raise
    tmp.rmdir()
    click.echo(table1_markdown(summary))
    click.echo(f"report written to {output / 'report.md'}")


# ---------------------------------------------------------------------------------------------- probe


def _encoders(ctx: click.Context, param: click.Parameter, value: tuple[str, ...]) -> list[tuple[str, Path]]:
    pairs = []
    for item in value:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise click.BadParameter(f"{item!r}; expected NAME=PATH")
        pairs.append((name, Path(path)))
    return pairs


@click.command("probe")
@click.option(
    "--data",
    type=click.Path(path_type=Path),
    required=True,
    help="Scene folder, or a folder with scene_a/ ('cropmap data simulate').",
)
@click.option(
    "--encoder",
    "encoders",
    multiple=True,
    callback=_encoders,
    metavar="NAME=PATH",
    help="A pre-trained encoder checkpoint; repeat for several.",
)
@click.option(
    "--max-per-class",
    type=int,
    default=200,
    show_default=True,
    help="Single-date pixels per class and stamp.",
)
@click.option(
    "--n-series", type=int, default=100, show_default=True, help="Series per class for the series probes."
)
@click.option(
    "--pooling",
    type=click.Choice(["mean", "flatten"]),
    multiple=True,
    help="Series probes: mean or flatten of the per-stamp embeddings; repeat for both (default: mean).",
)
@seed_option()
@device_option(default="cpu")
@output_option("Also write the report (JSON) to this file.", required=False, metavar="OUT.json")
@overwrite_option
@json_option
@verbosity_options
def probe(
    data: Path,
    encoders: list[tuple[str, Path]],
    max_per_class: int,
    n_series: int,
    pooling: tuple[Literal["flatten", "mean"], ...],
    seed: int,
    device: str,
    output: Path | None,
    overwrite: bool,
    as_json: bool,
) -> None:
    """Balanced accuracies of a linear and a k-NN probe on raw bands, a random encoder and each given encoder:
    probes fitted on labelled pixels of the pre-training pool, scored on the fields pre-training never saw.
    The encoders run on --device; the probes fit on the CPU."""
    import torch

    from training.device import resolve_device
    from training.evaluate.probe import OnDevice, scene_probe
    from training.models.encoder import Normalize, NormalizedEncoder, ResMLP, load_frozen_encoder

    if output is not None:
        refuse_existing(output, overwrite)
    where = resolve_device(device)  # a CUDA device torch does not see: DeviceError, one Error: line
    models: dict[str, torch.nn.Module | None] = {"raw bands": None}
    loaded = {name: load_frozen_encoder(path) for name, path in encoders}
    if loaded:
        # Same architecture and normalisation as the first given encoder, untrained.
        first = next(iter(loaded.values()))
        torch.manual_seed(seed)
        stats = first.normalize.norm_stats()
        if isinstance(first.encoder, ResMLP):
            untrained = ResMLP(**first.encoder.config)
            norm = Normalize(stats["mean"], stats["std"])
            models["random encoder"] = NormalizedEncoder(norm, untrained, frozen=True)
    models.update(loaded)
    if where.type != "cpu":
        models = {name: None if enc is None else OnDevice(enc, where) for name, enc in models.items()}
    with input_errors():
        report = scene_probe(
            data,
            models,
            max_per_class=max_per_class,
            n_series=n_series,
            poolings=pooling or ("mean",),
            seed=seed,
        )
    if output is not None:
        atomic_write(output, json.dumps(report, indent=2) + "\n")
    if as_json:
        echo_json(report)
        return
    cols = list(next(iter(report.values())))
    click.echo(f"{'features':<20}" + "".join(f"{c:>22}" for c in cols))
    for name, row in report.items():
        click.echo(f"{name:<20}" + "".join(f"{row[c]:22.3f}" for c in row))
    if output is not None:
        click.echo(f"wrote {output}")


# ---------------------------------------------------------------------------------------------- mapscore


@click.command("mapscore")
@click.argument("map_tif", metavar="MAP.tif", type=click.Path(path_type=Path))
@click.argument("fields", metavar="FIELDS.gpkg", type=click.Path(path_type=Path))
@click.option("--code-column", default="class_code", show_default=True, help="Column of class codes.")
@click.option("--name-column", default="class_name", show_default=True, help="Column of class names.")
@click.option("--layer", help="Layer of FIELDS (default: the first).")
@output_option("Also write all scores (JSON) to this file.", required=False, metavar="OUT.json")
@overwrite_option
@json_option
@verbosity_options
def mapscore(
    map_tif: Path,
    fields: Path,
    code_column: str,
    name_column: str,
    layer: str | None,
    output: Path | None,
    overwrite: bool,
    as_json: bool,
) -> None:
    """Score a class MAP.tif (band 1; 0 / nodata = no class, as 'cropmap classify' writes) against labelled field
    polygons FIELDS.gpkg: overall accuracy, macro F1, kappa, per-class scores and the confusion matrix."""
    from training.evaluate.mapscore import format_scores, score_map

    if output is not None:
        refuse_existing(output, overwrite)
    with input_errors():
        scores = score_map(map_tif, fields, code_column=code_column, name_column=name_column, layer=layer)
    if output is not None:
        atomic_write(output, json.dumps(scores, indent=2) + "\n")
    if as_json:
        echo_json(scores)
        return
    click.echo(format_scores(scores))
    if output is not None:
        click.echo(f"wrote {output}")


# ---------------------------------------------------------------------------------------------- seedtable


@click.command("seedtable")
@click.argument("runs", metavar="RUN_DIR...", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--title", default="downstream runs", show_default=True, help="Table title.")
@output_option(
    "Also write the table (markdown) here and its numbers beside it (.json).",
    required=False,
    metavar="OUT.md",
)
@overwrite_option
@json_option
@verbosity_options
def seedtable(
    runs: tuple[Path, ...], title: str, output: Path | None, overwrite: bool, as_json: bool
) -> None:
    """Mean +- std over split seeds of every model and baseline, from downstream RUN_DIRs (one per
    --split-seed), with each model's paired gap to the RandomForest."""
    from training.evaluate.seedtable import seed_table

    numbers = output.with_suffix(".json") if output is not None else None
    if output is not None and numbers is not None:
        refuse_existing(output, overwrite)
        refuse_existing(numbers, overwrite)
    with input_errors():
        try:
            table, stats = seed_table(list(runs), title)
        except KeyError as err:
            raise TrainingInputError(
                f"a results.jsonl record of {', '.join(map(str, runs))} lacks the key {err}; expected the "
                "records 'cropmap train downstream' writes"
            ) from err
    if output is not None and numbers is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(numbers, json.dumps(stats, indent=1))
        atomic_write(output, table)
    if as_json:
        echo_json(stats)
    else:
        click.echo(table)


# ---------------------------------------------------------------------------------------------- season-transfer


@click.command("season-transfer")
@click.option(
    "--data",
    type=click.Path(path_type=Path),
    required=True,
    help="Folder written by 'cropmap data simulate' (scene_a/ and scene_b/).",
)
@click.option("--family", default="inception_time", show_default=True, help="The model family.")
@click.option(
    "--repeats",
    type=click.IntRange(min=1),
    default=3,
    show_default=True,
    help="Seeds of the family's defaults (ensembled).",
)
@click.option("--n-train", type=int, default=60, show_default=True, help="Training pixels per class.")
@click.option("--n-val", type=int, default=30, show_default=True, help="Validation pixels per class.")
@output_option("Also write the markdown table here.", required=False, metavar="OUT.md")
@overwrite_option
@threads_option(default=1, help="torch CPU threads.")
@verbosity_options
def season_transfer(
    data: Path,
    family: str,
    repeats: int,
    n_train: int,
    n_val: int,
    output: Path | None,
    overwrite: bool,
    threads: int,
) -> None:
    """Out-of-season check: accuracy on scene B (another season and region, never seen) next to the in-season
    figure on scene A's held-out fields, for each seed of the family's defaults, their ensemble and the
    RandomForest."""
    import torch

    from training.evaluate.season_transfer import season_transfer as run_season_transfer

    if output is not None:
        refuse_existing(output, overwrite)
    torch.set_num_threads(threads)
    with input_errors():
        table = run_season_transfer(data, family=family, repeats=repeats, n_train=n_train, n_val=n_val)
    if output is not None:
        atomic_write(output, table)
    click.echo(table)


# ---------------------------------------------------------------------------------------------- s1-bimodal


class _S1BimodalCommand(ListOptionsCommand):
    list_options = ("--seeds", "--seed", "--datasets", "--dataset")


@click.command("s1-bimodal", cls=_S1BimodalCommand)
@output_option(
    "Run folder (pairs, encoders, results.json, s1_bimodal.md); a rerun reuses its finished encoders.",
    required=False,
    default=Path("runs/s1_bimodal"),
    metavar="DIR",
)
@alias_option(
    "--dataset",
    "--datasets",
    "datasets",
    hidden_aliases=("--datasets",),
    type=click.Choice(S1_DATASETS),
    multiple=True,
    help=f"A data set; repeat for several (default: {' and '.join(S1_DEFAULT_DATASETS)}).",
)
@alias_option(
    "--seed",
    "--seeds",
    "seeds",
    hidden_aliases=("--seeds",),
    type=int,
    multiple=True,
    help=f"A split (and pre-training) seed; repeat for several (default: {' '.join(map(str, S1_DEFAULT_SEEDS))}).",
)
@click.option("--epochs", type=int, default=50, show_default=True, help="Pre-training epochs (both modes).")
@threads_option(default=1, help="torch CPU threads.")
@click.option(
    "--write-doc",
    type=click.Path(path_type=Path),
    metavar="FILE.md",
    help="Replace the s1-bimodal block of this markdown file with the table.",
)
@verbosity_options
def s1_bimodal(
    output: Path,
    datasets: tuple[str, ...],
    seeds: tuple[int, ...],
    epochs: int,
    threads: int,
    write_doc: Path | None,
) -> None:
    """Bi-modal S2 + S1 against uni-modal S2 pre-training on real WorldCereal parcels, by linear probe: the
    "S2 + S1 on real parcels" table of docs/results.md."""
    from training.evaluate.s1_bimodal import run_experiment

    ctx = click.get_current_context()
    with input_errors():
        body = run_experiment(
            output,
            datasets=datasets or S1_DEFAULT_DATASETS,
            seeds=seeds or S1_DEFAULT_SEEDS,
            epochs=epochs,
            threads=threads,
            write_doc=write_doc,
            command=" ".join([ctx.command_path, *ctx.meta.get(ARGV_KEY, [])]),
        )
    click.echo(body)
