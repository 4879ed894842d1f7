"""The fault suite, part two (docs/faults.md, cases 31-): outputs that are another region's inputs, and
outputs that could otherwise be silently wrong (non-finite logits, masks reprojected as chords or with
degenerate parts, stacks covering too little of the bundle's season, dates the grid never reaches, L1C stacks
under L2A bundles).

Each case runs the real command on real files and asserts the exit status, the one-line message (no
traceback), that nothing is left at the final paths and that the inputs are byte-identical afterwards.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import rasterio
import shapely
from click.testing import CliRunner
from onnx import numpy_helper
from rasterio.transform import from_origin
from stackkit import (
    CRS,
    HEIGHT,
    ORIGIN,
    STACK_BANDS,
    WIDTH,
    base_metadata,
    inside_mask,
    make_values,
    polygon_a,
    polygon_b,
    profile,
    read_json,
    write_bundle,
    write_polygons,
    write_stack_descriptions,
)

from cropmap.cli import main
from cropmap.contract.metadata import TimeGrid

# ---------------------------------------------------------------------------------------------- helpers


def _hashes(paths: Iterable[Path]) -> dict[str, str]:
    out = {}
    for p in paths:
        for f in sorted(p.rglob("*")) if p.is_dir() else [p]:
            if f.is_file():
                out[str(f)] = hashlib.sha256(f.read_bytes()).hexdigest()
    return out


def _one_error_line(text: str, *words: str) -> str:
    """The text is exactly one ``Error: ...`` line (``-q`` keeps warnings out) holding every word."""
    assert "Traceback" not in text, text
    lines = [line for line in text.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), text
    for w in words:
        assert w in lines[0], (w, lines[0])
    return lines[0]


def _invoke(*args: object) -> Any:  # click.testing.Result
    return CliRunner().invoke(main, [str(a) for a in args])


def _classify(stack: Path, mask: Path, bundle: Path, out: Path, *extra: object) -> Any:
    return _invoke(
        "classify", stack, "--mask", mask, "--model", bundle, "-o", out, "--cloud-band", "none", *extra
    )


def _write_stack(
    path: Path,
    dates: Sequence[dt.date],
    bands: Sequence[str] = STACK_BANDS,
    *,
    seed: int = 0,
    tags: dict[str, str] | None = None,
    **kw: Any,
) -> Path:
    """A time-major stack of ``dates`` x ``bands`` without nodata holes (every mask pixel is classified)."""
    rng = np.random.default_rng(seed)
    vals = rng.integers(500, 4000, size=(len(dates) * len(bands), HEIGHT, WIDTH), dtype=np.uint16)
    with rasterio.open(path, "w", **(profile(len(vals)) | kw)) as ds:
        ds.write(vals)
        for t, d in enumerate(dates):
            for b, name in enumerate(bands):
                ds.set_band_description(t * len(bands) + b + 1, f"{d.isoformat()}_{name}")
        ds.update_tags(reflectance_scale="10000", **(tags or {}))
    return path


def _monthly_grid_bundle(path: Path) -> Path:
    """A bundle whose grid is 12 monthly steps of a November - October season."""
    refs = tuple(dt.date(2020 + (m < 11), m, 1) for m in (11, 12, *range(1, 11)))
    grid = TimeGrid(
        season_start="11-01",
        day_of_season=tuple((d - dt.date(2020, 11, 1)).days for d in refs),
        reference_dates=tuple(d.isoformat() for d in refs),
    )
    return write_bundle(path, base_metadata(time_grid=grid))


@pytest.fixture
def small(tmp_path: Path) -> dict[str, Path]:
    d = tmp_path / "in"
    d.mkdir()
    return {
        "stack": write_stack_descriptions(d / "stack.tif", make_values()),
        "mask": write_polygons(d / "cropland.gpkg", [polygon_a(), polygon_b()], CRS),
        "bundle": write_bundle(d / "tiny.onnx"),
    }


# ---------------------------------------------------------------------------------------------- batch: one overlap rule


@pytest.mark.parametrize(
    "case", ["stack", "stack --overwrite", "mask --overwrite", "folder stack --overwrite"]
)
def test_batch_region_output_never_replaces_another_regions_input(
    small: dict[str, Path], tmp_path: Path, case: str
) -> None:
    """Region alpha's input lies where region beta writes; the batch is refused before any region runs."""
    out_dir = tmp_path / "batch"
    (out_dir / "beta").mkdir(parents=True)
    stack, mask = small["stack"], small["mask"]
    if case.startswith("stack"):
        stack = out_dir / "beta" / "beta.tif"  # beta's class map
        stack.write_bytes(small["stack"].read_bytes())
        named = ("output", "beta.tif", "is the stack of region 'alpha'", "never writes over an input")
    elif case.startswith("mask"):
        import geopandas as gpd

        mask = out_dir / "beta" / "beta_summary.json"  # beta's summary, here a GeoJSON mask of alpha
        gpd.read_file(small["mask"]).to_file(mask, driver="GeoJSON")
        named = ("output", "beta_summary.json", "is the mask of region 'alpha'", "never writes over an input")
    else:
        stack = out_dir / "beta"  # a folder stack whose folder is beta's region folder
        values = make_values()
        from stackkit import DATES

        for t, day in enumerate(DATES):
            with rasterio.open(stack / f"S2_{day.isoformat()}.tif", "w", **profile(len(STACK_BANDS))) as ds:
                ds.write(values[t])
                ds.descriptions = STACK_BANDS
                ds.update_tags(reflectance_scale="10000")
        named = ("lies inside the stack of region 'alpha' folder", "choose another output folder (-o)")
    manifest = tmp_path / "regions.csv"
    manifest.write_text(f"name,stack,mask\nalpha,{stack},{mask}\nbeta,{small['stack']},{small['mask']}\n")
    before = _hashes([tmp_path])
    extra = ["--overwrite"] if "--overwrite" in case else []
    res = _invoke(
        "batch",
        manifest,
        "--model",
        small["bundle"],
        "--out-dir",
        out_dir,
        "-q",
        "--cloud-band",
        "none",
        *extra,
    )
    assert res.exit_code == 1, res.output
    _one_error_line(res.output, *named)
    assert _hashes([tmp_path]) == before
    assert sorted(p.name for p in out_dir.iterdir()) == ["beta"]  # no state, no region folder, no lock


