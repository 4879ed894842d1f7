"""The fault suite (docs/faults.md): real faults a user or a machine causes, one assertion set each.

Every case asserts the exit status, the one-line message (no traceback), that nothing half-written is
left at or beside the final paths, and that the inputs are byte-identical afterwards (SHA-256).

Real faults wherever this machine allows them: a read-only bind mount (or, for a non-root user, a
folder without write permission: root writes through permission bits), a tiny tmpfs for a full disk,
``RLIMIT_FSIZE`` for a file-size limit, SIGKILL / SIGTERM of a real ``cropmap classify`` process and two
concurrent processes. Mounts are made in a private mount namespace (``unshare``) of the child process
only; where the kernel refuses one, the test is skipped with the reason.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
import shapely
from click.testing import CliRunner
from stackkit import (
    CRS,
    DATES,
    ORIGIN,
    RES,
    STACK_BANDS,
    make_values,
    polygon_a,
    polygon_b,
    profile,
    write_bundle,
    write_polygons,
    write_stack_descriptions,
)

from cropmap.cli import main
from cropmap.errors import FileSystemError
from cropmap.safeio.commit import replace_all
from cropmap.safeio.locks import lock_path
from cropmap.safeio.temporaries import HOST, owned_path

CLI = [sys.executable, "-m", "cropmap"]
BIG = 1024  # edge of the stack the signal and concurrency cases classify (about 7 s on one core)
SLOW_ARGS = ["--workers", "1", "--block-size", "64"]  # many small blocks: the run is long enough to catch


# ---------------------------------------------------------------------------------------------- helpers


def _hashes(paths: Iterable[Path]) -> dict[str, str]:
    out = {}
    for p in paths:
        for f in sorted(p.rglob("*")) if p.is_dir() else [p]:
            if f.is_file():
                out[str(f)] = hashlib.sha256(f.read_bytes()).hexdigest()
    return out


def _one_error_line(text: str, *words: str) -> str:
    """The text is exactly one ``Error: ...`` line (``-q`` keeps warnings out) holding every word."""
    assert "Traceback" not in text, text
    lines = [line for line in text.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), text
    for w in words:
        assert w in lines[0], (w, lines[0])
    return lines[0]


def _files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def _classify_args(stack: Path, mask: Path, bundle: Path, out: Path, *extra: object) -> list[str]:
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
        *map(str, extra),
    ]


def _wait_for(predicate: Any, timeout: float, what: str, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(
                f"the process ended (status {proc.returncode}) before {what}: "
                f"{proc.stderr.read() if proc.stderr else ''}"
            )
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _scratch_in(folder: Path) -> bool:
    return folder.is_dir() and any(".scratch." in p.name for p in folder.iterdir())


@cache
def _unshare() -> list[str] | None:
    """``unshare`` arguments that give a child its own mount namespace, or None where that is refused."""
    if shutil.which("unshare") is None:
        return None
    for args in (
        (["unshare", "-m"], ["unshare", "-r", "-m"]) if os.geteuid() == 0 else (["unshare", "-r", "-m"],)
    ):
        if subprocess.run([*args, "true"], capture_output=True, check=False).returncode == 0:
            return args
    return None


def _in_namespace(
    setup: str, argv: Sequence[str], listing: Path | None = None, **kw: Any
) -> subprocess.CompletedProcess:
    """Run ``argv`` after the shell ``setup`` in a private mount namespace; print ``listing``'s files after it."""
    ns = _unshare()
    assert ns is not None
    after = f'; rc=$?; echo "@@FILES@@"; ls -A "{listing}"; exit $rc' if listing is not None else ""
    script = f'set -e; {setup}; set +e; "$@"{after}'
    return subprocess.run(
        [*ns, "sh", "-c", script, "sh", *argv], capture_output=True, text=True, check=False, timeout=180, **kw
    )


