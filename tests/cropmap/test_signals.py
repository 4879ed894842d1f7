"""Interrupts held back to a safe point (``deferred_interrupts``), as ``cropmap batch`` waits on dask."""

from __future__ import annotations

import signal
import threading

import pytest

from cropmap.safeio.signals import Terminated, deferred_interrupts, interrupt_exit_code


def _send(signum: int) -> None:
    """Deliver ``signum`` to this process; its Python handler runs as this call returns."""
    signal.raise_signal(signum)


@pytest.mark.parametrize(
    ("signum", "raised"), [(signal.SIGINT, KeyboardInterrupt), (signal.SIGTERM, Terminated)]
)
def test_a_signal_is_held_until_check(signum: int, raised: type[BaseException]) -> None:
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    reached = []
    with pytest.raises(raised) as info, deferred_interrupts() as check:
        check()  # nothing held yet: returns
        _send(signum)
        reached.append("after the signal")  # the block goes on to its safe point
        check()
        reached.append("after check")
    assert reached == ["after the signal"]
    assert interrupt_exit_code(info.value) == (128 + signum, signal.Signals(signum).name)
    assert {s: signal.getsignal(s) for s in before} == before  # the handlers are restored


def test_a_signal_still_held_is_raised_when_the_block_ends(caplog: pytest.LogCaptureFixture) -> None:
    reached = []
    with pytest.raises(KeyboardInterrupt), deferred_interrupts("once the call returns"):
        _send(signal.SIGINT)
        reached.append("end of the block")
    assert reached == ["end of the block"]
    assert "SIGINT received: stopping once the call returns (send it again to stop at once)" in caplog.text


def test_a_second_signal_is_raised_at_once() -> None:
    reached = []
    with pytest.raises(KeyboardInterrupt), deferred_interrupts():
        _send(signal.SIGTERM)
        reached.append("held")
        _send(signal.SIGINT)
        reached.append("not reached")
    assert reached == ["held"]


def test_no_signal_leaves_the_block_alone() -> None:
    before = signal.getsignal(signal.SIGINT)
    with deferred_interrupts() as check:
        assert signal.getsignal(signal.SIGINT) is not before
        check()
    assert signal.getsignal(signal.SIGINT) is before


def test_outside_the_main_thread_check_does_nothing() -> None:
    seen: list[object] = []
    before = signal.getsignal(signal.SIGINT)

    def worker() -> None:
        with deferred_interrupts() as check:
            seen.append(signal.getsignal(signal.SIGINT))
            check()

    t = threading.Thread(target=worker)
    t.start()
    t.join()
    assert seen == [before]
