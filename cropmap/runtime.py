"""Checks of the ONNX Runtime installation."""

from __future__ import annotations

from importlib import metadata

from cropmap.errors import RuntimeSetupError


def check_onnxruntime_install() -> None:
    """Refuse to run when both ``onnxruntime`` and ``onnxruntime-gpu`` are installed.

    Both distributions install the same ``onnxruntime/`` package, so whichever was
    installed last silently overwrote part of the other; pip does not notice.

    Raises:
        RuntimeSetupError: If both distributions are installed.
    """
    found = []
    for dist in ("onnxruntime", "onnxruntime-gpu"):
        try:
            found.append(f"{dist}=={metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            continue
    if len(found) > 1:
        raise RuntimeSetupError(
            f"both {' and '.join(found)} are installed; they overwrite each other's files. "
            "Keep one: `pip uninstall -y onnxruntime onnxruntime-gpu && pip install onnxruntime-gpu` "
            "(GPU) or `... && pip install onnxruntime` (CPU)"
        )
