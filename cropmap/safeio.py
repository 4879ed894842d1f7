"""Safe file handling shared by ``classify`` and ``batch``.

* **One-line I/O errors.** :func:`io_step` turns any ``OSError`` (rasterio's
  ``RasterioIOError`` included) into a :class:`~cropmap.errors.FileSystemError` whose
  message names the operation, the path and the cause ("no space left on device",
  "read-only file system", ...). GDAL's TIFF library prints its own messages straight
  to the C ``stderr``, often a step before the step that fails; during I/O steps
  they are captured, used to name the cause and kept out of the terminal (they
  are logged at DEBUG, ``-vv``).
* **Owned temporary files.** Every temporary name embeds the host and the PID of the
  process that made it (``.map.tif.cropmap-<host>-<pid>-<token>.scratch.tif``), so a
  later run of the same output removes what a killed run left, and only that
  (:func:`remove_stale`).
* **Locks.** :class:`RunLock` holds an exclusive ``flock`` on ``.<name>.cropmap-lock``
  beside the output for the whole run, with the holder's PID, host, start time and
  command inside for the message a second run gets. The kernel drops the lock when
  its process dies, so a lock left by a killed run never blocks.
* **Inputs are never outputs.** :func:`refuse_overlap` compares resolved real paths
  and inodes of every file a run writes with its inputs.
* **A set of outputs commits together.** :func:`replace_all` with a journal moves a run's
  outputs into place so that a process killed at any instant leaves either the previous set or
  the new one, once :func:`recover_commit` has read the journal.
* **Signals.** :func:`signals_as_interrupts` makes SIGTERM behave like Ctrl-C.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import json
import logging
import os
import re
import shutil
import signal
import socket
import sys
import threading
import time
import uuid
from collections.abc import Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from typing_extensions import Self

from cropmap.errors import FileSystemError, InputOverwriteError, RunLockedError

logger = logging.getLogger(__name__)


def _host_tag() -> str:
    tag = re.sub(r"[^A-Za-z0-9]", "", socket.gethostname().split(".")[0])[:16]
    return tag or "host"


HOST = _host_tag()
"""This machine's name as it appears in temporary file names (letters and digits, at most 16)."""
LOCK_SUFFIX = ".cropmap-lock"
_OWNED_RE = re.compile(
    r"^\.(?P<target>.+)\.cropmap-(?P<host>[A-Za-z0-9]{1,16})-(?P<pid>\d+)-(?P<token>[0-9a-f]{8})"
    r"\.(?P<kind>tmp|scratch|bak)(?P<rest>(?:\.[A-Za-z0-9]+)*)$"
)
# Temporaries of cropmap versions before owned names: ".NAME.<8 hex>.tmp.tif" / ".scratch.tif".
_LEGACY_RE = re.compile(r"^\.(?P<target>.+)\.[0-9a-f]{8}\.(?:tmp|scratch)(?:\.[A-Za-z0-9]+)*$")

# ---------------------------------------------------------------------------------------------- OS errors

_CAUSES = {
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EFBIG: "file too large (the process's file-size limit, ulimit -f, or the file system's maximum)",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EISDIR: "is a directory",
    errno.ENOTDIR: "a component of the path is not a directory",
    errno.ENOENT: "no such file or directory",
    errno.EEXIST: "file exists",
    errno.ENAMETOOLONG: "file name too long",
    errno.EIO: "input/output error",
    errno.EMFILE: "too many open files",
    errno.ENFILE: "too many open files in the system",
    errno.ENOLCK: "no locks available (the file system does not support file locks)",
    errno.EBUSY: "device or resource busy",
    errno.ETXTBSY: "text file busy",
    errno.EXDEV: "the paths lie on different file systems",
}
_HINTS = {
    errno.ENOSPC: "free some space there or write elsewhere",
    errno.EDQUOT: "free some space there or write elsewhere",
    errno.EFBIG: "raise the limit (ulimit -f) or write elsewhere",
    errno.EROFS: "choose a writable folder",
    errno.EACCES: "choose a folder you may write to, or fix its permissions",
    errno.EPERM: "choose a folder you may write to, or fix its permissions",
    errno.EISDIR: "expected a file path, not a folder",
    errno.ENOTDIR: "expected folders along the path",
}
_GDAL_NO_SPACE = re.compile(r"free disk space available is|disk full|no space", re.IGNORECASE)


