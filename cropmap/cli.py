"""The ``cropmap`` command line: a thin layer over :mod:`cropmap.pipeline`.

Options map 1:1 to :class:`cropmap.options.ClassifyOptions`. Errors cropmap
raises for bad input (:class:`~cropmap.errors.CropmapError`) and I/O faults
(``OSError``) end the command with one ``Error: ...`` line and exit status 1; bad
option values exit with status 2; Ctrl-C and SIGTERM clean up and exit with
128 + the signal number (docs/faults.md).
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import logging
import sys
from pathlib import Path
from typing import Any, NoReturn

import click

from cropmap.cli_common import (
    PolicyGroup,
    UnavailableCommand,
    cluster_options,
    one_line,
    output_option,
    overwrite_option,
    seed_option,
    verbosity_options,
)
from cropmap.errors import CropmapError, OptionValueError
from cropmap.options import EMBEDDING_DTYPE_CHOICES, PROVIDER_CHOICES, ClassifyOptions
from cropmap.safeio.signals import interrupt_exit_code, signals_as_interrupts


def _fail(err: BaseException, after_interrupt: str) -> NoReturn:
    """End the command on ``err`` with one ``Error:`` line: status 1, or 128 + the signal number."""
    if isinstance(err, KeyboardInterrupt):
        code, name = interrupt_exit_code(err)
        click.echo(f"Error: interrupted by {name}; {after_interrupt}", err=True)
        sys.exit(code)
    raise click.ClickException(one_line(err)) from err


def _version() -> str:
    from cropmap import __version__

    return __version__


def _default_model_line(path: str) -> str:
    """The console line of a run given no ``--model``: which bundle ran, and that it is the Flanders sample."""
    from cropmap.models import SAMPLE_NOTE

    return f"model:      {path}  (no --model given: {SAMPLE_NOTE}; pass --model BUNDLE for your own)"


def _parse_classes(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[int, ...] | None:
    if value is None:
        return None
    try:
        classes = tuple(int(v) for v in value.split(",") if v.strip())
    except ValueError:
        classes = ()
    if not classes:
        raise click.BadParameter(f"{value!r}; expected comma-separated SCL class numbers such as 3,8,9,10")
    return classes


def _cloud_options(f: Any) -> Any:
    """``--cloud-band``, ``--cloud-threshold``, ``--cloud-scale``, ``--cloud-classes`` (ClassifyOptions)."""
    f = click.option(
        "--cloud-scale",
        type=float,
        default=None,
        metavar="X",
        help="Raw value of cloud probability 1 in a probability band (255 for 0..255, 100 for "
        "percent); default: 1 in float files, 255 for CLP and 100 for CLD / MSK_CLDPRB in "
        "integer ones; required for an integer probability band of another "
        "name.",
    )(f)
    f = click.option(
        "--cloud-classes",
        callback=_parse_classes,
        default=None,
        metavar="C,C,...",
        help="SCL classes masked as invalid (default 0,1,3,8,9,10,11: no data, saturated, cloud "
        "shadow, cloud medium/high probability, thin cirrus, snow).",
    )(f)
    f = click.option(
        "--cloud-threshold",
        type=float,
        default=None,
        metavar="P",
        help="Cloud probability (0..1) above which an observation is masked (default 0.4).",
    )(f)
    f = click.option(
        "--cloud-band",
        default=None,
        metavar="NAME",
        help="Band that masks clouds and shadows: SCL or a cloud probability (CLP, CLD, "
        "MSK_CLDPRB); default: found by name; 'none': the stack is cloud-free.",
    )(f)
    return f


def _runtime_options(f: Any) -> Any:
    """``--provider`` and ``--embedding-dtype`` (fields of ClassifyOptions)."""
    f = click.option(
        "--embedding-dtype",
        type=click.Choice(EMBEDDING_DTYPE_CHOICES),
        default=EMBEDDING_DTYPE_CHOICES[0],
        show_default=True,
        help="Storage of the embedding raster: int8 with a per-band scale and offset that GIS "
        "software applies (1 byte per value), float16 or float32.",
    )(f)
    f = click.option(
        "--provider",
        type=click.Choice(PROVIDER_CHOICES),
        default="auto",
        show_default=True,
        help="ONNX Runtime execution provider. auto takes CUDA when it starts, else the CPU, and "
        "says which; cuda/tensorrt need onnxruntime-gpu (docs/install.md) and are an error "
        "when they cannot start, never a silent CPU run.",
    )(f)
    return f


def _check_options(f: Any) -> Any:
    """``--allow-partial-season`` and ``--allow-l1c``: override refusals of cropmap.sanity."""
    f = click.option(
        "--allow-l1c",
        is_flag=True,
        help="Classify a stack that looks like Sentinel-2 L1C (top-of-atmosphere: band "
        "B10, L1C/TOA names or tags) with a bundle trained on L2A (refused by default).",
    )(f)
    f = click.option(
        "--allow-partial-season",
        is_flag=True,
        help="Classify a stack whose dates cover less than 80 % of the bundle's season (refused "
        "by default; the summary records the coverage).",
    )(f)
    return f


def _map_options(f: Any) -> Any:
    """Probability outputs, spatial post-processing and the mask layer (fields of ClassifyOptions)."""
    f = click.option(
        "--mask-layer",
        default=None,
        metavar="NAME",
        help="Layer of a multi-layer mask file (e.g. a GeoPackage) holding the cropland polygons.",
    )(f)
    f = click.option(
        "--smooth-probabilities",
        type=float,
        default=None,
        metavar="SIGMA",
        help="Gaussian smoothing (sigma in pixels, <= 10) of the class probabilities within the mask, "
        "before the argmax.",
    )(f)
    f = click.option(
        "--majority-filter",
        type=int,
        default=None,
        metavar="N",
        help="Majority filter over an N x N window (odd N, 3..51) within the mask.",
    )(f)
    f = click.option(
        "--uncertainty",
        type=click.Choice(["entropy", "margin"]),
        default=None,
        help="Also write <out stem>_uncertainty.tif: normalised entropy or 1 - (p1 - p2), x 100.",
    )(f)
    f = click.option(
        "--probabilities",
        is_flag=True,
        help="Also write <out stem>_probabilities.tif: one band per class, probability x 100.",
    )(f)
    return f


def _hpc_options(f: Any) -> Any:
    """The cluster options every command shares (:func:`cropmap.cli_common.cluster_options`) and the batch's own
    timeouts."""
    f = click.option(
        "--pending-timeout",
        type=click.FloatRange(min=0, min_open=True),
        default=None,
        metavar="SECONDS",
        help="With --cluster: end the batch (resumable) when every worker job has been queued this long, "
        "naming the scheduler's reason (default 3600).",
    )(f)
    f = click.option(
        "--worker-timeout",
        type=click.FloatRange(min=0, min_open=True),
        default=None,
        metavar="SECONDS",
        help="End the batch (resumable) when regions have waited this long with no dask worker connected, "
        "e.g. after every worker job ended (default 600).",
    )(f)
    return cluster_options("region")(f)


PLUGIN_GROUP = "cropmap.commands"
"""The entry-point group through which the extras register their command groups (data, train, evaluate, export)."""


class CropmapGroup(PolicyGroup):
    """The root ``cropmap`` group: the inference commands defined here, plus the command groups that installed
    distributions register under the ``cropmap.commands`` entry points (loaded when listed or run)."""

    def _plugins(self) -> dict[str, importlib.metadata.EntryPoint]:
        found = importlib.metadata.entry_points(group=PLUGIN_GROUP)
        return {ep.name: ep for ep in found if ep.name not in self.commands}

    def list_commands(self, ctx: click.Context) -> list[str]:
        return [*super().list_commands(ctx), *sorted(self._plugins())]

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        command = super().get_command(ctx, cmd_name)
        if command is not None:
            return command
        entry = self._plugins().get(cmd_name)
        if entry is None:
            return None
        try:
            loaded = entry.load()
        except ImportError as err:
            return UnavailableCommand(
                cmd_name, f"'cropmap {cmd_name}' could not be loaded ({entry.value}): {err}"
            )
        if not isinstance(loaded, click.Command):
            return UnavailableCommand(
                cmd_name, f"'cropmap {cmd_name}' ({entry.value}) is not a click command"
            )
        return loaded


@click.group(cls=CropmapGroup, name="cropmap")
@click.version_option(version=_version(), prog_name="cropmap")
def main() -> None:
    """Crop-type maps from Sentinel-2 time series with ONNX model bundles."""


@main.command()
@click.argument("stack", type=click.Path(path_type=Path))
@click.option(
    "--mask",
    "mask",
    default=None,
    type=click.Path(path_type=Path),
    help="Cropland polygons (GeoPackage or any OGR vector format); only pixels inside are classified. "
    "Required unless --whole-stack.",
)
@click.option(
    "--whole-stack",
    is_flag=True,
    help="No cropland mask: classify every pixel of the stack with enough valid observations.",
)
@click.option(
    "--parcels",
    type=click.Path(path_type=Path),
    default=None,
    metavar="POLYGONS",
    help="Also write <out stem>_parcels.gpkg: a crop per parcel polygon (class, probabilities, pixel "
    "counts, agreement; the input's columns kept) and <out stem>_parcels.qml.",
)
@click.option(
    "--declared-column",
    default=None,
    metavar="COL",
    help="With --parcels: column holding each parcel's declared crop; adds a confirmed / doubtful / "
    "contradicted / not enough data status.",
)
@click.option(
    "--declared-classes",
    type=click.Path(path_type=Path),
    default=None,
    metavar="CSV",
    help="With --declared-column: CSV (with a header) from declared codes or names (1st column) to the "
    "bundle's classes (2nd column, code or name); default: declarations are class codes or names.",
)
@click.option(
    "--model",
    type=click.Path(path_type=Path),
    default=None,
    help="Model bundle (.onnx); default: the sample bundle shipped with cropmap.",
)
@output_option(
    "Class-map GeoTIFF to write; default: <stack name>_classified.tif in the current directory.",
    required=False,
    dest="out",
)
@click.option(
    "--confidence", is_flag=True, help="Also write <out stem>_confidence.tif (max probability x 100)."
)
@click.option(
    "--embedding", is_flag=True, help="Also write <out stem>_embedding.tif (the bundle's embedding output)."
)
@overwrite_option
@click.option(
    "--block-size",
    type=int,
    default=None,
    metavar="N",
    help="Block edge in pixels, rounded up to a multiple of the file's tile (default: about 512).",
)
@click.option(
    "--batch-size",
    type=int,
    default=None,
    metavar="N",
    help="Pixels per ONNX Runtime call (default: about 2,048 time steps per call on the CPU, e.g. 128 px "
    "for 12 stamps, 16 for 144; 256 on a GPU).",
)
@click.option(
    "--workers",
    type=int,
    default=None,
    metavar="N",
    help="Blocks processed in parallel on this machine (default: number of cores).",
)
@click.option(
    "--scheduler",
    default=None,
    metavar="ADDRESS",
    help="Run on an existing dask.distributed cluster, e.g. tcp://10.0.0.5:8786.",
)
@click.option(
    "--season",
    type=int,
    default=None,
    metavar="YEAR",
    help="Year in which the season to classify starts (needed when the stack spans several).",
)
@click.option(
    "--reflectance-scale",
    type=float,
    default=None,
    metavar="X",
    help="Raw value = reflectance x X, for stacks that do not declare it (10000 for L2A DNs).",
)
@click.option(
    "--min-valid-steps",
    type=int,
    default=None,
    metavar="N",
    help="Fewest valid observations a pixel needs (default: the bundle's value).",
)
@_cloud_options
@_map_options
@_runtime_options
@_check_options
@click.option("--no-quicklook", "no_quicklook", is_flag=True, help="Do not write the PNG quick-look.")
@verbosity_options
def classify(
    stack: Path,
    mask: Path | None,
    whole_stack: bool,
    parcels: Path | None,
    declared_column: str | None,
    declared_classes: Path | None,
    model: Path | None,
    out: Path | None,
    no_quicklook: bool,
    **option_values: Any,
) -> None:
    """Classify the cropland pixels of a Sentinel-2 time STACK.

    STACK is a time-major multi-band GeoTIFF (dates and bands in band descriptions
    or tags) or a folder of per-date GeoTIFFs.
    """
    if (mask is None) == (not whole_stack):
        raise click.UsageError("give --mask POLYGONS, or --whole-stack to classify every pixel (not both)")
    if parcels is None and (declared_column is not None or declared_classes is not None):
        raise click.UsageError("--declared-column / --declared-classes check parcels; add --parcels POLYGONS")
    if declared_classes is not None and declared_column is None:
        raise click.UsageError(
            "--declared-classes maps the crops of --declared-column; add --declared-column COL"
        )
    try:
        options = ClassifyOptions(quicklook=not no_quicklook, **option_values)
    except OptionValueError as err:
        raise click.BadParameter(str(err), param_hint=f"--{err.option.replace('_', '-')}") from err

    from cropmap.pipeline import classify as run_classify

    bar: Any = None

    def progress(done: int, total: int) -> None:
        nonlocal bar
        if bar is None and sys.stderr.isatty():
            from tqdm import tqdm

            bar = tqdm(total=total, unit="block", desc="classify", file=sys.stderr)
        if bar is not None:
            bar.update(1)

    try:
        with signals_as_interrupts():
            summary = run_classify(
                stack,
                mask,
                model=model,
                out=out,
                options=options,
                progress=progress,
                parcels=parcels,
                declared_column=declared_column,
                declared_classes=declared_classes,
            )
    except (CropmapError, OSError, KeyboardInterrupt) as err:
        _fail(err, "temporary files removed, no output written")
    finally:
        if bar is not None:
            bar.close()
    px, outputs = summary.pixels, summary.outputs
    if model is None:
        click.echo(_default_model_line(summary.inputs.model))
    if whole_stack:
        click.echo("whole stack: no cropland mask, every pixel with enough valid observations was classified")
    click.echo(
        f"classified {px.classified:,} of {px.in_mask:,} cropland pixels "
        f"({px.insufficient_data:,} with too little data) in {summary.timings_s.total:.1f} s "
        f"({summary.throughput_cropland_px_per_s or 0:,.0f} px/s), season {summary.season.year}"
    )
    rt = summary.runtime
    click.echo(
        f"runtime:    {', '.join(rt.providers_used)} (--provider {rt.provider_requested}), "
        f"{rt.bundle_precision} bundle"
    )
    clouds = summary.clouds
    if clouds.masking == "on":
        click.echo(
            f"clouds: {clouds.masked_observations:,} of {clouds.observations_in_mask or 0:,} cropland "
            f"observations masked ({clouds.rule})"
        )
    elif clouds.masking == "no cloud information":
        click.echo("clouds: not masked - the stack has no cloud band (see the warning above)")
    if outputs.confidence or outputs.probabilities or outputs.uncertainty:
        click.echo(f"probabilities: {summary.bundle.probabilities}")
    for c in sorted(summary.classes, key=lambda c: -c.area_ha):
        if c.pixels:
            click.echo(f"  {c.name:<30} {c.area_ha:>10.2f} ha")
    click.echo(f"map:        {outputs.map}  (legend: {Path(outputs.qml).name}, {Path(outputs.aux).name})")
    for label, path in (
        ("confidence", outputs.confidence),
        ("probabilities", outputs.probabilities),
        ("uncertainty", outputs.uncertainty),
        ("embedding", outputs.embedding),
        ("quick-look", outputs.quicklook),
        ("STAC item", outputs.stac),
    ):
        if path:
            click.echo(f"{label + ':':<12}{path}")
    if outputs.parcels and summary.parcels is not None:
        pc = summary.parcels
        left = ", ".join(f"{n:,} {r}" for r, n in pc["reasons"].items() if n)
        click.echo(
            f"parcels:    {outputs.parcels}  ({pc['classified']:,} of {pc['parcels']:,} classified"
            f"{'; ' + left if left else ''})"
        )
        if "declared" in pc:
            st = pc["declared"]["statuses"]
            click.echo(
                "declared:   "
                + ", ".join(
                    f"{v['parcels']:,} {k} ({v['area_ha']:,.1f} ha)" for k, v in st.items() if v["parcels"]
                )
            )
    click.echo(f"summary:    {outputs.summary}")


@main.command()
@click.argument("map_path", metavar="MAP", type=click.Path(path_type=Path))
@click.option(
    "--reference",
    type=click.Path(path_type=Path),
    default=None,
    help="Reference points or polygons (GeoPackage or any OGR vector format, any CRS).",
)
@click.option(
    "--label-column", default=None, metavar="COL", help="Column of --reference holding the reference class."
)
@click.option(
    "--class-map",
    type=click.Path(path_type=Path),
    default=None,
    metavar="CSV",
    help="CSV (with a header) translating reference labels (1st column) to map classes (2nd column, "
    "code or name; empty: leave the label out).",
)
@click.option("--layer", default=None, metavar="NAME", help="Layer of a multi-layer --reference file.")
@click.option(
    "--polygon-samples",
    type=click.Choice(["pixels", "majority"]),
    default="pixels",
    show_default=True,
    help="Reference polygons give every pixel centre inside as a unit (pixels) or one unit each, "
    "labelled with the map's majority class (majority).",
)
@click.option(
    "--plan",
    is_flag=True,
    help="Instead of assessing: propose a stratified random sample (points, GeoPackage) for "
    "--target-se from the map's class areas.",
)
@click.option(
    "--target-se",
    type=float,
    default=0.01,
    show_default=True,
    metavar="SE",
    help="With --plan: standard error of overall accuracy aimed at.",
)
@click.option(
    "--expected-accuracy",
    default="0.8",
    show_default=True,
    metavar="U[,CODE=U...]",
    help="With --plan: expected user's accuracy, one value or per class (0.8,3=0.6).",
)
@click.option(
    "--min-per-class",
    type=int,
    default=50,
    show_default=True,
    metavar="N",
    help="With --plan: units in each class whose share by area would be smaller.",
)
@seed_option(help="With --plan: random seed.")
@output_option(
    "Report JSON (Markdown and PNG beside it); with --plan the GeoPackage. Default: "
    "<map stem>_assessment.json / <map stem>_sample_plan.gpkg in the current directory.",
    required=False,
    dest="out",
)
@overwrite_option
@verbosity_options
def assess(
    map_path: Path,
    reference: Path | None,
    label_column: str | None,
    class_map: Path | None,
    layer: str | None,
    polygon_samples: str,
    plan: bool,
    target_se: float,
    expected_accuracy: str,
    min_per_class: int,
    seed: int,
    out: Path | None,
    overwrite: bool,
) -> None:
    """Accuracy and error-adjusted class areas of a class MAP from reference data.

    MAP is any single-band integer class raster (class names are read from a cropmap
    map's legend). The estimator is the stratified one of Olofsson et al. (2014) with
    the map classes as strata (docs/accuracy.md).
    """
    from cropmap import assess as assess_mod

    if plan:
        given = [
            f
            for f, v in (
                ("--reference", reference),
                ("--label-column", label_column),
                ("--class-map", class_map),
                ("--layer", layer),
            )
            if v is not None
        ]
        if given:
            raise click.UsageError(f"--plan proposes a sample from the map alone; {given[0]} does not apply")
        target = out if out is not None else Path.cwd() / f"{map_path.with_suffix('').name}_sample_plan.gpkg"
        try:
            with signals_as_interrupts():
                result = assess_mod.plan_sample(
                    map_path,
                    target,
                    target_se=target_se,
                    expected=expected_accuracy,
                    min_per_class=min_per_class,
                    seed=seed,
                    overwrite=overwrite,
                )
        except (CropmapError, OSError, KeyboardInterrupt) as err:
            _fail(err, "no output written")
        click.echo(
            f"sample size for SE(overall accuracy) {target_se:g}: {result['n_eq13']:,} (Olofsson et al. 2014 "
            f"eq. 13); planned {result['n']:,} points (at least {min_per_class} per class, seed {seed})"
        )
        for c in result["classes"]:
            click.echo(
                f"  {c['code']:>4} {c['name']:<28} W {c['weight']:.4f}  U {c['expected_users']:.2f}  n {c['n']:>6,}"
            )
        click.echo(
            f"plan:       {result['out']}  (label the 'reference' column, then: cropmap assess MAP "
            "--reference PLAN --label-column reference)"
        )
        return
    if reference is None or label_column is None:
        raise click.UsageError("assess needs --reference and --label-column (or --plan)")
    target = out if out is not None else Path.cwd() / f"{map_path.with_suffix('').name}_assessment.json"
    try:
        with signals_as_interrupts():
            assess_mod.check_report_outputs(target, overwrite=overwrite)
            report = assess_mod.assess(
                map_path,
                reference,
                label_column=label_column,
                class_map=class_map,
                layer=layer,
                polygon_samples=polygon_samples,
            )
            paths = assess_mod.write_report(report, target, overwrite=overwrite)
    except (CropmapError, OSError, KeyboardInterrupt) as err:
        _fail(err, "no output written")
    oa = report["overall_accuracy"]
    click.echo(
        f"overall accuracy {oa['estimate']:.4f} (SE {oa['se'] if oa['se'] is None else round(oa['se'], 4)}) "
        f"from {report['sample']['units']:,} sample units; kappa {report['kappa']['estimate']}"
    )
    for c in report["per_class"]:
        a = c["area_ha"]
        ci = "n/a" if a["ci95"] is None else f"{a['ci95'][0]:,.1f} .. {a['ci95'][1]:,.1f}"
        note = "" if c["stratum_assessed"] else "  (no reference unit in this map class: left out)"
        click.echo(
            f"  {c['name']:<28} mapped {c['map_area_ha']:>12,.1f} ha  adjusted {a['estimate'] or 0:>12,.1f} ha "
            f"(95 % CI {ci}){note}"
        )
    if report["warnings"]:
        click.echo(f"{len(report['warnings'])} warnings (logged above, and in the report)")
    click.echo(f"report:     {paths['json']}  ({paths['markdown'].name}, {paths['png'].name})")


BATCH_FAILED_EXIT = 3
"""Exit status of ``cropmap batch`` when some regions failed (the others are done and recorded)."""


@main.command()
@click.argument("regions", required=False, type=click.Path(path_type=Path))
@click.option(
    "--stack",
    "stacks",
    multiple=True,
    type=click.Path(path_type=Path),
    metavar="STACK",
    help="A stack to classify (repeatable, with one --mask each); instead of a REGIONS manifest.",
)
@click.option(
    "--mask",
    "masks",
    multiple=True,
    type=click.Path(path_type=Path),
    metavar="POLYGONS",
    help="Cropland polygons of the --stack at the same position.",
)
@output_option(
    "Batch folder: one subfolder per region, batch_state.json and batch_summary.json.",
    aliases=("--out-dir",),
    metavar="FOLDER",
    dest="out_dir",
)
@click.option(
    "--model",
    type=click.Path(path_type=Path),
    default=None,
    help="Model bundle (.onnx); default: the sample bundle shipped with cropmap.",
)
@click.option(
    "--scheduler",
    default=None,
    metavar="ADDRESS",
    help="Run the regions on an existing dask.distributed cluster, e.g. tcp://10.0.0.5:8786.",
)
@click.option(
    "--workers",
    type=int,
    default=None,
    metavar="N",
    help="Regions classified at once on the local cluster (default: number of cores).",
)
@_hpc_options
@click.option("--confidence", is_flag=True, help="Also write <name>_confidence.tif per region.")
@click.option("--embedding", is_flag=True, help="Also write <name>_embedding.tif per region.")
@overwrite_option(help="Recompute every region, replacing outputs and the recorded state.")
@click.option(
    "--season",
    type=int,
    default=None,
    metavar="YEAR",
    help="Season year for regions whose manifest entry names none.",
)
@click.option(
    "--block-size", type=int, default=None, metavar="N", help="Block edge in pixels (as for classify)."
)
@click.option(
    "--batch-size",
    type=int,
    default=None,
    metavar="N",
    help="Pixels per ONNX Runtime call (default: about 2,048 time steps per call on the CPU, e.g. 128 px "
    "for 12 stamps, 16 for 144; 256 on a GPU).",
)
@click.option(
    "--reflectance-scale",
    type=float,
    default=None,
    metavar="X",
    help="Raw value = reflectance x X, for stacks that do not declare it.",
)
@click.option(
    "--min-valid-steps",
    type=int,
    default=None,
    metavar="N",
    help="Fewest valid observations a pixel needs (default: the bundle's value).",
)
@_cloud_options
@_map_options
@_runtime_options
@_check_options
@click.option("--no-quicklook", "no_quicklook", is_flag=True, help="Do not write the PNG quick-looks.")
@verbosity_options
def batch(
    regions: Path | None,
    stacks: tuple[Path, ...],
    masks: tuple[Path, ...],
    out_dir: Path,
    model: Path | None,
    scheduler: str | None,
    workers: int | None,
    cluster: str | None,
    queue: str | None,
    account: str | None,
    cores: int | None,
    memory: str | None,
    walltime: str | None,
    jobs: int,
    job_extra: tuple[str, ...],
    dashboard: str | None,
    worker_timeout: float | None,
    pending_timeout: float | None,
    no_quicklook: bool,
    **option_values: Any,
) -> None:
    """Classify many regions in parallel, resumably.

    REGIONS is a .csv, .toml or .json manifest listing each region's name, stack,
    mask and optionally season (relative paths are resolved against the manifest's
    folder); or give --stack S --mask M pairs instead. A rerun skips the regions
    already done. Exit status 3 when some regions failed.
    """
    if regions is not None and (stacks or masks):
        raise click.UsageError("give either a REGIONS manifest or --stack/--mask pairs, not both")
    if regions is None and not stacks and not masks:
        raise click.UsageError("give a REGIONS manifest or --stack S --mask M pairs")
    if scheduler is not None and workers is not None:
        raise click.BadParameter(
            "--workers sizes the local cluster; with --scheduler, size that cluster instead",
            param_hint="--workers",
        )
    if scheduler is not None and dashboard is not None:
        raise click.BadParameter(
            "applies to a cluster the batch starts; the cluster at --scheduler has its own",
            param_hint="--dashboard",
        )
    hpc = _hpc_cluster(
        cluster,
        scheduler,
        workers,
        dashboard,
        queue=queue,
        account=account,
        cores=cores,
        memory=memory,
        walltime=walltime,
        jobs=jobs,
        job_extra=job_extra,
    )
    if pending_timeout is not None and cluster is None:
        raise click.BadParameter(
            "applies to an HPC cluster only; expected --cluster with it", param_hint="--pending-timeout"
        )
    try:
        options = ClassifyOptions(
            quicklook=not no_quicklook, scheduler=scheduler, workers=workers, **option_values
        )
    except OptionValueError as err:
        raise click.BadParameter(str(err), param_hint=f"--{err.option.replace('_', '-')}") from err
    options = dataclasses.replace(options, scheduler=None, workers=None)

    import distributed  # noqa: F401 - configures its loggers on import; quieted below

    from cropmap.batch import PENDING_TIMEOUT_S, WORKER_TIMEOUT_S, classify_many, format_report

    if not logging.getLogger("cropmap").isEnabledFor(logging.INFO):  # no -v
        # The dask client logs a lost scheduler with tracebacks; the batch reports it in one line itself.
        logging.getLogger("distributed.client").setLevel(logging.CRITICAL)
    from cropmap.regions import regions_from_pairs

    bar: Any = None

    def progress(done: int, total: int) -> None:
        nonlocal bar
        if bar is None and sys.stderr.isatty():
            from tqdm import tqdm

            bar = tqdm(total=total, unit="region", desc="batch", file=sys.stderr)
        if bar is not None:
            bar.update(done - bar.n)

    try:
        with signals_as_interrupts():
            # A manifest goes in by path, so that the batch can refuse to write its files over it.
            region_list = regions if regions is not None else regions_from_pairs(stacks, masks)
            summary = classify_many(
                region_list,
                out_dir=out_dir,
                model=model,
                scheduler=scheduler,
                workers=workers,
                options=options,
                progress=progress,
                cluster=hpc,
                dashboard=dashboard,
                worker_timeout=worker_timeout if worker_timeout is not None else WORKER_TIMEOUT_S,
                pending_timeout=pending_timeout if pending_timeout is not None else PENDING_TIMEOUT_S,
            )
    except (CropmapError, OSError, KeyboardInterrupt) as err:
        _fail(err, "the regions finished so far are recorded; rerun the same command to resume")
    finally:
        if bar is not None:
            bar.close()
    for line in format_report(summary):
        click.echo(line)
    if model is None:
        click.echo(_default_model_line(summary["model"]))
    click.echo(f"summary:    {Path(summary['out_dir']) / 'batch_summary.json'}")
    failed = summary["totals"]["failed"]
    if failed:
        click.echo(
            f"Error: {failed} of {summary['totals']['regions']} regions failed; rerun the same command to "
            "retry them (done regions are skipped)",
            err=True,
        )
        sys.exit(BATCH_FAILED_EXIT)


def _hpc_cluster(
    kind: str | None, scheduler: str | None, workers: int | None, dashboard: str | None, **settings: Any
) -> Any:  # cropmap.batch.HPCCluster | None
    """The ``--cluster`` settings, checked; ``None`` without ``--cluster`` (then no job setting may be given)."""
    from cropmap.batch import HPCCluster

    given = [k for k, v in settings.items() if (v != 1 if k == "jobs" else v not in (None, ()))]
    if kind is None:
        if given:
            flag = "--" + given[0].replace("_", "-")
            raise click.BadParameter(
                "applies to an HPC cluster only; expected --cluster with it", param_hint=flag
            )
        return None
    if scheduler is not None or workers is not None:
        raise click.BadParameter(
            "starts its own workers; expected neither --scheduler nor --workers with it",
            param_hint="--cluster",
        )
    try:
        return HPCCluster(kind=kind, **settings)
    except OptionValueError as err:
        raise click.BadParameter(str(err), param_hint=f"--{err.option.replace('_', '-')}") from err
