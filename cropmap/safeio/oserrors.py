"""One-line I/O errors: an ``OSError`` (or a GDAL I/O error) becomes a :class:`~cropmap.errors.FileSystemError`.

:func:`io_step` names the operation, the path and the cause ("no space left on device", "read-only file system",
...). GDAL's TIFF library prints its own messages straight to the C ``stderr``, often a step before the step that
fails; during I/O steps they are captured, used to name the cause and kept out of the terminal (they are logged at
DEBUG, ``-vv``).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

from typing_extensions import Self

from cropmap.errors import FileSystemError

logger = logging.getLogger(__name__)

CAUSES = {
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
        if isinstance(e, OSError) and isinstance(code, int) and code in CAUSES:
            return code, CAUSES[code]
    texts = " | ".join([*(str(e) for e in chain), extra]).lower()
    for code, words in CAUSES.items():
        if os.strerror(code).lower() in texts:
            return code, words
    if _GDAL_NO_SPACE.search(texts):
        return errno.ENOSPC, CAUSES[errno.ENOSPC]
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
            sink = type(self)._sink
            if sink is None:
                sink = type(self)._sink = (
                    os.memfd_create("cropmap-stderr", os.MFD_CLOEXEC)
                    if hasattr(os, "memfd_create")
                    else _tempfile_fd()
                )
            os.ftruncate(sink, 0)
            os.lseek(sink, 0, os.SEEK_SET)
            self._saved = os.dup(2)
            os.dup2(sink, 2)
            return self
        except BaseException as err:
            # No capture possible (fd 2 closed, no memory: C messages go where they go), or Ctrl-C / SIGTERM
            # arrived half-way: fd 2 is put back either way, so the interrupt's Error: line is not swallowed.
            self._close_saved()
            self._saved = None
            type(self)._lock.release()
            if isinstance(err, OSError):
                return self
            raise

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
            try:
                with contextlib.suppress(Exception):
                    sys.stderr.flush()
                self.text = self.read()
            finally:  # even when Ctrl-C / SIGTERM lands here: later messages must reach the real stderr
                self._close_saved()
        finally:
            self._saved = None
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
