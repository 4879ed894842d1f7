"""Signals: SIGTERM behaves like Ctrl-C (clean-up runs), and an interrupt's exit status is 128 + its number."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator


class Terminated(KeyboardInterrupt):
    """Raised in the main thread when the process receives SIGTERM."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextlib.contextmanager
def signals_as_interrupts() -> Iterator[None]:
    """Turn SIGTERM into :class:`Terminated` (a ``KeyboardInterrupt``) for the ``with`` block.

    Clean-up then runs as on Ctrl-C. A second SIGTERM ends the process at once.
    Only the main thread can install handlers; elsewhere this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, _frame: object) -> None:
        signal.signal(signum, signal.SIG_DFL)
        raise Terminated(signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def interrupt_exit_code(err: KeyboardInterrupt) -> tuple[int, str]:
    """``(exit status, signal name)`` for an interrupt: 128 + the signal number."""
    signum = err.signum if isinstance(err, Terminated) else signal.SIGINT
    return 128 + int(signum), signal.Signals(signum).name
