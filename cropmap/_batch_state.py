"""The state file of a batch (``batch_state.json``): atomic writes, checksums, settings checks.

Layout::

    {"format": 1, "cropmap_version": "...", "updated": "...",
     "settings": {"model_sha256": "...", "confidence": false, ...},
     "regions": {"north": {"status": "done" | "failed" | "pending",
                           "settings": {"stack": "...", "mask": "...", "season": 2021},
                           "outputs": {"north.tif": "<sha256>", ...}, "summary": "north/north_summary.json",
                           "pixels": {...}, "area_ha": {...}, "seconds": 1.2, "error": "..."}}}
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
from pathlib import Path
from typing import Any

from cropmap.errors import CropmapError, OutputExistsError
from cropmap.safeio.atomic import atomic_write_json

logger = logging.getLogger(__name__)

STATE_NAME = "batch_state.json"
STATE_FORMAT = 1
_CHUNK = 1 << 20


def sha256(path: Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def write_json(path: Path, doc: dict[str, Any]) -> None:
    """Write ``doc`` to ``path`` atomically (:func:`cropmap.safeio.atomic.atomic_write_json`).

    Raises:
        FileSystemError: One line naming ``path`` and the cause; ``path`` is unchanged.
    """
    atomic_write_json(path, doc)


def load(out: Path, settings: dict[str, Any], *, overwrite: bool) -> dict[str, Any]:
    """Read the state in ``out`` (or start a new one) for a batch with ``settings``.

    With ``overwrite`` the recorded regions are dropped (their outputs are replaced
    as regions run again).

    Raises:
        CropmapError: If the state file is unreadable or of an unknown format.
        OutputExistsError: If it was written with other settings and ``overwrite`` is off.
    """
    from cropmap import __version__

    path = out / STATE_NAME
    fresh = {"format": STATE_FORMAT, "cropmap_version": __version__, "settings": settings, "regions": {}}
    if not path.exists():
        return fresh
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CropmapError(
            f"batch state {path} is unreadable ({err}); expected the JSON file cropmap batch writes "
            "(remove it and pass --overwrite to start again)"
        ) from err
    if (
        not isinstance(doc, dict)
        or doc.get("format") != STATE_FORMAT
        or not isinstance(doc.get("regions"), dict)
    ):
        found = doc.get("format") if isinstance(doc, dict) else type(doc).__name__
        raise CropmapError(
            f"batch state {path} has format {found!r}; expected format {STATE_FORMAT} "
            "(remove it and pass --overwrite to start again)"
        )
    if overwrite:
        if doc["regions"]:
            logger.info("--overwrite: forgetting %d recorded regions in %s", len(doc["regions"]), path)
        return fresh
    if doc.get("settings") != settings:
        old = doc.get("settings") or {}
        keys = sorted(set(old) | set(settings))
        changed = {k: (old.get(k), settings.get(k)) for k in keys if old.get(k) != settings.get(k)}
        raise OutputExistsError(
            f"the batch in {out} was run with other settings {changed} (recorded, now); expected the same model "
            "and output options to resume (pass --overwrite to recompute every region, or use another output folder (-o))"
        )
    doc["cropmap_version"] = __version__
    return doc


def save(out: Path, state: dict[str, Any]) -> None:
    """Write the state atomically."""
    state["updated"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    write_json(out / STATE_NAME, state)


def verify_outputs(folder: Path, outputs: dict[str, str]) -> str | None:
    """Check a done region's files against their recorded checksums.

    Returns:
        ``None`` when every file is present and unchanged, else what is wrong.
    """
    if not outputs:
        return "no outputs are recorded"
    for name, digest in outputs.items():
        p = folder / name
        if not p.is_file():
            return f"{p} is missing"
        if sha256(p) != digest:
            return f"{p} does not match its recorded checksum"
    return None