def test_batch_without_overlap_still_runs(small: dict[str, Path], tmp_path: Path) -> None:
    """Inputs beside (not at) the region outputs are fine."""
    out_dir = tmp_path / "batch"
    manifest = tmp_path / "regions.csv"
    manifest.write_text(f"name,stack,mask\nalpha,{small['stack']},{small['mask']}\n")
    res = _invoke(
        "batch",
        manifest,
        "--model",
        small["bundle"],
        "--out-dir",
        out_dir,
        "-q",
        "--cloud-band",
        "none",
        "--workers",
        "1",
    )
    assert res.exit_code == 0, res.output
    assert (out_dir / "alpha" / "alpha.tif").is_file()


# ---------------------------------------------------------------------------------------------- non-finite logits


def _poisoned_bundle(path: Path, value: float) -> Path:
    """The test bundle with its logits' bias set to ``value`` (NaN or inf): every logit becomes it."""
    write_bundle(path)
    model = onnx.load(str(path))
    for i, init in enumerate(model.graph.initializer):
        if init.name == "b":
            b = numpy_helper.to_array(init).copy()
            b[:] = value
            model.graph.initializer[i].CopyFrom(numpy_helper.from_array(b.astype(np.float32), "b"))
    onnx.save(model, str(path))
    return path


@pytest.mark.parametrize(("value", "word"), [(float("nan"), "NaN"), (float("inf"), "infinite")])
def test_non_finite_logits_stop_the_run(
    small: dict[str, Path], tmp_path: Path, value: float, word: str
) -> None:
    bundle = _poisoned_bundle(tmp_path / "in" / "poisoned.onnx", value)
    out = tmp_path / "out" / "map.tif"
    before = _hashes([tmp_path / "in"])
    res = _classify(small["stack"], small["mask"], bundle, out, "-q", "--confidence")
    assert res.exit_code == 1
    _one_error_line(
        res.output,
        f"bundle {bundle.resolve()} returned {word} logits for",
        "pixels of a block",
        "nothing was written",
    )
    assert not (tmp_path / "out").exists()
    assert _hashes([tmp_path / "in"]) == before


