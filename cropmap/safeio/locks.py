"""Run locks: one run at a time per output (or batch folder).

:class:`RunLock` holds an exclusive ``flock`` on ``.<name>.cropmap-lock`` beside the output for the whole run, with
the holder's PID, host, start time and command inside for the message a second run gets. The kernel drops the lock
when its process dies, so a lock left by a killed run never blocks.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import socket
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import ClassVar

from typing_extensions import Self

from cropmap.errors import RunLockedError
from cropmap.safeio.oserrors import cause_of, file_system_error, io_step

logger = logging.getLogger(__name__)

LOCK_SUFFIX = ".cropmap-lock"


def lock_path(target: Path) -> Path:
    """The lock file of output ``target``: ``.<name>.cropmap-lock`` beside it."""
    return target.with_name(f".{target.name}{LOCK_SUFFIX}")


class RunLock:
    """An exclusive lock on an output for the duration of a run (a ``with`` block).

    Re-entrant within a thread: a nested ``RunLock`` on the same target in the thread
    that holds it does nothing (a batch region holds its output's lock around
    :func:`cropmap.pipeline.classify`, which takes it again).

    Args:
        target: The output (or batch state file) the lock protects.
        what: How messages name it ("output", "batch folder").
        wait_s: Seconds to wait for a live holder to finish before giving up (0: do not wait).
    """

    _held: ClassVar[dict[str, int]] = {}
    _held_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, target: Path, what: str, *, wait_s: float = 0.0) -> None:
        self.target = target
        self.what = what
        self.wait_s = wait_s
        self.path = lock_path(target)
        self._fd: int | None = None
        self._key = os.path.realpath(self.path)
        self._nested = False

    def __enter__(self) -> Self:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def acquire(self) -> None:
        """Take the lock or raise :class:`RunLockedError` naming the run that holds it."""
        with self._held_lock:
            if self._held.get(self._key) == threading.get_ident():
                self._nested = True
                return
        deadline = time.monotonic() + self.wait_s
        logged = 0.0
        while True:
            try:
                self._acquire_once()
            except RunLockedError as err:
                now = time.monotonic()
                if now >= deadline:
                    raise
                if now - logged >= 60:
                    logger.info("waiting for the lock of %s: %s", self.target, err)
                    logged = now
                time.sleep(min(0.5, max(0.0, deadline - now)))
                continue
            with self._held_lock:
                self._held[self._key] = threading.get_ident()
            return

    def _acquire_once(self) -> None:
        import fcntl

        info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
            "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])[:400] if sys.argv else "",
        }
        for _ in range(20):
            with io_step("create the lock file", self.path):
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_holder(fd)
                os.close(fd)
                raise RunLockedError(self._busy_message(holder)) from None
            except OSError as err:
                os.close(fd)
                raise file_system_error(err, "lock", self.path) from err
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if not same:  # the previous holder removed the file between our open and flock: take the new one
                os.close(fd)
                continue
            previous = _read_holder(fd)
            if previous:
                logger.info(
                    "taking over lock %s of process %s on %s (started %s), which has ended",
                    self.path,
                    previous.get("pid"),
                    previous.get("host"),
                    previous.get("started"),
                )
            try:
                with io_step("write the lock file", self.path):
                    os.ftruncate(fd, 0)
                    os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
            except BaseException:
                os.close(fd)
                raise
            self._fd = fd
            return
        raise RunLockedError(
            f"the lock file {self.path} was replaced 20 times while taking it; expected one run at a time"
        )

    def _busy_message(self, holder: Mapping[str, object]) -> str:
        who = (
            f"process {holder.get('pid')} on host {holder.get('host')}, started {holder.get('started')}"
            f" ({holder.get('command')})"
            if holder
            else "a process that has not yet recorded itself"
        )
        return (
            f"{self.what} {self.target} is being written by another cropmap run: {who}; expected one run at a "
            f"time per {self.what} (wait for it to finish or stop it; its lock {self.path.name} is released "
            "when that process ends)"
        )

    def release(self) -> None:
        """Remove the lock file and release the lock (a no-op when not held)."""
        if self._nested:
            self._nested = False
            return
        if self._fd is None:
            return
        with self._held_lock:
            self._held.pop(self._key, None)
        try:
            self.path.unlink(missing_ok=True)
        except OSError as err:
            logger.warning("could not remove the lock file %s: %s", self.path, cause_of(err)[1])
        finally:
            os.close(self._fd)
            self._fd = None


def _read_holder(fd: int) -> dict[str, object]:
    try:
        raw = os.pread(fd, 4096, 0)
        doc = json.loads(raw.decode("utf-8")) if raw.strip() else {}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return doc if isinstance(doc, dict) else {}
