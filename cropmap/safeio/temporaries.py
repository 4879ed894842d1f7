"""Owned temporary files: every temporary name embeds the host and the PID of the process that made it.

``.map.tif.cropmap-<host>-<pid>-<token>.scratch.tif``: a later run of the same output removes what a killed run
left, and only that (:func:`remove_stale`).
"""

from __future__ import annotations

import logging
import os
import re
import socket
import uuid
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

from cropmap.safeio.locks import LOCK_SUFFIX
from cropmap.safeio.oserrors import io_step

logger = logging.getLogger(__name__)


def _host_tag() -> str:
    tag = re.sub(r"[^A-Za-z0-9]", "", socket.gethostname().split(".")[0])[:16]
    return tag or "host"


HOST = _host_tag()
"""This machine's name as it appears in temporary file names (letters and digits, at most 16)."""
_OWNED_RE = re.compile(
    r"^\.(?P<target>.+)\.cropmap-(?P<host>[A-Za-z0-9]{1,16})-(?P<pid>\d+)-(?P<token>[0-9a-f]{8})"
    r"\.(?P<kind>tmp|scratch|bak)(?P<rest>(?:\.[A-Za-z0-9]+)*)$"
)
# Temporaries of cropmap versions before owned names: ".NAME.<8 hex>.tmp.tif" / ".scratch.tif".
_LEGACY_RE = re.compile(r"^\.(?P<target>.+)\.[0-9a-f]{8}\.(?:tmp|scratch)(?:\.[A-Za-z0-9]+)*$")


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