def _read_only(folder: Path) -> tuple[list[str], str, Any]:
    """How to make ``folder`` read-only for a child: (command prefix, expected cause, undo)."""
    if os.geteuid() != 0:
        folder.chmod(0o555)
        return [], "permission denied", lambda: folder.chmod(0o755)
    if _unshare() is None:
        pytest.skip(
            "running as root (chmod does not stop root) and no private mount namespace (unshare) here"
        )
    probe = _in_namespace(
        f'mount --bind "{folder}" "{folder}"; mount -o remount,bind,ro "{folder}"',
        ["sh", "-c", f'! touch "{folder}/.probe" 2>/dev/null'],
    )
    if probe.returncode != 0:
        pytest.skip(f"a read-only bind mount is refused here: {probe.stderr.strip()}")
    ns = " ".join(_unshare() or [])
    mount = f'mount --bind "{folder}" "{folder}" && mount -o remount,bind,ro "{folder}" && exec "$@"'
    prefix = [*ns.split(), "sh", "-c", mount, "sh"]
    return prefix, "read-only file system", lambda: None


def _tmpfs_or_skip() -> None:
    if _unshare() is None:
        pytest.skip(
            "no private mount namespace (unshare) here for a small tmpfs; the full disk is covered by "
            "the file-size limit case"
        )
    probe = _in_namespace("d=$(mktemp -d); mount -t tmpfs -o size=16k tmpfs $d", ["true"])
    if probe.returncode != 0:
        pytest.skip(f"mounting a tmpfs is refused here: {probe.stderr.strip()}")


# ---------------------------------------------------------------------------------------------- inputs