def cause_of(err: BaseException, extra: str = "") -> tuple[int | None, str]:
    """``(errno, cause)`` of an I/O error, in words.

    The errno of the error (or of an error in its chain) wins; else the first
    ``strerror`` text found in the messages (GDAL's messages and the captured C
    ``stderr`` in ``extra``); else the error's own first line.
    """
    chain: list[BaseException] = []
    e: BaseException | None = err
    while e is not None and e not in chain:
        chain.append(e)
        e = e.__cause__ or e.__context__
    for e in chain:
        code = getattr(e, "errno", None)
        if isinstance(e, OSError) and isinstance(code, int) and code in _CAUSES:
            return code, _CAUSES[code]
    texts = " | ".join([*(str(e) for e in chain), extra]).lower()
    for code, words in _CAUSES.items():
        if os.strerror(code).lower() in texts:
            return code, words
    if _GDAL_NO_SPACE.search(texts):
        return errno.ENOSPC, _CAUSES[errno.ENOSPC]
    first = next((line.strip() for e in chain for line in str(e).splitlines() if line.strip()), "")
    return None, first or type(err).__name__


def file_system_error(
    err: BaseException, operation: str, path: Path | str, extra: str = ""
) -> FileSystemError:
    """A one-line :class:`FileSystemError` for ``err`` raised while doing ``operation`` on ``path``."""
    code, cause = cause_of(err, extra)
    where = str(path)
    other = getattr(err, "filename", None)
    if other and str(other) != where:
        where = f"{where} ({other})"
    hint = _HINTS.get(code) if code is not None else None
    message = f"could not {operation} {where}: {cause}" + (f"; {hint}" if hint else "")
    out = FileSystemError(" ".join(message.split()))
    out.errno = code
    out.strerror = cause
    out.filename = str(path)
    out.operation = operation  # type: ignore[attr-defined]
    return out


class _Fd2Capture:
    """Redirects file descriptor 2 (the C ``stderr``) into an in-memory file while active."""

    _lock = threading.RLock()
    _sink: int | None = None

    def __init__(self) -> None:
        self._saved: int | None = None
        self.text = ""

    def __enter__(self) -> Self:
        type(self)._lock.acquire()
        try:
            with contextlib.suppress(Exception):
                sys.stderr.flush()
            if type(self)._sink is None:
                type(self)._sink = (
                    os.memfd_create("cropmap-stderr", os.MFD_CLOEXEC)
                    if hasattr(os, "memfd_create")
                    else _tempfile_fd()
                )
            os.ftruncate(type(self)._sink, 0)
            os.lseek(type(self)._sink, 0, os.SEEK_SET)
            self._saved = os.dup(2)
            os.dup2(type(self)._sink, 2)
        except OSError:  # no capture possible (fd 2 closed, no memory): C messages go where they go
            self._close_saved()
            type(self)._lock.release()
            self._saved = None
            return self
        return self

    def read(self) -> str:
        sink = type(self)._sink
        if self._saved is None or sink is None:
            return ""
        size = os.fstat(sink).st_size
        return os.pread(sink, size, 0).decode("utf-8", "replace") if size else ""

    def _close_saved(self) -> None:
        if self._saved is not None:
            os.dup2(self._saved, 2)
            os.close(self._saved)

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if self._saved is None:
            return
        try:
            with contextlib.suppress(Exception):
                sys.stderr.flush()
            self.text = self.read()
            self._close_saved()
        finally:
            type(self)._lock.release()
        if self.text:
            # GDAL's TIFF library reports write errors here, often a step before the step that fails.
            _RECENT.extend(line for line in self.text.splitlines() if line.strip())
            del _RECENT[:-_RECENT_MAX]
            logger.debug("C library messages: %s", " | ".join(self.text.split("\n")).strip(" |"))


_RECENT: list[str] = []
_RECENT_MAX = 50


def _tempfile_fd() -> int:
    import tempfile

    fd, name = tempfile.mkstemp(prefix="cropmap-stderr-")
    os.unlink(name)
    return fd


