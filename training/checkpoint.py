"""Checkpoints: one ``torch.save`` dictionary that holds everything needed to rebuild a model.

Every payload has a ``kind``. Common keys (``model_name``, ``model_config``, ``state_dict``,
``norm_stats``, ``config``, ``git_sha``) mean the same thing in every kind:

* ``model_name``: the builder/registry name (``"resmlp"``, ``"timewise"``, ``"lstm"``, ...).
* ``model_config``: dict of the builder's keyword arguments; ``builder(**model_config)`` rebuilds it.
* ``state_dict``: the model's ``state_dict()``.
* ``norm_stats``: ``{"mean": [...], "std": [...]}``, one value per input feature, computed on raw
  digital numbers (reflectance x 10000).
* ``config``: the resolved run configuration (plain dict, see :func:`training.config.config_to_dict`).
* ``git_sha``: the source revision (``"unknown"`` only outside a git checkout; ``git_dirty`` says whether
  the working tree had uncommitted changes).

Kinds written by cropmap's pre-training: ``"encoder"`` (a frozen S2 encoder, read by
:func:`training.models.encoder.load_frozen_encoder`) and ``"pretrain_state"`` (everything needed to
resume pre-training exactly: models, optimizer, epoch, RNG states). Other kinds only need ``kind``
and ``state_dict``.

Files are written atomically (:func:`cropmap.safeio.atomic.atomic_file`: a temporary file in the same folder,
flushed, then renamed); a crash never leaves a half-written checkpoint at the final path.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import pickle
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from cropmap.errors import CropmapError
from cropmap.safeio.atomic import atomic_file

logger = logging.getLogger(__name__)

CHECKPOINT_FORMAT = 2
"""Version of the payload layout; bumped when keys change meaning.

