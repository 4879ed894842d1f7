"""The ``cropmap export`` command group (the ``export`` extra): ``bundle``, ``best`` and ``score``.

    cropmap export bundle CHECKPOINT -o model.onnx [--weights fp32|fp16|int8] [--calibration-data TRAIN.npz]
    cropmap export best RUN_DIR -o model.onnx [--metric macro_f1|accuracy] [--task real]
        [--select-on auto|cv|selection|validation]
    cropmap export score BUNDLE --data SERIES.npz | --run RUN_DIR [--data PARCELS] [--split test|...]
        [-o SCORE.json] [--json]

Registered through the ``cropmap.commands`` entry point ``export`` (pyproject.toml). The group is lazy and the
commands import torch, onnx and the exporters' modules inside their bodies, so ``--help`` stays fast. Without the
``export`` extra the group is still listed by ``cropmap --help`` and running it prints a one-line hint.
``python -m exporters`` and ``python -m exporters.score`` are aliases (docs/cli.md).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from cropmap.cli_common import (
    LazyGroup,
    echo_json,
    interrupt_note,
    json_option,
    output_option,
    overwrite_option,
    refuse_existing,
    verbosity_options,
    weights_option,
)

__all__ = ["EXPORT_COMMANDS", "EXPORT_REQUIRES", "best", "bundle", "export", "score"]

F = TypeVar("F", bound=Callable[..., Any])

EXPORT_REQUIRES = ("torch", "onnx")
"""Top-level modules the ``export`` extra installs; one missing: the group prints the extra's hint."""

EXPORT_COMMANDS = {
    "bundle": "exporters.cli:bundle",
    "best": "exporters.cli:best",
    "score": "exporters.cli:score",
}
"""``cropmap export`` subcommand -> ``module:attribute`` of its click command."""

# The choices and defaults the options show, kept here so that --help imports no torch; tests/test_cli_family.py
# checks them against exporters.best, exporters.quantize, exporters.to_onnx and exporters.score.
METRIC_CHOICES = ("accuracy", "macro_f1")
SELECT_SPLITS = ("auto", "cv", "selection", "validation")
INT8_METHODS = ("auto", "static", "dynamic")
DEFAULT_OPSET = 17
DEFAULT_MIN_AGREEMENT = 0.99
SCORE_SPLITS = ("test", "selection", "train", "all")

export = LazyGroup(
    "export",
    EXPORT_COMMANDS,
    extra="export",
    requires=EXPORT_REQUIRES,
    help="Export a checkpoint or the best run of a run directory as a bundle; score a bundle.",
)


def _export_options(f: F) -> F:
    """The options ``bundle`` and ``best`` share: output, opset, tolerance, storage precision and its checks."""
    for decorator in reversed(
        (
            output_option("Destination bundle (.onnx).", metavar="BUNDLE"),
            click.option(
                "--opset", type=int, default=DEFAULT_OPSET, show_default=True, help="ONNX opset of the graph."
            ),
            click.option(
                "--atol",
                type=float,
                default=1e-4,
                show_default=True,
                help="Largest allowed |torch - ONNX Runtime| logit difference.",
            ),
            weights_option(),
            click.option(
                "--calibration-data",
                type=click.Path(path_type=Path),
                default=None,
                metavar="NPZ",
                help="Training series (array 'x', float32 (N, T, C), raw, gap-free) to calibrate fp16 / int8 "
                "on; default: half of the stored validation series, the agreement measured on the other half.",
            ),
            click.option(
                "--min-agreement",
                type=float,
                default=DEFAULT_MIN_AGREEMENT,
                show_default=True,
                help="Refuse an fp16 / int8 graph whose class agrees with fp32 on fewer held-out series.",
            ),
            click.option(
                "--int8-method",
                type=click.Choice(INT8_METHODS),
                default="auto",
                show_default=True,
                help="int8: static QDQ, dynamic, or auto (both measured, the faster passing one kept).",
            ),
            overwrite_option,
            verbosity_options,
        )
    ):
        f = decorator(f)
    return f


