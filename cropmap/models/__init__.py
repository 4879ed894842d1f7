"""Model bundles shipped with cropmap."""

from __future__ import annotations

from pathlib import Path

DEFAULT_BUNDLE = Path(__file__).parent / "flanders_sample.onnx"
"""The sample bundle used when no ``--model`` is given (crop types of Flanders, 2021)."""

SAMPLE_NOTE = (
    "the Flanders sample bundle shipped with cropmap (4 coarse crop classes of Flanders, Belgium, season "
    "2020-11 .. 2021-10, trained on 69 parcels): a demonstration, not a map model for other regions or years"
)
"""What a run summary and the console say of the shipped sample bundle (docs/sample-model.md)."""


def is_sample_bundle(path: str | Path) -> bool:
    """Whether ``path`` is the sample bundle shipped with cropmap."""
    return Path(path).expanduser().resolve() == DEFAULT_BUNDLE.resolve()


__all__ = ["DEFAULT_BUNDLE", "SAMPLE_NOTE", "is_sample_bundle"]