Format 2: ResMLP ``n_layers`` counts Linear layers (the papers' 8-layer encoder is 4 residual
blocks); format 1 counted residual blocks, so its ``model_config`` would rebuild a different network.
"""

REQUIRED_KEYS: dict[str, tuple[str, ...]] = {
    "encoder": ("model_name", "model_config", "state_dict", "norm_stats"),
    "pretrain_state": (
        "model_name",
        "model_config",
        "state_dict",
        "norm_stats",
        "optimizer",
        "epoch",
        "config",
    ),
}
"""Keys each known kind must carry besides ``kind`` and ``state_dict``."""


class CheckpointError(CropmapError, ValueError):
    """A checkpoint file or payload that is not what the caller expects."""


def git_revision(repo_dir: str | Path | None = None) -> str:
    """The commit hash of the checkout holding this package (or ``repo_dir``).

    Args:
        repo_dir: Folder inside the git work tree; defaults to this file's folder.

    Returns:
        The full 40-character hash, or ``"unknown"`` when the folder is not in a git work tree
        or git is not installed.
    """
    cwd = Path(repo_dir) if repo_dir is not None else Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, check=False, timeout=10
        )
    except (FileNotFoundError, subprocess.TimeoutExpired):
        logger.warning("git is not available; checkpoint revision recorded as 'unknown'")
        return "unknown"
    if out.returncode != 0:
        logger.warning("%s is not in a git work tree; checkpoint revision recorded as 'unknown'", cwd)
        return "unknown"
    return out.stdout.strip()


def git_dirty(repo_dir: str | Path | None = None) -> bool | None:
    """Whether the work tree has uncommitted changes to tracked files (``None`` outside git)."""
    cwd = Path(repo_dir) if repo_dir is not None else Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd,
            capture_output=True,
            text=True,
            check=False,
            timeout=10,
        )
    except (FileNotFoundError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    return bool(out.stdout.strip())


def validate_norm_stats(norm_stats: Any, n_features: int | None = None) -> dict[str, list[float]]:
    """Check a ``{"mean": [...], "std": [...]}`` mapping and return it as plain float lists.

    Args:
        norm_stats: The mapping to check (lists, tuples, numpy arrays or tensors).
        n_features: Expected length, if known.

    Returns:
        ``{"mean": list[float], "std": list[float]}``.

    Raises:
        CheckpointError: On missing keys, length mismatch, non-finite values or non-positive std.
    """
    if not isinstance(norm_stats, Mapping) or set(norm_stats) != {"mean", "std"}:
        found = sorted(norm_stats) if isinstance(norm_stats, Mapping) else type(norm_stats).__name__
        raise CheckpointError(f"norm_stats must be a mapping with exactly 'mean' and 'std', found {found}")
    mean = [float(v) for v in _flat(norm_stats["mean"])]
    std = [float(v) for v in _flat(norm_stats["std"])]
    if len(mean) != len(std):
        raise CheckpointError(f"norm_stats: {len(mean)} means but {len(std)} stds")
    if n_features is not None and len(mean) != n_features:
        raise CheckpointError(f"norm_stats has {len(mean)} features, the model expects {n_features}")
    if not all(math.isfinite(v) for v in mean + std):
        raise CheckpointError("norm_stats contains non-finite values")
    if not all(v > 0 for v in std):
        raise CheckpointError(f"norm_stats std must be > 0 for every feature, found {std}")
    return {"mean": mean, "std": std}


def _flat(values: Any) -> list[Any]:
    if isinstance(values, torch.Tensor):
        return values.detach().cpu().reshape(-1).tolist()
    if hasattr(values, "tolist"):
        out = values.tolist()
        return out if isinstance(out, list) else [out]
    return list(values)


def save_checkpoint(path: str | Path, payload: Mapping[str, Any] | None = None, /, **fields: Any) -> Path:
    """Write a checkpoint atomically.

    Args:
        path: Destination file (parent folders are created).
        payload: The payload dictionary; keyword ``fields`` are merged on top of it, so both
            ``save_checkpoint(p, {"kind": ...})`` and ``save_checkpoint(p, kind=...)`` work.
        **fields: Extra payload keys.

    Returns:
        The path written.

    Raises:
        CheckpointError: If ``kind`` is missing or a known kind lacks required keys.
    """
    data: dict[str, Any] = dict(payload or {})
    data.update(fields)
    _check_payload(data, source="payload")
    if "norm_stats" in data and data["norm_stats"] is not None:
        data["norm_stats"] = validate_norm_stats(data["norm_stats"])
    if "git_sha" not in data:
        data["git_sha"] = git_revision()
        data.setdefault("git_dirty", git_dirty())
    data.setdefault("format", CHECKPOINT_FORMAT)
    data.setdefault("created_utc", dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"))
    data.setdefault("torch_version", str(torch.__version__))

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path, "wb") as fh:
        torch.save(data, fh)
    logger.info("saved %s checkpoint to %s", data["kind"], path)
    return path


def load_checkpoint(
    path: str | Path, *, kind: str | None = None, map_location: str | torch.device = "cpu"
) -> dict:
    """Read a checkpoint written by :func:`save_checkpoint`.

    Args:
        path: The checkpoint file.
        kind: If given, the payload's ``kind`` must equal it.
        map_location: Device the tensors are loaded onto.

    Returns:
        The payload dictionary.

    Raises:
        FileNotFoundError: If ``path`` does not exist.
        CheckpointError: If the file is not a cropmap checkpoint, has another format version or the wrong kind.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    # weights_only: checkpoints hold tensors and plain Python values only, so untrusted files cannot
    # execute code on load.
    try:
        data = torch.load(path, map_location=map_location, weights_only=True)
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError) as err:
        raise CheckpointError(f"{str(path)!r} is not a readable checkpoint: {err}") from err
    if not isinstance(data, dict):
        raise CheckpointError(f"{str(path)!r} holds a {type(data).__name__}, expected a checkpoint dict")
    _check_payload(data, source=repr(str(path)))
    found = data.get("format")
    if found != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"{str(path)!r} has checkpoint format {found!r}; this version reads format {CHECKPOINT_FORMAT} "
            "(format 1 counted ResMLP residual blocks as n_layers): retrain it with this version"
        )
    if kind is not None and data["kind"] != kind:
        raise CheckpointError(f"{str(path)!r} is a {data['kind']!r} checkpoint, expected kind {kind!r}")
    return data


def _check_payload(data: Mapping[str, Any], *, source: str) -> None:
    if "kind" not in data or not isinstance(data["kind"], str):
        raise CheckpointError(f"{source} has no 'kind' string (found keys {sorted(data)})")
    needed = ("state_dict", *REQUIRED_KEYS.get(data["kind"], ()))
    missing = [k for k in needed if k not in data]
    if missing:
        raise CheckpointError(
            f"{source}: a {data['kind']!r} checkpoint needs keys {missing} (found {sorted(data)})"
        )
