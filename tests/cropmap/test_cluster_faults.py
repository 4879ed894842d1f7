"""The fault suite (docs/faults.md, cases 60-): clusters that fail loudly, and inputs that hung or crashed.

Real processes throughout: a real dask scheduler (``python -m distributed.cli.dask_scheduler``) without
workers, or killed mid-batch; ``cropmap batch`` interrupted with a real SIGINT; stand-in SLURM commands on
PATH (``sbatch`` that queues a job which never starts, ``squeue`` giving SLURM's reason); a PATH without
SLURM's commands; real FIFOs; a real GeoTIFF in an engineering (LOCAL_CS) CRS.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import rasterio
import shapely
from rasterio.crs import CRS as RioCRS
from stackkit import (
    CRS,
    DATES,
    STACK_BANDS,
    make_values,
    polygon_a,
    polygon_b,
    profile,
    write_bundle,
    write_polygons,
    write_stack_descriptions,
)

CLI = [sys.executable, "-m", "cropmap"]


def _one_error_line(text: str, *words: str) -> str:
    assert "Traceback" not in text, text
    lines = [line for line in text.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), text
    for w in words:
        assert w in lines[0], (w, lines[0])
    return lines[0]


def _run(
    args: list[str], env: dict[str, str] | None = None, timeout: float = 180
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*CLI, *args],
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.fixture
def inputs(tmp_path: Path) -> Path:
    d = tmp_path / "in"
    d.mkdir()
    for seed, name in enumerate(("north", "south")):
        write_stack_descriptions(d / f"{name}.tif", make_values(seed))
    write_polygons(d / "cropland.gpkg", [polygon_a(), polygon_b()], CRS)
    write_bundle(d / "tiny.onnx")
    (d / "regions.csv").write_text(
        "name,stack,mask\nnorth,north.tif,cropland.gpkg\nsouth,south.tif,cropland.gpkg\n"
    )
    return d


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def scheduler() -> Iterator[tuple[str, subprocess.Popen]]:
    """A real dask scheduler process on loopback, with no workers."""
    port = _free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "distributed.cli.dask_scheduler",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--dashboard-address",
            "127.0.0.1:0",
            "--no-show",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 60
    while True:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                break
        assert proc.poll() is None and time.monotonic() < deadline, "the dask scheduler did not start"
        time.sleep(0.2)
    try:
        yield f"tcp://127.0.0.1:{port}", proc
    finally:
        proc.kill()
        proc.wait()


def _worker(address: str) -> subprocess.Popen:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "distributed.cli.dask_worker",
            address,
            "--nworkers",
            "1",
            "--nthreads",
            "1",
            "--host",
            "127.0.0.1",
            "--no-dashboard",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


# ---------------------------------------------------------------------------------------------- workers gone


def test_no_worker_for_the_timeout_is_one_line_and_resumes(
    inputs: Path, tmp_path: Path, scheduler: tuple[str, subprocess.Popen]
) -> None:
    address, _ = scheduler
    out = tmp_path / "out"
    args = [
        "batch",
        str(inputs / "regions.csv"),
        "--out-dir",
        str(out),
        "--model",
        str(inputs / "tiny.onnx"),
        "--scheduler",
        address,
        "--no-quicklook",
        "-q",
    ]
    t0 = time.monotonic()
    res = _run([*args, "--worker-timeout", "4"])
    assert res.returncode == 1, res.stderr
    _one_error_line(
        res.stderr,
        "no dask worker has been connected for",
        "--worker-timeout 4",
        "2 regions wait",
        "rerun the same command to resume",
    )
    assert time.monotonic() - t0 < 90
    state = json.loads((out / "batch_state.json").read_text())
    assert {e["status"] for e in state["regions"].values()} == {"pending"}
    worker = _worker(address)
    try:
        res = _run(args)
        assert res.returncode == 0, res.stderr
        state = json.loads((out / "batch_state.json").read_text())
        assert {e["status"] for e in state["regions"].values()} == {"done"}
    finally:
        worker.kill()
        worker.wait()


@pytest.mark.slow
def test_lost_scheduler_is_one_line(tmp_path: Path, scheduler: tuple[str, subprocess.Popen]) -> None:
    """The scheduler process is killed while a long region runs: one line, exit 1, the region stays pending."""
    address, sched = scheduler
    d = tmp_path / "in"
    d.mkdir()
    rng = np.random.default_rng(0)
    big = rng.integers(300, 4000, (len(DATES), len(STACK_BANDS), 1024, 1024), dtype=np.uint16)
    prof = profile(len(DATES) * len(STACK_BANDS)) | {"height": 1024, "width": 1024}
    with rasterio.open(d / "big.tif", "w", **prof) as ds:
        ds.write(big.reshape(-1, 1024, 1024))
        ds.descriptions = [f"{t.isoformat()}_{b}" for t in DATES for b in STACK_BANDS]
        ds.update_tags(reflectance_scale="10000")
    with rasterio.open(d / "big.tif") as ds:
        write_polygons(d / "all.gpkg", [shapely.box(*ds.bounds)], CRS)
    write_bundle(d / "tiny.onnx")
    out = tmp_path / "out"
    worker = _worker(address)
    try:
        proc = subprocess.Popen(
            [
                *CLI,
                "batch",
                "--stack",
                str(d / "big.tif"),
                "--mask",
                str(d / "all.gpkg"),
                "--out-dir",
                str(out),
                "--model",
                str(d / "tiny.onnx"),
                "--scheduler",
                address,
                "--block-size",
                "64",
                "--cloud-band",
                "none",
                "-q",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + 120
        while not any((out / "big").glob(".*scratch*")) if (out / "big").is_dir() else True:
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.05)
        sched.kill()
        _, err = proc.communicate(timeout=180)
    finally:
        worker.kill()
        worker.wait()
    assert proc.returncode == 1, err
    _one_error_line(err, "lost the dask scheduler", "rerun the same command to resume")
    state = json.loads((out / "batch_state.json").read_text())
    assert state["regions"]["big"]["status"] == "pending"


def test_sigint_in_local_mode_exits_130(inputs: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [
            *CLI,
            "batch",
            str(inputs / "regions.csv"),
            "--out-dir",
            str(out),
            "--model",
            str(inputs / "tiny.onnx"),
            "--workers",
            "1",
            "-q",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while not (out / "batch_state.json").exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "interrupted by SIGINT" in err


# ---------------------------------------------------------------------------------------------- stand-in SLURM

PENDING_SBATCH = """#!/bin/bash
# Stand-in for sbatch: the job is queued and never starts.
echo 4242 >>"$JOBS/ids"
echo "Submitted batch job 4242"
"""
PENDING_SQUEUE = """#!/bin/bash
# Stand-in for squeue: job 4242 waits for resources (squeue -h -j 4242 -o %T|%r).
echo "PENDING|Resources"
"""
SCANCEL = """#!/bin/bash
for id in "$@"; do echo "$id" >>"$JOBS/cancelled"; done
"""


def _stand_in(tmp_path: Path, sbatch: str = PENDING_SBATCH) -> dict[str, str]:
    bin_dir, jobs = tmp_path / "bin", tmp_path / "jobs"
    bin_dir.mkdir()
    jobs.mkdir()
    for name, text in (("sbatch", sbatch), ("squeue", PENDING_SQUEUE), ("scancel", SCANCEL)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    return {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "JOBS": str(jobs)}


def test_job_pending_beyond_the_timeout_names_slurms_reason(inputs: Path, tmp_path: Path) -> None:
    env = _stand_in(tmp_path)
    res = _run(
        [
            "batch",
            str(inputs / "regions.csv"),
            "--out-dir",
            str(tmp_path / "out"),
            "--model",
            str(inputs / "tiny.onnx"),
            "--cluster",
            "slurm",
            "--cores",
            "1",
            "--memory",
            "1GB",
            "--pending-timeout",
            "3",
            "-q",
        ],
        env=env,
    )
    assert res.returncode == 1, res.stderr
    _one_error_line(
        res.stderr,
        "--cluster slurm: every worker job has been queued for",
        "--pending-timeout 3",
        "SLURM's reason: job 4242: Resources",
        "rerun the same command to resume",
    )
    assert (tmp_path / "jobs" / "cancelled").read_text().split() == ["4242"]
    state = json.loads((tmp_path / "out" / "batch_state.json").read_text())
    assert {e["status"] for e in state["regions"].values()} == {"pending"}


def test_sigint_in_cluster_mode_exits_130_and_cancels_the_jobs(inputs: Path, tmp_path: Path) -> None:
    """Importing dask-jobqueue replaced Python's SIGINT handler (sys.exit: status 0); now 130, jobs cancelled."""
    env = _stand_in(tmp_path)
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [
            *CLI,
            "batch",
            str(inputs / "regions.csv"),
            "--out-dir",
            str(out),
            "--model",
            str(inputs / "tiny.onnx"),
            "--cluster",
            "slurm",
            "--cores",
            "1",
            "--memory",
            "1GB",
            "-q",
        ],
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while not (tmp_path / "jobs" / "ids").exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.05)
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "interrupted by SIGINT" in err
    assert (tmp_path / "jobs" / "cancelled").read_text().split() == ["4242"]