def _training_series(path: Path) -> Any:
    """The array ``x`` of an ``.npz`` file: training series to calibrate a reduced precision on."""
    import numpy as np

    from exporters.to_onnx import ExportError

    if not path.is_file():
        raise ExportError(
            f"--calibration-data {path} does not exist; expected an .npz file with an array 'x'"
        )
    try:
        with np.load(path) as data:
            if "x" not in data:
                raise ExportError(
                    f"--calibration-data {path} holds {sorted(data)}; expected an array 'x' (N, T, C)"
                )
            return np.asarray(data["x"], dtype=np.float32)
    except (ValueError, OSError) as err:
        raise ExportError(f"--calibration-data {path} is not a readable .npz file ({err})") from err


def _export(
    *,
    checkpoint: Path | None,
    run_dir: Path | None,
    output: Path,
    opset: int,
    atol: float,
    weights: str,
    calibration_data: Path | None,
    min_agreement: float,
    int8_method: str,
    overwrite: bool,
    metric: str = "macro_f1",
    task: str | None = None,
    select_on: str = "auto",
    ensemble: str = "auto",
    refit: Path | None = None,
) -> None:
    """Export ``checkpoint``, or the best run of ``run_dir``, to ``output``; prints what was written."""
    from exporters.best import export_best
    from exporters.crossval import CV_SPLIT
    from exporters.ensemble import ENSEMBLE_FAMILY
    from exporters.ensemble import summary as ensemble_summary
    from exporters.to_onnx import export_checkpoint, refuse_inputs_as_outputs
    from exporters.trees import export_tree_checkpoint, parity_summary
    from training.downstream.run import CV
    from training.downstream.trees import TREE_FAMILIES, is_tree_checkpoint

    created = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    reduce: dict[str, Any] = {
        "precision": weights,
        "min_agreement": min_agreement,
        "int8_method": int8_method,
    }
    with interrupt_note("nothing was written"):
        if calibration_data is not None:
            refuse_inputs_as_outputs(output, {calibration_data: "calibration data"})
            reduce["train_x"] = _training_series(calibration_data)
        if run_dir is not None:
            choice, report = export_best(
                run_dir,
                output,
                metric=metric,
                task=task,
                opset=opset,
                atol=atol,
                created=created,
                overwrite=overwrite,
                split=select_on,
                ensemble=ensemble,
                refit=refit,
                **reduce,
            )
            click.echo(f"chose {choice.model}: {choice.describe()}")
            if choice.refit:
                click.echo(
                    f"exported as {choice.refit}; the temperature is that of the runs chosen on the selection split"
                )
            if choice.split == CV_SPLIT:
                click.echo(
                    f"exported the runs of {run_dir} trained on every training sample; the temperature is fitted on "
                    f"the out-of-fold predictions of {run_dir / CV}"
                )
            trees = choice.record["family"] in TREE_FAMILIES
            if choice.record["family"] == ENSEMBLE_FAMILY:
                click.echo(
                    f"wrote {output} ({output.stat().st_size / 1e6:.2f} MB); parity on {ensemble_summary(report)}"
                )
                return
        else:
            assert checkpoint is not None
            if trees := is_tree_checkpoint(checkpoint):
                report = export_tree_checkpoint(
                    checkpoint, output, created=created, overwrite=overwrite, precision=weights
                )
            else:
                report = export_checkpoint(
                    checkpoint, output, opset=opset, atol=atol, created=created, overwrite=overwrite, **reduce
                )
    summary = parity_summary(report) if trees else report.summary()
    click.echo(f"wrote {output} ({output.stat().st_size / 1e6:.2f} MB); parity on {summary}")


@click.command("bundle")
@click.argument("checkpoint", type=click.Path(path_type=Path))
@_export_options
def bundle(checkpoint: Path, **options: Any) -> None:
    """Export a classifier CHECKPOINT (.pt: a downstream run's model, or the sample model) as one
    self-contained, parity-checked bundle."""
    _export(checkpoint=checkpoint, run_dir=None, **options)


