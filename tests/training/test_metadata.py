"""training.metadata is the one place training builds bundle metadata."""

from __future__ import annotations

import ast
from pathlib import Path

from cropmap.contract.metadata import SCHEMA_VERSION, BundleMetadata, ClassInfo, TimeGrid
from training.metadata import bundle_metadata

REPO = Path(__file__).resolve().parents[2]


def _meta(min_valid: int) -> BundleMetadata:
    grid = TimeGrid(
        season_start="11-01",
        day_of_season=(0, 30, 61, 91),
        reference_dates=("2020-11-01", "2020-12-01", "2021-01-01", "2021-01-31"),
    )
    return bundle_metadata(
        model_name="bands_lstm",
        input_name="s2",
        bands=("B02", "B03"),
        time_grid=grid,
        classes=(ClassInfo(1, "wheat", "#aa0000"), ClassInfo(2, "maize", "#00aa00")),
        min_valid_steps=min_valid,
        nodata=0.0,
        embedding=None,
        encoder="none",
        base_model="lstm",
        pretraining="none",
        training_data="test parcels",
        metrics={"val_accuracy": 1},
    )


def test_metadata_round_trips_and_clamps_the_valid_steps() -> None:
    meta = _meta(min_valid=99)
    meta.validate()
    assert (
        meta.schema_version == SCHEMA_VERSION and meta.output_name == "logits" and meta.gap_fill == "linear"
    )
    assert meta.min_valid_steps == 4  # clamped to the grid's length
    assert _meta(min_valid=0).min_valid_steps == 1
    assert meta.provenance.metrics == {"val_accuracy": 1.0}
    assert BundleMetadata.from_json(meta.to_json()) == meta


def test_training_builds_metadata_in_one_place() -> None:
    """No training module but training/metadata.py calls BundleMetadata(...) itself."""
    callers = []
    for path in sorted((REPO / "training").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "BundleMetadata":
                callers.append(str(path.relative_to(REPO)))
    assert callers == ["training/metadata.py"]
