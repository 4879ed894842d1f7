"""Where Optuna studies live: one process, one machine, or many jobs on many machines filling one study.

A *storage* is given as one string (``--storage``), read by :func:`open_storage`:

===============================================  ===============================================================
``runs/variants.db`` (``.db``, ``.sqlite``,      SQLite file: one machine, a few processes (SQLite serialises
``.sqlite3``) or ``sqlite:///runs/study.db``     writers; cropmap waits up to :data:`SQLITE_TIMEOUT_S` for a lock)
``runs/study.log`` (``.log``, ``.journal``) or   Optuna's journal file: an append-only log guarded by a lock
``journal:///shared/study.log``                  file beside it, safe for many processes and many machines on a
                                                 shared file system (what HPC sites have; no server needed)
``postgresql://user@host/db``,                   a database server, where one exists (needs its driver:
``mysql+pymysql://user@host/db``                 ``psycopg2`` / ``pymysql``)
===============================================  ===============================================================

Anything else is refused with one line: the storage is never guessed. Several workers that open the same storage
and study name fill one study; a worker started later (or after a kill) continues it.

A worker that is killed leaves its trial *running* in the study. Database storages (SQLite included) carry a
heartbeat, so the next worker to start a trial marks such a trial failed once it has been silent for
:data:`GRACE_S`; a journal file has no heartbeat, so a worker starting on the same machine marks failed the running
trials whose recorded process is gone (:func:`fail_orphaned_trials`), and a trial orphaned on another machine is
left running until a worker on that machine starts (or for good when the machine is gone: a study on a journal
file then counts it among its trials).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from cropmap.errors import CropmapError

if TYPE_CHECKING:  # optuna is imported where a storage is opened, so training imports without it
    import optuna

SQLITE_SUFFIXES = (".db", ".sqlite", ".sqlite3")
JOURNAL_SUFFIXES = (".log", ".journal")
SERVER_SCHEMES = ("postgresql", "mysql")
SQLITE_TIMEOUT_S = 60
"""How long a process waits for another's SQLite write lock before the study errors."""
HEARTBEAT_S = 30
"""Database storages: a running trial's worker records a heartbeat this often ..."""
GRACE_S = 120
"""... and a running trial without one for this long is marked failed by the next worker that starts a trial."""


class StorageError(CropmapError, ValueError):
    """A storage string that names no storage cropmap can open (one line: what was found, what is expected)."""


def storage_kind(spec: str | Path) -> tuple[str, str]:
    """``(kind, target)`` of a storage string: ``("sqlite", path)``, ``("journal", path)`` or ``("server", url)``.

    Raises:
        StorageError: On a string that is none of these.
    """
    text = str(spec)
    expected = (
        "expected a .db/.sqlite SQLite file, a .log/.journal journal file, sqlite:///PATH, journal:///PATH, "
        "postgresql://... or mysql://..."
    )
    if "://" in text:
        scheme, _, rest = text.partition("://")
        base = scheme.split("+", 1)[0].lower()
        if base == "sqlite":
            if not rest.startswith("/") or rest == "/":
                raise StorageError(f"storage {text!r} has no file path; expected sqlite:///PATH")
            return "sqlite", rest[1:]
        if base == "journal":
            if not rest.startswith("/") or rest == "/":
                raise StorageError(f"storage {text!r} has no file path; expected journal:///PATH")
            return "journal", rest[1:]
        if base in SERVER_SCHEMES:
            return "server", text
        raise StorageError(f"storage {text!r} has the unknown scheme {scheme!r}; {expected}")
    suffix = Path(text).suffix.lower()
    if suffix in SQLITE_SUFFIXES:
        return "sqlite", text
    if suffix in JOURNAL_SUFFIXES:
        return "journal", text
    raise StorageError(f"storage {text!r} is neither a URL nor a file with a known suffix; {expected}")


def open_storage(spec: str | Path | None) -> optuna.storages.BaseStorage:
    """The Optuna storage named by ``spec`` (``None``: in memory, gone with the process).

    Folders of file storages are created. Raises :class:`StorageError` for an unknown form, or when a server's
    database driver is not installed.
    """
    import optuna

    if spec is None:
        return optuna.storages.InMemoryStorage()
    kind, target = storage_kind(spec)
    if kind == "journal":
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        Path(target).parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(target))
    if kind == "sqlite":
        import fcntl

        path = Path(target)
        path.parent.mkdir(parents=True, exist_ok=True)
        # Workers starting together would each create the tables of a new file; one at a time, the later
        # ones find them. The lock file stays beside the database.
        with open(path.with_name(f"{path.name}.lock"), "a") as lock, warnings.catch_warnings():
            fcntl.flock(lock, fcntl.LOCK_EX)
            warnings.simplefilter(
                "ignore", optuna.exceptions.ExperimentalWarning
            )  # the heartbeat's API may move
            return optuna.storages.RDBStorage(
                f"sqlite:///{target}",
                engine_kwargs={"connect_args": {"timeout": SQLITE_TIMEOUT_S}},
                heartbeat_interval=HEARTBEAT_S,
                grace_period=GRACE_S,
            )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(target, heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S)
    except ModuleNotFoundError as err:
        raise StorageError(
            f"storage {target.split('@')[-1]!r} needs the database driver {err.name!r}, which is not installed; "
            "pip install psycopg2-binary (PostgreSQL) or pymysql (MySQL)"
        ) from None


def fail_orphaned_trials(study: optuna.Study) -> list[int]:
    """Mark failed the running trials of ``study`` whose worker ran on this machine and whose process is gone.

    A trial knows its worker from its ``host`` and ``pid`` user attributes (set by
    :func:`training.downstream.tune.run_study` as a trial starts). Returns the numbers of the trials marked failed.
    """
    import os
    import socket

    import optuna

    host, failed = socket.gethostname(), []
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        pid = t.user_attrs.get("pid")
        if t.user_attrs.get("host") != host or not isinstance(pid, int) or _alive(pid) or pid == os.getpid():
            continue
        study.tell(t.number, state=optuna.trial.TrialState.FAIL)
        failed.append(t.number)
    return failed


def _alive(pid: int) -> bool:
    import os

    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True
