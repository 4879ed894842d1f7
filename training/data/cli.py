"""``cropmap data extract | pairs | s1-pairs | stack-pixels``: training data from stacks, scenes and extractions.

The commands of the ``cropmap data`` group (:mod:`training.cli`) that read real data; the simulator's commands are
in :mod:`training.simulate.cli`. This module imports click and light modules only, so ``--help`` never imports
torch, rasterio or pandas: the work is imported inside each command. ``python -m training.data.extract`` (and
``.pairs``, ``.s1pairs``, ``.stack_pixels``, ``python -m training.pairs``) run the same commands through
:func:`cropmap.cli_common.run_command`, with their old option spellings (``--out``) as hidden aliases.

Library functions of ``training`` report bad input data as ``ValueError`` or a message-only ``FileNotFoundError``
(the file's own words: which column, which date, what was expected); :func:`input_errors` gives those, at the
command edge only, the family's one-line ``Error:`` and exit status 1 as :class:`TrainingInputError`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal, TypeVar

import click

from cropmap.cli_common import (
    alias_option,
    output_option,
    overwrite_option,
    refuse_existing,
    seed_option,
    verbosity_options,
)
from cropmap.contract.bands import S2_BANDS
from cropmap.errors import CropmapError

__all__ = [
    "TrainingInputError",
    "extract",
    "input_errors",
    "pairs",
    "required_output",
    "s1_pairs",
    "stack_pixels",
]

F = TypeVar("F", bound=Callable[..., Any])

# Defaults the options show, kept here so that --help imports none of the modules that use them;
# tests/training/test_extract.py and test_pairs.py check them against training.data.extract / .pairs.
DEFAULT_BUFFER_M = 10.0
DEFAULT_MIN_VALID = 3
PAIR_S2_BANDS: tuple[str, ...] = tuple(b for b in S2_BANDS if b != "B10")
PAIR_SECOND_BANDS = ("blue", "green", "red", "nir")
DEFAULT_MASK_BAND = "clear"


class TrainingInputError(CropmapError, ValueError):
    """An input a training command cannot use, as a training module reported it (a ``ValueError``)."""


@contextlib.contextmanager
def input_errors() -> Iterator[None]:
    """Report what a training module raises for bad input as :class:`TrainingInputError`.

    That is a ``ValueError``, or an ``OSError`` the module raised with a message only (``FileNotFoundError("SCENE/s2
    not found; ...")``: no errno, no file name), whose message already says what was expected. Only around the call
    that reads the user's inputs, in a command body: the message is kept as it is, the original stays the
    ``__cause__``. Errors of the operating system (an errno) stay ``OSError`` for the family's formatter.
    """
    try:
        yield
    except CropmapError:
        raise
    except ValueError as err:
        raise TrainingInputError(str(err)) from err
    except OSError as err:
        if err.errno is not None or err.filename is not None:
            raise
        raise TrainingInputError(str(err)) from err


def required_output(help: str, metavar: str = "PATH") -> Callable[[F], F]:
    """``-o/--output PATH`` (hidden alias ``--out``), required: :func:`cropmap.cli_common.output_option`'s
    spelling, without its ``default=None``, which click 8.3 and later take for a given value, so that a missing
    ``-o`` would reach the command as ``None`` instead of being click's usage error."""
    return alias_option(
        "-o",
        "--output",
        "--out",
        "output",
        hidden_aliases=("--out",),
        type=click.Path(path_type=Path),
        required=True,
        metavar=metavar,
        help=help,
    )


def _names(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[str, ...] | None:
    """A comma-separated list of names (``B02,B03``), or ``None`` when the option is not given."""
    if value is None:
        return None
    names = tuple(v.strip() for v in value.split(",") if v.strip())
    if not names:
        raise click.BadParameter(f"{value!r} names nothing; expected comma-separated names")
    return names


def _ints(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[int, ...] | None:
    """Comma-separated integers (``3,8,9,10``), or ``None`` when the option is not given."""
    if value is None:
        return None
    try:
        return tuple(int(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise click.BadParameter(f"{value!r} is not comma-separated integers (e.g. 3,8,9,10)") from None


def _cloud_options(f: click.decorators.FC) -> click.decorators.FC:
    """The Sentinel-2 cloud options of ``cropmap classify`` (the rule :mod:`cropmap.contract.clouds` applies)."""
    for decorator in reversed(
        (
            click.option("--cloud-band", help="Cloud band (default: found by name); none: no cloud masking."),
            click.option(
                "--cloud-threshold",
                type=float,
                help="Cloud probability above which an observation is masked (default 0.4).",
            ),
            click.option(
                "--cloud-classes",
                callback=_ints,
                metavar="N,N,...",
                help="Comma-separated SCL classes to mask.",
            ),
            click.option(
                "--cloud-scale", type=float, help="Raw value of cloud probability 1 (255, or 100 for %)."
            ),
            click.option(
                "--reflectance-scale",
                type=float,
                help="Raw value = reflectance x this, for stacks that declare none.",
            ),
        )
    ):
        f = decorator(f)
    return f


# ---------------------------------------------------------------------------------------------- extract


@click.command("extract")
@click.argument("stack", type=click.Path(path_type=Path))
@click.argument("polygons", type=click.Path(path_type=Path))
@required_output("Output .parquet (long layout).", metavar="OUT.parquet")
@click.option("--label-column", required=True, help="Polygon attribute holding the label (codes or names).")
@click.option("--id-column", help="Polygon attribute holding unique parcel ids (default: the row number).")
@click.option("--layer", help="Layer of the polygon file (required when it holds several).")
@click.option(
    "--classes",
    type=click.Path(path_type=Path),
    metavar="CSV",
    help="Class map match,name (match: a label name or code; unmatched polygons are left out).",
)
@click.option(
    "--pixels",
    default="all",
    show_default=True,
    help="Per polygon: all, mean (of its pixels per date), or N random pixels.",
)
@seed_option(help="Seed of --pixels N.")
@click.option(
    "--buffer",
    type=float,
    default=DEFAULT_BUFFER_M,
    show_default=True,
    metavar="M",
    help="Shrink polygons by M metres first (0: off).",
)
@click.option(
    "--min-valid",
    type=int,
    default=DEFAULT_MIN_VALID,
    show_default=True,
    help="Fewest valid observations a pixel needs.",
)
@click.option("--season", type=int, help="Keep the dates of the season starting in this year (default: all).")
@click.option("--season-start", default="11-01", show_default=True, help="Season start MM-DD, with --season.")
@click.option(
    "--bands",
    callback=_names,
    metavar="B,B,...",
    help="Comma-separated bands to write (default: every Sentinel-2 band of the stack).",
)
@_cloud_options
@click.option("--block-size", type=int, help="Block edge in pixels (default: cropmap's).")
@click.option("--workers", type=int, help="Blocks read at once (default: the number of cores).")
@overwrite_option
@click.option("--no-progress", is_flag=True, help="Hide the progress bar.")
@verbosity_options
def extract(
    stack: Path,
    polygons: Path,
    output: Path,
    label_column: str,
    id_column: str | None,
    layer: str | None,
    classes: Path | None,
    pixels: str,
    seed: int,
    buffer: float,
    min_valid: int,
    season: int | None,
    season_start: str,
    bands: tuple[str, ...] | None,
    cloud_band: str | None,
    cloud_threshold: float | None,
    cloud_classes: tuple[int, ...] | None,
    cloud_scale: float | None,
    reflectance_scale: float | None,
    block_size: int | None,
    workers: int | None,
    overwrite: bool,
    no_progress: bool,
) -> None:
    """Labelled series from STACK (anything 'cropmap classify' reads) and labelled POLYGONS, as a long parquet
    file that 'cropmap train downstream --task real' reads."""
    from training.data.extract import ExtractOptions, code_column, pin_mmap_threshold
    from training.data.extract import extract as run_extract

    pin_mmap_threshold()
    opts = ExtractOptions(
        label_column=label_column,
        id_column=id_column,
        layer=layer,
        class_map=classes,
        pixels=pixels.strip().lower(),
        seed=seed,
        buffer_m=buffer,
        min_valid=min_valid,
        season=season,
        season_start=season_start,
        bands=bands,
        reflectance_scale=reflectance_scale,
        cloud_band=cloud_band,
        cloud_threshold=cloud_threshold,
        cloud_classes=cloud_classes,
        cloud_scale=cloud_scale,
        block_size=block_size,
        workers=workers,
    )
    summary = run_extract(stack, polygons, output, opts, overwrite=overwrite, progress=not no_progress)
    click.echo(summary.text())
    click.echo(
        f"train on it: cropmap train downstream --task real --data {output} "
        f"--label-column {code_column(opts.label_column)} --output RUN_DIR"
    )


# ---------------------------------------------------------------------------------------------- pairs


@click.command("pairs")
@click.argument("s2_stack", metavar="S2_STACK", type=click.Path(path_type=Path))
@click.argument("scenes", metavar="PS_SCENES...", nargs=-1, required=True, type=click.Path(path_type=Path))
@required_output("Output folder (pairs.json, point/, time/).", metavar="OUT")
@click.option(
    "--alignment",
    type=click.Choice(["point", "time", "both"]),
    default="both",
    show_default=True,
    help="Pairs to write: point-wise, time-wise or both.",
)
@click.option(
    "--s2-bands",
    callback=_names,
    metavar="B,B,...",
    help=f"S2 bands by name (default {','.join(PAIR_S2_BANDS)}).",
)
@click.option(
    "--second-bands",
    callback=_names,
    metavar="NAME,...",
    help=f"Second-modality bands by description (default {','.join(PAIR_SECOND_BANDS)}).",
)
@click.option("--k", type=int, default=3, show_default=True, help="Window side in second-modality pixels.")
@click.option(
    "--second-res-m", type=float, default=3.0, show_default=True, help="Pairing-grid pixel size (m)."
)
@click.option(
    "--mask-band",
    default=DEFAULT_MASK_BAND,
    show_default=True,
    help="Usable-data band in the scene or its UDM2; none: no mask.",
)
@click.option(
    "--mask-usable", type=float, default=1.0, show_default=True, help="Mask value of a usable pixel."
)
@click.option(
    "--max-day-offset",
    type=int,
    default=0,
    show_default=True,
    help="Days between matched dates (0: same day).",
)
@click.option(
    "--polygons",
    type=click.Path(path_type=Path),
    help="Pair only pixels whose centre is inside these polygons (any OGR file).",
)
@click.option("--layer", help="Layer of --polygons.")
@click.option(
    "--resampling", default="nearest", show_default=True, help="Warping of scenes off the pairing grid."
)
@click.option(
    "--min-valid",
    type=int,
    default=1,
    show_default=True,
    help="Time-wise: fewest valid observations per side.",
)
@click.option(
    "--block-px", type=int, default=64, show_default=True, help="S2 pixels per block side (bounds memory)."
)
@_cloud_options
@overwrite_option
@click.option("--no-progress", is_flag=True, help="Hide the progress bar.")
@verbosity_options
def pairs(
    s2_stack: Path,
    scenes: tuple[Path, ...],
    output: Path,
    alignment: str,
    s2_bands: tuple[str, ...] | None,
    second_bands: tuple[str, ...] | None,
    k: int,
    second_res_m: float,
    mask_band: str,
    mask_usable: float,
    max_day_offset: int,
    polygons: Path | None,
    layer: str | None,
    resampling: str,
    min_valid: int,
    block_px: int,
    cloud_band: str | None,
    cloud_threshold: float | None,
    cloud_classes: tuple[int, ...] | None,
    cloud_scale: float | None,
    reflectance_scale: float | None,
    overwrite: bool,
    no_progress: bool,
) -> None:
    """Bi-modal pre-training pairs: every pixel of S2_STACK with the k x k window of the second-modality
    PS_SCENES (a folder, GeoTIFF files or a STAC item collection) covering it, on matching dates."""
    from training.data.pairs import PairConfig, build_pairs

    cfg = PairConfig(
        s2_bands=s2_bands if s2_bands is not None else PAIR_S2_BANDS,
        second_bands=second_bands if second_bands is not None else PAIR_SECOND_BANDS,
        k=k,
        second_res_m=second_res_m,
        mask_band=mask_band,
        mask_usable=mask_usable,
        max_day_offset=max_day_offset,
        alignment=("point", "time") if alignment == "both" else (alignment,),
        resampling=resampling,
        min_valid=min_valid,
        block_px=block_px,
        cloud_band=cloud_band,
        cloud_threshold=cloud_threshold,
        cloud_classes=cloud_classes,
        cloud_scale=cloud_scale,
        reflectance_scale=reflectance_scale,
        polygons=None if polygons is None else str(polygons),
        layer=layer,
    )
    summary = build_pairs(s2_stack, list(scenes), output, cfg, overwrite=overwrite, progress=not no_progress)
    for line in summary.lines(cfg):
        click.echo(line)
    click.echo(f"pairs -> {output}")


# ---------------------------------------------------------------------------------------------- s1-pairs


@click.command("s1-pairs")
@click.argument("extraction", type=click.Path(path_type=Path))
@required_output("Output .npz.", metavar="OUT.npz")
@click.option(
    "--alignment",
    type=click.Choice(["point", "time"]),
    default="point",
    show_default=True,
    help="point: one pair per (sample, date); time: one series pair per complete sample.",
)
@click.option(
    "--bands", callback=_names, metavar="B,B,...", help="S2 bands (default: every band holding data)."
)
@click.option(
    "--polarisations",
    callback=_names,
    default="VV,VH",
    show_default=True,
    metavar="P,P",
    help="Sentinel-1 polarisations.",
)
@click.option(
    "--units",
    type=click.Choice(["db", "dn"]),
    default="db",
    show_default=True,
    help="db: 20*log10(DN)-83; dn: WorldCereal's stored numbers.",
)
@click.option("--label-column", default="ewoc_code", show_default=True, help="Label column carried along.")
@overwrite_option
@verbosity_options
def s1_pairs(
    extraction: Path,
    output: Path,
    alignment: Literal["point", "time"],
    bands: tuple[str, ...] | None,
    polarisations: tuple[str, ...],
    units: Literal["db", "dn"],
    label_column: str,
    overwrite: bool,
) -> None:
    """Sentinel-2 + Sentinel-1 pairs from a WorldCereal EXTRACTION (.parquet / .geoparquet, long or wide) for
    bi-modal pre-training ('cropmap train pretrain --mode bimodal --data OUT.npz')."""
    from training.data.s1pairs import extraction_pairs, write_pairs

    if not extraction.is_file():
        raise TrainingInputError(
            f"{extraction} does not exist or is not a file; expected a WorldCereal .parquet"
        )
    refuse_existing(output, overwrite)
    with input_errors():
        result = extraction_pairs(
            extraction,
            alignment=alignment,
            bands=list(bands) if bands is not None else None,
            polarisations=list(polarisations),
            units=units,
            label_column=label_column,
        )
        write_pairs(result, output)
    shape = "x".join(str(d) for d in result.s2.shape[1:])
    click.echo(
        f"{result.counts.pairs:,} {alignment}-wise pairs (S2 {shape}, S1 {' '.join(result.s1_bands)} in "
        f"{result.units}) -> {output}; {result.counts.summary()}"
    )


# ---------------------------------------------------------------------------------------------- stack-pixels


@click.command("stack-pixels")
@click.argument("stack", type=click.Path(path_type=Path))
@click.argument("out", metavar="[OUT.npz]", required=False, type=click.Path(path_type=Path))
@output_option("Output .npz (or give it as the second argument).", required=False, metavar="OUT.npz")
@click.option(
    "--n", type=click.IntRange(min=1), default=100_000, show_default=True, help="Observations to keep."
)
@seed_option(help="Seed of the random draw.")
@overwrite_option
@verbosity_options
def stack_pixels(
    stack: Path, out: Path | None, output: Path | None, n: int, seed: int, overwrite: bool
) -> None:
    """Unlabelled (date, pixel) observations of a Sentinel-2 GeoTIFF STACK, for uni-modal pre-training
    ('cropmap train pretrain --mode unimodal --data OUT.npz')."""
    if (out is None) == (output is None):
        raise click.UsageError("give the output once: as the second argument OUT.npz or as -o OUT.npz")
    target = output if output is not None else out
    assert target is not None
    from training.data.stack_pixels import write_stack_pixels

    refuse_existing(target, overwrite)
    with input_errors():
        kept, valid, bands = write_stack_pixels(stack, target, n, seed)
    click.echo(
        f"{kept:,} of {valid:,} valid (date, pixel) observations, bands {', '.join(bands)} -> {target}"
    )