def test_check_finite_names_the_embedding_too(tmp_path: Path) -> None:
    from cropmap.errors import BundleError
    from cropmap.predict import check_finite

    check_finite(tmp_path / "b.onnx", np.zeros((3, 2), np.float32), np.zeros((3, 4), np.float32))
    check_finite(tmp_path / "b.onnx", np.zeros((0, 2), np.float32))
    emb = np.zeros((3, 4), np.float32)
    emb[1, 2] = np.nan
    with pytest.raises(BundleError, match=r"returned NaN embedding for 1 of 3 pixels"):
        check_finite(tmp_path / "b.onnx", np.zeros((3, 2), np.float32), emb)


# ---------------------------------------------------------------------------------------------- masks


def test_lonlat_mask_follows_the_true_curve_in_utm(tmp_path: Path) -> None:
    """A polygon's 2-degree edge along the parallel 50.5 N: in UTM the parallel is a curve that lies some
    460 m south of the chord between its ends at the central meridian. Every pixel centre south of the
    parallel (inside) is classified and none north of it, to the pixel."""
    from pyproj import Transformer

    to_utm = Transformer.from_crs(4326, 32631, always_xy=True)
    x0, y0 = to_utm.transform(3.0, 50.5)  # the edge, at the zone's central meridian
    origin = (round(x0) - WIDTH * 5.0, round(y0) + HEIGHT * 5.0)
    transform = from_origin(*origin, 10.0, 10.0)
    d = tmp_path / "in"
    d.mkdir()
    from stackkit import DATES

    stack = _write_stack(d / "stack.tif", DATES, transform=transform)
    mask = write_polygons(d / "field.gpkg", [shapely.box(2.0, 50.0, 4.0, 50.5)], "EPSG:4326")
    bundle = write_bundle(d / "tiny.onnx")
    out = tmp_path / "out" / "map.tif"
    res = _classify(stack, mask, bundle, out, "-q")
    assert res.exit_code == 0, res.output
    with rasterio.open(out) as ds:
        classified = ds.read(1) != 0
    cols, rows = np.meshgrid(np.arange(WIDTH) + 0.5, np.arange(HEIGHT) + 0.5)
    xs, ys = origin[0] + cols * 10.0, origin[1] - rows * 10.0
    _lon, lat = Transformer.from_crs(32631, 4326, always_xy=True).transform(xs, ys)
    south = lat < 50.5
    assert 0 < south.sum() < south.size  # the edge crosses the stack
    assert np.array_equal(classified, south)
    summary = read_json(tmp_path / "out" / "map_summary.json")
    assert summary["inputs"]["mask_max_segment_m"] == 100.0 and summary["inputs"]["mask_dropped_parts"] == 0


def test_mask_in_the_stacks_crs_is_not_densified(small: dict[str, Path], tmp_path: Path) -> None:
    res = _classify(small["stack"], small["mask"], small["bundle"], tmp_path / "out" / "map.tif", "-q")
    assert res.exit_code == 0, res.output
    summary = read_json(tmp_path / "out" / "map_summary.json")
    assert summary["inputs"]["mask_max_segment_m"] is None and summary["inputs"]["mask_dropped_parts"] == 0


def _spiked() -> shapely.Polygon:
    """polygon_a with a zero-width spike 100 m east from its east edge, along a row of pixel centres."""
    x0, y0 = ORIGIN
    right, mid = x0 + 253, y0 - 125
    return shapely.Polygon(
        [
            (x0 + 52, y0 - 213),
            (right, y0 - 213),
            (right, mid),
            (right + 100, mid),
            (right, mid),
            (right, y0 - 47),
            (x0 + 52, y0 - 47),
        ]
    )


def _sliver() -> shapely.Polygon:
    """A zero-area polygon: its vertices lie on one line through the middle of the stack's rows."""
    x0, y0 = ORIGIN
    y = y0 - 115
    return shapely.Polygon([(x0 + 5, y), (x0 + 365, y), (x0 + 185, y), (x0 + 5, y)])


