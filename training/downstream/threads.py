"""How many CPU threads a downstream run uses: one decision for torch, OpenMP / BLAS and joblib.

torch, the OpenMP and BLAS pools below numpy, scikit-learn and LightGBM, and joblib each size themselves to every
core of the machine by default. On a shared machine, or with a CPU quota smaller than the core count, those threads
outnumber the cores they get and spin against each other: a run went 10x slower under load. :func:`decide_threads`
picks one count from what this process may use (its CPU affinity and cgroup quota) less what other processes keep
busy (the one-minute load average), and :func:`apply_threads` sets every pool to it.

The count changes speed only, not results: torch's CPU reductions sum in an order that depends on its thread
count (measured: the same run's weights differ between 1 and 2 threads), so with ``deterministic`` (the default)
torch trains each run on one intra-op thread, and runs go in parallel as tasks (``--workers``); scikit-learn's
forests and LightGBM (``deterministic=True``, row-wise histograms, one thread per model) give the same model for
any count. A test trains the same comparison with 1 and 2 threads and compares the records (docs/downstream.md,
"Threads and determinism").
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

__all__ = ["ThreadChoice", "apply_threads", "decide_threads", "usable_cpus"]


@dataclass(frozen=True)
class ThreadChoice:
    """The thread counts of the runs and how they were chosen."""

    threads: int
    """OpenMP / BLAS pools and joblib (and torch when not ``deterministic``)."""
    why: str
    deterministic: bool = True
    """torch runs one intra-op thread, so that results do not depend on ``threads``."""

    @property
    def torch_threads(self) -> int:
        return 1 if self.deterministic else self.threads

    def __str__(self) -> str:
        pools = f"{self.threads} for OpenMP / BLAS and joblib ({self.why})"
        if self.deterministic:
            return (
                f"{pools}; torch 1 per run, so that results do not depend on the thread count (--set "
                "deterministic=false lets torch use them all; --workers N trains N runs at once)"
            )
        return f"{pools}; torch {self.threads} (deterministic=false: results may change with the count)"


def _cgroup_quota(root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """CPUs allowed by the cgroup v2 (``cpu.max``) or v1 (``cpu.cfs_quota_us``) quota; ``None``: no quota."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        q = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        p = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        return None if q <= 0 or p <= 0 else q / p
    except (OSError, ValueError):
        return None


def usable_cpus() -> int:
    """CPUs this process may run on: its affinity, capped by a cgroup CPU quota (at least 1)."""
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    quota = _cgroup_quota()
    if quota is not None:
        n = min(n, max(1, math.floor(quota)))
    return max(1, n)


def decide_threads(requested: int = 0, *, deterministic: bool = True) -> ThreadChoice:
    """The thread count: ``requested`` when positive, else the usable CPUs that other processes leave free.

    Args:
        requested: ``--threads`` / ``threads`` (0: decide here).
        deterministic: torch keeps one intra-op thread (:attr:`ThreadChoice.torch_threads`).
    """
    if requested < 0:
        raise ValueError(f"threads must be >= 0, got {requested}")
    if requested:
        return ThreadChoice(requested, "as asked", deterministic)
    cpus = usable_cpus()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    free = max(1, min(cpus, cpus - round(load)))
    if free == cpus:
        return ThreadChoice(
            cpus, f"{cpus} usable CPUs, load {load:.1f}; --threads sets another count", deterministic
        )
    return ThreadChoice(
        free,
        f"{cpus} usable CPUs, {round(load)} kept busy by other work (load {load:.1f}); --threads sets another count",
        deterministic,
    )


def apply_threads(choice: ThreadChoice) -> None:
    """Size torch's intra-op pool, the OpenMP / BLAS pools and joblib's default as ``choice`` says."""
    import torch
    from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]

    n = choice.threads
    if n < 1:
        raise ValueError(f"thread count must be >= 1, got {n}")
    threadpool_limits(limits=n)
    torch.set_num_threads(choice.torch_threads)  # after threadpoolctl, which also sizes torch's OpenMP pool
    # Pools started later (joblib workers, LightGBM's OpenMP) read these.
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "LOKY_MAX_CPU_COUNT"):
        os.environ[var] = str(n)