@pytest.fixture
def small(tmp_path: Path) -> dict[str, Path]:
    d = tmp_path / "in"
    d.mkdir()
    return {
        "stack": write_stack_descriptions(d / "stack.tif", make_values()),
        "mask": write_polygons(d / "cropland.gpkg", [polygon_a(), polygon_b()], CRS),
        "bundle": write_bundle(d / "tiny.onnx"),
    }


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A 1024 x 1024 px stack all cropland, for runs long enough to signal or race."""
    d = tmp_path_factory.mktemp("big")
    rng = np.random.default_rng(0)
    s, c = len(DATES), len(STACK_BANDS)
    prof = profile(s * c) | {"width": BIG, "height": BIG}
    with rasterio.open(d / "big.tif", "w", **prof) as ds:
        for t, day in enumerate(DATES):
            for b, name in enumerate(STACK_BANDS):
                ds.write(rng.integers(200, 6000, size=(BIG, BIG), dtype=np.uint16), t * c + b + 1)
                ds.set_band_description(t * c + b + 1, f"{day.isoformat()}_{name}")
        ds.update_tags(reflectance_scale="10000")
    x0, y0 = ORIGIN
    box = shapely.box(x0 + 1, y0 - BIG * RES + 1, x0 + BIG * RES - 1, y0 - 1)
    return {
        "stack": d / "big.tif",
        "mask": write_polygons(d / "all.gpkg", [box], CRS),
        "bundle": write_bundle(d / "tiny.onnx"),
    }


class _OtherProcessHolds:
    """Another live process holding a cropmap lock (a real second process, as a concurrent run would be)."""

    def __init__(self, target: Path, what: str) -> None:
        code = (
            f"import sys; from pathlib import Path; from cropmap.safeio.locks import RunLock\n"
            f"with RunLock(Path({str(target)!r}), {what!r}):\n    print('held', flush=True); sys.stdin.read()"
        )
        self.proc = subprocess.Popen(
            [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )

    def __enter__(self) -> subprocess.Popen:
        assert self.proc.stdout is not None and self.proc.stdout.readline().strip() == "held"
        return self.proc

    def __exit__(self, *exc: object) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


def _invoke(*args: object) -> Any:  # click.testing.Result
    return CliRunner().invoke(main, [str(a) for a in args])


# ---------------------------------------------------------------------------------------------- inputs are never outputs


@pytest.mark.parametrize(
    "how", ["same path", "dot-dot", "symlink", "hard link", "inside folder stack", "summary is the mask"]
)
def test_output_never_replaces_an_input(small: dict[str, Path], tmp_path: Path, how: str) -> None:
    stack, mask, bundle = small["stack"], small["mask"], small["bundle"]
    d = stack.parent
    if how == "same path":
        out = stack
    elif how == "dot-dot":
        (d / "sub").mkdir()
        out = d / "sub" / ".." / stack.name
    elif how == "symlink":
        out = d / "link.tif"
        out.symlink_to(stack)
    elif how == "hard link":
        out = d / "hard.tif"
        os.link(stack, out)
    elif how == "inside folder stack":
        folder = d / "dates"
        folder.mkdir()
        values = make_values()
        for t, day in enumerate(DATES):
            with rasterio.open(folder / f"S2_{day.isoformat()}.tif", "w", **profile(len(STACK_BANDS))) as ds:
                ds.write(values[t])
                ds.descriptions = STACK_BANDS
                ds.update_tags(reflectance_scale="10000")
        stack, out = folder, folder / "map.tif"
    else:  # the mask is a GeoJSON named like the summary the run writes
        mask = d / "map_summary.json"
        shutil.copy(small["mask"], d / "m.gpkg")
        import geopandas as gpd

        gpd.read_file(d / "m.gpkg").to_file(mask, driver="GeoJSON")
        out = d / "map.tif"
    named = mask if how == "summary is the mask" else out  # the written path that is an input
    before = _hashes([d])
    res = _invoke(*_classify_args(stack, mask, bundle, out, "--overwrite"))
    assert res.exit_code == 1
    _one_error_line(res.output, f"output {named} ")
    assert ("never writes over an input" in res.output) or ("inside the stack folder" in res.output)
    assert _hashes([d]) == before


# ---------------------------------------------------------------------------------------------- outputs that cannot be written


def test_read_only_folder(small: dict[str, Path], tmp_path: Path) -> None:
    out_dir = tmp_path / "ro"
    out_dir.mkdir()
    prefix, cause, undo = _read_only(out_dir)
    before = _hashes(small.values())
    try:
        for out in (out_dir / "map.tif", out_dir / "new" / "deeper" / "map.tif"):
            proc = subprocess.run(
                [*prefix, *CLI, *_classify_args(small["stack"], small["mask"], small["bundle"], out)],
                capture_output=True,
                text=True,
                check=False,
                timeout=180,
            )
            assert proc.returncode == 1, proc.stderr
            _one_error_line(proc.stderr, "could not", cause, str(out_dir))
    finally:
        undo()
    assert _files(out_dir) == []
    assert _hashes(small.values()) == before


def test_full_disk_refused_before_the_run(big: dict[str, Path], tmp_path: Path) -> None:
    """Free space far below the outputs' low estimate: refused before any block is computed."""
    _tmpfs_or_skip()
    full = tmp_path / "full"
    full.mkdir()
    argv = [*CLI, *_classify_args(big["stack"], big["mask"], big["bundle"], full / "map.tif", "--embedding")]
    before = _hashes(big.values())
    proc = _in_namespace(f'mount -t tmpfs -o size=1m tmpfs "{full}"', argv, listing=full)
    assert proc.returncode == 1, proc.stderr
    _one_error_line(proc.stderr, "not enough free space", str(full), "free some space")
    assert proc.stdout.split("@@FILES@@")[1].split() == []
    assert _hashes(big.values()) == before


