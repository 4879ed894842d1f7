"""The results store and the downstream protocol on a real Dask LocalCluster of 2 worker processes (loopback).

- two processes appending to one store concurrently lose and duplicate no line;
- the protocol's records on the cluster equal a sequential run's (same seeds, one torch thread per run);
- a worker killed with SIGKILL mid-run, then the whole driver killed, then a resumed run: every run is recorded
  exactly once and every recorded model file is complete.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path

import pytest

from training.downstream.store import ResultsError, ResultsStore, run_key

REPO = Path(__file__).resolve().parents[2]

APPENDER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from training.downstream.store import ResultsStore

    path, worker, n, barrier, mode = sys.argv[1], sys.argv[2], int(sys.argv[3]), Path(sys.argv[4]), sys.argv[5]
    (barrier / f"ready-{worker}").touch()
    while len(list(barrier.glob("ready-*"))) < 2:  # start together
        time.sleep(0.01)
    store = ResultsStore(path)
    for i in range(n):
        # "same": both workers record the same runs (family lstm); "append": each its own (family w1 / w2)
        rec = {"task": "1", "family": "lstm" if mode == "same" else f"w{worker}", "variant": i,
               "method": "supervised", "corruption": None, "worker": worker, "pad": "x" * 2000}
        if mode == "append":
            store.append(rec)
        else:
            store.append_new(rec)
    """
)


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


def _two_appenders(path: Path, tmp_path: Path, n: int, mode: str) -> None:
    barrier = tmp_path / f"barrier-{mode}"
    barrier.mkdir()
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", APPENDER, str(path), str(w), str(n), str(barrier), mode],
            env=_env(),
            stderr=subprocess.PIPE,
            text=True,
        )
        for w in (1, 2)
    ]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err


def test_two_processes_appending_to_one_store_lose_no_line(tmp_path: Path) -> None:
    path = tmp_path / "results.jsonl"
    _two_appenders(path, tmp_path, 400, "append")
    lines = path.read_text().split("\n")
    assert lines[-1] == "" and len(lines) == 801  # every line complete, none lost
    records = ResultsStore(path).records()
    keys = Counter(run_key(r) for r in records)
    assert len(keys) == 800 and set(keys.values()) == {1}
    assert {r["worker"] for r in records} == {"1", "2"}


def test_two_processes_recording_the_same_runs_record_each_once(tmp_path: Path) -> None:
    path = tmp_path / "results.jsonl"
    _two_appenders(path, tmp_path, 150, "same")
    keys = Counter(run_key(r) for r in ResultsStore(path).records())
    assert len(keys) == 150 and set(keys.values()) == {1}


def test_a_torn_last_line_is_skipped_then_cut_and_a_broken_line_is_an_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = ResultsStore(tmp_path / "results.jsonl")
    rec = {"task": "1", "family": "lstm", "variant": 0, "method": "supervised", "corruption": None}
    store.append(rec)
    with store.path.open("a") as fh:
        fh.write('{"task": "1", "fam')  # a writer that stopped mid-line
    assert store.records() == [rec]
    assert "no newline" in caplog.text
    assert store.append_new({**rec, "variant": 1})
    assert not store.append_new({**rec, "variant": 1})
    assert [r["variant"] for r in store.records()] == [0, 1]
    assert store.path.read_text().count("\n") == 2
    store.path.write_text(store.path.read_text() + "not json\n")
    with pytest.raises(ResultsError, match=r"results.jsonl:3 is not valid JSON"):
        store.records()


DRIVER = textwrap.dedent(
    """
    import logging, sys
    from pathlib import Path
    import numpy as np
    import torch
    from cropmap.contract.metadata import TimeGrid
    from training.downstream.config import DownstreamConfig, EncoderSpec
    from training.downstream.tasks import TaskData
    from training.models.encoder import ResMLP, compute_norm_stats, save_encoder

    mode, out, epochs, variants = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("training").setLevel(logging.INFO)
    bands, t = ("B02", "B03", "B04", "B08"), 8
    rng = np.random.default_rng(0)

    def make(n):
        xs, ys = [], []
        for k in range(3):
            time = np.arange(t)[None, :, None]
            base = 1500 + 2500 * np.exp(-((time - (1 + 3 * k)) ** 2) / 2.0)
            xs.append((base + rng.normal(0, 150, size=(n, t, len(bands)))).astype(np.float32))
            ys.append(np.full(n, k))
        return np.concatenate(xs), np.concatenate(ys).astype(np.int64)

    x_tr, y_tr = make(40)
    x_va, y_va = make(20)
    days = tuple(15 + 30 * i for i in range(t))
    grid = TimeGrid("01-01", days, tuple(f"2020-{i + 1:02d}-15" for i in range(t)))
    data = TaskData(x_tr, y_tr, x_va, y_va, class_names=("a", "b", "c"), bands=bands, time_grid=grid)
    enc_file = out.parent / "encoder.pt"
    if not enc_file.is_file():
        torch.manual_seed(0)
        save_encoder(enc_file, ResMLP(len(bands), hidden=16, n_layers=2, out_dim=8), compute_norm_stats(x_tr))
    cfg = DownstreamConfig(task="1", families=("lstm",), variants=variants, default_variant=True, epochs=epochs,
                           batch_size=16, recipe="papers", seed=3, threads=1)
    encoders = [EncoderSpec("bimodal", 0.2, enc_file)]
    if mode == "sequential":
        from training.downstream.protocol import run_comparison
        run_comparison(cfg, data, encoders, out, show_progress=False)
    else:
        from training.downstream.cluster import Executor, run_on_cluster
        run_on_cluster(cfg, data, encoders, out, Executor(workers=2, threads=1))
    print("DONE")
    """
)