@contextlib.contextmanager
def io_step(operation: str, path: Path | str) -> Iterator[None]:
    """Run one I/O operation; an ``OSError`` in it becomes a one-line :class:`FileSystemError`.

    Args:
        operation: What is being done, as a verb phrase ("write the temporary raster").
        path: The file or folder it is done to.
    """
    with _Fd2Capture() as cap:
        try:
            yield
        except FileSystemError:
            raise
        except Exception as err:
            if not _is_io_error(err):
                raise
            fault = file_system_error(err, operation, path, "\n".join([*_RECENT, cap.read()]))
            _RECENT.clear()
            raise fault from err


def _is_io_error(err: BaseException) -> bool:
    """``OSError``s, and the GDAL errors rasterio raises from reading and writing files."""
    if isinstance(err, OSError):
        return True
    try:
        from rasterio._err import CPLE_BaseError  # GDAL's errors; rasterio raises them from e.g. shutil.copy
    except ImportError:  # pragma: no cover - a rasterio without this private module
        return False
    return isinstance(err, CPLE_BaseError)


# ---------------------------------------------------------------------------------------------- owned temporaries


def owned_path(final: Path, kind: str, suffix: str = "") -> Path:
    """A temporary path beside ``final`` that names its owner (host, PID).

    Args:
        final: The file the temporary stands for.
        kind: ``"tmp"`` (becomes ``final``), ``"scratch"`` (removed at the end) or ``"bak"``
            (the previous ``final`` while outputs are swapped in).
        suffix: Extension(s) after the kind, e.g. ``".tif"``.
    """
    if kind not in ("tmp", "scratch", "bak"):
        raise ValueError(f"kind is {kind!r}; expected 'tmp', 'scratch' or 'bak'")
    return final.with_name(
        f".{final.name}.cropmap-{HOST}-{os.getpid()}-{uuid.uuid4().hex[:8]}.{kind}{suffix}"
    )


@dataclass(frozen=True)
class Owner:
    """Who made a temporary file, read from its name."""

    target: str
    """Name of the output it stands for."""
    host: str
    pid: int
    kind: str


def owner_of(name: str) -> Owner | None:
    """The owner of a cropmap temporary file name; ``None`` for any other name."""
    m = _OWNED_RE.match(name)
    if m is None:
        return None
    return Owner(target=m["target"], host=m["host"], pid=int(m["pid"]), kind=m["kind"])


