"""The `cropmap classify` command: success output, every user error, overwrite protection."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
from click.testing import CliRunner
from stackkit import (
    CRS,
    HEIGHT,
    TRANSFORM,
    WIDTH,
    polygon_a,
    write_bundle,
    write_polygons,
    write_stack_descriptions,
)

from cropmap.cli import main

REPO = Path(__file__).resolve().parents[2]


def _run(runner: CliRunner, *args: object) -> object:
    return runner.invoke(main, ["classify", *map(str, args)])


def test_cli_classify_writes_outputs(
    runner: CliRunner, stack_desc: Path, polygons: Path, bundle: Path, outdir: Path
) -> None:
    out = outdir / "map.tif"
    res = _run(
        runner,
        stack_desc,
        "--mask",
        polygons,
        "--model",
        bundle,
        "-o",
        out,
        "--confidence",
        "--embedding",
        "--block-size",
        "16",
    )
    assert res.exit_code == 0, res.output
    names = sorted(p.name for p in outdir.iterdir())
    assert names == [
        "map.qml",
        "map.tif",
        "map.tif.aux.xml",
        "map_confidence.tif",
        "map_embedding.tif",
        "map_quicklook.png",
        "map_stac.json",
        "map_summary.json",
    ]
    assert f"map:        {out}" in res.output and "summary:" in res.output and "quick-look:" in res.output
    # A bundle given with --model is no silent default: no "model:" line, no sample note in the summary.
    assert "model:" not in res.output and "sample" not in res.output
    import json

    assert "model_note" not in json.loads((outdir / "map_summary.json").read_text())["inputs"]
    with rasterio.open(out) as ds:
        assert ds.crs.to_string() == CRS and ds.transform == TRANSFORM
        assert (ds.height, ds.width) == (HEIGHT, WIDTH) and ds.nodata == 0 and ds.dtypes[0] == "uint8"


def test_cli_default_output_in_cwd(
    runner: CliRunner,
    stack_desc: Path,
    polygons: Path,
    bundle: Path,
    outdir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(outdir)
    res = _run(runner, stack_desc, "--mask", polygons, "--model", bundle, "--no-quicklook")
    assert res.exit_code == 0, res.output
    assert (outdir / "stack_desc_classified.tif").is_file()
    assert not (outdir / "stack_desc_classified_quicklook.png").exists()


def test_cli_refuses_existing_output(
    runner: CliRunner, stack_desc: Path, polygons: Path, bundle: Path, outdir: Path
) -> None:
    out = outdir / "map.tif"
    assert _run(runner, stack_desc, "--mask", polygons, "--model", bundle, "-o", out).exit_code == 0
    before = {p.name: p.stat().st_mtime_ns for p in outdir.iterdir()}
    res = _run(runner, stack_desc, "--mask", polygons, "--model", bundle, "-o", out)
    assert res.exit_code == 1
    assert "already exists; pass --overwrite" in res.output and "Traceback" not in res.output
    assert {p.name: p.stat().st_mtime_ns for p in outdir.iterdir()} == before
    res = _run(runner, stack_desc, "--mask", polygons, "--model", bundle, "-o", out, "--overwrite")
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in outdir.iterdir()) == sorted(before)


def _corrupt(tmp_path: Path, kind: str, values: np.ndarray) -> Path:
    if kind == "missing":
        return tmp_path / "nope.tif"
    if kind == "garbage":
        p = tmp_path / "garbage.tif"
        p.write_bytes(b"this is not a tiff" * 100)
        return p
    if kind == "truncated":
        full = write_stack_descriptions(tmp_path / "full.tif", values)
        data = full.read_bytes()
        p = tmp_path / "truncated.tif"
        p.write_bytes(data[: len(data) // 2])
        return p
    if kind == "truncated_data":
        # Dates in tags: GDAL writes the directory first, so the header survives the cut but the tiles do not.
        full = tmp_path / "full.tif"
        with rasterio.open(
            full,
            "w",
            driver="GTiff",
            width=WIDTH,
            height=HEIGHT,
            count=12,
            dtype="uint16",
            crs=CRS,
            transform=TRANSFORM,
            nodata=0,
            tiled=True,
            blockxsize=16,
            blockysize=16,
        ) as ds:
            ds.update_tags(
                dates="2021-01-05,2021-02-10,2021-03-01,2021-04-15",
                bands="B02,B03,B04",
                reflectance_scale="10000",
            )
            ds.write(values.reshape(12, HEIGHT, WIDTH))
        data = full.read_bytes()
        p = tmp_path / "truncated.tif"
        p.write_bytes(data[: len(data) // 2])
        return p
    if kind == "png":
        p = tmp_path / "stack.png"
        with rasterio.open(p, "w", driver="PNG", width=8, height=8, count=1, dtype="uint8") as ds:
            ds.write(np.zeros((1, 8, 8), np.uint8))
        return p
    if kind == "nodates":
        p = tmp_path / "nodates.tif"
        with rasterio.open(
            p,
            "w",
            driver="GTiff",
            width=WIDTH,
            height=HEIGHT,
            count=12,
            dtype="uint16",
            crs=CRS,
            transform=TRANSFORM,
            nodata=0,
        ) as ds:
            ds.write(values.reshape(12, HEIGHT, WIDTH))
            ds.update_tags(reflectance_scale="10000")
        return p
    if kind == "nocrs":
        p = tmp_path / "nocrs.tif"
        write_stack_descriptions(p, values, crs=None)
        return p
    if kind == "noscale":
        return write_stack_descriptions(tmp_path / "noscale.tif", values, tags={})
    if kind == "bands":
        return write_stack_descriptions(tmp_path / "bands.tif", values, bands=("B02", "B03", "B08"))
    raise AssertionError(kind)


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("missing", "nope.tif does not exist; expected a GeoTIFF"),
        ("garbage", "is not a readable GeoTIFF"),
        ("truncated", "is not a readable GeoTIFF, or is truncated or corrupt"),
        ("truncated_data", "is truncated: band"),
        ("png", "is a PNG raster; expected a GeoTIFF"),
        ("nodates", "no dates found; expected band descriptions like '2021-03-01_B02'"),
        ("nocrs", "has no CRS; expected a georeferenced GeoTIFF"),
        ("noscale", "does not declare its reflectance scale"),
        ("bands", "has bands ['B02', 'B03', 'B08']; the model needs ['B04', 'B02', 'B03'] (missing ['B04'])"),
    ],
)
def test_cli_stack_errors(
    runner: CliRunner,
    tmp_path: Path,
    polygons: Path,
    bundle: Path,
    outdir: Path,
    values: np.ndarray,
    kind: str,
    message: str,
) -> None:
    stack = _corrupt(tmp_path, kind, values)
    res = _run(runner, stack, "--mask", polygons, "--model", bundle, "-o", outdir / "map.tif")
    assert res.exit_code == 1, res.output
    assert res.output.startswith("Error: ") and message in res.output, res.output
    assert "Traceback" not in res.output
    assert list(outdir.iterdir()) == []


def test_cli_reflectance_scale_option(
    runner: CliRunner,
    tmp_path: Path,
    stack_desc: Path,
    polygons: Path,
    bundle: Path,
    outdir: Path,
    values: np.ndarray,
) -> None:
    noscale = _corrupt(tmp_path, "noscale", values)
    res = _run(
        runner,
        noscale,
        "--mask",
        polygons,
        "--model",
        bundle,
        "-o",
        outdir / "a.tif",
        "--reflectance-scale",
        "10000",
    )
    assert res.exit_code == 0, res.output
    res = _run(
        runner,
        stack_desc,
        "--mask",
        polygons,
        "--model",
        bundle,
        "-o",
        outdir / "b.tif",
        "--reflectance-scale",
        "1",
    )
    assert res.exit_code == 1 and "declares reflectance scale 10000" in res.output
    assert not (outdir / "b.tif").exists()


def _bad_mask(tmp_path: Path, kind: str) -> Path:
    import shapely

    if kind == "missing":
        return tmp_path / "none.gpkg"
    if kind == "garbage":
        p = tmp_path / "garbage.gpkg"
        p.write_bytes(b"\x00not a vector" * 50)
        return p
    if kind == "empty":
        import geopandas as gpd

        p = tmp_path / "empty.gpkg"
        gpd.GeoDataFrame({"id": []}, geometry=gpd.GeoSeries([], crs=CRS)).to_file(
            p, engine="pyogrio", geometry_type="Polygon"
        )
        return p
    if kind == "points":
        return write_polygons(
            tmp_path / "points.gpkg",
            [shapely.Point(600100, 5599900), shapely.LineString([(600000, 5599900), (600100, 5599800)])],
            CRS,
        )
    if kind == "faraway":
        return write_polygons(tmp_path / "far.gpkg", [shapely.box(700000, 5500000, 700100, 5500100)], CRS)
    if kind == "nocrs":
        return write_polygons(tmp_path / "nocrs.gpkg", [polygon_a()], None)
    raise AssertionError(kind)


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("missing", "none.gpkg does not exist; expected a polygon file"),
        ("garbage", "is not a readable vector file"),
        ("empty", "has no features"),
        ("points", "holds no polygons (found 1 LineString, 1 Point)"),
        ("faraway", "overlaps the stack"),
        ("nocrs", "has no CRS; expected a declared CRS"),
    ],
)
def test_cli_mask_errors(
    runner: CliRunner, tmp_path: Path, stack_desc: Path, bundle: Path, outdir: Path, kind: str, message: str
) -> None:
    mask = _bad_mask(tmp_path, kind)
    res = _run(runner, stack_desc, "--mask", mask, "--model", bundle, "-o", outdir / "map.tif")
    assert res.exit_code == 1, res.output
    assert res.output.startswith("Error: ") and message in res.output, res.output
    assert list(outdir.iterdir()) == []


def test_cli_bundle_errors(
    runner: CliRunner,
    tmp_path: Path,
    stack_desc: Path,
    polygons: Path,
    bundle_no_embedding: Path,
    outdir: Path,
) -> None:
    res = _run(runner, stack_desc, "--mask", polygons, "--model", tmp_path / "x.onnx", "-o", outdir / "m.tif")
    assert res.exit_code == 1 and "model bundle" in res.output and "does not exist" in res.output
    plain = write_bundle(tmp_path / "plain.onnx", metadata_json='{"schema_version": 99}')
    res = _run(runner, stack_desc, "--mask", polygons, "--model", plain, "-o", outdir / "m.tif")
    assert res.exit_code == 1 and "schema version is 99" in res.output, res.output
    res = _run(
        runner,
        stack_desc,
        "--mask",
        polygons,
        "--model",
        bundle_no_embedding,
        "-o",
        outdir / "m.tif",
        "--embedding",
    )
    assert res.exit_code == 1 and "has no embedding output" in res.output, res.output
    assert list(outdir.iterdir()) == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--batch-size", "0"], "batch_size is 0; expected a positive integer"),
        (["--block-size", "4"], "block_size is 4 px; expected at least 16"),
        (["--scheduler", "localhost"], "expected an address such as tcp://"),
        (["--reflectance-scale", "-1"], "expected a positive number"),
        (["--workers", "abc"], "'abc' is not a valid integer"),
    ],
)
def test_cli_bad_option_values(
    runner: CliRunner,
    stack_desc: Path,
    polygons: Path,
    bundle: Path,
    outdir: Path,
    args: list[str],
    message: str,
) -> None:
    res = _run(runner, stack_desc, "--mask", polygons, "--model", bundle, "-o", outdir / "m.tif", *args)
    assert res.exit_code == 2, res.output
    assert message in res.output
    assert res.output.split("Invalid value for ", 1)[1].strip("'").startswith(args[0])  # the flag itself
    assert list(outdir.iterdir()) == []


def test_option_errors_name_their_field() -> None:
    """The flag of a bad value comes from the error's ``option``, not from the wording of its message."""
    from cropmap.errors import OptionValueError
    from cropmap.options import ClassifyOptions

    with pytest.raises(OptionValueError) as caught:
        ClassifyOptions(cloud_threshold=2.0)
    assert caught.value.option == "cloud_threshold" and isinstance(caught.value, ValueError)


