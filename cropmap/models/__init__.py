"""Model bundles shipped with cropmap."""

from __future__ import annotations

from pathlib import Path

DEFAULT_BUNDLE = Path(__file__).parent / "flanders_sample.onnx"
"""The sample bundle used when no ``--model`` is given (crop types of Flanders, 2021)."""

__all__ = ["DEFAULT_BUNDLE"]
