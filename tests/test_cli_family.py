"""The ``cropmap`` command family (docs/cli.md): the layout, fast help, one exit policy, the extras' hints, aliases.

Every check runs the real command line in a fresh Python process (``python -m cropmap``, ``python -m exporters``,
...) and reads its exit status, its stderr and, for ``--help``, which modules it imported.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import click
import numpy as np
import pytest

from cropmap.cli import main as cropmap_main
from cropmap.cli_common import UnavailableCommand
from cropmap.models import DEFAULT_BUNDLE

REPO = Path(__file__).resolve().parents[1]

LAYOUT = {
    "": ["classify", "batch", "assess"],
    "data": ["extract", "pairs", "s1-pairs", "stack-pixels", "simulate", "ps-scenes", "scene-export"],
    "train": ["pretrain", "downstream", "tune", "sample-model"],
    "evaluate": ["protocol", "probe", "mapscore", "seedtable", "season-transfer", "s1-bimodal"],
    "export": ["bundle", "best", "score"],
}
"""The decided layout (issue 22 item 1); the root also lists the four plugin groups."""

HEAVY = ("torch", "onnx", "optuna")

ALIASES = [
    "training.pretrain",
    "training.downstream",
    "training.evaluate",
    "training.simulate",
    "training.data.extract",
    "training.data.s1pairs",
    "training.data.stack_pixels",
    "exporters",
    "exporters.score",
    "training.tune",
    "training.sample_model",
    "training.probe",
    "training.mapscore",
    "training.seedtable",
    "training.season_transfer",
    "training.s1_bimodal",
    "training.ps_scenes",
    "training.scene_export",
    "training.pairs",
]
"""Every documented ``python -m`` form (docs/cli.md#aliases)."""

# Runs the root group under the family's policy, then reports the heavy modules it imported (on stderr, last line).
_PROBE = """
import sys
from cropmap.cli import main
from cropmap.cli_common import run_command
status = run_command(main, sys.argv[1:], prog_name="cropmap")
print("imported:" + ",".join(m for m in {heavy!r} if m in sys.modules), file=sys.stderr)
sys.exit(status)
"""


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    return env


def _cropmap(*args: str, timeout: float = 300, **kwargs: object) -> subprocess.CompletedProcess[str]:
    """``python -m cropmap ARGS`` in a fresh process."""
    return subprocess.run(
        [sys.executable, "-m", "cropmap", *args],
        cwd=REPO,
        env=_env(),
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout,
        **kwargs,  # type: ignore[call-overload]
    )


def _walk(group: click.Group, path: tuple[str, ...]) -> Iterator[tuple[tuple[str, ...], click.Command]]:
    ctx = click.Context(group)
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        assert command is not None, (path, name)
        yield (*path, name), command
        if isinstance(command, click.Group):
            yield from _walk(command, (*path, name))


TREE = dict(_walk(cropmap_main, ()))
"""Every command of the installed tree (the plugin groups come from the ``cropmap.commands`` entry points)."""


def test_the_tree_is_the_layout() -> None:
    expected: set[tuple[str, ...]] = {(name,) for name in LAYOUT[""]} | {(g,) for g in LAYOUT if g}
    expected |= {(g, name) for g, names in LAYOUT.items() if g for name in names}
    assert set(TREE) == expected


@pytest.mark.parametrize("path", sorted(TREE), ids=" ".join)
def test_help_of_every_command_is_fast(path: tuple[str, ...]) -> None:
    """``cropmap ... --help`` exits 0 with its usage, and imports neither torch, onnx nor optuna."""
    command = TREE[path]
    assert not isinstance(command, UnavailableCommand), command.help
    res = subprocess.run(
        [sys.executable, "-c", _PROBE.format(heavy=HEAVY), *path, "--help"],
        cwd=REPO,
        env=_env(),
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith(f"Usage: cropmap {' '.join(path)} "), res.stdout
    assert res.stderr.strip().splitlines()[-1] == "imported:", res.stderr


def _one_error_line(res: subprocess.CompletedProcess[str]) -> str:
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert "Traceback" not in res.stderr, res.stderr
    assert len(lines) == 1 and lines[0].startswith("Error: "), res.stderr
    return lines[0]


def test_usage_errors_exit_2_naming_the_option(tmp_path: Path) -> None:
    res = _cropmap("classify", str(tmp_path / "s.tif"), "--whole-stack", "--block-size", "abc")
    assert res.returncode == 2 and "Invalid value for '--block-size'" in res.stderr, res.stderr
    assert "Traceback" not in res.stderr
    res = _cropmap("train", "pretrain", "--data", "x.npz", "-o", str(tmp_path / "run"), "--device", "gpu")
    assert res.returncode == 2 and "Invalid value for '--device'" in res.stderr, res.stderr
    res = _cropmap("export", "score", str(DEFAULT_BUNDLE))
    assert res.returncode == 2 and "give --data SERIES.npz, or --run RUN_DIR" in res.stderr, res.stderr
    res = _cropmap("export", "nonsense")
    assert res.returncode == 2 and "No such command 'nonsense'" in res.stderr, res.stderr
    assert not (tmp_path / "run").exists()


def test_bad_input_exits_1_with_one_error_line(tmp_path: Path) -> None:
    missing = tmp_path / "missing.onnx"
    res = _cropmap("export", "score", str(missing), "--data", str(tmp_path / "series.npz"))
    assert res.returncode == 1
    assert _one_error_line(res) == f"Error: bundle {missing} does not exist"
    # The root's own commands keep the same policy.
    res = _cropmap("assess", str(tmp_path / "map.tif"), "--plan", "-o", str(tmp_path / "plan.gpkg"))
    assert res.returncode == 1 and str(tmp_path / "map.tif") in _one_error_line(res)
    assert not (tmp_path / "plan.gpkg").exists()


def test_an_existing_output_needs_overwrite(tmp_path: Path) -> None:
    """``-o`` over an existing file is an error (exit 1) that names ``--overwrite``; with it the file is replaced."""
    rng = np.random.default_rng(0)
    from cropmap.runtime import load_bundle

    meta = load_bundle(DEFAULT_BUNDLE).metadata
    series = tmp_path / "series.npz"
    x = (rng.random((20, meta.n_timesteps, meta.n_bands)) * 3000).astype(np.float32)
    np.savez(series, x=x, y=rng.integers(0, len(meta.classes), 20))
    out = tmp_path / "score.json"
    out.write_text("earlier")
    res = _cropmap("export", "score", str(DEFAULT_BUNDLE), "--data", str(series), "-o", str(out))
    assert res.returncode == 1
    assert _one_error_line(res) == f"Error: --output {out} exists; pass --overwrite to replace it"
    assert out.read_text() == "earlier"
    res = _cropmap(
        "export", "score", str(DEFAULT_BUNDLE), "--data", str(series), "-o", str(out), "--overwrite", "--json"
    )
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout) == json.loads(out.read_text())
    assert json.loads(res.stdout)["n"] == 20
    # The alias keeps its old --json FILE, which always replaced the file (scripts rerun it).
    out.write_text("earlier")
    alias = subprocess.run(
        [
            sys.executable,
            "-m",
            "exporters.score",
            str(DEFAULT_BUNDLE),
            "--data",
            str(series),
            "--json",
            str(out),
        ],
        cwd=REPO,
        env=_env(),
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert alias.returncode == 0, alias.stderr
    assert json.loads(out.read_text())["n"] == 20 and "accuracy" in alias.stdout


@pytest.mark.parametrize(("signum", "status"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signals_end_a_running_command(tmp_path: Path, signum: signal.Signals, status: int) -> None:
    """Ctrl-C and SIGTERM sent to a running pre-training: 128 + the signal, one ``Error:`` line, no encoder."""
    rng = np.random.default_rng(0)
    data = tmp_path / "s2.npz"
    np.savez(data, s2=(rng.random((64, 12)) * 3000).astype(np.float32))
    out = tmp_path / "run"
    tiny = [
        "encoder.hidden=8",
        "encoder.n_layers=2",
        "encoder.out_dim=4",
        "projector.hidden=8",
        "projector.out=4",
    ]
    sets = [arg for key in [*tiny, "batch_size=16", "epochs=100000", "log_every=1"] for arg in ("--set", key)]
    args = ["train", "pretrain", "--data", str(data), "-o", str(out), "--mode", "unimodal", "--device", "cpu"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "cropmap", *args, *sets, "--no-progress"],
        cwd=REPO,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        log = out / "loss_log.jsonl"
        deadline = time.monotonic() + 240
        while not (log.exists() and log.stat().st_size > 0):  # it is running: steps are being logged
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "pre-training logged no step in 240 s"
            time.sleep(0.2)
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == status, err
    name = signal.Signals(signum).name
    res = subprocess.CompletedProcess(args, proc.returncode, "", err)
    assert _one_error_line(res) == f"Error: interrupted by {name}"
    assert not (out / "encoder.pt").exists()


def test_a_missing_extra_is_named(tmp_path: Path) -> None:
    """Without torch the groups are still listed; running one prints the extra to install, exit 1."""
    code = (
        "import sys\n"
        "sys.modules['torch'] = None  # torch absent: importing it fails, find_spec finds nothing\n"
        "from cropmap.cli import main\n"
        "from cropmap.cli_common import run_command\n"
        "sys.exit(run_command(main, sys.argv[1:], prog_name='cropmap'))\n"
    )

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-c", code, *args],
            cwd=REPO,
            env=_env(),
            capture_output=True,
            text=True,
            check=False,
            timeout=300,
        )

    listed = run("--help")
    assert listed.returncode == 0, listed.stderr
    commands = listed.stdout.split("Commands:")[1].split()
    assert {"data", "train", "evaluate", "export", "classify"} <= set(commands)
    for group, extra in (("train", "train"), ("data", "train"), ("evaluate", "train"), ("export", "export")):
        for args in ([group], [group, "--help"], [group, *LAYOUT[group][:1], "--help"]):
            res = run(*args)
            assert res.returncode == 1, (args, res.stderr)
            assert _one_error_line(res) == (
                f"Error: 'cropmap {group}' needs the {extra} extra: pip install \"cropmap[{extra}]\""
            )
    # The inference commands do not need the extras.
    res = run("classify", "--help")
    assert res.returncode == 0 and "Usage: cropmap classify" in res.stdout, res.stderr


@pytest.mark.parametrize("module", ALIASES)
def test_every_documented_alias_still_runs(module: str) -> None:
    res = subprocess.run(
        [sys.executable, "-m", module, "--help"],
        cwd=REPO,
        env=_env(),
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr
    assert "Usage:" in res.stdout or "usage:" in res.stdout, res.stdout


def test_exporters_alias_maps_best_and_checkpoint(tmp_path: Path) -> None:
    """``python -m exporters --best RUN_DIR`` is ``export best RUN_DIR``; a checkpoint is ``export bundle``."""

    def alias(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "exporters", *args],
            cwd=REPO,
            env=_env(),
            capture_output=True,
            text=True,
            check=False,
            timeout=300,
        )

    empty = tmp_path / "runs"
    empty.mkdir()
    best = alias("--best", str(empty), "--out", str(tmp_path / "m.onnx"), "--precision", "fp16")
    assert best.returncode == 1 and str(empty) in _one_error_line(best)
    bundle = alias(str(tmp_path / "missing.pt"), "-o", str(tmp_path / "m.onnx"))
    assert bundle.returncode == 1 and "missing.pt" in _one_error_line(bundle)
    usage = alias(str(tmp_path / "missing.pt"), "-o", str(tmp_path / "m.onnx"), "--weights", "fp64")
    assert usage.returncode == 2 and "Invalid value for '--weights'" in usage.stderr
    assert not (tmp_path / "m.onnx").exists()


def test_hidden_aliases_stay_out_of_help() -> None:
    """Old spellings are accepted (above) but the help shows one vocabulary."""
    res = _cropmap("export", "bundle", "--help")
    assert res.returncode == 0 and "--weights" in res.stdout and "-o, --output" in res.stdout
    assert "--precision" not in res.stdout and "--out " not in res.stdout
    res = _cropmap("batch", "--help")
    assert "-o, --output FOLDER" in res.stdout and "--out-dir" not in res.stdout


def test_the_exporters_choices_shown_in_help_are_the_exporters_own() -> None:
    """exporters/cli.py keeps the choices its help shows (so that help imports no torch): they must not drift."""
    from exporters import best, cli, quantize, score, to_onnx
    from training.pretrain import cli as pretrain_cli
    from training.pretrain import loop

    assert set(cli.METRIC_CHOICES) == set(best.METRICS)
    assert cli.SELECT_SPLITS == best.SPLITS
    assert cli.INT8_METHODS == quantize.INT8_METHODS
    assert cli.DEFAULT_MIN_AGREEMENT == quantize.DEFAULT_MIN_AGREEMENT
    assert cli.DEFAULT_OPSET == to_onnx.DEFAULT_OPSET
    assert cli.SCORE_SPLITS == score.SPLITS
    assert pretrain_cli.PRECISIONS == loop.PRECISIONS


def test_the_shared_options_mean_one_thing() -> None:
    """The decorators of cropmap.cli_common on a real click command: spellings, hidden aliases, checks, logging."""
    import logging

    from click.testing import CliRunner

    from cropmap.cli_common import (
        device_option,
        family_option,
        output_option,
        overwrite_option,
        verbosity_options,
        weights_option,
    )

    seen: dict[str, object] = {}

    @click.command()
    @output_option("Where to write.", aliases=("--out", "--out-dir"))
    @overwrite_option
    @device_option()
    @weights_option()
    @family_option(choices=("lstm", "transformer"))
    @verbosity_options
    def probe(**values: object) -> None:
        seen.update(values, level=logging.getLogger("training").level)

    runner = CliRunner()
    res = runner.invoke(
        probe, ["--out-dir", "x", "--families", "lstm,transformer", "--precision", "int8", "-vv"]
    )
    assert res.exit_code == 0, res.output
    assert seen == {
        "output": Path("x"),
        "overwrite": False,
        "device": "auto",
        "weights": "int8",
        "family": ("lstm", "transformer"),
        "level": logging.DEBUG,
    }
    res = runner.invoke(
        probe, ["-o", "y", "--family", "lstm", "--family", "transformer", "--device", "CUDA:1", "-q"]
    )
    assert res.exit_code == 0 and seen["family"] == ("lstm", "transformer") and seen["device"] == "cuda:1"
    assert seen["level"] == logging.ERROR
    for bad, option in (
        (["-o", "z", "--device", "tpu"], "--device"),
        (["-o", "z", "--family", "forest"], "--family"),
        (["-o", "z", "--weights", "fp8"], "--weights"),
        ([], "--output"),
    ):
        res = runner.invoke(probe, bad)
        assert res.exit_code == 2 and option in res.output, (bad, res.output)
        assert "'--out'" not in res.output and "--out-dir" not in res.output  # errors name the shown spelling
    helptext = runner.invoke(probe, ["--help"]).output
    assert "-o, --output PATH" in helptext and "--family NAME" in helptext
    assert "--out-dir" not in helptext and "--families" not in helptext and "--precision" not in helptext


def test_one_line_is_the_one_error_formatter(tmp_path: Path) -> None:
    import errno

    from cropmap.cli_common import one_line
    from cropmap.errors import MaskError

    assert one_line(MaskError("mask x.gpkg holds no polygon;\n  expected  polygons")) == (
        "mask x.gpkg holds no polygon; expected polygons"
    )
    denied = PermissionError(errno.EACCES, "Permission denied", str(tmp_path / "out.tif"))
    assert one_line(denied).startswith(f"could not access {tmp_path / 'out.tif'}: permission denied")
    exists = FileExistsError(errno.EEXIST, "File exists", str(tmp_path / "m.onnx"))
    assert one_line(exists) == f"{tmp_path / 'm.onnx'} exists; pass --overwrite to replace it"
    assert one_line(FileNotFoundError("pre-training data 'x.npz' does not exist")) == (
        "pre-training data 'x.npz' does not exist"
    )