@click.command("best")
@click.argument("run_dir", metavar="RUN_DIR", type=click.Path(path_type=Path))
@click.option(
    "--metric",
    type=click.Choice(METRIC_CHOICES),
    default="macro_f1",
    show_default=True,
    help="The metric that picks the best run.",
)
@click.option("--task", default=None, help="The task to choose from when RUN_DIR holds several.")
@click.option(
    "--select-on",
    type=click.Choice(SELECT_SPLITS),
    default="auto",
    show_default=True,
    help="Rank on the out-of-fold predictions of a cross-validated selection (cv: RUN_DIR/cv, written by "
    "'cropmap train downstream --selection-folds K'), on the model-selection split carved from the training "
    "samples (selection; in both the validation split stays an untouched test split), on the validation split, or "
    "auto (cv when RUN_DIR/cv exists, else selection when every run was scored on one).",
)
@click.option(
    "--ensemble",
    type=click.Choice(["auto", "always", "never"]),
    default="auto",
    show_default=True,
    help="auto: weigh the cross-family ensemble (every kept run, probabilities averaged) against the best single "
    "run on the model-selection split and export it unless that run is ahead by more than two standard errors; "
    "always: the ensemble; never: the best single run.",
)
@click.option(
    "--refit",
    "refit",
    metavar="REFIT_DIR",
    type=click.Path(path_type=Path),
    default=None,
    help="Export the chosen runs as trained again on every training sample: REFIT_DIR is RUN_DIR/refit, which "
    "'cropmap train downstream' writes by default with a model-selection split (used when it exists), or the "
    "output folder of the same command with --set selection_holdout=0. The choice and the temperature still come "
    "from RUN_DIR's model-selection split.",
)
@click.option(
    "--no-refit",
    is_flag=True,
    help="Export the runs of RUN_DIR as chosen, even when RUN_DIR/refit holds their refit.",
)
@_export_options
def best(
    run_dir: Path,
    metric: str,
    task: str | None,
    select_on: str,
    ensemble: str,
    refit: Path | None,
    no_refit: bool,
    **options: Any,
) -> None:
    """Export the best run of RUN_DIR (the output folder of 'cropmap train downstream'), or the ensemble of its
    runs across families, as a bundle."""
    from training.downstream.run import REFIT

    if refit is not None and no_refit:
        raise click.UsageError("--refit and --no-refit contradict each other; expected one of them")
    if refit is None and not no_refit and (run_dir / REFIT / "results.jsonl").is_file():
        refit = run_dir / REFIT
        click.echo(
            f"note: exporting the refit runs of {refit} (trained on every training sample); --no-refit exports the "
            "runs as chosen",
            err=True,
        )
    _export(
        checkpoint=None,
        run_dir=run_dir,
        metric=metric,
        task=task,
        select_on=select_on,
        ensemble=ensemble,
        refit=refit,
        **options,
    )


@click.command("score")
@click.argument("bundle_path", metavar="BUNDLE", type=click.Path(path_type=Path))
@click.option(
    "--data",
    type=click.Path(path_type=Path),
    default=None,
    help="An .npz of series x and labels y; or, with --run, labelled parcels (default: the run's own).",
)
@click.option(
    "--run",
    "run_dir",
    type=click.Path(path_type=Path),
    default=None,
    metavar="RUN_DIR",
    help="Read the parcels as this downstream run read them (its legend, grid, season and split).",
)
@click.option(
    "--split",
    type=click.Choice(SCORE_SPLITS),
    default="test",
    show_default=True,
    help="With --run: which parcels.",
)
@output_option("Also write the numbers and the confusion matrix as JSON to this file.", required=False)
@overwrite_option
@json_option
@verbosity_options
def score(
    bundle_path: Path,
    data: Path | None,
    run_dir: Path | None,
    split: str,
    output: Path | None,
    overwrite: bool,
    as_json: bool,
) -> None:
    """Score a BUNDLE on labelled series: accuracy, macro F1, kappa and a per-class table.

    The bundle runs through ONNX Runtime as 'cropmap classify' runs it; on a run's test split the numbers equal
    the run's record for the model in the bundle.
    """
    from cropmap.safeio.atomic import atomic_write_json
    from exporters.score import format_table, score_files

    if run_dir is None and (data is None or data.suffix != ".npz"):
        raise click.UsageError("give --data SERIES.npz, or --run RUN_DIR (optionally with --data PARCELS)")
    if output is not None:
        refuse_existing(output, overwrite)
    result, what, model_name = score_files(bundle_path, data=data, run_dir=run_dir, split=split)
    doc = {"bundle": str(bundle_path), "data": what, **result}
    if output is not None:
        atomic_write_json(output, doc)
    if as_json:
        echo_json(doc)
    else:
        click.echo(f"{bundle_path.name} ({model_name}) on {format_table(result, what)}")