@pytest.mark.parametrize("size", ["16k", "24k", "64k"])
def test_disk_full_while_writing(small: dict[str, Path], tmp_path: Path, size: str) -> None:
    """A real ENOSPC part-way (the estimate lets the run start): one line, nothing left, earlier outputs kept."""
    _tmpfs_or_skip()
    full = tmp_path / "full"
    full.mkdir()
    argv = [
        *CLI,
        *_classify_args(
            small["stack"], small["mask"], small["bundle"], full / "map.tif", "--embedding", "--confidence"
        ),
    ]
    before = _hashes(small.values())
    proc = _in_namespace(
        f'mount -t tmpfs -o size={size} tmpfs "{full}"; echo keep > "{full}/earlier.txt"', argv, listing=full
    )
    assert proc.returncode == 1, proc.stderr
    _one_error_line(proc.stderr, "no space left on device", str(full))
    assert proc.stdout.split("@@FILES@@")[1].split() == ["earlier.txt"]  # no output, no temporary, no lock
    assert _hashes(small.values()) == before


def _with_file_size_limit(cmd: list[str]) -> list[str]:
    """``cmd`` under a 6 KiB file-size limit (ulimit -f, in 1 KiB blocks) with SIGXFSZ ignored, so writes fail with
    EFBIG. Set by a shell rather than a ``preexec_fn``, which can deadlock when forked from a threaded pytest."""
    return ["bash", "-c", 'trap "" XFSZ; ulimit -f 6 && exec "$@"', "bash", *cmd]


def test_file_size_limit(small: dict[str, Path], tmp_path: Path) -> None:
    """RLIMIT_FSIZE (ulimit -f) stops writes with EFBIG: works without root or mounts."""

    out = tmp_path / "o" / "map.tif"
    before = _hashes(small.values())
    cmd = [*CLI, *_classify_args(small["stack"], small["mask"], small["bundle"], out, "--embedding")]
    proc = subprocess.run(
        _with_file_size_limit(cmd), capture_output=True, text=True, check=False, timeout=180
    )
    assert proc.returncode == 1, proc.stderr
    _one_error_line(proc.stderr, "could not", "file too large", "ulimit -f")
    assert not (tmp_path / "o").exists()  # the folder it made is removed again
    assert _hashes(small.values()) == before


@pytest.mark.parametrize("case", ["output is a folder", "folder is a file"])
def test_output_path_that_is_not_a_file(small: dict[str, Path], tmp_path: Path, case: str) -> None:
    if case == "output is a folder":
        (tmp_path / "map.tif").mkdir()
        (tmp_path / "map.tif" / "inside.txt").write_text("mine")
        out, words = tmp_path / "map.tif", ("is not a file", "not even with --overwrite")
    else:
        (tmp_path / "afile").write_text("mine")
        out, words = tmp_path / "afile" / "map.tif", ("is a file; expected a folder",)
    before = _hashes([tmp_path])
    res = _invoke(*_classify_args(small["stack"], small["mask"], small["bundle"], out, "--overwrite"))
    assert res.exit_code == 1
    _one_error_line(res.output, *words)
    assert _hashes([tmp_path]) == before