def test_cli_failure_during_blocks_leaves_nothing(
    runner: CliRunner, tmp_path: Path, polygons: Path, bundle: Path, outdir: Path, values: np.ndarray
) -> None:
    """A file whose tile data is corrupt in the middle fails while reading, and leaves no output or temp."""
    path = write_stack_descriptions(tmp_path / "s.tif", values, compress="deflate")
    with rasterio.open(path) as ds:
        off = int(ds.get_tag_item("BLOCK_OFFSET_1_0", "TIFF", bidx=2))
    data = bytearray(path.read_bytes())
    data[off : off + 64] = b"\xff" * 64
    path.write_bytes(bytes(data))
    res = _run(
        runner, path, "--mask", polygons, "--model", bundle, "-o", outdir / "m.tif", "--block-size", "16"
    )
    assert res.exit_code == 1, res.output
    assert "could not be read" in res.output and "corrupt" in res.output
    assert list(outdir.iterdir()) == []


def test_python_m_cropmap_help() -> None:
    res = subprocess.run(
        [sys.executable, "-m", "cropmap", "classify", "--help"],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=False,
    )
    assert res.returncode == 0, res.stderr
    for flag in (
        "--mask",
        "--model",
        "--confidence",
        "--embedding",
        "--overwrite",
        "--block-size",
        "--batch-size",
        "--workers",
        "--scheduler",
        "--season",
        "--reflectance-scale",
        "--min-valid-steps",
        "--no-quicklook",
        "--verbose",
        "--quiet",
    ):
        assert flag in res.stdout
