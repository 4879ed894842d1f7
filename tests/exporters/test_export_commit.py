"""Exporter faults, part two (docs/faults.md): the bundle and its reliability diagram commit as one set.

Real faults: a small tmpfs in a private mount namespace fills while the reliability diagram is written
(after the bundle is complete), SIGTERM reaches a real ``python -m exporters`` process while it exports,
and a real process is SIGKILLed at chosen steps of the commit (test hook ``CROPMAP_TEST_COMMIT_KILL_AT``).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from cropmap.safeio.commit import COMMIT_KILL_ENV, journal_path, recover_commit
from exporters.to_onnx import save_classifier
from training.models import build_model

sys.path.insert(0, str(Path(__file__).parent))
from test_export_faults import C, K, T, _meta

REPO = Path(__file__).resolve().parents[2]


def _save(path: Path) -> Path:
    """A downstream-style checkpoint with labelled validation series: its export is calibrated (a PNG too)."""
    torch.manual_seed(0)
    base = build_model("lstm", C, K, hidden=6, layers=1, dropout=0.0)
    base.eval()
    rng = np.random.default_rng(0)
    x = rng.uniform(100, 6000, (48, T, C)).astype(np.float32)
    y = rng.integers(0, K, 48)
    stats = {"mean": x.reshape(-1, C).mean(0).tolist(), "std": x.reshape(-1, C).std(0).tolist()}
    save_classifier(
        path,
        encoder=None,
        encoder_name=None,
        base_model=base,
        base_model_name="lstm",
        base_model_config={"hidden": 6, "layers": 1, "dropout": 0.0},
        norm_stats=stats,
        metadata=_meta(),
        parity_inputs=x,
        parity_labels=y,
    )
    return path


@pytest.fixture(scope="module")
def calibrated_bytes(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return _save(tmp_path_factory.mktemp("ckpt") / "clf.pt").read_bytes()


@pytest.fixture
def ckpt(tmp_path: Path, calibrated_bytes: bytes) -> Path:
    path = tmp_path / "in" / "clf.pt"
    path.parent.mkdir()
    path.write_bytes(calibrated_bytes)
    return path


def _export(
    *args: str, env: dict[str, str] | None = None, prefix: list[str] | None = None
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*(prefix or []), sys.executable, "-m", "exporters", *args],
        cwd=REPO,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def _unshare() -> list[str] | None:
    if shutil.which("unshare") is None:
        return None
    for args in (
        (["unshare", "-m"], ["unshare", "-r", "-m"]) if os.geteuid() == 0 else (["unshare", "-r", "-m"],)
    ):
        if subprocess.run([*args, "true"], capture_output=True, check=False).returncode == 0:
            return args
    return None


def test_calibrated_export_writes_bundle_and_diagram(ckpt: Path, tmp_path: Path) -> None:
    out = tmp_path / "o" / "m.onnx"
    res = _export(str(ckpt), "-o", str(out))
    assert res.returncode == 0, res.stderr
    assert sorted(os.listdir(out.parent)) == ["m.onnx", "m.reliability.png"]


def test_full_disk_while_writing_the_diagram_leaves_no_bundle(ckpt: Path, tmp_path: Path) -> None:
    """The tmpfs holds the bundle but not the diagram: exit 1 with one line and nothing at -o (was: bundle, exit 1)."""
    ns = _unshare()
    if ns is None:
        pytest.skip("no private mount namespace (unshare) here for a small tmpfs")
    probe = _export(str(ckpt), "-o", str(tmp_path / "probe" / "m.onnx"))
    bundle_size = (tmp_path / "probe" / "m.onnx").stat().st_size
    png_size = (tmp_path / "probe" / "m.reliability.png").stat().st_size
    assert probe.returncode == 0 and png_size > 8192, probe.stderr
    size_k = (bundle_size + 4095) // 4096 * 4 + 4  # room for the bundle, not for the diagram as well
    disk = tmp_path / "disk"
    disk.mkdir()
    script = (
        f'mount -t tmpfs -o size={size_k}k tmpfs "{disk}" || exit 99; "$@"; rc=$?; ls -A "{disk}"; exit $rc'
    )
    res = subprocess.run(
        [
            *ns,
            "sh",
            "-c",
            script,
            "sh",
            sys.executable,
            "-m",
            "exporters",
            str(ckpt),
            "-o",
            str(disk / "m.onnx"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if res.returncode == 99:
        pytest.skip(f"mounting a tmpfs is refused here: {res.stderr.strip()}")
    assert res.returncode == 1, res.stdout + res.stderr
    assert "Traceback" not in res.stderr
    lines = [line for line in res.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "no space left on device" in lines[0], (
        res.stderr
    )
    assert "m.reliability.png" in lines[0], lines[0]
    assert res.stdout.strip() == "", "the tmpfs must be empty: " + res.stdout


def test_sigterm_during_export_leaves_no_temporary_or_folder(ckpt: Path, tmp_path: Path) -> None:
    out = tmp_path / "new" / "deeper" / "m.onnx"
    before = hashlib.sha256(ckpt.read_bytes()).hexdigest()
    proc = subprocess.Popen(
        [sys.executable, "-m", "exporters", str(ckpt), "-o", str(out)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while not out.parent.exists():
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        assert time.monotonic() < deadline
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert err.strip() == "Error: interrupted by SIGTERM; nothing was written", err
    assert not (tmp_path / "new").exists()
    assert hashlib.sha256(ckpt.read_bytes()).hexdigest() == before


@pytest.mark.parametrize(
    "step", [pytest.param(s, marks=[] if s in (2, 5, 7) else [pytest.mark.slow]) for s in range(1, 9)]
)
def test_export_killed_during_commit_leaves_old_or_new_set(step: int, ckpt: Path, tmp_path: Path) -> None:
    """An earlier bundle + diagram, a new export killed at commit step N: the old pair or the new pair."""
    out = tmp_path / "o" / "m.onnx"
    assert _export(str(ckpt), "-o", str(out)).returncode == 0
    old = {p.name: p.read_bytes() for p in out.parent.iterdir()}
    res = _export(str(ckpt), "-o", str(out), "--overwrite", env={COMMIT_KILL_ENV: str(step)})
    # steps: journal, 2 x (backup, move), committed, 2 backup removals, journal removal
    assert res.returncode == -9, res.stderr
    recover_commit(journal_path(out))
    left = sorted(p.name for p in out.parent.iterdir() if ".cropmap-" not in p.name)
    assert left == ["m.onnx", "m.reliability.png"], left
    if step <= 5:  # not committed: the old pair, byte for byte
        assert {n: (out.parent / n).read_bytes() for n in left} == old
    res = _export(str(ckpt), "-o", str(out), "--overwrite")
    assert res.returncode == 0, res.stderr
    assert sorted(os.listdir(out.parent)) == ["m.onnx", "m.reliability.png"]


def test_sigkilled_export_leaves_temporaries_the_next_export_removes(ckpt: Path, tmp_path: Path) -> None:
    out = tmp_path / "o" / "m.onnx"
    out.parent.mkdir()
    proc = subprocess.Popen(
        [sys.executable, "-m", "exporters", str(ckpt), "-o", str(out)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while not any(".cropmap-" in p.name for p in out.parent.iterdir()):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.005)
    proc.kill()
    proc.communicate(timeout=60)
    assert not out.exists() and any(".cropmap-" in p.name for p in out.parent.iterdir())
    res = _export(str(ckpt), "-o", str(out))
    assert res.returncode == 0, res.stderr
    assert sorted(os.listdir(out.parent)) == ["m.onnx", "m.reliability.png"]
