"""A set of outputs commits together, through a journal.

:func:`replace_all` with a journal moves a run's outputs into place so that a process killed at any instant leaves
either the previous set or the new one, once :func:`recover_commit` has read the journal.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
from collections.abc import Iterable
from pathlib import Path

from cropmap.errors import FileSystemError
from cropmap.safeio.atomic import atomic_write_json
from cropmap.safeio.oserrors import cause_of, io_step
from cropmap.safeio.temporaries import HOST, owned_path, pid_alive

logger = logging.getLogger(__name__)

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
