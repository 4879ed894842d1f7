"""Signals: SIGTERM behaves like Ctrl-C (clean-up runs), and an interrupt's exit status is 128 + its number."""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Callable, Iterator

logger = logging.getLogger(__name__)


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


@contextlib.contextmanager
def deferred_interrupts(note: str = "") -> Iterator[Callable[[], None]]:
    """Hold Ctrl-C and SIGTERM back in the ``with`` block until the code reaches a safe point.

    Yields ``check``: it raises the held signal, ``KeyboardInterrupt`` for SIGINT and :class:`Terminated`
    for SIGTERM. A signal still held when the block ends is raised there. For code that waits inside a
    library that breaks when an interrupt lands between two of its statements: dask.distributed's
    ``sync()``, interrupted before its coroutine starts, logs a ``NameError`` traceback from its
    event-loop thread. The first signal logs a warning (``note`` says where it takes effect); a second
    one is raised at once, wherever the code is. Only the main thread can install handlers; elsewhere
    ``check`` does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield lambda: None
        return
    held: list[int] = []

    def raise_for(signum: int) -> None:
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        raise Terminated(signum)

    def handler(signum: int, _frame: object) -> None:
        if held:
            raise_for(signum)
        held.append(signum)
        logger.warning(
            "%s received: stopping%s (send it again to stop at once)",
            signal.Signals(signum).name,
            f" {note}" if note else " at the next safe point",
        )

    def check() -> None:
        if held:
            raise_for(held[0])

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield check
        check()
    finally:
        for signum, before in previous.items():  # None: a handler not installed from Python
            signal.signal(signum, signal.SIG_DFL if before is None else before)


def interrupt_exit_code(err: KeyboardInterrupt) -> tuple[int, str]:
    """``(exit status, signal name)`` for an interrupt: 128 + the signal number."""
    signum = err.signum if isinstance(err, Terminated) else signal.SIGINT
    return 128 + int(signum), signal.Signals(signum).name