def is_debris(name: str) -> bool:
    """Whether ``name`` is a cropmap temporary (owned or of an older version) or lock file."""
    return bool(_OWNED_RE.match(name) or _LEGACY_RE.match(name)) or (
        name.startswith(".") and name.endswith(LOCK_SUFFIX)
    )


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` runs on this machine (zombies count as dead)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[-1].split()[:1] != ["Z"]


def remove_stale(folder: Path, targets: Collection[str]) -> list[Path]:
    """Remove temporaries of the outputs ``targets`` left in ``folder`` by runs that are gone.

    Only names cropmap makes are touched, and only for the given output names: an
    owned temporary whose process no longer runs on this host, or a temporary of an
    older cropmap version (no owner recorded; the caller holds the output's lock).
    Temporaries of a live process, or of another host (whose processes cannot be
    checked from here), are left with a warning. A backup (``bak``) whose output is
    missing is the previous output that a killed run was replacing: it is put back.

    Returns:
        The paths removed.
    """
    removed: list[Path] = []
    if not folder.is_dir():
        return removed
    with io_step("list the output folder", folder):
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    for entry in entries:
        if not entry.is_file(follow_symlinks=False):
            continue
        path = Path(entry.path)
        owner = owner_of(entry.name)
        legacy = _LEGACY_RE.match(entry.name) if owner is None else None
        target = owner.target if owner is not None else (legacy["target"] if legacy else None)
        if target is None or target not in targets:
            continue
        if owner is not None:
            if owner.host != HOST:
                logger.warning(
                    "left %s in place: made by a process on host %s, which cannot be checked from here",
                    path,
                    owner.host,
                )
                continue
            if owner.pid == os.getpid() or pid_alive(owner.pid):
                logger.warning("left %s in place: its process %d is still running", path, owner.pid)
                continue
            if owner.kind == "bak" and not (folder / target).exists():
                with io_step("restore the previous output from", path):
                    os.replace(path, folder / target)
                logger.warning(
                    "restored %s from %s, left by a run killed while replacing it", folder / target, path
                )
                continue
        with io_step("remove the temporary file left by an interrupted run", path):
            path.unlink(missing_ok=True)
        logger.info(
            "removed %s, left by an interrupted run%s",
            path,
            f" (process {owner.pid})" if owner is not None else "",
        )
        removed.append(path)
    return removed


def atomic_write(path: Path, data: bytes | str) -> None:
    """Write ``data`` to ``path`` atomically: an owned temporary in the same folder, flushed, then renamed.

    The one atomic-write helper of cropmap (batch state, commit journals).

    Raises:
        FileSystemError: One line naming ``path`` and the cause; ``path`` is unchanged.
    """
    raw = data.encode("utf-8") if isinstance(data, str) else data
    tmp = owned_path(path, "tmp")
    try:
        with io_step("write", path):
            with open(tmp, "wb") as f:
                f.write(raw)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
    finally:
        if os.path.lexists(tmp):  # (unlink of a missing file fails on a read-only file system)
            tmp.unlink()


def atomic_write_json(path: Path, doc: Mapping[str, object]) -> None:
    """:func:`atomic_write` of ``doc`` as indented JSON."""
    atomic_write(path, json.dumps(doc, indent=2) + "\n")


JOURNAL_SUFFIX = ".cropmap-journal.json"
COMMIT_KILL_ENV = "CROPMAP_TEST_COMMIT_KILL_AT"
"""Tests only: SIGKILL the process before the N-th file-system step of a journalled commit (1-based)."""
_commit_steps = 0


def journal_path(anchor: Path) -> Path:
    """The commit journal of the output set named after ``anchor``: ``.<name>.cropmap-journal.json`` beside it."""
    return anchor.with_name(f".{anchor.name}{JOURNAL_SUFFIX}")


def _commit_step() -> None:
    """Count one file-system step of a commit; the test hook kills the process at the chosen one."""
    global _commit_steps
    _commit_steps += 1
    at = os.environ.get(COMMIT_KILL_ENV)
    if at and at.isdigit() and int(at) == _commit_steps:
        os.kill(os.getpid(), signal.SIGKILL)


def replace_all(
    moves: Iterable[tuple[Path, Path]], *, remove: Iterable[Path] = (), journal: Path | None = None
) -> None:
    """Move each ``(temporary, final)`` into place and remove each of ``remove``, all or none.

    A final file that exists (and each file to remove) is first moved aside to an owned
    backup; if any move fails, every final path is restored to what it was and the
    error is raised. With ``journal``, the set is committed through a journal written
    (atomically) before the first rename, naming every temporary, final path and
    backup, and marked ``committed`` (atomically) after the last one: a process killed
    at any instant leaves a journal that :func:`recover_commit` replays (committed: the
    backups are removed) or rolls back (prepared: the new files are removed and the
    backups put back), so the folder holds either the old set or the new one. Once
    committed, failing to remove a backup or the journal is a warning, never an error.
    """
    global _commit_steps
    _commit_steps = 0
    moves = list(moves)
    entries: list[tuple[Path | None, Path, Path | None]] = [
        (tmp, final, owned_path(final, "bak") if os.path.lexists(final) else None) for tmp, final in moves
    ]
    entries += [(None, final, owned_path(final, "bak")) for final in remove if os.path.lexists(final)]
    done: list[tuple[Path | None, Path, Path | None]] = []
    try:
        if journal is not None:
            _write_journal(journal, "prepared", entries)
            _commit_step()
        for tmp, final, backup in entries:
            done.append((tmp, final, backup))
            if backup is not None:
                with io_step("move the previous output aside", final):
                    os.replace(final, backup)
                _commit_step()
            if tmp is not None:
                with io_step("move the finished output into place at", final):
                    os.replace(tmp, final)
                _commit_step()
        if journal is not None:
            _write_journal(journal, "committed", entries)  # the commit point
            _commit_step()
    except BaseException:
        for tmp, final, backup in reversed(done):
            with contextlib.suppress(OSError):
                if tmp is not None and os.path.lexists(final) and not os.path.lexists(tmp):
                    os.replace(final, tmp)  # the new file goes back to its temporary (removed by the caller)
                if backup is not None and os.path.lexists(backup):
                    os.replace(backup, final)
        if journal is not None:
            with contextlib.suppress(OSError):
                journal.unlink(missing_ok=True)
        raise
    for _tmp, final, backup in entries:
        if backup is not None:
            try:
                backup.unlink()
            except OSError as err:
                logger.warning(
                    "could not remove %s, the previous %s: %s", backup, final.name, cause_of(err)[1]
                )
            _commit_step()
    if journal is not None:
        try:
            journal.unlink()
        except OSError as err:
            logger.warning(
                "could not remove the commit journal %s (the outputs are complete): %s",
                journal,
                cause_of(err)[1],
            )
        _commit_step()


def _write_journal(journal: Path, state: str, entries: list[tuple[Path | None, Path, Path | None]]) -> None:
    doc = {
        "state": state,
        "pid": os.getpid(),
        "host": HOST,
        "entries": [
            {"tmp": str(t) if t else None, "final": str(f), "backup": str(b) if b else None}
            for t, f, b in entries
        ],
    }
    atomic_write_json(journal, doc)


def recover_commit(journal: Path) -> str | None:
    """Finish or undo the commit a killed run left in ``journal`` (the caller holds the outputs' lock).

    A ``committed`` journal is replayed (the new set stays; backups and temporaries go);
    a ``prepared`` one is rolled back (the new files that reached their final paths are
    removed, the backups put back, the temporaries removed). A journal of a live
    process on this host, or of another host, is left with a warning.

    Returns:
        ``"replayed"``, ``"rolled back"`` or ``None`` (no journal, or left in place).

    Raises:
        FileSystemError: If the journal cannot be read or a file cannot be moved back.
    """
    if not os.path.lexists(journal):
        return None
    with io_step("read the commit journal", journal):
        raw = journal.read_bytes()
    try:
        doc = json.loads(raw.decode("utf-8"))
        state = doc["state"]
        entries = [
            (
                Path(e["tmp"]) if e["tmp"] else None,
                Path(e["final"]),
                Path(e["backup"]) if e["backup"] else None,
            )
            for e in doc["entries"]
        ]
        host, pid = str(doc["host"]), int(doc["pid"])
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        out = FileSystemError(
            f"the commit journal {journal} is unreadable ({type(err).__name__}: {err}); expected "
            "the JSON file cropmap writes before moving a run's outputs into place (check the "
            "outputs beside it, then remove it)"
        )
        out.filename = str(journal)
        raise out from err
    if host != HOST or (pid != os.getpid() and pid_alive(pid)):
        logger.warning(
            "left the commit journal %s in place: its process %d on host %s may still run", journal, pid, host
        )
        return None
    if state == "committed":
        for tmp, _final, backup in entries:
            for p in (backup, tmp):
                if p is not None and os.path.lexists(p):
                    with io_step("remove the previous output left by an interrupted commit", p):
                        p.unlink()
        outcome = "replayed"
    else:
        for tmp, final, backup in reversed(entries):
            tmp_left = tmp is not None and os.path.lexists(tmp)
            if tmp is not None and not tmp_left and os.path.lexists(final):
                with io_step("remove the output of an interrupted commit", final):
                    final.unlink()  # the new file had reached its final path
            if backup is not None and os.path.lexists(backup) and not os.path.lexists(final):
                with io_step("restore the previous output from", backup):
                    os.replace(backup, final)
            if tmp is not None and tmp_left:
                with io_step("remove the temporary file of an interrupted commit", tmp):
                    tmp.unlink()
        outcome = "rolled back"
    with io_step("remove the commit journal", journal):
        journal.unlink()
    logger.warning(
        "%s the commit of process %d (killed while moving its outputs into place): the outputs beside "
        "%s are the %s set",
        outcome,
        pid,
        journal,
        "new" if outcome == "replayed" else "previous",
    )
    return outcome


# ---------------------------------------------------------------------------------------------- locks


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


# ---------------------------------------------------------------------------------------------- inputs vs outputs


def _real(path: Path) -> Path:
    return Path(os.path.realpath(os.path.expanduser(path)))


def refuse_overlap(
    outputs: Iterable[Path], inputs: Mapping[Path, str], *, hint: str = "choose another -o / --out-dir"
) -> None:
    """Refuse when a file the run writes is one of its inputs, however the paths are spelled.

    The one rule of every cropmap writer: ``classify``, ``batch`` (every region's inputs against
    every region's outputs) and the exporters (checkpoints, run folders, calibration data).
    Paths are compared after resolving symbolic links, ``..`` and ``~`` and, where
    both exist, by device and inode (hard links). An input that is a folder (a stack
    of per-date files) also refuses any output inside it.

    Args:
        outputs: Every path the run may write.
        inputs: Input path -> what it is ("stack", "mask", "model bundle", ...).
        hint: What to do instead, ending the message (the flags that name the outputs).

    Raises:
        InputOverwriteError: Naming the output and the input it would replace.
    """
    outs = [(Path(o), _real(Path(o))) for o in outputs]
    for inp, label in inputs.items():
        real_in = _real(Path(inp))
        try:
            st_in: os.stat_result | None = os.stat(real_in)
        except OSError:
            st_in = None
        for out, real_out in outs:
            same = real_out == real_in
            if not same and st_in is not None:
                with contextlib.suppress(OSError):
                    same = os.path.samestat(st_in, os.stat(real_out))
            if same:
                raise InputOverwriteError(
                    f"output {out} is the {label} {inp} (both resolve to {real_in}); cropmap never writes over an "
                    "input, with or without --overwrite; expected an output path apart from the inputs "
                    f"({hint})"
                )
            if st_in is not None and os.path.isdir(real_in) and real_in in real_out.parents:
                raise InputOverwriteError(
                    f"output {out} lies inside the {label} folder {inp}; writing there would change the {label}; "
                    f"expected outputs outside it ({hint})"
                )


def special_file_kind(path: Path) -> str | None:
    """What ``path`` is when it is neither a regular file nor a folder (a FIFO, a socket, a device), else ``None``.

    Checked with ``stat`` before any reader opens an input: opening a FIFO for reading blocks until a
    writer appears, so a FIFO given as a stack, mask, bundle or manifest would hang the run.
    """
    import stat as stat_mod

    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None
    kinds = (
        (stat_mod.S_ISFIFO, "a FIFO (named pipe)"),
        (stat_mod.S_ISSOCK, "a socket"),
        (stat_mod.S_ISCHR, "a character device"),
        (stat_mod.S_ISBLK, "a block device"),
    )
    return next((words for test, words in kinds if test(mode)), None)


def mask_files(mask: Path) -> list[Path]:
    """The files a vector mask is read from (a Shapefile's sidecars included)."""
    files = [mask]
    if mask.suffix.lower() == ".shp":
        for ext in (".shx", ".dbf", ".prj", ".cpg", ".qix", ".sbn", ".sbx"):
            for cand in (mask.with_suffix(ext), mask.with_suffix(ext.upper())):
                if cand.exists():
                    files.append(cand)
    return files


# ---------------------------------------------------------------------------------------------- folders, space


@contextlib.contextmanager
def output_folder(folder: Path) -> Iterator[list[Path]]:
    """Create ``folder`` and its missing parents; on failure remove those created here that are empty.

    Yields:
        The folders created (outermost first).
    """
    missing: list[Path] = []
    p = folder
    while not p.exists() and p != p.parent:
        missing.append(p)
        p = p.parent
    created: list[Path] = []
    try:
        for d in reversed(missing):
            try:
                with io_step("create the output folder", d):
                    d.mkdir()
            except FileSystemError as err:
                if err.errno == errno.EEXIST and d.is_dir():
                    continue  # another process made it meanwhile: not ours to remove
                raise
            created.append(d)
            logger.info("created output folder %s", d)
        yield created
    except BaseException:
        for d in reversed(created):
            try:
                d.rmdir()
            except OSError:
                break  # not empty (another run writes there) or gone: leave it and its parents
        raise


def check_free_space(folder: Path, need_bytes: int, what: str) -> None:
    """Refuse a run whose outputs cannot fit: ``need_bytes`` (a low estimate) above the free space.

    Raises:
        FileSystemError: With errno ENOSPC, naming both sizes.
    """
    with io_step("check the free space of", folder):
        free = shutil.disk_usage(folder).free
    if need_bytes > free:
        err = FileSystemError(
            f"not enough free space in {folder} for {what}: they need at least {_size(need_bytes)} (a low estimate), "
            f"{_size(free)} are free; expected room for them (free some space or write elsewhere)"
        )
        err.errno = errno.ENOSPC
        err.strerror = _CAUSES[errno.ENOSPC]
        err.filename = str(folder)
        raise err
    logger.debug("%s free in %s; %s need at least %s", _size(free), folder, what, _size(need_bytes))


def _size(n: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover


# ---------------------------------------------------------------------------------------------- signals


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
