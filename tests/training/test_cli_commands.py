"""The data / simulate / evaluate commands of the ``cropmap`` family: help imports none of the data libraries, and
each ``python -m`` alias is the command under its old name (tests/test_cli_family.py runs the tree and the aliases
as programs)."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

COMMANDS = {
    "data": ["extract", "pairs", "s1-pairs", "stack-pixels", "simulate", "ps-scenes", "scene-export"],
    "evaluate": ["protocol", "probe", "mapscore", "seedtable", "season-transfer", "s1-bimodal"],
}
HEAVY = ("torch", "numpy", "rasterio", "pandas", "geopandas", "sklearn", "shapely", "matplotlib")


def test_help_of_every_command_imports_nothing_heavy() -> None:
    """``--help`` prints from the click definitions alone: none of the modules doing the work is imported."""
    code = f"""
import sys
from click.testing import CliRunner
from training.cli import data, evaluate
groups = {{"data": data, "evaluate": evaluate}}
for group, names in {COMMANDS!r}.items():
    for name in names:
        res = CliRunner().invoke(groups[group], [name, "--help"])
        assert res.exit_code == 0 and res.output.startswith("Usage: "), (group, name, res.output)
print(sorted(m for m in {HEAVY!r} if m in sys.modules))
"""
    run = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=False, timeout=120
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "[]"


ALIASES = {
    "training.data.extract": ("training.data.extract", "STACK POLYGONS"),
    "training.pairs": ("training.data.pairs", "S2_STACK PS_SCENES..."),
    "training.data.s1pairs": ("training.data.s1pairs", "EXTRACTION"),
    "training.data.stack_pixels": ("training.data.stack_pixels", "STACK [OUT.npz]"),
    "training.simulate": ("training.simulate.run", ""),
    "training.ps_scenes": ("training.simulate.ps_scenes", "SCENE_DIR..."),
    "training.scene_export": ("training.simulate.scene_export", "SCENE_DIR..."),
    "training.evaluate": ("training.evaluate.run", ""),
    "training.probe": ("training.evaluate.probe", ""),
    "training.mapscore": ("training.evaluate.mapscore", "MAP.tif FIELDS.gpkg"),
    "training.seedtable": ("training.evaluate.seedtable", "RUN_DIR..."),
    "training.season_transfer": ("training.evaluate.season_transfer", ""),
    "training.s1_bimodal": ("training.evaluate.s1_bimodal", ""),
}
"""Each documented ``python -m`` form: the module whose ``main`` it runs and the arguments of its usage line."""


def _usage(module: str) -> str:
    return f"Usage: python -m {module} [OPTIONS] {ALIASES[module][1]}".rstrip()


@pytest.mark.parametrize("module", sorted(ALIASES))
def test_python_m_aliases_run_the_commands(module: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Each ``python -m`` form is the command under its old name: help exits 0, an unknown option 2."""
    main = importlib.import_module(ALIASES[module][0]).main
    assert main(["--help"]) == 0
    assert capsys.readouterr().out.startswith(_usage(module) + "\n")
    assert main(["--no-such-option"]) == 2
    assert "Error: No such option '--no-such-option'" in capsys.readouterr().err
