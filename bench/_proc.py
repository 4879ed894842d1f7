"""Run a command in a child process and measure it from outside: wall seconds and peak resident memory.

The peak is the kernel's ``ru_maxrss`` of the child (``os.wait4``), i.e. the largest resident set of that
process, the same figure ``/usr/bin/time -v`` prints as "Maximum resident set size".
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Run:
    wall_s: float
    peak_mb: float
    returncode: int
    stderr: str


def measure(cmd: Sequence[str], *, env: dict[str, str] | None = None) -> Run:
    """Run ``cmd`` (no shell) and return its wall time and peak RSS; stdout is discarded."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        list(cmd),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )
    assert proc.stderr is not None
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    return Run(wall_s=wall, peak_mb=usage.ru_maxrss / 1024, returncode=proc.returncode, stderr=err)


def median(values: Sequence[float]) -> float:
    s = sorted(values)
    n = len(s)
    return s[n // 2] if n % 2 else 0.5 * (s[n // 2 - 1] + s[n // 2])
