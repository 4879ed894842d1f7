"""The fault suite, part three (docs/faults.md, cases 49-): a run's outputs commit as one set.

A real ``cropmap classify`` process is SIGKILLed at a chosen step of its commit (the test-only hook
``CROPMAP_TEST_COMMIT_KILL_AT``: the N-th rename, journal write or removal); the folder is then
repaired by the journal exactly as the next run repairs it, and must hold either the earlier run's
set (byte for byte) or the new run's set, never a mix. Dangling symbolic links at ``-o``, output
names too long for the temporaries and failing clean-up after the commit are tried on real files.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from stackkit import (
    CRS,
    make_values,
    polygon_a,
    polygon_b,
    write_bundle,
    write_polygons,
    write_stack_descriptions,
)

from cropmap.cli import main
from cropmap.safeio.commit import COMMIT_KILL_ENV, journal_path, recover_commit
from cropmap.safeio.temporaries import is_debris

OLD = ["--confidence", "--probabilities"]
NEW = ["--uncertainty", "entropy", "--overwrite"]
OLD_NAMES = {
    "map.tif",
    "map.tif.aux.xml",
    "map.qml",
    "map_summary.json",
    "map_stac.json",
    "map_quicklook.png",
    "map_confidence.tif",
    "map_probabilities.tif",
}
NEW_NAMES = {
    "map.tif",
    "map.tif.aux.xml",
    "map.qml",
    "map_summary.json",
    "map_stac.json",
    "map_quicklook.png",
    "map_uncertainty.tif",
}
# journal, 6 backups, 7 moves, 2 removals, committed, 8 backup removals, journal removal: 26 steps
ALL_STEPS = 26
QUICK_STEPS = (1, 2, 7, 8, 14, 16, 17, 18, 26)


def _hashes(folder: Path) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.iterdir())
        if p.is_file() and not is_debris(p.name)
    }


def _one_error_line(text: str, *words: str) -> str:
    assert "Traceback" not in text, text
    lines = [line for line in text.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), text
    for w in words:
        assert w in lines[0], (w, lines[0])
    return lines[0]


@pytest.fixture
def inputs(tmp_path: Path) -> tuple[Path, Path, Path]:
    stack = write_stack_descriptions(tmp_path / "stack.tif", make_values())
    mask = write_polygons(tmp_path / "cropland.gpkg", [polygon_a(), polygon_b()], CRS)
    return stack, mask, write_bundle(tmp_path / "tiny.onnx")


def _args(inputs: tuple[Path, Path, Path], out: Path, *extra: str) -> list[str]:
    stack, mask, bundle = inputs
    return [
        "classify",
        str(stack),
        "--mask",
        str(mask),
        "--model",
        str(bundle),
        "-o",
        str(out),
        "-q",
        "--cloud-band",
        "none",
        *extra,
    ]


def _run(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "cropmap", *args],
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


def _kill_case(step: int, inputs: tuple[Path, Path, Path], tmp_path: Path) -> None:
    out = tmp_path / "o" / "map.tif"
    assert _run(_args(inputs, out, *OLD)).returncode == 0
    before_inputs = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in inputs}
    old = _hashes(out.parent)
    assert set(old) == OLD_NAMES
    killed = _run(_args(inputs, out, *NEW), env={COMMIT_KILL_ENV: str(step)})
    assert killed.returncode == -9, (step, killed.returncode, killed.stderr)
    # The repair the next run does first, under the lock (cropmap.outputs.claim_outputs).
    outcome = recover_commit(journal_path(out))
    now = _hashes(out.parent)
    if set(now) == OLD_NAMES:
        assert now == old, step
        assert outcome in ("rolled back", None)
    else:
        assert set(now) == NEW_NAMES, (step, sorted(now))
        summary = json.loads((out.parent / "map_summary.json").read_text())
        assert sorted(Path(p).name for p in summary["removed_outputs"]) == [
            "map_confidence.tif",
            "map_probabilities.tif",
        ]
    assert not journal_path(out).exists()
    # The next run: without --overwrite the (repaired) set exists; with it, a complete new set and no debris.
    again = _run(_args(inputs, out, "--uncertainty", "entropy"))
    assert again.returncode == 1
    _one_error_line(again.stderr, "already exists")
    final = _run(_args(inputs, out, *NEW))
    assert final.returncode == 0, final.stderr
    assert set(_hashes(out.parent)) == NEW_NAMES
    assert sorted(os.listdir(out.parent)) == sorted(NEW_NAMES), "debris left"
    assert {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in inputs} == before_inputs


@pytest.mark.parametrize("step", QUICK_STEPS)
def test_killed_during_commit_leaves_old_or_new_set(
    step: int, inputs: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    _kill_case(step, inputs, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("step", [s for s in range(1, ALL_STEPS + 1) if s not in QUICK_STEPS])
def test_killed_at_every_step_of_the_commit(
    step: int, inputs: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    _kill_case(step, inputs, tmp_path)


def test_next_run_without_overwrite_repairs_a_torn_set(
    inputs: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    """Killed between the renames: the next run (no --overwrite) rolls back first, then says the set exists."""
    out = tmp_path / "o" / "map.tif"
    assert _run(_args(inputs, out, *OLD)).returncode == 0
    old = _hashes(out.parent)
    assert _run(_args(inputs, out, *NEW), env={COMMIT_KILL_ENV: "8"}).returncode == -9
    assert journal_path(out).exists() and set(_hashes(out.parent)) != OLD_NAMES  # torn
    again = _run([*_args(inputs, out, *OLD)[:-1], "-v"])
    assert again.returncode == 1
    assert "rolled back the commit" in again.stderr and "already exists" in again.stderr
    assert _hashes(out.parent) == old and not journal_path(out).exists()


def test_overwrite_removes_side_outputs_of_an_earlier_run(
    inputs: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    out = tmp_path / "o" / "map.tif"
    assert _run(_args(inputs, out, *OLD)).returncode == 0
    res = _run(_args(inputs, out, "--overwrite"))
    assert res.returncode == 0, res.stderr
    assert "map_confidence.tif" not in os.listdir(out.parent) and "map_probabilities.tif" not in os.listdir(
        out.parent
    )
    summary = json.loads((out.parent / "map_summary.json").read_text())
    assert len(summary["removed_outputs"]) == 2


def test_side_output_of_an_earlier_run_needs_overwrite(
    inputs: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    out = tmp_path / "o" / "map.tif"
    out.parent.mkdir()
    (out.parent / "map_confidence.tif").write_bytes(b"earlier run")
    res = _run(_args(inputs, out))
    assert res.returncode == 1
    _one_error_line(res.stderr, "map_confidence.tif already exists", "--overwrite")
    assert (out.parent / "map_confidence.tif").read_bytes() == b"earlier run"


def test_dangling_symlink_at_output_needs_overwrite(inputs: tuple[Path, Path, Path], tmp_path: Path) -> None:
    out = tmp_path / "map.tif"
    out.symlink_to(tmp_path / "nowhere.tif")
    res = _run(_args(inputs, out))
    assert res.returncode == 1
    _one_error_line(res.stderr, "(a dangling symbolic link) already exists", "--overwrite")
    assert out.is_symlink() and os.readlink(out) == str(tmp_path / "nowhere.tif")
    assert not (tmp_path / "nowhere.tif").exists()
    res = _run(_args(inputs, out, "--overwrite"))
    assert res.returncode == 0, res.stderr
    assert out.is_file() and not out.is_symlink() and not (tmp_path / "nowhere.tif").exists()


@pytest.mark.parametrize("length", [200, 250])
def test_very_long_output_name_is_refused_before_any_work(
    length: int, inputs: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    out = tmp_path / "new" / ("m" * (length - 4) + ".tif")
    res = _run(_args(inputs, out))
    assert res.returncode == 1
    _one_error_line(res.stderr, "bytes long", "choose a shorter -o")
    assert not (tmp_path / "new").exists()


def test_very_long_output_path_is_refused_before_any_work(
    inputs: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    deep = tmp_path
    for _ in range(17):
        deep = deep / ("d" * 240)
    res = _run(_args(inputs, deep / "map.tif"))
    assert res.returncode == 1
    _one_error_line(res.stderr, "choose a shorter -o")
    assert not (tmp_path / ("d" * 240)).exists()


def test_committed_run_exits_0_when_cleanup_fails(
    inputs: tuple[Path, Path, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Removing a scratch file after the commit fails (simulated EACCES): exit 0, a warning, complete outputs."""
    real_unlink = Path.unlink

    def failing_unlink(self: Path, missing_ok: bool = False) -> None:
        if ".scratch." in self.name and (self.parent / "map.tif").exists():  # after the commit
            raise PermissionError(13, "Permission denied", str(self))
        real_unlink(self, missing_ok=missing_ok)

    monkeypatch.setattr(Path, "unlink", failing_unlink)
    out = tmp_path / "o" / "map.tif"
    res = CliRunner().invoke(main, [a for a in _args(inputs, out, "--embedding") if a != "-q"])
    assert res.exit_code == 0, res.output
    text = res.output + caplog.text
    assert "could not remove the temporary file" in text and "the outputs are complete" in text
    assert {"map.tif", "map_embedding.tif", "map_summary.json"} <= set(os.listdir(out.parent))


def test_unreadable_journal_is_one_line(inputs: tuple[Path, Path, Path], tmp_path: Path) -> None:
    out = tmp_path / "o" / "map.tif"
    assert _run(_args(inputs, out)).returncode == 0
    journal_path(out).write_text("{not json")
    res = _run(_args(inputs, out, "--overwrite"))
    assert res.returncode == 1
    _one_error_line(res.stderr, "commit journal", "unreadable")
    assert journal_path(out).read_text() == "{not json"
