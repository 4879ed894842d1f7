"""Atomic writes: a file (or folder) appears at its final path only when complete.

:func:`atomic_path` is the one way cropmap, training and the exporters write a single output: the writer gets an
owned temporary beside the destination (:func:`~cropmap.safeio.temporaries.owned_path`, so a later run can tell
whose it is), and the temporary is flushed to disk and renamed onto the destination when the ``with`` block ends
without error; on any error or interrupt (Ctrl-C, SIGTERM) it is removed and the destination is left as it was.
:func:`atomic_file`, :func:`atomic_write` and :func:`atomic_write_json` are its shorthands for an open file, bytes
or text, and a JSON document. A *set* of outputs that must change together commits through
:func:`cropmap.safeio.commit.replace_all` instead.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO, Any, Literal

from cropmap.safeio.oserrors import io_step
from cropmap.safeio.temporaries import owned_path


@contextlib.contextmanager
def atomic_path(
    final: Path | str, *, suffix: str | None = None, mode: int | None = None, replace: bool = True
) -> Iterator[Path]:
    """Yield a temporary path beside ``final``; on success it becomes ``final``, on any error it is removed.

    Nothing exists at the yielded path: the block writes a file there (any writer: ``open``, ``rasterio``,
    ``np.save``, ``torch.save``, ``onnx.save``) or makes a folder and fills it. When the block ends without
    error, the file (or every file of the folder) is flushed to disk (``fsync``), given ``mode`` if set, and
    renamed onto ``final``, replacing what was there (a folder already at ``final`` is moved aside first and
    removed once the new one is in place). An exception or interrupt in the block, or a failing rename, removes
    the temporary and leaves ``final`` as it was.

    Args:
        final: The destination path.
        suffix: Extension(s) of the temporary (default: ``final``'s own, so writers that choose a format by
            extension, such as GDAL or ``np.savez``, write the right one).
        mode: Permission bits to set on the temporary before it is renamed (e.g. ``0o644``).
        replace: ``False``: never replace what is at ``final`` (a file, or a folder with entries): the rename
            fails with ``EEXIST`` / ``ENOTEMPTY`` instead, atomically (first writer wins, as a shared cache wants).

    Raises:
        FileSystemError: Flushing or renaming failed: one line naming ``final`` and the cause.
    """
    final = Path(final)
    tmp = owned_path(final, "tmp", final.suffix if suffix is None else suffix)
    try:
        yield tmp
        with io_step("write", final):
            _fsync(tmp)
            if mode is not None:
                os.chmod(tmp, mode)
        if replace:
            _move_into_place(tmp, final)
        else:
            _move_without_replacing(tmp, final)
    finally:
        _remove(tmp)


def _move_into_place(tmp: Path, final: Path) -> None:
    """``os.replace(tmp, final)``; a folder at ``final`` is moved aside first and removed after the swap."""
    if not (tmp.is_dir() and final.is_dir() and not final.is_symlink()):
        with io_step("move the finished file into place at", final):
            os.replace(tmp, final)
        _fsync_folder(final.parent)
        return
    backup = owned_path(final, "bak")
    with io_step("move the previous folder aside", final):
        os.replace(final, backup)
    try:
        with io_step("move the finished folder into place at", final):
            os.replace(tmp, final)
    except BaseException:
        os.replace(backup, final)
        raise
    _fsync_folder(final.parent)
    shutil.rmtree(backup)


def _move_without_replacing(tmp: Path, final: Path) -> None:
    """Rename ``tmp`` to ``final`` unless something is there: a folder by ``rename`` (refused onto a folder with
    entries), a file by a hard link (refused onto any name), both atomic."""
    with io_step("move the finished file into place at", final):
        if tmp.is_dir():
            os.rename(tmp, final)
        else:
            os.link(tmp, final)
            tmp.unlink()
    _fsync_folder(final.parent)


def _fsync(path: Path) -> None:
    """Flush ``path`` (a file, or every file of a folder and the folders themselves) to disk."""
    if path.is_dir():
        for root, _dirs, files in os.walk(path):
            for name in files:
                _fsync_file(Path(root) / name)
            _fsync_folder(Path(root))
    else:
        _fsync_file(path)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_folder(folder: Path) -> None:
    """Flush a folder's entries (the rename) to disk; file systems that cannot sync a folder are skipped."""
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):  # e.g. EINVAL: the file system does not sync folders
            os.fsync(fd)
    finally:
        os.close(fd)


def _remove(tmp: Path) -> None:
    """Remove what is left at ``tmp`` (nothing after a successful rename)."""
    if tmp.is_dir() and not tmp.is_symlink():
        shutil.rmtree(tmp)
    elif os.path.lexists(tmp):  # (unlink of a missing file fails on a read-only file system)
        tmp.unlink()


@contextlib.contextmanager
def atomic_file(
    final: Path | str, mode: Literal["w", "wb"] = "w", *, encoding: str = "utf-8"
) -> Iterator[IO[Any]]:
    """:func:`atomic_path` with the temporary open for writing (``mode`` ``"w"``: text, ``"wb"``: bytes)."""
    with atomic_path(final) as tmp, open(tmp, mode, encoding=None if mode == "wb" else encoding) as f:
        yield f


def atomic_write(path: Path | str, data: bytes | str) -> None:
    """Write ``data`` (text as UTF-8) to ``path`` through :func:`atomic_path`.

    Raises:
        FileSystemError: One line naming ``path`` and the cause; ``path`` is unchanged.
    """
    raw = data.encode("utf-8") if isinstance(data, str) else data
    with io_step("write", path), atomic_path(path) as tmp:
        tmp.write_bytes(raw)


def atomic_write_json(path: Path | str, doc: Mapping[str, object] | list[object]) -> None:
    """:func:`atomic_write` of ``doc`` as indented JSON (two spaces, a final newline)."""
    atomic_write(path, json.dumps(doc, indent=2) + "\n")
