"""The results store: ``results.jsonl`` of a downstream run directory, one JSON record per finished run.

Every writer and reader of ``results.jsonl`` goes through :class:`ResultsStore` (the downstream protocol, the tree
families, ``cropmap export best``, the report and the seed table), so the file has one set of rules:

* :meth:`ResultsStore.append` writes one complete line per record under an exclusive lock of the file
  (``fcntl.flock``), then flushes and fsyncs it before the lock is released. Concurrent writers (the worker
  processes of a cluster run, on one machine or on a shared file system that honours ``flock``) never interleave
  or lose a line.
* :meth:`ResultsStore.records` reads under a shared lock, so a reader never sees a line being written.
* A writer killed in the middle of its line (a power cut; a killed process does not tear one ``write``) leaves a
  last line without its newline. Readers skip that torn tail with a warning, and the next append cuts it off
  (also with a warning) before writing, so the run it belonged to is simply run again. Any other line that is not
  a JSON object is an error naming the file and line.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from cropmap.errors import CropmapError

__all__ = ["RESULTS_FILE", "ResultsError", "ResultsStore", "RunKey", "run_key"]

logger = logging.getLogger(__name__)

RESULTS_FILE = "results.jsonl"
"""Name of the results file inside a run directory."""

RunKey = tuple[str, str, int, str, float | None]
"""``(task, family, variant, method, corruption)``: what identifies a run inside a results file."""


class ResultsError(CropmapError, ValueError):
    """A results file that cannot be read (a broken line, a record that is not an object)."""


def run_key(rec: Mapping[str, Any]) -> RunKey:
    """The run key of a record."""
    c = rec["corruption"]
    return (
        str(rec["task"]),
        str(rec["family"]),
        int(rec["variant"]),
        str(rec["method"]),
        None if c is None else float(c),
    )


class ResultsStore:
    """``results.jsonl`` of one run directory (or any results file given by path)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    @classmethod
    def in_dir(cls, run_dir: str | Path) -> ResultsStore:
        """The store of a run directory: ``RUN_DIR/results.jsonl``."""
        return cls(Path(run_dir) / RESULTS_FILE)

    def exists(self) -> bool:
        """Whether the file exists."""
        return self.path.is_file()

    def __repr__(self) -> str:
        return f"ResultsStore({str(self.path)!r})"

    @contextmanager
    def _locked(self, mode: str, lock: int) -> Iterator[IO[str]]:
        with self.path.open(mode, encoding="utf-8") as fh:
            fcntl.flock(fh.fileno(), lock)
            try:
                yield fh
            finally:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)

    def append(self, record: Mapping[str, Any]) -> None:
        """Append ``record`` as one line, under an exclusive lock, flushed and fsynced before it returns.

        Raises:
            ResultsError: If ``record`` does not serialise to JSON.
            OSError: If the file cannot be written.
        """
        try:
            line = json.dumps(dict(record), allow_nan=True) + "\n"
        except (TypeError, ValueError) as err:
            raise ResultsError(f"a record for {self.path} is not JSON-serialisable ({err})") from err
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # "a+" creates the file; every write of an O_APPEND file goes to its end whatever the position.
        with self._locked("a+", fcntl.LOCK_EX) as fh:
            self._cut_torn_tail(fh)
            fh.write(line)
            fh.flush()
            os.fsync(fh.fileno())

    def append_new(self, record: Mapping[str, Any]) -> bool:
        """Append ``record`` unless a record of its run (:func:`run_key`) is in the file; ``True`` if appended.

        The check and the append happen under one exclusive lock, so two workers that finish the same run (a task
        retried after its worker was lost, or a rerun started while another one is going) record it once.

        Raises:
            ResultsError: If ``record`` does not serialise to JSON, or the file holds a broken line.
            OSError: If the file cannot be written.
        """
        key = run_key(record)
        try:
            line = json.dumps(dict(record), allow_nan=True) + "\n"
        except (TypeError, ValueError) as err:
            raise ResultsError(f"a record for {self.path} is not JSON-serialisable ({err})") from err
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._locked("a+", fcntl.LOCK_EX) as fh:
            self._cut_torn_tail(fh)
            fh.seek(0)
            if key in {run_key(rec) for rec in self._parse(fh.read())}:
                return False
            fh.write(line)
            fh.flush()
            os.fsync(fh.fileno())
        return True

    def _cut_torn_tail(self, fh: IO[str]) -> None:
        """Remove a last line that lacks its newline (a writer that died mid-line); the lock is held."""
        size = os.fstat(fh.fileno()).st_size
        if size == 0:
            return
        with self.path.open("rb") as raw:
            raw.seek(size - 1)
            if raw.read(1) == b"\n":
                return
            # Find the start of the torn line: after the last newline before it.
            block = 1 << 16
            end = size
            start = 0
            while end > 0:
                pos = max(0, end - block)
                raw.seek(pos)
                chunk = raw.read(end - pos)
                nl = chunk.rfind(b"\n")
                if nl >= 0:
                    start = pos + nl + 1
                    break
                end = pos
        logger.warning(
            "%s ended in a torn line (%d bytes without a newline, left by a writer that stopped mid-line); "
            "it is cut off and its run counts as not finished",
            self.path,
            size - start,
        )
        os.truncate(self.path, start)

    def records(self, check: Callable[[dict[str, Any], int], None] | None = None) -> list[dict[str, Any]]:
        """Every record in file order (empty when the file does not exist).

        Args:
            check: Called with each record and its line number; raises to refuse it (the caller's schema).

        Raises:
            ResultsError: On a line that is not a JSON object (other than a torn last line, which is skipped with
                a warning).
        """
        if not self.path.is_file():
            return []
        with self._locked("r", fcntl.LOCK_SH) as fh:
            text = fh.read()
        return self._parse(text, check)

    def _parse(
        self, text: str, check: Callable[[dict[str, Any], int], None] | None = None
    ) -> list[dict[str, Any]]:
        """The records of the file's ``text``: see :meth:`records`."""
        lines = text.split("\n")
        torn = lines.pop()  # "" when the file ends with its newline
        if torn.strip():
            logger.warning(
                "%s: the last line has no newline (a writer stopped mid-line); it is not read, and the next run "
                "replaces it",
                self.path,
            )
        out = []
        for lineno, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as err:
                raise ResultsError(
                    f"{self.path}:{lineno} is not valid JSON ({err.msg}); expected one record per line as "
                    "the downstream protocol writes it (remove the broken line to resume)"
                ) from err
            if not isinstance(rec, dict):
                raise ResultsError(
                    f"{self.path}:{lineno} holds a JSON {type(rec).__name__}; expected one object per line"
                )
            if check is not None:
                check(rec, lineno)
            out.append(rec)
        return out

    def finished(self) -> dict[RunKey, dict[str, Any]]:
        """Finished runs by run key (a key written twice keeps its last record)."""
        done: dict[RunKey, dict[str, Any]] = {}
        for lineno, rec in enumerate(self.records(), start=1):
            try:
                done[run_key(rec)] = rec
            except (KeyError, TypeError, ValueError) as err:
                raise ResultsError(
                    f"{self.path}: record {lineno} lacks a usable run key ({err!r}); expected task, family, "
                    "variant, method and corruption"
                ) from err
        return done
