"""Tuning studies shared across processes: real worker processes fill one study on a journal file and on SQLite,
no trial runs twice, the best trial is the study's when read back, a rerun continues it, a killed worker's trial is
marked failed, and storage strings are never guessed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import optuna
import pytest

from training.downstream.studies import StorageError, open_storage, storage_kind

WORKER = textwrap.dedent(
    """
    import json, sys, time
    from pathlib import Path
    import numpy as np
    from training.downstream.config import DownstreamConfig
    from training.downstream.tasks import TaskData
    from training.downstream.tune import run_study, study_summary

    storage, worker, n_trials, barrier, n_workers, hold = sys.argv[1:7]
    rng = np.random.default_rng(0)
    y = np.tile(np.arange(3), 16)
    x = (rng.normal(0, 1, (48, 4, 2)) + y[:, None, None]).astype(np.float32) * 1000 + 3000
    data = TaskData(x_train=x[:36], y_train=y[:36], x_val=x[36:], y_val=y[36:], class_names=("a", "b", "c"),
                    bands=("B04", "B08"))
    cfg = DownstreamConfig(task="real", families=("lstm",), epochs=1, batch_size=12, recipe="papers", seed=0)
    Path(barrier, f"ready-{worker}").touch()
    while len(list(Path(barrier).glob("ready-*"))) < int(n_workers):  # start together
        time.sleep(0.05)
    if float(hold):  # make each trial last long enough to be killed in
        import training.downstream.loop as ds
        train = ds.train_run
        ds.train_run = lambda *a, **k: (time.sleep(float(hold)), train(*a, **k))[1]
    study = run_study(cfg, data, "lstm", storage=storage, study_name="shared", n_trials=int(n_trials),
                      worker=int(worker))
    print(json.dumps(study_summary(study)))
    """
)


def _workers(
    tmp_path: Path, storage: str, n_trials: int, n_workers: int = 2, hold: float = 0.0
) -> list[subprocess.Popen]:
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    barrier = tmp_path / f"barrier-{time.monotonic_ns()}"
    barrier.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = [storage, str(n_trials), str(barrier), str(n_workers), str(hold)]
    return [
        subprocess.Popen(
            [sys.executable, str(script), args[0], str(w), *args[1:]],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for w in range(n_workers)
    ]


def _finish(procs: list[subprocess.Popen]) -> list[dict]:
    out = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=300)
        assert p.returncode == 0, stderr[-2000:]
        out.append(json.loads(stdout.strip().splitlines()[-1]))
    return out


@pytest.mark.parametrize("kind", ["journal", "sqlite"])
def test_two_worker_processes_fill_one_study(kind: str, tmp_path: Path) -> None:
    storage = str(tmp_path / ("study.log" if kind == "journal" else "study.db"))
    summaries = _finish(_workers(tmp_path, storage, n_trials=4))
    study = optuna.load_study(study_name="shared", storage=open_storage(storage))
    trials = study.get_trials()
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    # Trials are numbered once each; the two workers share them out (each stops at 4, both may pass it by one).
    numbers = [t.number for t in trials]
    assert sorted(numbers) == list(range(len(trials))) and 4 <= len(complete) == len(trials) <= 5
    assert {t.user_attrs["worker"] for t in complete} == {0, 1}
    assert len({(t.user_attrs["worker"], t.number) for t in complete}) == len(complete)
    # The best trial read back is the best of the stored values, and what the last worker to finish printed.
    best = study.best_trial
    assert best.value == max(t.value for t in complete)
    last = max(summaries, key=lambda s: sum(s["trials"].values()))
    assert last["best"]["number"] == best.number and last["best"]["value"] == best.value
    assert last["best"]["params"] == best.params
    # Rerunning continues the study from where it stands.
    _finish(_workers(tmp_path, storage, n_trials=len(trials) + 1, n_workers=1))
    again = optuna.load_study(study_name="shared", storage=open_storage(storage)).get_trials()
    assert [t.number for t in again] == list(range(len(trials) + 1))
    assert [t.params for t in again[: len(trials)]] == [t.params for t in trials]


def test_a_killed_worker_trial_is_marked_failed_and_the_study_completes(tmp_path: Path) -> None:
    storage = str(tmp_path / "study.log")
    (victim,) = _workers(tmp_path, storage, n_trials=3, n_workers=1, hold=60)
    study = None
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # until its first trial is running
        time.sleep(0.5)
        if Path(storage).exists():
            study = optuna.load_study(study_name="shared", storage=open_storage(storage))
            if study.get_trials(states=(optuna.trial.TrialState.RUNNING,)):
                break
    assert study is not None
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=30)
    assert [t.state for t in study.get_trials()] == [optuna.trial.TrialState.RUNNING]
    _finish(_workers(tmp_path, storage, n_trials=3, n_workers=1))
    states = [
        t.state for t in optuna.load_study(study_name="shared", storage=open_storage(storage)).get_trials()
    ]
    assert states[0] == optuna.trial.TrialState.FAIL
    assert states.count(optuna.trial.TrialState.COMPLETE) == 3


@pytest.mark.parametrize(
    ("spec", "kind"),
    [
        ("runs/v.db", "sqlite"),
        ("x.sqlite3", "sqlite"),
        ("sqlite:///runs/v.db", "sqlite"),
        ("s/t.log", "journal"),
        ("journal:///shared/t.log", "journal"),
        ("postgresql://u@h/db", "server"),
        ("mysql+pymysql://u@h/db", "server"),
    ],
)
def test_storage_strings(spec: str, kind: str) -> None:
    assert storage_kind(spec)[0] == kind


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("runs/study", r"neither a URL nor a file with a known suffix"),
        ("redis://h/0", r"unknown scheme 'redis'"),
        ("sqlite://", r"has no file path"),
    ],
)
def test_unknown_storage_is_refused(spec: str, message: str) -> None:
    with pytest.raises(StorageError, match=message):
        open_storage(spec)


def test_cli_one_line_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from training.downstream.tune import main

    assert main(["--family", "lstm", "--variants", "2", "--storage", str(tmp_path / "nosuffix")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("Error: storage") and err.count("\n") == 1
    assert main(["--family", "lstm", "--trials", "2"]) == 2  # usage: --trials without --data
    assert "--trials needs --data" in capsys.readouterr().err
    assert main(["--family", "gru", "--variants", "2"]) == 2  # an unknown family names the option
    assert "Invalid value for --family" in capsys.readouterr().err
