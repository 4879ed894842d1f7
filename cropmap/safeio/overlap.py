"""Inputs are never outputs, and inputs are files: which files a run reads, and the check against its outputs.

:func:`refuse_overlap` compares resolved real paths and inodes of every file a run writes with its inputs;
:func:`special_file_kind` finds a FIFO, socket or device given as an input before a reader blocks on it.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

from cropmap.errors import InputOverwriteError


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