def test_existing_output_names_the_cli_flag(small: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "map.tif"
    assert _invoke(*_classify_args(small["stack"], small["mask"], small["bundle"], out)).exit_code == 0
    before = _hashes([tmp_path])
    res = _invoke(*_classify_args(small["stack"], small["mask"], small["bundle"], out))
    assert res.exit_code == 1
    _one_error_line(res.output, "already exists; pass --overwrite")
    assert "overwrite=True" not in res.output
    assert _hashes([tmp_path]) == before


def test_bad_input_creates_no_folder(small: dict[str, Path], tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.tif"
    garbage.write_bytes(b"not a tiff" * 100)
    res = _invoke(
        *_classify_args(garbage, small["mask"], small["bundle"], tmp_path / "a" / "b" / "c" / "map.tif")
    )
    assert res.exit_code == 1
    _one_error_line(res.output, "garbage.tif")
    assert not (tmp_path / "a").exists()


def test_commit_is_all_or_nothing(tmp_path: Path) -> None:
    """A move that fails part-way puts every final path back as it was."""
    first, second = tmp_path / "a.tif", tmp_path / "b.json"
    first.write_text("old a")
    tmp_a = owned_path(first, "tmp", ".tif")
    tmp_a.write_text("new a")
    tmp_b = owned_path(second, "tmp", ".json")  # never written: its move fails (ENOENT)
    with pytest.raises(FileSystemError, match="no such file or directory"):
        replace_all([(tmp_a, first), (tmp_b, second)])
    assert first.read_text() == "old a" and not second.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["a.tif", tmp_a.name]
    )  # the caller removes tmp_a


# ---------------------------------------------------------------------------------------------- killed runs, signals, races


def _start(big: dict[str, Path], out: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [*CLI, *_classify_args(big["stack"], big["mask"], big["bundle"], out, *SLOW_ARGS, *extra)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_sigkill_debris_is_removed_by_the_next_run_and_only_it(big: dict[str, Path], tmp_path: Path) -> None:
    out_dir = tmp_path / "o"
    out_dir.mkdir()
    out = out_dir / "map.tif"
    before = _hashes(big.values())
    proc = _start(big, out, "--confidence")
    _wait_for(lambda: _scratch_in(out_dir), 120, "the run's scratch files", proc)
    proc.kill()
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    left = _files(out_dir)
    assert not any(n in left for n in ("map.tif", "map_summary.json", "map_confidence.tif"))  # nothing final
    assert any(
        f"-{proc.pid}-" in n for n in left
    )  # the killed run's owned temporaries (and its released lock)

    # ... beside files the next run must not touch: a live process's temporary, another output's, a user file.
    live = out_dir / f".map.tif.cropmap-{HOST}-{os.getpid()}-0123abcd.scratch.tif"
    other = out_dir / f".other.tif.cropmap-{HOST}-{_dead_pid()}-0123abcd.tmp.tif"
    note = out_dir / ".notes.txt"
    for p in (live, other, note):
        p.write_text("keep")
    rerun = subprocess.run(
        [*CLI, *_classify_args(big["stack"], big["mask"], big["bundle"], out, "--confidence")],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert rerun.returncode == 0, rerun.stderr
    assert not any(f"-{proc.pid}-" in n for n in _files(out_dir))
    assert {live.name, other.name, note.name} <= set(_files(out_dir))
    assert lock_path(out).name not in _files(out_dir)
    with rasterio.open(out) as ds:
        assert ds.read(1).any()
    assert _hashes(big.values()) == before


def test_sigterm_cleans_up_like_ctrl_c(big: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "new" / "deeper" / "map.tif"
    before = _hashes(big.values())
    proc = _start(big, out, "--embedding")
    _wait_for(lambda: _scratch_in(out.parent), 120, "the run's scratch files", proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, err
    _one_error_line(err, "interrupted by SIGTERM", "no output written")
    assert not (tmp_path / "new").exists()  # temporaries, lock and the folders it made are gone
    assert _hashes(big.values()) == before


def test_two_concurrent_runs_one_is_refused(big: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "map.tif"
    before = _hashes(big.values())
    first = _start(big, out, "--overwrite")
    _wait_for(
        lambda: lock_path(out).exists() and lock_path(out).stat().st_size > 0,
        120,
        "the first run's lock",
        first,
    )
    second = subprocess.run(
        [*CLI, *_classify_args(big["stack"], big["mask"], big["bundle"], out, "--overwrite")],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    _, err = first.communicate(timeout=300)
    assert first.returncode == 0, err
    assert second.returncode == 1, second.stderr
    _one_error_line(
        second.stderr, "is being written by another cropmap run", f"process {first.pid}", "started"
    )
    assert sorted(_files(tmp_path)) == sorted(
        ["map.qml", "map.tif", "map.tif.aux.xml", "map_quicklook.png", "map_stac.json", "map_summary.json"]
    )
    assert json.loads((tmp_path / "map_summary.json").read_text())["pixels"]["classified"] > 0
    assert _hashes(big.values()) == before


def test_lock_of_a_live_run_refuses_and_a_dead_ones_does_not(small: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "map.tif"
    with _OtherProcessHolds(out, "output") as other:
        res = _invoke(*_classify_args(small["stack"], small["mask"], small["bundle"], out))
    assert res.exit_code == 1
    _one_error_line(res.output, f"process {other.pid}", "is being written by another cropmap run")
    assert _files(tmp_path) == ["in"]  # nothing of the refused run (the holder removed its lock on exit)
    # A lock file left by a process that died (the kernel released its lock): taken over.
    lock_path(out).write_text(json.dumps({"pid": _dead_pid(), "host": "gone", "started": "earlier"}))
    res = _invoke(*_classify_args(small["stack"], small["mask"], small["bundle"], out))
    assert res.exit_code == 0, res.output
    assert lock_path(out).name not in _files(tmp_path)


# ---------------------------------------------------------------------------------------------- silent nonsense


def _float_stack(path: Path, scale: str | None) -> Path:
    v = make_values()
    refl = np.where(v == 0, np.nan, v / 10000.0).astype(np.float32)
    tags = {"reflectance_scale": scale} if scale else {}
    return write_stack_descriptions(path, refl, tags=tags, dtype="float32", nodata=float("nan"))


@pytest.mark.parametrize("case", ["0..1 tagged x 10000", "DN forced x 1", "negative fill", "65535 fill"])
def test_values_that_cannot_be_reflectance(small: dict[str, Path], tmp_path: Path, case: str) -> None:
    v = make_values()
    extra: list[str] = []
    if case == "0..1 tagged x 10000":
        stack, words = _float_stack(tmp_path / "s.tif", "10000"), ("look like reflectance x 1;",)
    elif case == "DN forced x 1":
        stack = write_stack_descriptions(tmp_path / "s.tif", v, tags={})
        extra, words = ["--reflectance-scale", "1"], ("look like reflectance x 10000;",)
    elif case == "negative fill":
        neg = v.astype(np.int16)
        neg[:, :, :8, :] = -9999
        stack, words = (
            write_stack_descriptions(tmp_path / "s.tif", neg, dtype="int16"),
            ("below reflectance",),
        )
    else:
        hi = v.copy()
        hi[:, :, :8, :] = 65535
        stack, words = (
            write_stack_descriptions(tmp_path / "s.tif", hi),
            ("above reflectance 2, the physical maximum",),
        )
    out = tmp_path / "o" / "map.tif"
    before = _hashes([stack])
    res = _invoke(*_classify_args(stack, small["mask"], small["bundle"], out, *extra))
    assert res.exit_code == 1
    _one_error_line(res.output, str(stack), *words)
    assert not (tmp_path / "o").exists()
    assert _hashes([stack]) == before


def test_no_pixel_classified_is_an_error(small: dict[str, Path], tmp_path: Path) -> None:
    stack = write_stack_descriptions(tmp_path / "empty.tif", np.zeros_like(make_values()))  # all nodata
    out = tmp_path / "o" / "map.tif"
    res = _invoke(*_classify_args(stack, small["mask"], small["bundle"], out))
    assert res.exit_code == 1
    _one_error_line(
        res.output, "no pixel was classified", "fewer than 2 valid observations", "nothing was written"
    )
    assert not (tmp_path / "o").exists()


def test_geojson_without_crs_in_projected_coordinates(small: dict[str, Path], tmp_path: Path) -> None:
    gj = {
        "type": "FeatureCollection",
        "features": [
            {"type": "Feature", "properties": {}, "geometry": shapely.geometry.mapping(polygon_a())}
        ],
    }
    mask = tmp_path / "fields.geojson"
    mask.write_text(json.dumps(gj))
    res = _invoke(*_classify_args(small["stack"], mask, small["bundle"], tmp_path / "o" / "map.tif"))
    assert res.exit_code == 1
    line = _one_error_line(
        res.output, "GeoJSON without a `crs` member is read as longitude/latitude", "600052.0"
    )
    assert "inf" not in line
    assert not (tmp_path / "o").exists()


# ---------------------------------------------------------------------------------------------- batch


def _manifest(small: dict[str, Path], path: Path) -> Path:
    path.write_text(f"name,stack,mask\nalpha,{small['stack']},{small['mask']}\n")
    return path


def test_batch_read_only_out_dir(small: dict[str, Path], tmp_path: Path) -> None:
    out_dir = tmp_path / "batch"
    out_dir.mkdir()
    manifest = _manifest(small, tmp_path / "regions.csv")
    prefix, cause, undo = _read_only(out_dir)
    try:
        proc = subprocess.run(
            [
                *prefix,
                *CLI,
                "batch",
                str(manifest),
                "--model",
                str(small["bundle"]),
                "--out-dir",
                str(out_dir),
                "-q",
            ],
            capture_output=True,
            text=True,
            check=False,
            timeout=300,
        )
    finally:
        undo()
    assert proc.returncode == 1, proc.stderr
    _one_error_line(proc.stderr, "could not", cause, str(out_dir))
    assert _files(out_dir) == []


@pytest.mark.parametrize("case", ["summary is the manifest", "state file is a folder", "another batch runs"])
def test_batch_state_faults(small: dict[str, Path], tmp_path: Path, case: str) -> None:
    out_dir = tmp_path / "batch"
    out_dir.mkdir()
    manifest = _manifest(small, tmp_path / "regions.csv")
    args = ["batch", manifest, "--model", small["bundle"], "--out-dir", out_dir, "-q"]
    if case == "summary is the manifest":  # a JSON manifest kept in the batch folder under the summary's name
        manifest = out_dir / "batch_summary.json"
        manifest.write_text(
            json.dumps([{"name": "alpha", "stack": str(small["stack"]), "mask": str(small["mask"])}])
        )
        args[1], words = manifest, ("never writes over an input",)
    elif case == "state file is a folder":
        (out_dir / "batch_state.json").mkdir()
        words = ("batch_state.json", "unreadable")
    before = _hashes([tmp_path])
    if case == "another batch runs":
        with _OtherProcessHolds(out_dir / "batch_state.json", "batch folder") as other:
            res = _invoke(*args)
        words = ("batch folder", "is being written by another cropmap run", f"process {other.pid}")
    else:
        res = _invoke(*args)
    assert res.exit_code == 1
    _one_error_line(res.output, *words)
    assert _hashes([tmp_path]) == before


def test_batch_region_on_a_file_size_limit_fails_with_the_cause(
    small: dict[str, Path], tmp_path: Path
) -> None:
    """A region task hitting a real write fault records the cause in one line (not "Write failed"), leaves no debris."""
    code = f"""
import json
from pathlib import Path
from cropmap.batch import RegionJob, run_region
from cropmap.options import ClassifyOptions
from cropmap.regions import Region
region = Region(name="alpha", stack=Path({str(small["stack"])!r}), mask=Path({str(small["mask"])!r}), season=None)
job = RegionJob(region=region, out_dir=Path({str(tmp_path)!r}), model=Path({str(small["bundle"])!r}),
                options=ClassifyOptions(embedding=True, cloud_band="none"))
print(json.dumps(run_region(job)))
"""

    proc = subprocess.run(
        _with_file_size_limit([sys.executable, "-c", code]),
        capture_output=True,
        text=True,
        check=False,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["status"] == "failed" and "traceback" not in result
    assert "file too large" in result["error"] and "Write failed" not in result["error"], result["error"]
    assert "\n" not in result["error"]
    assert _files(tmp_path / "alpha") == []  # the driver removes this empty folder
