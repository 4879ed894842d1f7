"""Data-parallel pre-training under a real ``torchrun`` on loopback (gloo): two ranks give the losses of one process
with the same global batch, only rank 0 writes, and a killed rank ends the run with one line and leaves it
resumable."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import torch

from training.pretrain.distributed import (
    GlobalBatchNorm1d,
    Ranks,
    RankStopped,
    collective_error,
    global_batchnorm,
    rank_rows,
    stop_on_sigterm,
    stopping,
)

ROOT = Path(__file__).resolve().parents[2]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
LOSS_RTOL = 1e-5
"""Two ranks sum the same terms in another order: per-step losses agree to this relative tolerance (1e-7 seen)."""

SMALL = {
    "point": [
        "--config",
        str(ROOT / "training/configs/pretrain_pointwise.toml"),
        "--set",
        "encoder.hidden=32",
        "--set",
        "encoder.n_layers=2",
        "--set",
        "encoder.out_dim=16",
    ],
    "time": [
        "--config",
        str(ROOT / "training/configs/pretrain_timewise.toml"),
        "--set",
        "timewise.d_model=16",
        "--set",
        "timewise.n_layers=1",
        "--set",
        "timewise.n_heads=2",
        "--set",
        "timewise.out_dim=8",
        "--set",
        "timewise.max_len=8",
    ],
}


def _pairs(path: Path, alignment: str) -> Path:
    rng = np.random.default_rng(0)
    shape = (512, 12) if alignment == "point" else (256, 6, 12)
    s2 = (rng.normal(0, 1, shape) * 1000 + 3000).astype(np.float32)
    ps = (np.repeat(s2[..., :4], 9, axis=-1) + rng.normal(0, 100, (*shape[:-1], 36))).astype(np.float32)
    np.savez(path, s2=s2, ps=ps)
    return path


def _args(data: Path, out: Path, alignment: str, mode: str, *extra: str) -> list[str]:
    return [
        "-m",
        "training.pretrain.run",
        "--data",
        str(data),
        "--out",
        str(out),
        "--mode",
        mode,
        "--alignment",
        alignment,
        *SMALL[alignment],
        "--set",
        "projector.hidden=16",
        "--set",
        "projector.out=8",
        "--set",
        "batch_size=64",
        "--set",
        "log_every=1",
        "--no-progress",
        "--device",
        "cpu",
        *extra,
    ]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def _step_losses(out: Path) -> np.ndarray:
    rows = [json.loads(line) for line in (out / "loss_log.jsonl").read_text().splitlines()]
    return np.array([r["loss"] for r in rows if r["step"] is not None])


@pytest.mark.parametrize(
    ("alignment", "mode"), [("point", "bimodal"), ("point", "unimodal"), ("time", "unimodal")]
)
def test_two_gloo_ranks_give_the_losses_of_one_process(alignment: str, mode: str, tmp_path: Path) -> None:
    data = _pairs(tmp_path / "pairs.npz", alignment)
    one, two = tmp_path / "one", tmp_path / "two"
    extra = ("--set", "epochs=2")
    single = subprocess.run(
        [sys.executable, *_args(data, one, alignment, mode, *extra)],
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert single.returncode == 0, single.stderr[-2000:]
    ranks = subprocess.run(
        [*TORCHRUN, *_args(data, two, alignment, mode, *extra)],
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert ranks.returncode == 0, ranks.stderr[-3000:]
    assert ranks.stdout.count("pre-training done") == 1  # rank 0 alone reports (and writes)
    a, b = _step_losses(one), _step_losses(two)
    assert len(a) == len(b) >= 8
    np.testing.assert_allclose(b, a, rtol=LOSS_RTOL)
    enc = torch.load(two / "encoder.pt", weights_only=False)
    ref = torch.load(one / "encoder.pt", weights_only=False)
    assert enc["ranks"] == 2 and "ranks" not in ref
    # BatchNorm's running variances (global-batch BatchNorm) end where one process's end. Weights and means are not
    # compared: a bias just before a BatchNorm gets a gradient of pure rounding noise, which Adam scales up,
    # and the residual stream carries that bias into the later layers' means (not their variances).
    assert enc["state_dict"].keys() == ref["state_dict"].keys()
    stats = [k for k in ref["state_dict"] if "running_var" in k]
    assert bool(stats) == (alignment == "point")
    for key in stats:
        torch.testing.assert_close(enc["state_dict"][key], ref["state_dict"][key], rtol=1e-4, atol=1e-5)
    assert sorted(p.name for p in two.iterdir()) == sorted(p.name for p in one.iterdir())


def test_a_killed_rank_ends_the_run_with_one_line_and_it_resumes(tmp_path: Path) -> None:
    data = _pairs(tmp_path / "pairs.npz", "point")
    out = tmp_path / "run"
    args = _args(data, out, "point", "bimodal", "--set", "epochs=400", "--set", "checkpoint_every=1")
    proc = subprocess.Popen(
        [*TORCHRUN, *args], cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 180
        while not (out / "checkpoints" / "last.pt").exists():  # a checkpoint to resume from
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.5)
        victims = [
            p for p in psutil.Process(proc.pid).children(recursive=True) if p.environ().get("RANK") == "1"
        ]
        assert len(victims) == 1
        victims[0].send_signal(signal.SIGKILL)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0
    ours = [line for line in stderr.splitlines() if line.startswith("Error: rank 0 of 2")]
    assert len(ours) == 1, stderr[-3000:]
    assert f"resume with --resume {out / 'checkpoints' / 'last.pt'}" in ours[0]
    assert "training/" not in stderr.replace(
        str(out), ""
    )  # no traceback of the ranks (torchrun reports its own)
    done = max(json.loads(line)["epoch"] for line in (out / "loss_log.jsonl").read_text().splitlines())
    resumed = subprocess.run(
        [
            *TORCHRUN,
            *_args(
                data,
                out,
                "point",
                "bimodal",
                "--set",
                f"epochs={done + 1}",
                "--set",
                "checkpoint_every=1",
                "--resume",
                str(out / "checkpoints" / "last.pt"),
            ),
        ],
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    epochs = [json.loads(line)["epoch"] for line in (out / "loss_log.jsonl").read_text().splitlines()]
    assert max(epochs) == done + 1 and (out / "encoder.pt").is_file()


def test_rows_are_shared_out_without_gaps() -> None:
    for batch, world in ((64, 2), (65, 2), (7, 3), (3, 3)):
        slices = [rank_rows(batch, Ranks(r, world, r)) for r in range(world)]
        assert [s.start for s in slices] == [0, *[s.stop for s in slices[:-1]]] and slices[-1].stop == batch
        assert max(s.stop - s.start for s in slices) - min(s.stop - s.start for s in slices) <= 1
    with pytest.raises(ValueError, match="cannot be shared by 4 ranks"):
        rank_rows(3, Ranks(0, 4, 0))


def test_global_batchnorm_is_batchnorm_outside_a_process_group() -> None:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8)).train()
    ref = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8)).train()
    ref.load_state_dict(net.state_dict())
    params = [id(p) for p in net.parameters()]
    global_batchnorm(net)
    assert (
        isinstance(net[1], GlobalBatchNorm1d) and [id(p) for p in net.parameters()] == params
    )  # same tensors
    x = torch.randn(16, 4)
    torch.testing.assert_close(net(x), ref(x))
    assert set(net.state_dict()) == set(ref.state_dict())


def test_collective_errors_read_as_one_short_line() -> None:
    err = RuntimeError(
        "[/x/gloo/transport/tcp/pair.cc:537] Read error [127.0.0.1]:35760: Connection reset by peer. "
        "This is typically caused by a remote failure\nmore"
    )
    assert collective_error(err) == "Read error [127.0.0.1]:35760: Connection reset by peer"


@pytest.mark.parametrize(
    ("alignment", "mode"), [("point", "bimodal"), ("point", "unimodal"), ("time", "unimodal")]
)
def test_lockstep_forward_computes_the_plain_forward(alignment: str, mode: str) -> None:
    """The lockstep forward (two views' BatchNorm layers sharing collectives) gives the plain forward's numbers,
    gradients and running statistics; time-wise encoders (no BatchNorm) keep the plain forward."""
    import copy

    import torch.distributed as tdist

    from training.config import PretrainConfig, load_config
    from training.pretrain.distributed import lockstep_forward
    from training.pretrain.loop import ContrastiveModel

    config = "pretrain_pointwise.toml" if alignment == "point" else "pretrain_timewise.toml"
    overrides = [SMALL[alignment][i + 1] for i in range(2, len(SMALL[alignment]), 2)]
    cfg = load_config(PretrainConfig, ROOT / "training/configs" / config, [*overrides, f"mode={mode}"])
    stats = {"mean": [0.0] * 12, "std": [1.0] * 12}
    ps = {"mean": [0.0] * 36, "std": [1.0] * 36} if mode == "bimodal" else None
    torch.manual_seed(0)
    model = global_batchnorm(ContrastiveModel(cfg, stats, ps)).train()
    assert isinstance(model, ContrastiveModel)
    plain = copy.deepcopy(model)
    shape = (32, 12) if alignment == "point" else (16, 6, 12)
    a = torch.randn(*shape)
    b = torch.randn(*shape[:-1], 36) if mode == "bimodal" else torch.randn(*shape)
    store = tdist.HashStore()
    tdist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        got = lockstep_forward(model, a, b)
        if alignment == "time":
            assert got is None
            return
        assert got is not None
        want = plain(a, b)  # a world of one: GlobalBatchNorm1d is plain BatchNorm1d
        for g, w in zip(got, want, strict=True):
            torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)
        sum(z.square().sum() for z in got).backward()
        sum(z.square().sum() for z in want).backward()
    finally:
        tdist.destroy_process_group()
    for (name, p), q in zip(model.named_parameters(), plain.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-5, msg=name)
    for (name, buf), ref in zip(model.named_buffers(), plain.buffers(), strict=True):
        torch.testing.assert_close(buf, ref, rtol=1e-5, atol=1e-6, msg=name)


def test_a_rank_reporting_its_error_is_not_interrupted_by_torchruns_sigterm() -> None:
    # torchrun sends SIGTERM to every rank once one has failed; it may reach a rank that is already reporting its own
    # failure (or tearing the process group down), where a second error would print a traceback
    before = signal.getsignal(signal.SIGTERM)
    try:
        stop_on_sigterm()
        with pytest.raises(RankStopped):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(1)
        stopping()
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.2)  # the signal is delivered and ignored
    finally:
        signal.signal(signal.SIGTERM, before)