def test_degenerate_mask_parts_are_dropped_and_counted(small: dict[str, Path], tmp_path: Path) -> None:
    """The spike and the sliver burn no pixel (they would burn a line each); the summary counts them."""
    mask = write_polygons(tmp_path / "in" / "spiked.gpkg", [_spiked(), _sliver()], CRS)
    before = _hashes([tmp_path / "in"])
    res = _classify(small["stack"], mask, small["bundle"], tmp_path / "out" / "map.tif")
    assert res.exit_code == 0, res.output
    assert "dropped 3 degenerate parts of invalid polygons" in res.output
    ref = tmp_path / "ref"
    clean = write_polygons(tmp_path / "in" / "clean.gpkg", [polygon_a()], CRS)
    assert _classify(small["stack"], clean, small["bundle"], ref / "map.tif", "-q").exit_code == 0
    with rasterio.open(tmp_path / "out" / "map.tif") as a, rasterio.open(ref / "map.tif") as b:
        got, want = a.read(1), b.read(1)
    np.testing.assert_array_equal(got, want)
    assert read_json(tmp_path / "out" / "map_summary.json")["inputs"]["mask_dropped_parts"] == 3
    assert (got != 0).sum() > 0 and not (got[inside_mask([_spiked()]) & ~inside_mask([polygon_a()])]).any()
    assert _hashes([tmp_path / "in"]) == before | _hashes([tmp_path / "in" / "clean.gpkg"])


def test_a_mask_of_only_degenerate_polygons_is_an_error(small: dict[str, Path], tmp_path: Path) -> None:
    mask = write_polygons(tmp_path / "in" / "sliver.gpkg", [_sliver()], CRS)
    res = _classify(small["stack"], mask, small["bundle"], tmp_path / "out" / "map.tif", "-q")
    assert res.exit_code == 1
    _one_error_line(
        res.output, f"mask {mask.resolve()} holds only degenerate polygons (2 parts without area)"
    )
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------------- season coverage


def _months(*pairs: tuple[int, int]) -> list[dt.date]:
    return [dt.date(y, m, 1) for y, m in pairs]


MAY_OCT = _months((2021, 5), (2021, 6), (2021, 7), (2021, 8), (2021, 9), (2021, 10))
NOV_OCT = _months((2020, 11), (2020, 12), *((2021, m) for m in range(1, 11)))


def test_stack_covering_half_the_season_is_refused(small: dict[str, Path], tmp_path: Path) -> None:
    bundle = _monthly_grid_bundle(tmp_path / "in" / "monthly.onnx")
    stack = _write_stack(tmp_path / "in" / "may_oct.tif", MAY_OCT)
    before = _hashes([tmp_path / "in"])
    out = tmp_path / "out" / "map.tif"
    res = _classify(stack, small["mask"], bundle, out, "-q")
    assert res.exit_code == 1
    _one_error_line(
        res.output,
        "the stack's dates of season 2020 (2021-05-01 .. 2021-10-01) cover 7 of the 12 time steps",
        "(season starting 11-01; 58%)",
        "days [0, 30, 61, 92, 120]",
        "pass --allow-partial-season to classify it anyway",
    )
    assert not (tmp_path / "out").exists() and _hashes([tmp_path / "in"]) == before
    res = _classify(stack, small["mask"], bundle, out, "--allow-partial-season")
    assert res.exit_code == 0, res.output
    assert "cover 7 of the 12 time steps" in res.output  # the warning
    cov = read_json(tmp_path / "out" / "map_summary.json")["season"]["coverage"]
    assert cov["share"] == pytest.approx(7 / 12, abs=1e-4) and cov["allowed_partial"] is True
    assert cov["uncovered_days"] == [0, 30, 61, 92, 120] and cov["first_date"] == "2021-05-01"


def test_whole_season_is_recorded_without_a_word(small: dict[str, Path], tmp_path: Path) -> None:
    bundle = _monthly_grid_bundle(tmp_path / "in" / "monthly.onnx")
    stack = _write_stack(tmp_path / "in" / "nov_oct.tif", NOV_OCT)
    res = _classify(stack, small["mask"], bundle, tmp_path / "out" / "map.tif")
    assert res.exit_code == 0, res.output
    assert "time steps" not in res.output and "beyond" not in res.output
    cov = read_json(tmp_path / "out" / "map_summary.json")["season"]["coverage"]
    assert cov["share"] == 1.0 and cov["grid_steps_covered"] == 12 and cov["dates_outside_grid"] == []


def test_mostly_covered_season_warns(small: dict[str, Path], tmp_path: Path) -> None:
    """10 of 12 steps (83 %): classified, with a warning and the coverage in the summary."""
    bundle = _monthly_grid_bundle(tmp_path / "in" / "monthly.onnx")
    stack = _write_stack(tmp_path / "in" / "jan_oct.tif", NOV_OCT[2:])
    res = _classify(stack, small["mask"], bundle, tmp_path / "out" / "map.tif")
    assert res.exit_code == 0, res.output
    assert "cover 11 of the 12 time steps" in res.output and "the map may differ" in res.output
    cov = read_json(tmp_path / "out" / "map_summary.json")["season"]["coverage"]
    assert cov["uncovered_days"] == [0] and cov["allowed_partial"] is False