COMPARED = (
    "val_accuracy",
    "macro_f1",
    "kappa",
    "confusion",
    "per_class_recall",
    "curve",
    "final_loss",
    "hp",
    "lr",
)


def _driver(mode: str, out: Path, epochs: int, variants: int, **kw: object) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", DRIVER, mode, str(out), str(epochs), str(variants)],
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        **kw,  # type: ignore[arg-type]
    )


def _finish(proc: subprocess.Popen[str], timeout: float = 900) -> None:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0 and "DONE" in out, err[-4000:]


def _by_key(out: Path) -> dict[tuple, dict]:
    records = ResultsStore.in_dir(out).records()
    keys = Counter(run_key(r) for r in records)
    assert set(keys.values()) == {1}, f"runs recorded more than once: {keys}"
    return {run_key(r): r for r in records}


@pytest.mark.slow
def test_the_protocol_on_a_local_cluster_equals_a_sequential_run(tmp_path: Path) -> None:
    seq, dist = tmp_path / "sequential", tmp_path / "distributed"
    _finish(_driver("sequential", seq, 3, 2))
    _finish(_driver("distributed", dist, 3, 2))
    a, b = _by_key(seq), _by_key(dist)
    # 2 methods x (2 variants + the default) lstm runs, a RandomForest per method and the majority class.
    assert set(a) == set(b) and len(a) == 9
    for key in a:
        for field in COMPARED:
            assert a[key].get(field) == b[key].get(field), (key, field)
    for rec in b.values():
        if rec["model"]:
            assert (dist / rec["model"]).is_file()
    # cropmap export best reads the cluster's run directory as a sequential one.
    from exporters.best import select_best

    assert run_key(select_best(seq).record) == run_key(select_best(dist).record)


def _worker_pids(driver: int) -> list[int]:
    import psutil

    pids = []
    for child in psutil.Process(driver).children(recursive=True):
        try:
            cmd = " ".join(child.cmdline())
        except psutil.Error:
            continue
        if "multiprocessing" in cmd and "resource_tracker" not in cmd:
            pids.append(child.pid)
    return pids


@pytest.mark.slow
def test_a_killed_worker_then_a_killed_driver_resume_with_every_run_recorded_once(tmp_path: Path) -> None:
    from training.downstream.classifier import load_classifier

    out = tmp_path / "run"
    proc = _driver("distributed", out, 12, 4, start_new_session=True)
    results = out / "results.jsonl"
    deadline = time.monotonic() + 900
    while not (results.is_file() and results.read_text().count("\n") >= 3):
        assert proc.poll() is None, proc.communicate()[1][-4000:]
        assert time.monotonic() < deadline, "no run recorded in time"
        time.sleep(0.2)
    workers = _worker_pids(proc.pid)
    assert len(workers) == 2, workers
    os.kill(workers[0], signal.SIGKILL)  # a worker, mid-run
    time.sleep(3)
    assert proc.poll() is None  # the driver carries on: the lost run is retried
    os.killpg(proc.pid, signal.SIGKILL)  # then the whole run: driver, nannies and workers
    proc.communicate()
    n_before = results.read_text().count("\n")
    assert 3 <= n_before < 13
    _finish(_driver("distributed", out, 12, 4), timeout=1200)
    recs = _by_key(out)
    # 2 methods x (4 variants + the default) lstm runs, a RandomForest per method and the majority class.
    assert len(recs) == 13
    assert results.read_text().count("\n") == 13
    for rec in recs.values():
        if rec["model"]:
            load_classifier(out / rec["model"])  # complete: written under a temporary name, then renamed
