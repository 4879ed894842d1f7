"""Pre-training pairs drawn from a scene once, kept on disk as ``.npy`` files and memory-mapped on reruns.

Drawing the pairs reads the whole scene (every S2 stamp, the 3 m PlanetScope rasters) and costs more than a
short run's training; the pairs depend only on the scene's files, the drawing settings and the code that
draws them. :func:`cached_scene_pairs` keys an entry on exactly that:

* the scene folder's resolved path and every file under it (relative path, size, modification time);
* the alignment and its sampling sizes (``data.pixels_per_stamp`` or ``data.n_series``), ``data.seed`` and
  ``data.split_seed``;
* the SHA-256 of the modules that read the scene and draw the pairs (``training/data/*.py``), so a change
  in how pairs are drawn never serves old pairs;
* :data:`CACHE_FORMAT`.

An entry is the folder ``CACHE_DIR/<key>/`` with ``s2.npy``, ``ps.npy`` and ``meta.json``. It is written
under a temporary name in ``CACHE_DIR`` and renamed into place only when complete, so a killed run leaves no
entry that looks finished (its temporary folder is removed by the next run that finds it stale, i.e. older
than an hour). Entries are opened with ``mmap_mode="c"``: nothing is read until used, and the pages are
shared with the page cache. The pairs of both modalities are stored, so uni- and bi-modal runs share an entry.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from cropmap.safeio.atomic import atomic_path
from training.config import PretrainConfig

logger = logging.getLogger(__name__)

__all__ = ["CACHE_FORMAT", "cache_key", "cached_scene_pairs"]

CACHE_FORMAT = 1
"""Bumped when the layout of an entry changes."""
_STALE_S = 3600.0
_CODE = ("datasets.py", "denethor.py", "splits.py")


def _code_digest() -> str:
    h = hashlib.sha256()
    data_dir = Path(__file__).resolve().parents[1] / "data"  # training/data
    for name in _CODE:
        h.update(name.encode())
        h.update((data_dir / name).read_bytes())
    return h.hexdigest()


def cache_key(scene_dir: Path, cfg: PretrainConfig) -> tuple[str, dict[str, Any]]:
    """The key of a scene's pairs under ``cfg``'s drawing settings, and the description it hashes."""
    scene_dir = scene_dir.resolve()
    files = []
    for path in sorted(p for p in scene_dir.rglob("*") if p.is_file()):
        st = path.stat()
        files.append([str(path.relative_to(scene_dir)), st.st_size, st.st_mtime_ns])
    size = cfg.data.pixels_per_stamp if cfg.alignment == "point" else cfg.data.n_series
    desc: dict[str, Any] = {
        "format": CACHE_FORMAT,
        "scene": str(scene_dir),
        "files": files,
        "alignment": cfg.alignment,
        "size": size,
        "seed": cfg.data.seed,
        "split_seed": cfg.data.split_seed,
        "code": _code_digest(),
    }
    key = hashlib.sha256(json.dumps(desc, sort_keys=True).encode()).hexdigest()[:24]
    return key, desc


def _remove_stale(cache_dir: Path) -> None:
    now = time.time()
    for tmp in cache_dir.glob(".*.cropmap-*.tmp"):  # atomic_path's temporaries of entries
        try:
            if now - tmp.stat().st_mtime > _STALE_S:
                shutil.rmtree(tmp, ignore_errors=True)
        except FileNotFoundError:
            pass


def cached_scene_pairs(
    scene_dir: Path,
    cfg: PretrainConfig,
    cache_dir: Path,
    build: Callable[[], tuple[np.ndarray, np.ndarray, dict[str, Any]]],
) -> tuple[np.ndarray, np.ndarray, dict[str, Any], bool]:
    """The pairs of ``scene_dir`` from the cache, or built with ``build()`` and stored.

    Args:
        scene_dir: The scene folder the pairs come from.
        cfg: The run configuration (its alignment and ``data`` section key the entry).
        cache_dir: Folder holding the entries (created if needed).
        build: Draws the pairs: returns ``s2``, ``ps`` (float32) and JSON-able metadata (band names, ...).

    Returns:
        ``s2``, ``ps`` (memory-mapped, copy-on-write), the metadata, and whether they came from the cache.
    """
    key, desc = cache_key(scene_dir, cfg)
    cache_dir.mkdir(parents=True, exist_ok=True)
    entry = cache_dir / key
    if entry.is_dir():
        meta = json.loads((entry / "meta.json").read_text())
        s2 = np.load(entry / "s2.npy", mmap_mode="c")
        ps = np.load(entry / "ps.npy", mmap_mode="c")
        logger.info("pairs of %s from the cache %s (%d pairs)", scene_dir, entry, len(s2))
        return s2, ps, meta["info"], True
    _remove_stale(cache_dir)
    s2, ps, info = build()
    try:
        with atomic_path(entry, replace=False) as tmp:
            tmp.mkdir()
            np.save(tmp / "s2.npy", np.ascontiguousarray(s2, dtype=np.float32))
            np.save(tmp / "ps.npy", np.ascontiguousarray(ps, dtype=np.float32))
            (tmp / "meta.json").write_text(json.dumps({"key": desc, "info": info}, indent=1) + "\n")
    except OSError:
        if not entry.is_dir():  # not a concurrent run that finished first
            raise
    logger.info("pairs of %s stored in the cache %s (%d pairs)", scene_dir, entry, len(s2))
    return np.load(entry / "s2.npy", mmap_mode="c"), np.load(entry / "ps.npy", mmap_mode="c"), info, False