def test_dates_beyond_the_grid_are_named(small: dict[str, Path], tmp_path: Path) -> None:
    """The test bundle's grid ends on day 100 (11 April); August and September never reach the model."""
    from stackkit import DATES

    dates = [*DATES, dt.date(2021, 8, 1), dt.date(2021, 9, 1)]
    stack = _write_stack(tmp_path / "in" / "long.tif", dates)
    res = _classify(stack, small["mask"], small["bundle"], tmp_path / "out" / "map.tif")
    assert res.exit_code == 0, res.output
    assert "2 dates of stack" in res.output
    assert "time grid (days 10 .. 100 of the season) and are not used: 2021-08-01, 2021-09-01" in res.output
    cov = read_json(tmp_path / "out" / "map_summary.json")["season"]["coverage"]
    assert cov["dates_outside_grid"] == ["2021-08-01", "2021-09-01"] and cov["share"] == 1.0


# ---------------------------------------------------------------------------------------------- L1C under an L2A bundle


@pytest.mark.parametrize("case", ["band B10", "tag", "file name"])
def test_l1c_stack_under_an_l2a_bundle_is_refused(small: dict[str, Path], tmp_path: Path, case: str) -> None:
    from stackkit import DATES

    d = tmp_path / "in"
    if case == "band B10":
        stack = _write_stack(d / "stack13.tif", DATES, (*STACK_BANDS, "B10"))
        evidence = "4 bands including B10 (cirrus, which L2A products drop)"
    elif case == "tag":
        stack = _write_stack(d / "toa.tif", DATES, tags={"PROCESSING_LEVEL": "Level-1C"})
        evidence = "tag PROCESSING_LEVEL=Level-1C"
    else:
        stack = _write_stack(d / "S2B_MSIL1C_20210105_T31UFS.tif", DATES)
        evidence = "file name S2B_MSIL1C_20210105_T31UFS.tif"
    before = _hashes([d])
    out = tmp_path / "out" / "map.tif"
    res = _classify(stack, small["mask"], small["bundle"], out, "-q")
    assert res.exit_code == 1
    _one_error_line(
        res.output,
        "looks like a Sentinel-2 L1C (top-of-atmosphere) product",
        evidence,
        f"bundle {small['bundle']}",
        "pass --allow-l1c to classify it anyway",
    )
    assert not (tmp_path / "out").exists() and _hashes([d]) == before
    res = _classify(stack, small["mask"], small["bundle"], out, "--allow-l1c")
    assert res.exit_code == 0, res.output
    assert "classified anyway: --allow-l1c" in res.output
    assert evidence in read_json(tmp_path / "out" / "map_summary.json")["stack"]["l1c_evidence"]


def test_l1c_stack_under_an_l1c_bundle_runs(small: dict[str, Path], tmp_path: Path) -> None:
    from stackkit import DATES

    meta = base_metadata()
    prov = dataclasses.replace(meta.provenance, training_data="BreizhCrops (L1C) parcels")
    meta = dataclasses.replace(meta, provenance=prov)
    bundle = write_bundle(tmp_path / "in" / "l1c.onnx", meta)
    stack = _write_stack(tmp_path / "in" / "stack13.tif", DATES, (*STACK_BANDS, "B10"))
    res = _classify(stack, small["mask"], bundle, tmp_path / "out" / "map.tif", "-q")
    assert res.exit_code == 0, res.output
    assert read_json(tmp_path / "out" / "map_summary.json")["stack"]["l1c_evidence"] == []


def test_l2a_stacks_show_no_l1c_evidence(small: dict[str, Path]) -> None:
    from cropmap.models import DEFAULT_BUNDLE
    from cropmap.sanity import bundle_is_l1c, l1c_evidence
    from cropmap.stack import open_stack

    sample = Path(__file__).resolve().parents[2] / "sample_data" / "belgium_2021" / "s2_stack.tif"
    assert l1c_evidence(open_stack(small["stack"])) == [] and l1c_evidence(open_stack(sample)) == []
    from cropmap.runtime import load_bundle

    assert not bundle_is_l1c(load_bundle(DEFAULT_BUNDLE).metadata)
