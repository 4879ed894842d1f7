"""The run summary as a typed, versioned record (cropmap/summary.py): written, read back, refused when foreign."""

from __future__ import annotations

import dataclasses
import inspect
import json
import typing
from pathlib import Path

import pytest

import cropmap
from cropmap.errors import SummaryError
from cropmap.options import ClassifyOptions, ClassifyOptionsKw, RegionOptionsKw
from cropmap.summary import SCHEMA_VERSION, RunSummary

TOP_KEYS = [
    "schema_version",
    "cropmap_version",
    "created",
    "inputs",
    "outputs",
    "bundle",
    "postprocessing",
    "grid",
    "stack",
    "season",
    "clouds",
    "pixels",
    "blocks",
    "classes",
    "timings_s",
    "throughput_cropland_px_per_s",
    "executor",
    "runtime",
    "options",
    "removed_outputs",
]
"""The keys of docs/outputs.md's summary table, in the order the file holds them (no parcels, no embedding)."""


@pytest.fixture
def run(stack_desc: Path, polygons: Path, bundle: Path, outdir: Path) -> tuple[RunSummary, Path]:
    out = outdir / "map.tif"
    summary = cropmap.classify(stack_desc, polygons, model=bundle, out=out, confidence=True, quicklook=False)
    return summary, out.with_name("map_summary.json")


def test_classify_returns_the_record_it_writes(run: tuple[RunSummary, Path]) -> None:
    summary, path = run
    assert isinstance(summary, RunSummary)
    text = path.read_text(encoding="utf-8")
    assert text == summary.to_json()
    doc = json.loads(text)
    assert list(doc) == TOP_KEYS
    assert doc["schema_version"] == SCHEMA_VERSION == 1
    assert RunSummary.read(path) == summary
    assert summary.pixels.classified == doc["pixels"]["classified"] > 0
    assert summary.outputs.confidence == doc["outputs"]["confidence"]
    assert "parcels" not in doc["outputs"] and doc["outputs"]["quicklook"] is None
    assert summary.clouds.masking == "no cloud information"
    assert list(doc["clouds"]) == ["masking", "band", "masked_observations", "note"]
    assert summary.area_ha() == {c["code"]: c["area_ha"] for c in doc["classes"]}


def test_the_stac_item_reads_the_summary(run: tuple[RunSummary, Path]) -> None:
    summary, path = run
    item = json.loads(path.with_name("map_stac.json").read_text(encoding="utf-8"))
    props = item["properties"]
    assert props["created"] == summary.created
    assert props["cropmap:season"] == summary.season.year
    assert props["cropmap:pixel_area_m2"] == summary.grid.pixel_area_m2
    assert props["proj:shape"] == [summary.grid.height, summary.grid.width]
    assert props["start_datetime"][:10] == min(summary.season.dates_used)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.update(schema_version=2), "has schema_version 2; expected schema_version 1"),
        (lambda d: d.pop("schema_version"), "has no schema_version; expected schema_version 1"),
        (lambda d: d["pixels"].pop("classified"), r"summary .*\.pixels has no key 'classified'"),
        (lambda d: d["grid"].update(extra=1), r"\.grid has unknown keys \['extra'\]"),
        (lambda d: d.update(classes={}), r"\.classes is dict; expected a JSON array"),
    ],
)
def test_a_foreign_summary_is_refused_in_one_line(
    run: tuple[RunSummary, Path], tmp_path: Path, change: typing.Any, message: str
) -> None:
    _, path = run
    doc = json.loads(path.read_text(encoding="utf-8"))
    change(doc)
    bad = tmp_path / "bad_summary.json"
    bad.write_text(json.dumps(doc), encoding="utf-8")
    with pytest.raises(SummaryError, match=message) as info:
        RunSummary.read(bad)
    assert "\n" not in str(info.value) and str(bad) in str(info.value)


def test_a_summary_that_is_not_json_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "x_summary.json"
    bad.write_text("{not json", encoding="utf-8")
    with pytest.raises(SummaryError, match=r"is not JSON .*expected the file classify writes"):
        RunSummary.read(bad)


def test_option_keywords_are_the_options_fields() -> None:
    """ClassifyOptionsKw (the typed **option_kw of the API) lists every ClassifyOptions field with its type."""
    resolved = typing.get_type_hints(ClassifyOptions)
    assert set(resolved) == {f.name for f in dataclasses.fields(ClassifyOptions)}
    assert typing.get_type_hints(ClassifyOptionsKw) == resolved
    batch_set = {"workers", "scheduler", "threads"}  # classify_many's own parameters
    assert typing.get_type_hints(RegionOptionsKw) == {k: v for k, v in resolved.items() if k not in batch_set}


@pytest.mark.parametrize(
    "name", ["classify", "classify_array", "classify_many", "classify_parcels", "write_class_map"]
)
def test_public_functions_show_their_signatures(name: str) -> None:
    """No public function of cropmap hides its parameters behind ``**kwargs: Any``."""
    sig = inspect.signature(getattr(cropmap, name))
    for p in sig.parameters.values():
        assert p.annotation is not inspect.Parameter.empty, f"{name}({p.name}) has no type"
        if p.kind is inspect.Parameter.VAR_KEYWORD:  # the options, as typed keywords
            expected = "Unpack[RegionOptionsKw]" if name == "classify_many" else "Unpack[ClassifyOptionsKw]"
            assert p.annotation == expected, f"{name}(**{p.name}: {p.annotation})"
    assert sig.return_annotation is not inspect.Signature.empty