def test_cluster_without_sbatch_on_path_is_one_line(inputs: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    res = _run(
        [
            "batch",
            str(inputs / "regions.csv"),
            "--out-dir",
            str(tmp_path / "out"),
            "--model",
            str(inputs / "tiny.onnx"),
            "--cluster",
            "slurm",
            "--cores",
            "1",
            "--memory",
            "1GB",
        ],
        env={"PATH": str(empty)},
    )
    assert res.returncode == 1, res.stderr
    _one_error_line(res.stderr, "--cluster slurm: the job scheduler's command sbatch, scancel is not on PATH")
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------------- inputs


def test_manifest_with_a_duplicated_column_is_one_line(inputs: Path, tmp_path: Path) -> None:
    (inputs / "dup.csv").write_text("name,stack,mask,stack\nnorth,north.tif,cropland.gpkg,south.tif\n")
    res = _run(
        [
            "batch",
            str(inputs / "dup.csv"),
            "--out-dir",
            str(tmp_path / "out"),
            "--model",
            str(inputs / "tiny.onnx"),
        ]
    )
    assert res.returncode == 1
    _one_error_line(res.stderr, "column 'stack' appears more than once")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("what", ["stack", "mask", "model", "manifest"])
def test_fifo_input_is_refused_without_hanging(what: str, inputs: Path, tmp_path: Path) -> None:
    fifo = tmp_path / ("fifo.csv" if what == "manifest" else "fifo.tif")
    os.mkfifo(fifo)
    if what == "manifest":
        args = ["batch", str(fifo), "--out-dir", str(tmp_path / "out"), "--model", str(inputs / "tiny.onnx")]
    else:
        files = {
            "stack": inputs / "north.tif",
            "mask": inputs / "cropland.gpkg",
            "model": inputs / "tiny.onnx",
        }
        files[what] = fifo
        args = [
            "classify",
            str(files["stack"]),
            "--mask",
            str(files["mask"]),
            "--model",
            str(files["model"]),
            "-o",
            str(tmp_path / "out" / "map.tif"),
            "--cloud-band",
            "none",
        ]
    res = _run(args, timeout=60)
    assert res.returncode == 1
    _one_error_line(res.stderr, "is a FIFO (named pipe), not a file")
    assert not (tmp_path / "out").exists()


def _local_cs_stack(inputs: Path) -> Path:
    wkt = 'LOCAL_CS["Engineering",UNIT["metre",1],AXIS["X",EAST],AXIS["Y",NORTH]]'
    with rasterio.open(inputs / "north.tif") as src:
        prof, data, desc, tags = src.profile, src.read(), src.descriptions, src.tags()
    prof.update(crs=RioCRS.from_wkt(wkt))
    path = inputs / "local.tif"
    with rasterio.open(path, "w", **prof) as dst:
        dst.write(data)
        dst.descriptions = desc
        dst.update_tags(**tags)
    return path


@pytest.mark.parametrize("mask", ["utm", "whole-stack"])
def test_stack_in_an_engineering_crs_is_one_line(mask: str, inputs: Path, tmp_path: Path) -> None:
    stack = _local_cs_stack(inputs)
    before = stack.read_bytes()
    how = ["--mask", str(inputs / "cropland.gpkg")] if mask == "utm" else ["--whole-stack"]
    res = _run(
        [
            "classify",
            str(stack),
            *how,
            "--model",
            str(inputs / "tiny.onnx"),
            "-o",
            str(tmp_path / "out" / "map.tif"),
            "--cloud-band",
            "none",
        ]
    )
    assert res.returncode == 1
    _one_error_line(res.stderr, "engineering (LOCAL_CS) CRS", "neither geographic nor projected")
    assert not (tmp_path / "out").exists() and stack.read_bytes() == before


def test_mask_in_an_engineering_crs_is_one_line(inputs: Path, tmp_path: Path) -> None:
    import geopandas as gpd

    wkt = 'LOCAL_CS["Engineering",UNIT["metre",1],AXIS["X",EAST],AXIS["Y",NORTH]]'
    gpd.GeoDataFrame(geometry=[polygon_a()], crs=wkt).to_file(inputs / "local.gpkg")
    res = _run(
        [
            "classify",
            str(inputs / "north.tif"),
            "--mask",
            str(inputs / "local.gpkg"),
            "--model",
            str(inputs / "tiny.onnx"),
            "-o",
            str(tmp_path / "out" / "map.tif"),
            "--cloud-band",
            "none",
        ]
    )
    assert res.returncode == 1
    _one_error_line(res.stderr, "local.gpkg has CRS", "cannot reproject it")
    assert not (tmp_path / "out").exists()


def test_results_line_missing_a_key_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("torch")
    from exporters.__main__ import main as exporters_main

    run = tmp_path / "run"
    run.mkdir()
    (run / "results.jsonl").write_text(json.dumps({"task": "real", "family": "lstm", "macro_f1": 0.5}) + "\n")
    assert exporters_main(["--best", str(run), "-o", str(tmp_path / "m.onnx")]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert "results.jsonl:1 lacks val_accuracy" in err
    assert not (tmp_path / "m.onnx").exists()
