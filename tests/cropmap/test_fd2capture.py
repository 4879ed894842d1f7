"""The capture of C-level stderr always gives fd 2 back, even when Ctrl-C or SIGTERM lands inside it.

An interrupt that left fd 2 pointing at the capture buffer would swallow the command's own ``Error: interrupted by
...`` line (exit 130 / 143 with an empty stderr).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cropmap.safeio import oserrors
from cropmap.safeio.oserrors import _Fd2Capture


class Interrupted(Exception):
    """Stands in for the KeyboardInterrupt a signal handler raises (pytest reserves KeyboardInterrupt itself)."""


def _fd2() -> tuple[int, int]:
    st = os.fstat(2)
    return st.st_dev, st.st_ino


def test_an_interrupt_while_reading_the_capture_restores_fd2(monkeypatch: pytest.MonkeyPatch) -> None:
    before = _fd2()

    def interrupted(self: _Fd2Capture) -> str:
        raise Interrupted

    monkeypatch.setattr(_Fd2Capture, "read", interrupted)
    with pytest.raises(Interrupted), _Fd2Capture():
        assert _fd2() != before  # captured inside the block
    assert _fd2() == before
    monkeypatch.undo()
    with _Fd2Capture():  # the lock was released: a later capture works
        pass


def test_an_interrupt_while_starting_the_capture_restores_fd2(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    before = _fd2()
    real_dup2 = os.dup2

    def dup2_then_interrupt(fd: int, fd2: int, inheritable: bool = True) -> int:
        out = real_dup2(fd, fd2, inheritable)
        if fd2 == 2 and _fd2() != before:
            raise Interrupted  # as if SIGTERM arrived right after the redirection
        return out

    monkeypatch.setattr(oserrors.os, "dup2", dup2_then_interrupt)
    with pytest.raises(Interrupted), _Fd2Capture():
        pytest.fail("the block must not run")
    monkeypatch.undo()
    assert _fd2() == before
