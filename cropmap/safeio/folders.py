"""Output folders and free space: folders made for a run go again when it fails; a run that cannot fit is refused."""

from __future__ import annotations

import contextlib
import errno
import logging
import shutil
from collections.abc import Iterator
from pathlib import Path

from cropmap.errors import FileSystemError
from cropmap.safeio.oserrors import CAUSES, io_step

logger = logging.getLogger(__name__)


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
        err.strerror = CAUSES[errno.ENOSPC]
        err.filename = str(folder)
        raise err
    logger.debug("%s free in %s; %s need at least %s", _size(free), folder, what, _size(need_bytes))


def _size(n: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover
