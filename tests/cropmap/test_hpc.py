"""`cropmap batch --cluster slurm`: dask-jobqueue starts the workers as SLURM jobs.

No SLURM here: stand-in ``sbatch`` / ``squeue`` / ``scancel`` scripts on PATH run each job script on
this machine in its own session (``sbatch``), list the live ones (``squeue``) and kill a job's
session (``scancel``). dask-jobqueue really writes and submits the job scripts, and the workers they
start really join the batch's scheduler over loopback.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from stackkit import CRS, make_values, polygon_a, polygon_b, write_bundle, write_polygons, write_stack_descriptions

from cropmap._batch_state import sha256

pytest.importorskip("dask_jobqueue")

NAMES = ("north", "south")

SBATCH = """\
#!/bin/bash
# Stand-in for SLURM's sbatch: run the job script (the last argument) here, in a session of its own.
# (dask-jobqueue removes its script once sbatch returns: the job runs a copy, as SLURM keeps its own)
script="$JOBS/script-$$.sh"
cp "${@: -1}" "$script"
cp "$script" "$JOBS/script-last.sh"
setsid bash "$script" >"$JOBS/job-$$.log" 2>&1 </dev/null &
echo $! >>"$JOBS/ids"
echo "Submitted batch job $!"
"""
SQUEUE = """\
#!/bin/bash
# Stand-in for squeue: the submitted jobs that still run.
echo "JOBID STATE"
while read -r id; do kill -0 "$id" 2>/dev/null && echo "$id RUNNING"; done <"$JOBS/ids"
"""
SCANCEL = """\
#!/bin/bash
# Stand-in for scancel: stop each job's whole session.
for id in "$@"; do kill -TERM -- "-$id" 2>/dev/null; echo "$id" >>"$JOBS/cancelled"; done
exit 0
"""


def _stand_in_slurm(tmp_path: Path) -> dict[str, str]:
    """Environment with the stand-in commands first on PATH and a dask config file for the jobs."""
    bin_dir, jobs, cfg = tmp_path / "bin", tmp_path / "jobs", tmp_path / "dask"
    for d in (bin_dir, jobs, cfg):
        d.mkdir()
    (jobs / "ids").write_text("")
    for name, text in (("sbatch", SBATCH), ("squeue", SQUEUE), ("scancel", SCANCEL)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    # The standard dask-jobqueue configuration file: what flags do not set comes from here.
    (cfg / "jobqueue.yaml").write_text(textwrap.dedent(f"""\
        jobqueue:
          slurm:
            memory: 2GB
            walltime: "00:10:00"
            local-directory: {tmp_path / "workers"}
            log-directory: null
            scheduler-options:
              host: 127.0.0.1
            worker-extra-args: ["--host", "127.0.0.1"]
        """))  # fmt: skip
    return {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "JOBS": str(jobs), "DASK_CONFIG": str(cfg)}


def _stop_jobs(jobs: Path) -> None:
    """Kill whatever job the run left (there should be none: the batch cancels its jobs)."""
    for line in (jobs / "ids").read_text().split():
        try:
            os.killpg(int(line), signal.SIGKILL)
        except ProcessLookupError:
            pass


def _inputs(d: Path) -> Path:
    (d / "stacks").mkdir()
    for seed, name in enumerate(NAMES):
        write_stack_descriptions(d / "stacks" / f"{name}.tif", make_values(seed))
    write_polygons(d / "cropland.gpkg", [polygon_a(), polygon_b()], CRS)
    write_bundle(d / "tiny.onnx")
    rows = [f"{n},stacks/{n}.tif,cropland.gpkg" for n in NAMES]
    (d / "regions.csv").write_text("name,stack,mask\n" + "\n".join(rows) + "\n")
    return d / "regions.csv"


def _outputs(folder: Path) -> dict[str, str]:
    timed = ("_summary.json", "_stac.json")  # both record the run time
    return {p.name: sha256(p) for p in sorted(folder.iterdir()) if not p.name.endswith(timed)}


def test_batch_on_stand_in_slurm_matches_local(tmp_path: Path) -> None:
    manifest = _inputs(tmp_path)
    env = {**os.environ, **_stand_in_slurm(tmp_path)}
    jobs = Path(env["JOBS"])
    base = [sys.executable, "-m", "cropmap", "batch", str(manifest), "--model", str(tmp_path / "tiny.onnx"),
            "--confidence", "--block-size", "16"]  # fmt: skip
    try:
        t0 = time.monotonic()
        hpc = subprocess.run([*base, "--out-dir", str(tmp_path / "hpc"), "--cluster", "slurm", "--cores", "2",
                              "--jobs", "1", "--queue", "short", "--account", "crops",
                              "--job-extra=--constraint=stand-in"],
                             env=env, capture_output=True, text=True, timeout=240, check=False)  # fmt: skip
        assert hpc.returncode == 0, hpc.stderr + hpc.stdout
        assert time.monotonic() - t0 < 240
        local = subprocess.run([*base, "--out-dir", str(tmp_path / "local"), "--workers", "2"], env=env,
                               capture_output=True, text=True, timeout=240, check=False)  # fmt: skip
        assert local.returncode == 0, local.stderr
    finally:
        time.sleep(0.5)
        _stop_jobs(jobs)
    # The job script dask-jobqueue wrote carries the flags and the configuration file's settings.
    script = (jobs / "script-last.sh").read_text()
    for directive in ("#SBATCH -p short", "#SBATCH -A crops", "#SBATCH -n 1", "#SBATCH --cpus-per-task=2",
                      "#SBATCH -t 00:10:00", "#SBATCH --constraint=stand-in"):  # fmt: skip
        assert directive in script, script
    assert "--nworkers 2" in script and "--nthreads 1" in script, script
    # The job really ran the workers, and the batch cancelled it at the end.
    assert (jobs / "cancelled").read_text().split() == (jobs / "ids").read_text().split()
    assert "dask-jobqueue SLURMCluster" in hpc.stdout + (tmp_path / "hpc" / "batch_summary.json").read_text()
    for name in NAMES:
        assert _outputs(tmp_path / "hpc" / name) == _outputs(tmp_path / "local" / name)
        assert (tmp_path / "hpc" / name / f"{name}.tif").read_bytes() == (
            tmp_path / "local" / name / f"{name}.tif").read_bytes()  # fmt: skip
    assert "8787" not in hpc.stderr + local.stderr


def test_cluster_needs_cores_and_memory(tmp_path: Path) -> None:
    """Neither flag nor configuration sets cores: one line naming both places, exit 1, no job submitted."""
    manifest = _inputs(tmp_path)
    env = {**os.environ, **_stand_in_slurm(tmp_path)}
    (tmp_path / "dask" / "jobqueue.yaml").write_text("jobqueue:\n  slurm:\n    cores: null\n    memory: null\n")
    proc = subprocess.run([sys.executable, "-m", "cropmap", "batch", str(manifest), "--out-dir",
                           str(tmp_path / "o"), "--model", str(tmp_path / "tiny.onnx"), "--cluster", "slurm"],
                          env=env, capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: --cluster slurm:"), proc.stderr
    assert "--cores and --memory" in lines[0] and "jobqueue.yaml" in lines[0]
    assert (tmp_path / "jobs" / "ids").read_text() == ""


def test_cluster_flags_without_cluster_are_refused(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from cropmap.cli import main

    res = CliRunner().invoke(main, ["batch", "--stack", "a.tif", "--mask", "m.gpkg", "--out-dir", str(tmp_path),
                                    "--cores", "4"])  # fmt: skip
    assert res.exit_code == 2 and "--cores" in res.output and "expected --cluster" in res.output
    res = CliRunner().invoke(main, ["batch", "--stack", "a.tif", "--mask", "m.gpkg", "--out-dir", str(tmp_path),
                                    "--cluster", "slurm", "--workers", "2"])  # fmt: skip
    assert res.exit_code == 2 and "--cluster" in res.output


def test_missing_dask_jobqueue_is_one_line(tmp_path: Path) -> None:
    """Without the hpc extra: a clear error naming the extra."""
    manifest = _inputs(tmp_path)
    code = textwrap.dedent(f"""
        import sys
        sys.modules["dask_jobqueue"] = None  # as if not installed
        from cropmap.cli import main
        sys.argv = ["cropmap", "batch", {str(manifest)!r}, "--out-dir", {str(tmp_path / "o")!r},
                    "--model", {str(tmp_path / "tiny.onnx")!r}, "--cluster", "pbs", "--cores", "2", "--memory", "1GB"]
        main()
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.strip() == ("Error: --cluster pbs needs dask-jobqueue, which is not installed here; expected "
                                   "it installed (pip install 'cropmap[hpc]')")  # fmt: skip


def test_failing_submit_command_is_one_line(tmp_path: Path) -> None:
    """sbatch refuses the job (e.g. an unknown partition): one line with its message, exit 1, nothing left."""
    manifest = _inputs(tmp_path)
    env = {**os.environ, **_stand_in_slurm(tmp_path)}
    (tmp_path / "bin" / "sbatch").write_text('#!/bin/bash\necho "sbatch: error: invalid partition specified: nope" >&2\n'
                                             "exit 1\n")  # fmt: skip
    proc = subprocess.run([sys.executable, "-m", "cropmap", "batch", str(manifest), "--out-dir", str(tmp_path / "o"),
                           "--model", str(tmp_path / "tiny.onnx"), "--cluster", "slurm", "--cores", "1", "--queue",
                           "nope"], env=env, capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    lines = [line for line in proc.stderr.strip().splitlines() if line.startswith("Error")]
    assert len(lines) == 1 and "submitting the worker jobs failed" in lines[0], proc.stderr
    assert "invalid partition specified: nope" in lines[0] and "Traceback" not in proc.stderr
    assert not (tmp_path / "o").exists()
