"""`cropmap batch --cluster slurm`: dask-jobqueue starts the workers as SLURM jobs.

A real single-node SLURM (Debian's slurm-wlm and munge, installed with apt-get when missing and this runs
as root; munged, slurmctld and slurmd started and stopped by the tests with a generated slurm.conf for
this host) runs the ``real_slurm`` tests: ``python -m pytest tests/cropmap/test_hpc.py -m slow -rs``. Where
SLURM cannot be installed or started they are skipped with the reason.

The other tests need no SLURM: stand-in ``sbatch`` / ``squeue`` / ``scancel`` scripts on PATH run each job script on
this machine in its own session (``sbatch``), list the live ones (``squeue``) and kill a job's
session (``scancel``). dask-jobqueue really writes and submits the job scripts, and the workers they
start really join the batch's scheduler over loopback.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
from stackkit import (
    CRS,
    make_values,
    polygon_a,
    polygon_b,
    write_bundle,
    write_polygons,
    write_stack_descriptions,
)

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
    (cfg / "jobqueue.yaml").write_text(
        textwrap.dedent(f"""\
        jobqueue:
          slurm:
            memory: 2GB
            walltime: "00:10:00"
            local-directory: {tmp_path / "workers"}
            log-directory: null
            scheduler-options:
              host: 127.0.0.1
            worker-extra-args: ["--host", "127.0.0.1"]
        """)
    )
    return {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "JOBS": str(jobs), "DASK_CONFIG": str(cfg)}


def _stop_jobs(jobs: Path) -> None:
    """Kill whatever job the run left (there should be none: the batch cancels its jobs)."""
    for line in (jobs / "ids").read_text().split():
        with contextlib.suppress(ProcessLookupError):
            os.killpg(int(line), signal.SIGKILL)


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
    base = [
        sys.executable,
        "-m",
        "cropmap",
        "batch",
        str(manifest),
        "--model",
        str(tmp_path / "tiny.onnx"),
        "--confidence",
        "--block-size",
        "16",
    ]
    try:
        t0 = time.monotonic()
        hpc = subprocess.run(
            [
                *base,
                "--out-dir",
                str(tmp_path / "hpc"),
                "--cluster",
                "slurm",
                "--cores",
                "2",
                "--jobs",
                "1",
                "--queue",
                "short",
                "--account",
                "crops",
                "--job-extra=--constraint=stand-in",
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=240,
            check=False,
        )
        assert hpc.returncode == 0, hpc.stderr + hpc.stdout
        assert time.monotonic() - t0 < 240
        local = subprocess.run(
            [*base, "--out-dir", str(tmp_path / "local"), "--workers", "2"],
            env=env,
            capture_output=True,
            text=True,
            timeout=240,
            check=False,
        )
        assert local.returncode == 0, local.stderr
    finally:
        time.sleep(0.5)
        _stop_jobs(jobs)
    # The job script dask-jobqueue wrote carries the flags and the configuration file's settings.
    script = (jobs / "script-last.sh").read_text()
    for directive in (
        "#SBATCH -p short",
        "#SBATCH -A crops",
        "#SBATCH -n 1",
        "#SBATCH --cpus-per-task=2",
        "#SBATCH -t 00:10:00",
        "#SBATCH --constraint=stand-in",
    ):
        assert directive in script, script
    assert "--nworkers 2" in script and "--nthreads 1" in script, script
    # The job really ran the workers, and the batch cancelled it at the end.
    assert (jobs / "cancelled").read_text().split() == (jobs / "ids").read_text().split()
    assert "dask-jobqueue SLURMCluster" in hpc.stdout + (tmp_path / "hpc" / "batch_summary.json").read_text()
    for name in NAMES:
        assert _outputs(tmp_path / "hpc" / name) == _outputs(tmp_path / "local" / name)
        assert (tmp_path / "hpc" / name / f"{name}.tif").read_bytes() == (
            tmp_path / "local" / name / f"{name}.tif"
        ).read_bytes()
    assert "8787" not in hpc.stderr + local.stderr


def test_cluster_needs_cores_and_memory(tmp_path: Path) -> None:
    """Neither flag nor configuration sets cores: one line naming both places, exit 1, no job submitted."""
    manifest = _inputs(tmp_path)
    env = {**os.environ, **_stand_in_slurm(tmp_path)}
    (tmp_path / "dask" / "jobqueue.yaml").write_text(
        "jobqueue:\n  slurm:\n    cores: null\n    memory: null\n"
    )
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "cropmap",
            "batch",
            str(manifest),
            "--out-dir",
            str(tmp_path / "o"),
            "--model",
            str(tmp_path / "tiny.onnx"),
            "--cluster",
            "slurm",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: --cluster slurm:"), proc.stderr
    assert "--cores and --memory" in lines[0] and "jobqueue.yaml" in lines[0]
    assert (tmp_path / "jobs" / "ids").read_text() == ""


def test_cluster_flags_without_cluster_are_refused(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from cropmap.cli import main

    res = CliRunner().invoke(
        main, ["batch", "--stack", "a.tif", "--mask", "m.gpkg", "--out-dir", str(tmp_path), "--cores", "4"]
    )
    assert res.exit_code == 2 and "--cores" in res.output and "expected --cluster" in res.output
    res = CliRunner().invoke(
        main,
        [
            "batch",
            "--stack",
            "a.tif",
            "--mask",
            "m.gpkg",
            "--out-dir",
            str(tmp_path),
            "--cluster",
            "slurm",
            "--workers",
            "2",
        ],
    )
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
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.strip() == (
        "Error: --cluster pbs needs dask-jobqueue, which is not installed here; expected "
        "it installed (pip install 'cropmap[hpc]')"
    )


def test_failing_submit_command_is_one_line(tmp_path: Path) -> None:
    """sbatch refuses the job (e.g. an unknown partition): one line with its message, exit 1, nothing left."""
    manifest = _inputs(tmp_path)
    env = {**os.environ, **_stand_in_slurm(tmp_path)}
    (tmp_path / "bin" / "sbatch").write_text(
        '#!/bin/bash\necho "sbatch: error: invalid partition specified: nope" >&2\nexit 1\n'
    )
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "cropmap",
            "batch",
            str(manifest),
            "--out-dir",
            str(tmp_path / "o"),
            "--model",
            str(tmp_path / "tiny.onnx"),
            "--cluster",
            "slurm",
            "--cores",
            "1",
            "--queue",
            "nope",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 1, proc.stderr
    lines = [line for line in proc.stderr.strip().splitlines() if line.startswith("Error")]
    assert len(lines) == 1 and "submitting the worker jobs failed" in lines[0], proc.stderr
    assert "invalid partition specified: nope" in lines[0] and "Traceback" not in proc.stderr
    assert not (tmp_path / "o").exists()


# ---------------------------------------------------------------------------------------------- a real SLURM

SLURM_CONF = """\
ClusterName=cropmaptest
SlurmctldHost={host}(127.0.0.1)
SlurmUser=root
SlurmctldPort={ctld_port}
SlurmdPort={d_port}
AuthType=auth/munge
AuthInfo=socket={d}/munge/munge.socket
StateSaveLocation={d}/state
SlurmdSpoolDir={d}/spool
SlurmctldPidFile={d}/slurmctld.pid
SlurmdPidFile={d}/slurmd.pid
SlurmctldLogFile={d}/slurmctld.log
SlurmdLogFile={d}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
MpiDefault=none
NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory=4000 State=UNKNOWN
PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP
"""


def _install_slurm() -> str | None:
    """Install Debian's slurm-wlm and munge when missing and possible; the reason they are missing, or None."""
    import shutil

    need = ("sbatch", "squeue", "scancel", "slurmctld", "slurmd", "munged")
    if all(shutil.which(c) or os.path.exists(f"/usr/sbin/{c}") for c in need):
        return None
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        return (
            "SLURM (slurm-wlm, munge) is not installed and cannot be installed here (not root, or no apt-get)"
        )
    proc = subprocess.run(
        ["apt-get", "install", "-y", "--no-install-recommends", "slurm-wlm", "munge"],
        env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    if proc.returncode != 0:
        tail = " ".join((proc.stderr or proc.stdout).strip().splitlines()[-2:])
        return f"apt-get install slurm-wlm munge failed ({tail})"
    return None


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def real_slurm(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A single-node SLURM on this machine (munged, slurmctld, slurmd), started and stopped here.

    Yields the environment (``SLURM_CONF``, ``DASK_CONFIG``) for ``cropmap batch --cluster slurm``. Skipped,
    with the reason, where SLURM cannot be installed or its daemons cannot start.
    """
    import shutil
    import socket

    reason = _install_slurm()
    if reason is not None:
        print(f"real SLURM test skipped: {reason}")
        pytest.skip(reason)
    d = tmp_path_factory.mktemp("slurm")
    for sub in ("state", "spool", "munge", "logs", "dask"):
        (d / sub).mkdir()
    host = socket.gethostname().split(".")[0]
    conf = d / "slurm.conf"
    conf.write_text(
        SLURM_CONF.format(
            host=host, d=d, ctld_port=_free_port(), d_port=_free_port(), cpus=os.cpu_count() or 1
        )
    )
    key = d / "munge" / "munge.key"
    if os.path.exists("/etc/munge/munge.key"):
        shutil.copy("/etc/munge/munge.key", key)
    else:
        key.write_bytes(os.urandom(1024))
    key.chmod(0o600)
    (d / "munge").chmod(0o700)
    env = {**os.environ, "SLURM_CONF": str(conf), "DASK_CONFIG": str(d / "dask")}
    (d / "dask" / "jobqueue.yaml").write_text(
        textwrap.dedent(f"""\
        jobqueue:
          slurm:
            walltime: "00:10:00"
            local-directory: {d / "workers"}
            log-directory: {d / "logs"}
            scheduler-options:
              host: 127.0.0.1
            worker-extra-args: ["--host", "127.0.0.1"]
        """)
    )
    munged = shutil.which("munged") or "/usr/sbin/munged"
    starts = [
        [
            munged,
            "--force",
            f"--socket={d}/munge/munge.socket",
            f"--pid-file={d}/munge/munged.pid",
            f"--log-file={d}/munge/munged.log",
            f"--seed-file={d}/munge/seed",
            f"--key-file={key}",
        ],
        [shutil.which("slurmctld") or "/usr/sbin/slurmctld", "-f", str(conf)],
        [shutil.which("slurmd") or "/usr/sbin/slurmd", "-f", str(conf)],
    ]
    pids = [d / "munge" / "munged.pid", d / "slurmctld.pid", d / "slurmd.pid"]
    try:
        for argv in starts:
            proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60, check=False)
            if proc.returncode != 0:
                reason = f"{Path(argv[0]).name} could not start: {' '.join(proc.stderr.split())[:300]}"
                print(f"real SLURM test skipped: {reason}")
                pytest.skip(reason)
        deadline = time.monotonic() + 60
        while True:
            info = subprocess.run(
                ["sinfo", "-h", "-o", "%T"], env=env, capture_output=True, text=True, timeout=30, check=False
            )
            if info.stdout.strip() in ("idle", "mixed"):
                break
            if time.monotonic() > deadline:
                reason = f"the SLURM node did not become idle: {info.stdout.strip()} {info.stderr.strip()}"
                print(f"real SLURM test skipped: {reason}")
                pytest.skip(reason)
            time.sleep(0.5)
        yield env
    finally:
        subprocess.run(
            ["scancel", "--user", str(os.getuid())], env=env, capture_output=True, timeout=30, check=False
        )
        for pid_file in reversed(pids):
            with contextlib.suppress(OSError, ValueError, IndexError):
                os.kill(int(pid_file.read_text().split()[0]), signal.SIGTERM)


def _squeue(env: dict[str, str]) -> list[str]:
    proc = subprocess.run(
        ["squeue", "-h", "-o", "%i %T %r"], env=env, capture_output=True, text=True, timeout=30, check=False
    )
    return [line for line in proc.stdout.splitlines() if line.strip()]


def _one_error(stderr: str, *words: str) -> str:
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), stderr
    for w in words:
        assert w in lines[0], (w, lines[0])
    return lines[0]


def _real_base(tmp_path: Path) -> list[str]:
    manifest = _inputs(tmp_path)
    return [
        sys.executable,
        "-m",
        "cropmap",
        "batch",
        str(manifest),
        "--model",
        str(tmp_path / "tiny.onnx"),
        "--confidence",
        "--block-size",
        "16",
        "-q",
    ]


@pytest.mark.slow
def test_real_slurm_submit_matches_local(real_slurm: dict[str, str], tmp_path: Path) -> None:
    base = _real_base(tmp_path)
    hpc = subprocess.run(
        [
            *base,
            "--out-dir",
            str(tmp_path / "hpc"),
            "--cluster",
            "slurm",
            "--cores",
            "1",
            "--memory",
            "1GB",
            "--queue",
            "debug",
        ],
        env=real_slurm,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert hpc.returncode == 0, hpc.stderr
    local = subprocess.run(
        [*base, "--out-dir", str(tmp_path / "local"), "--workers", "2"],
        env=real_slurm,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert local.returncode == 0, local.stderr
    assert "SLURMCluster" in (tmp_path / "hpc" / "batch_summary.json").read_text()
    for name in NAMES:
        assert _outputs(tmp_path / "hpc" / name) == _outputs(tmp_path / "local" / name)
        assert (tmp_path / "hpc" / name / f"{name}.tif").read_bytes() == (
            tmp_path / "local" / name / f"{name}.tif"
        ).read_bytes()
    deadline = time.monotonic() + 60
    while _squeue(real_slurm) and time.monotonic() < deadline:  # the batch cancelled its job
        time.sleep(0.5)
    assert _squeue(real_slurm) == []


@pytest.mark.slow
def test_real_slurm_cancelled_job_is_one_line_and_resumes(real_slurm: dict[str, str], tmp_path: Path) -> None:
    """scancel of the only worker job: the batch ends with one line after --worker-timeout; a rerun finishes."""
    base = _real_base(tmp_path)
    args = [*base, "--out-dir", str(tmp_path / "o"), "--cluster", "slurm", "--cores", "1", "--memory", "1GB"]
    proc = subprocess.Popen(
        [*args, "--worker-timeout", "5", "--job-extra=--begin=now+2"],
        env=real_slurm,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while not (jobs := _squeue(real_slurm)):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.1)
    subprocess.run(["scancel", jobs[0].split()[0]], env=real_slurm, check=True, timeout=30)
    _, err = proc.communicate(timeout=180)
    assert proc.returncode == 1, err
    _one_error(
        err, "no dask worker has been connected", "--worker-timeout 5", "rerun the same command to resume"
    )
    state = json.loads((tmp_path / "o" / "batch_state.json").read_text())
    assert {e["status"] for e in state["regions"].values()} == {"pending"}
    again = subprocess.run(args, env=real_slurm, capture_output=True, text=True, timeout=300, check=False)
    assert again.returncode == 0, again.stderr
    state = json.loads((tmp_path / "o" / "batch_state.json").read_text())
    assert {e["status"] for e in state["regions"].values()} == {"done"}


@pytest.mark.slow
def test_real_slurm_pending_job_names_the_reason(real_slurm: dict[str, str], tmp_path: Path) -> None:
    base = _real_base(tmp_path)
    res = subprocess.run(
        [
            *base,
            "--out-dir",
            str(tmp_path / "o"),
            "--cluster",
            "slurm",
            "--cores",
            "1",
            "--memory",
            "1GB",
            "--job-extra=--begin=now+3600",
            "--pending-timeout",
            "5",
        ],
        env=real_slurm,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert res.returncode == 1, res.stderr
    _one_error(res.stderr, "every worker job has been queued for", "SLURM's reason", "BeginTime")
    deadline = time.monotonic() + 60
    while _squeue(real_slurm) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert _squeue(real_slurm) == [], "the batch left its job queued"


@pytest.mark.slow
def test_real_slurm_ctrl_c_exits_130_and_cancels_the_job(real_slurm: dict[str, str], tmp_path: Path) -> None:
    base = _real_base(tmp_path)
    proc = subprocess.Popen(
        [
            *base,
            "--out-dir",
            str(tmp_path / "o"),
            "--cluster",
            "slurm",
            "--cores",
            "1",
            "--memory",
            "1GB",
            "--job-extra=--begin=now+3600",
        ],
        env=real_slurm,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while not _squeue(real_slurm):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.1)
    time.sleep(1)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "interrupted by SIGINT" in err
    deadline = time.monotonic() + 60
    while _squeue(real_slurm) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert _squeue(real_slurm) == [], "the batch left its job queued"
