"""``cropmap data simulate | ps-scenes | scene-export``: the simulated scene pair and its real-world-shaped files.

Commands of the ``cropmap data`` group (:mod:`training.cli`). This module imports click and light modules only,
so ``--help`` imports neither the simulator nor rasterio; the work is imported inside each command.
``python -m training.simulate``, ``python -m training.ps_scenes`` and ``python -m training.scene_export`` run the
same commands through :func:`cropmap.cli_common.run_command` (``--out`` stays a hidden alias of ``-o``).
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import click

from cropmap.cli_common import overwrite_option, verbosity_options
from cropmap.errors import OutputExistsError
from training.data.cli import input_errors, required_output

__all__ = ["ps_scenes", "scene_export", "simulate"]

PRESET_NAMES = ("default", "large", "tiny")
"""The simulator's presets (:data:`training.simulate.run.PRESETS`), kept here for ``--help``;
tests/training/test_simulate.py checks that they agree."""


@click.command("simulate")
@required_output(
    "Output folder (scene_a/ and scene_b/ are written inside; neither may exist).", metavar="DIR"
)
@click.option(
    "--preset",
    type=click.Choice(PRESET_NAMES),
    help="Base configuration (default: 'default'); not with --config.",
)
@click.option(
    "--config",
    type=click.Path(path_type=Path),
    metavar="FILE",
    help="TOML file of SimulationConfig keys (training/configs/); not with --preset.",
)
@click.option("--size-px", type=int, help="S2 pixels per side.")
@click.option("--n-fields", type=int, help="Labelled fields per scene.")
@click.option("--n-stamps", type=int, help="S2 acquisitions per year.")
@click.option("--ps-interval-days", type=int, help="PS cadence in days (plus every S2 day).")
@click.option("--seed", type=int, help="Random seed (default: the configuration's).")
@verbosity_options
def simulate(
    output: Path,
    preset: str | None,
    config: Path | None,
    size_px: int | None,
    n_fields: int | None,
    n_stamps: int | None,
    ps_interval_days: int | None,
    seed: int | None,
) -> None:
    """Simulate a miniature DENETHOR-layout scene pair: Sentinel-2 at 10 m and PlanetScope at 3 m observing one
    3 m surface (docs/simulator.md), with each scene's cropmap inputs and real-world-shaped PlanetScope scenes."""
    if preset is not None and config is not None:
        raise click.UsageError("give --preset or --config, not both")
    from training.config import load_config
    from training.simulate.run import PRESETS, SimulationConfig
    from training.simulate.run import simulate as run_simulate

    flags = {
        "size_px": size_px,
        "n_fields": n_fields,
        "n_stamps": n_stamps,
        "ps_interval_days": ps_interval_days,
        "seed": seed,
    }
    overrides = {key: value for key, value in flags.items() if value is not None}
    with input_errors():  # SimulationConfig rejects out-of-range sizes with a ValueError naming the key
        base = load_config(SimulationConfig, config) if config is not None else PRESETS[preset or "default"]
        cfg = dataclasses.replace(base, **overrides)
    t0 = time.perf_counter()
    paths = run_simulate(output, cfg)
    elapsed = time.perf_counter() - t0
    click.echo(f"simulated {', '.join(str(p) for p in paths.values())} in {elapsed:.1f} s")


@click.command("ps-scenes")
@click.argument("scenes", metavar="SCENE_DIR...", nargs=-1, required=True, type=click.Path(path_type=Path))
@verbosity_options
def ps_scenes(scenes: tuple[Path, ...]) -> None:
    """Write SCENE_DIR/planet_scenes/: a DENETHOR-layout scene's PlanetScope archive as real-world-shaped scenes
    (own footprints and origins, UDM2 files, part in the next UTM zone), the input of 'cropmap data pairs'.

    An existing planet_scenes/ folder is an error; scenes before the failing one stay written."""
    from training.simulate.ps_scenes import write_ps_scenes

    for scene in scenes:
        with input_errors():
            out = write_ps_scenes(scene)
        click.echo(f"{scene}: wrote {out}")


@click.command("scene-export")
@click.argument("scenes", metavar="SCENE_DIR...", nargs=-1, required=True, type=click.Path(path_type=Path))
@overwrite_option(help="Replace existing s2_stack.tif and fields.gpkg; without it they are an error.")
@verbosity_options
def scene_export(scenes: tuple[Path, ...], overwrite: bool) -> None:
    """Write SCENE_DIR/s2_stack.tif (the S2 series as a cropmap time stack) and SCENE_DIR/fields.gpkg (the
    labelled fields, also the cropland mask) for DENETHOR-layout scene folders."""
    from training.simulate.scene_export import FIELDS_NAME, STACK_NAME, write_cropmap_inputs

    if not overwrite:
        existing = [p for scene in scenes for p in (scene / STACK_NAME, scene / FIELDS_NAME) if p.exists()]
        if existing:
            raise OutputExistsError(
                f"{', '.join(map(str, existing))} exist(s) already; pass --overwrite to replace them"
            )
    for scene in scenes:
        with input_errors():
            paths = write_cropmap_inputs(scene)
        click.echo(f"{scene}: wrote {paths['stack']} and {paths['fields']}")
