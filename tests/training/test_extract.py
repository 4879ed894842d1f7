"""Labelled series from a real GeoTIFF stack and a real GeoPackage of parcels: values, modes, split, errors, cache."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import rasterio
import shapely
from rasterio.transform import from_origin

from cropmap.contract.clouds import DEFAULT_SCL_INVALID
from cropmap.contract.timegrid import fill_gaps
from training.data.extract import (
    DEFAULT_BUFFER_M,
    DEFAULT_MIN_VALID,
    ExtractError,
    ExtractOptions,
    extract,
    main,
)
from training.data.parcels import load_parcels, time_grid
from training.data.worldcereal import on_time_grid, read_long

HEIGHT, WIDTH, TILE = 23, 37, 16
ORIGIN = (600000.0, 5600000.0)
CRS = "EPSG:32631"
DATES = (
    dt.date(2021, 1, 5),
    dt.date(2021, 2, 10),
    dt.date(2021, 3, 1),
    dt.date(2021, 4, 15),
    dt.date(2021, 5, 20),
)
BANDS = ("B02", "B03", "B04")
NODATA = 0
# Parcels as (row0, col0, row1, col1) pixel edges (end exclusive), (id, crop name, crop code): three classes, two
# parcels each; P3 and P5 cross the 16-px tile edges.
PARCELS = (
    ((1, 1, 8, 9), ("P1", "maize", 201)),
    ((1, 11, 9, 20), ("P2", "wheat", 311)),
    ((12, 2, 22, 12), ("P3", "maize", 201)),
    ((10, 22, 21, 30), ("P4", "grass", 60)),
    ((12, 14, 20, 21), ("P5", "wheat", 311)),
    ((1, 24, 8, 36), ("P6", "grass", 60)),
)


def _box(r0: int, c0: int, r1: int, c1: int) -> shapely.Polygon:
    x0, y0 = ORIGIN
    return shapely.box(x0 + 10 * c0, y0 - 10 * r1, x0 + 10 * c1, y0 - 10 * r0)


def _values(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """uint16 reflectance ``(S, C, rows, cols)`` with nodata holes, and the SCL band ``(S, rows, cols)``."""
    rng = np.random.default_rng(seed)
    vals = rng.integers(200, 6000, size=(len(DATES), len(BANDS), HEIGHT, WIDTH), dtype=np.uint16)
    holes = rng.random((len(DATES), HEIGHT, WIDTH)) < 0.1
    vals[np.broadcast_to(holes[:, None], vals.shape)] = NODATA
    scl = rng.choice(np.array([4, 5, 4, 5, 4, 8, 9, 3], dtype=np.uint16), size=(len(DATES), HEIGHT, WIDTH))
    return vals, scl


def _profile(count: int) -> dict[str, object]:
    return {
        "driver": "GTiff",
        "width": WIDTH,
        "height": HEIGHT,
        "count": count,
        "dtype": "uint16",
        "crs": CRS,
        "transform": from_origin(*ORIGIN, 10.0, 10.0),
        "nodata": NODATA,
        "tiled": True,
        "blockxsize": TILE,
        "blockysize": TILE,
    }


def _write_single(path: Path, vals: np.ndarray, scl: np.ndarray) -> Path:
    full = np.concatenate([vals, scl[:, None]], axis=1)  # (S, C + 1, rows, cols)
    names = (*BANDS, "SCL")
    with rasterio.open(path, "w", **_profile(full.shape[0] * full.shape[1])) as ds:
        ds.write(full.reshape(-1, HEIGHT, WIDTH))
        for t, d in enumerate(DATES):
            for b, name in enumerate(names):
                ds.set_band_description(t * len(names) + b + 1, f"{d.isoformat()}_{name}")
        ds.update_tags(reflectance_scale="10000")
    return path


def _write_folder(folder: Path, vals: np.ndarray, scl: np.ndarray) -> Path:
    folder.mkdir()
    for t, d in enumerate(DATES):
        with rasterio.open(folder / f"S2_{d:%Y%m%d}.tif", "w", **_profile(len(BANDS) + 1)) as ds:
            ds.write(np.concatenate([vals[t], scl[t][None]]))
            ds.descriptions = (*BANDS, "SCL")
            ds.update_tags(reflectance_scale="10000")
    return folder


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """The stack (single file and per-date folder), its values and the parcels (GeoPackage, and one in EPSG:4326)."""
    root = tmp_path_factory.mktemp("extract")
    vals, scl = _values()
    rows = [
        {"pid": pid, "crop": name, "code": code, "geometry": _box(*box)} for box, (pid, name, code) in PARCELS
    ]
    frame = gpd.GeoDataFrame(rows, geometry="geometry", crs=CRS)
    gpkg = root / "parcels.gpkg"
    frame.to_file(gpkg, layer="parcels")
    lonlat = root / "parcels_4326.gpkg"
    frame.to_crs("EPSG:4326").to_file(lonlat)
    return {
        "stack": _write_single(root / "stack.tif", vals, scl),
        "folder": _write_folder(root / "dates", vals, scl),
        "vals": vals,
        "scl": scl,
        "gpkg": gpkg,
        "lonlat": lonlat,
        "root": root,
    }


def _reference(vals: np.ndarray, scl: np.ndarray | None) -> np.ndarray:
    """float32 ``(rows, cols, S, C)``: what the stack holds, NaN at nodata and (with ``scl``) masked SCL classes."""
    x = vals.astype(np.float32)
    x[vals == NODATA] = np.nan
    if scl is not None:
        x[np.broadcast_to(np.isin(scl, DEFAULT_SCL_INVALID)[:, None], x.shape)] = np.nan
    return x.transpose(2, 3, 0, 1)


def _interior(buffer_px: int = 1) -> dict[str, set[tuple[int, int]]]:
    return {
        pid: {
            (r, c)
            for r in range(r0 + buffer_px, r1 - buffer_px)
            for c in range(c0 + buffer_px, c1 - buffer_px)
        }
        for (r0, c0, r1, c1), (pid, _, _) in PARCELS
    }


def _clear(data: dict, pixels: set[tuple[int, int]]) -> set[tuple[int, int]]:
    """The pixels with at least one valid observation (``min_valid=1``)."""
    ok = np.isfinite(_reference(data["vals"], data["scl"])).all(axis=3).any(axis=2)
    return {rc for rc in pixels if ok[rc]}


def _series(path: Path) -> pd.DataFrame:
    return pd.read_parquet(path).sort_values(["sample_id", "timestamp"], kind="stable").reset_index(drop=True)


def _opts(**kw: object) -> ExtractOptions:
    base: dict[str, object] = {"label_column": "crop", "id_column": "pid", "min_valid": 1, "workers": 2}
    return ExtractOptions(**{**base, **kw})  # type: ignore[arg-type]


def test_extract_all_pixels_equal_the_stack_after_clouds_and_gap_fill(data: dict, tmp_path: Path) -> None:
    out = tmp_path / "all.parquet"
    summary = extract(data["stack"], data["gpkg"], out, _opts())
    df = _series(out)
    ref = _reference(data["vals"], data["scl"])
    want = {pid: _clear(data, pixels) for pid, pixels in _interior().items()}
    got = {pid: set(zip(g["row"], g["col"], strict=True)) for pid, g in df.groupby("parcel_id")}
    assert got == want  # every pixel whose centre is inside the 10 m-shrunk parcel, and no other
    n = sum(len(v) for v in want.values())
    assert summary.samples == summary.pixels_kept == n and len(df) == n * len(DATES)
    assert summary.pixels_too_few_valid == sum(len(v) for v in _interior().values()) - n > 0
    x = df[[f"S2-L2A-{b}" for b in BANDS]].to_numpy().reshape(n, len(DATES), len(BANDS))
    rc = df[["row", "col"]].to_numpy()[:: len(DATES)]
    np.testing.assert_array_equal(x, ref[rc[:, 0], rc[:, 1]])  # NaN where nodata or SCL-masked
    assert set(df["class_name"]) == {"maize", "wheat", "grass"}
    assert (df.groupby("class_name")["crop"].nunique() == 1).all()
    # Clouds: the observations the SCL rule masked inside the parcels (kept pixels or not), counted.
    rr, cc = np.array(sorted(set().union(*_interior().values()))).T
    valid = np.isfinite(_reference(data["vals"], None)[rr, cc]).all(axis=2)
    masked = np.isin(data["scl"].transpose(1, 2, 0)[rr, cc], DEFAULT_SCL_INVALID)
    assert summary.observations_cloud_masked == int((valid & masked).sum()) > 0
    # Downstream's gap fill of the file equals inference's fill_gaps of the stack's values at those pixels.
    series = read_long(out, label_column="crop")
    grid = time_grid("01-15,02-15,03-15,04-15,05-15", "01-01", 2021)
    gridded = on_time_grid(series, grid, season=2021, min_valid=1)
    pos = np.array([grid.position_of(d) for d in DATES])
    order = np.argsort(df["sample_id"].to_numpy()[:: len(DATES)], kind="stable")
    filled, _, ok = fill_gaps(ref[rc[order, 0], rc[order, 1]], pos, grid.day_of_season, min_valid=1)
    np.testing.assert_array_equal(gridded.ok, ok)
    np.testing.assert_allclose(gridded.x[ok], filled[ok], rtol=1e-6)
    assert series.parcel_ids is not None and series.class_names == {1: "grass", 2: "maize", 3: "wheat"}


def test_polygons_in_another_crs_and_a_folder_stack_give_the_same_series(data: dict, tmp_path: Path) -> None:
    base = _series(extract(data["stack"], data["gpkg"], tmp_path / "a.parquet", _opts()).output)
    folder = _series(extract(data["folder"], data["gpkg"], tmp_path / "b.parquet", _opts()).output)
    pd.testing.assert_frame_equal(base, folder)
    # Reprojected from longitude/latitude: the box edges move by millimetres, never across a pixel centre.
    lonlat = _series(extract(data["stack"], data["lonlat"], tmp_path / "c.parquet", _opts()).output)
    pd.testing.assert_frame_equal(base, lonlat)


def test_buffer_drops_edge_pixels_and_counts_vanished_polygons(tmp_path: Path, data: dict) -> None:
    gpkg = tmp_path / "p.gpkg"
    rows = [{"pid": pid, "crop": name, "geometry": _box(*box)} for box, (pid, name, _) in PARCELS]
    rows.append(
        {"pid": "thin", "crop": "maize", "geometry": _box(20, 33, 22, 35)}
    )  # 20 m wide: gone under 10 m
    gpd.GeoDataFrame(rows, geometry="geometry", crs=CRS).to_file(gpkg)
    none = extract(data["stack"], gpkg, tmp_path / "b0.parquet", _opts(buffer_m=0.0))
    ten = extract(data["stack"], gpkg, tmp_path / "b10.parquet", _opts())
    assert none.polygons_vanished == 0 and ten.polygons_vanished == 1 and ten.polygons_used == len(PARCELS)
    got0 = {
        pid: set(zip(g["row"], g["col"], strict=True)) for pid, g in _series(none.output).groupby("parcel_id")
    }
    want0 = {**_interior(0), "thin": {(r, c) for r in range(20, 22) for c in range(33, 35)}}
    assert got0 == {p: _clear(data, v) for p, v in want0.items()}
    got10 = {
        pid: set(zip(g["row"], g["col"], strict=True)) for pid, g in _series(ten.output).groupby("parcel_id")
    }
    assert got10 == {
        p: _clear(data, v) for p, v in _interior(1).items()
    }  # the outer ring of each parcel is gone


def test_mean_mode_averages_the_clear_pixels_of_each_date(data: dict, tmp_path: Path) -> None:
    summary = extract(data["stack"], data["gpkg"], tmp_path / "m.parquet", _opts(pixels="mean"))
    df = _series(summary.output)
    assert summary.samples == len(PARCELS) and sorted(df["sample_id"].unique()) == [
        p for _, (p, _, _) in PARCELS
    ]
    ref = _reference(data["vals"], data["scl"])
    for pid, pixels in _interior().items():
        rr, cc = np.array(sorted(pixels)).T
        x = ref[rr, cc]  # (n, S, C)
        clear = np.isfinite(x).all(axis=2)
        want = np.where(clear[:, :, None], x, 0).sum(axis=0) / clear.sum(axis=0)[:, None]
        got = df[df["sample_id"] == pid][[f"S2-L2A-{b}" for b in BANDS]].to_numpy()
        np.testing.assert_allclose(got, want, rtol=1e-6)
        assert set(df[df["sample_id"] == pid]["n_pixels"]) == {len(_clear(data, pixels))}


def test_n_random_pixels_are_seeded_and_independent_of_the_blocks(data: dict, tmp_path: Path) -> None:
    def drawn(name: str, **kw: object) -> dict[str, set[tuple[int, int]]]:
        df = _series(extract(data["stack"], data["gpkg"], tmp_path / name, _opts(pixels="5", **kw)).output)
        return {pid: set(zip(g["row"], g["col"], strict=True)) for pid, g in df.groupby("parcel_id")}

    a = drawn("a.parquet")
    assert all(len(v) == 5 and v <= _interior()[p] for p, v in a.items())
    assert drawn("b.parquet", block_size=8, workers=1) == a  # other blocks, same draw
    assert drawn("c.parquet", seed=1) != a


def test_split_never_puts_a_parcel_on_both_sides(data: dict, tmp_path: Path) -> None:
    out = extract(data["stack"], data["gpkg"], tmp_path / "s.parquet", _opts()).output
    for seed in range(5):
        task = load_parcels(
            out,
            label_column="crop",
            grid="01-15,02-15,03-15,04-15,05-15",
            season_start="01-01",
            min_valid=1,
            top_classes=3,
            split_seed=seed,
        )
        parcel = {sid: sid.rsplit("_", 2)[0] for sid in [*task.ids_train, *task.ids_val]}
        train, val = {parcel[s] for s in task.ids_train}, {parcel[s] for s in task.ids_val}
        assert not train & val and len(train | val) == len(PARCELS)
        assert sorted(c.name for c in task.classes) == ["grass", "maize", "wheat"]
        assert "samples of 6 parcels" in task.description


def test_too_few_valid_observations_are_counted_and_left_out(data: dict, tmp_path: Path) -> None:
    k = 4
    summary = extract(data["stack"], data["gpkg"], tmp_path / "v.parquet", _opts(min_valid=k))
    ref = _reference(data["vals"], data["scl"])
    n_valid = {rc: int(np.isfinite(ref[rc]).all(axis=1).sum()) for p in _interior().values() for rc in p}
    assert summary.pixels_too_few_valid == sum(v < k for v in n_valid.values()) > 0
    kept = set(zip(*_series(summary.output)[["row", "col"]].to_numpy().T, strict=True))
    assert kept == {rc for rc, v in n_valid.items() if v >= k}
    # Without cloud masking the SCL-masked observations are values again: more pixels are kept.
    off = extract(
        data["stack"], data["gpkg"], tmp_path / "off.parquet", _opts(min_valid=k, cloud_band="none")
    )
    assert off.pixels_kept > summary.pixels_kept and off.observations_cloud_masked == 0


def _cli(capsys: pytest.CaptureFixture[str], *argv: object) -> tuple[int, str]:
    rc = main([str(a) for a in argv] + ["--no-progress"])
    return rc, capsys.readouterr().err.strip()


def test_cli_writes_the_file_and_prints_the_summary(data: dict, tmp_path: Path, capsys) -> None:
    out = tmp_path / "o.parquet"
    rc = main(
        [str(data["stack"]), str(data["gpkg"]), "-o", str(out), "--label-column", "code", "--no-progress"]
    )
    printed = capsys.readouterr().out
    assert rc == 0 and out.is_file() and "6 used" in printed and "dropped for too few valid" in printed
    df = pd.read_parquet(out)
    assert (
        set(df["code"]) == {201, 311, 60} and "class_name" not in df.columns
    )  # integer codes kept as they are
    assert set(df["parcel_id"]) == {"0", "1", "2", "3", "4", "5"}  # the row number without --id-column
    assert not list(tmp_path.glob(".*tmp"))
    classes = tmp_path / "classes.csv"
    classes.write_text("match,name\nMaize,cereal\nwheat,cereal\n")
    rc = main(
        [
            str(data["stack"]),
            str(data["gpkg"]),
            "-o",
            str(tmp_path / "m.parquet"),
            "--label-column",
            "crop",
            "--classes",
            str(classes),
            "--no-progress",
        ]
    )
    assert rc == 0 and "2 not in the class map" in capsys.readouterr().out
    assert set(pd.read_parquet(tmp_path / "m.parquet")["class_name"]) == {"cereal"}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--label-column", "kind"], "have no column 'kind'; their columns are ['pid', 'crop', 'code']"),
        (["--label-column", "crop", "--layer", "fields"], "have no layer 'fields'; its layers are parcels"),
        (["--label-column", "crop", "--pixels", "some"], "pixels is 'some'"),
        (["--label-column", "crop", "--min-valid", "9"], "holds 5 dates but a pixel needs 9"),
        (["--label-column", "crop", "--buffer", "80"], "vanish under the 80 m inward buffer"),
        (["--label-column", "crop", "--bands", "B02,B08"], "missing ['B08']"),
    ],
)
def test_cli_bad_input_is_one_line(data: dict, tmp_path: Path, capsys, args: list[str], message: str) -> None:
    out = tmp_path / "o.parquet"
    rc, err = _cli(capsys, data["stack"], data["gpkg"], "-o", out, *args)
    assert rc == 1 and err.startswith("Error: ") and "\n" not in err and message in err, err
    assert not out.exists() and not list(tmp_path.glob(".*tmp"))


def test_cli_bad_option_value_is_a_usage_error(data: dict, tmp_path: Path, capsys) -> None:
    out = tmp_path / "o.parquet"
    rc, err = _cli(
        capsys, data["stack"], data["gpkg"], "-o", out, "--label-column", "crop", "--cloud-classes", "3,x"
    )
    assert rc == 2 and "--cloud-classes" in err and "'3,x' is not comma-separated integers" in err, err
    rc, err = _cli(capsys, data["stack"], data["gpkg"], "-o", out)
    assert rc == 2 and "Missing option '--label-column'" in err, err
    assert not out.exists()


def test_cli_old_spellings_and_the_cropmap_command(data: dict, tmp_path: Path, capsys) -> None:
    """``--out`` (the old spelling) still works; ``cropmap data extract`` is the same command."""
    from click.testing import CliRunner

    from cropmap.cli import main as cropmap_main
    from training.data import cli

    assert (cli.DEFAULT_BUFFER_M, cli.DEFAULT_MIN_VALID) == (DEFAULT_BUFFER_M, DEFAULT_MIN_VALID)
    from cropmap.contract.clouds import DEFAULT_CLOUD_THRESHOLD

    help_text = CliRunner().invoke(cli.extract, ["--help"]).output
    assert f"(default {DEFAULT_CLOUD_THRESHOLD:g})" in " ".join(help_text.split())  # --cloud-threshold's help
    rc, _ = _cli(
        capsys, data["stack"], data["gpkg"], "--out", tmp_path / "a.parquet", "--label-column", "code"
    )
    assert rc == 0 and (tmp_path / "a.parquet").is_file()
    argv = ["data", "extract", str(data["stack"]), str(data["gpkg"]), "-o", str(tmp_path / "a.parquet")]
    res = CliRunner().invoke(cropmap_main, [*argv, "--label-column", "code", "--no-progress"])
    assert res.exit_code == 1 and "Error: output" in res.output and "exists; pass --overwrite" in res.output
    res = CliRunner().invoke(cropmap_main, [*argv, "--label-column", "code", "--no-progress", "--overwrite"])
    assert res.exit_code == 0, res.output
    assert "train on it: cropmap train downstream --task real" in res.output


def test_cli_refuses_no_overlap_existing_output_and_writing_over_an_input(
    data: dict, tmp_path: Path, capsys
) -> None:
    far = tmp_path / "far.gpkg"
    gpd.GeoDataFrame({"crop": ["maize"]}, geometry=[shapely.box(0, 0, 100, 100)], crs=CRS).to_file(far)
    rc, err = _cli(capsys, data["stack"], far, "-o", tmp_path / "o.parquet", "--label-column", "crop")
    assert (
        rc == 1
        and err.startswith("Error: ")
        and "no polygon of" in err
        and "overlaps the stack" in err
        and "\n" not in err
    )
    out = tmp_path / "exists.parquet"
    out.write_bytes(b"keep")
    rc, err = _cli(capsys, data["stack"], data["gpkg"], "-o", out, "--label-column", "crop")
    assert rc == 1 and "exists; pass --overwrite" in err and out.read_bytes() == b"keep"
    rc, err = _cli(
        capsys, data["folder"], data["gpkg"], "-o", data["folder"] / "x.parquet", "--label-column", "crop"
    )
    assert rc == 1 and "lies inside the stack folder" in err and not (data["folder"] / "x.parquet").exists()
    with pytest.raises(ExtractError, match=r"must end in \.parquet"):
        extract(data["stack"], data["gpkg"], tmp_path / "o.csv", _opts())


def _few_parcels() -> dict[str, int]:
    """Config overrides that let downstream keep classes of two parcels (this stack has six parcels)."""
    from training.downstream.run import DownstreamConfig

    fields = {f.name for f in dataclasses.fields(DownstreamConfig)}
    return {"min_class_parcels": 0} if "min_class_parcels" in fields else {}


def test_real_task_from_a_stack_extracts_once_then_reads_the_cache(
    data: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from training.data import extract as extract_module
    from training.downstream.run import DownstreamConfig, load_task

    cfg = DownstreamConfig(
        task="real",
        data=data["folder"],
        labels=data["gpkg"],
        label_column="code",
        id_column="pid",
        grid="01-15,02-15,03-15,04-15,05-15",
        season_start="01-01",
        min_valid=2,
        pixels="mean",
        buffer_m=0.0,
        **_few_parcels(),
    )
    task = load_task(cfg, cache_dir=tmp_path / "cache")
    assert len(task.y_train) + len(task.y_val) == len(PARCELS) and task.class_names == ("60", "201", "311")
    (cached,) = (tmp_path / "cache").iterdir()
    monkeypatch.setattr(extract_module, "extract", lambda *a, **k: pytest.fail("extracted again"))
    again = load_task(cfg, cache_dir=tmp_path / "cache")
    np.testing.assert_array_equal(again.x_train, task.x_train)
    assert list((tmp_path / "cache").iterdir()) == [cached]


@pytest.mark.slow
def test_downstream_reads_the_stack_and_polygons_and_caches_the_extraction(
    data: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    from training.data import extract as extract_module
    from training.downstream import run as downstream

    out = tmp_path / "run"
    argv = [
        "--task",
        "real",
        "--data",
        str(data["stack"]),
        "--labels",
        str(data["gpkg"]),
        "--label-column",
        "crop",
        "--id-column",
        "pid",
        "--grid",
        "01-15,02-15,03-15,04-15,05-15",
        "--season-start",
        "01-01",
        "--families",
        "lstm",
        "--variants",
        "1",
        "--epochs",
        "1",
        "--no-baselines",
        "--out",
        str(out),
        "--no-progress",
        "--recipe",
        "papers",
        "--set",
        "min_valid=2",
        "--set",
        "save_models=false",
        "--set",  # the real task holds out 20 % of the training parcels for model selection: none of 3 here
        "selection_holdout=0",
    ]
    if "trees" in {f.name for f in dataclasses.fields(downstream.DownstreamConfig)}:
        argv += ["--set", "trees=[]"]  # the tree families' tuning is not what this test is about
    argv += [f"--set={k}={v}" for k, v in _few_parcels().items()]
    assert downstream.main(argv) == 0
    (cached,) = (out / "extractions").glob("extract-*.parquet")
    (rec,) = [
        r for r in map(json.loads, (out / "results.jsonl").read_text().splitlines()) if r["family"] == "lstm"
    ]
    assert rec["task"] == "real" and rec["class_names"] == ["grass", "maize", "wheat"]
    stamp = cached.stat().st_mtime_ns

    def no_extraction(*args: object, **kwargs: object) -> None:
        raise AssertionError("the cached extraction should have been used")

    monkeypatch.setattr(extract_module, "extract", no_extraction)
    assert downstream.main(argv) == 0
    assert cached.stat().st_mtime_ns == stamp and len(list((out / "extractions").iterdir())) == 1
    # Another option is another extraction (and changed inputs another key).
    key = extract_module.cache_key(data["stack"], data["gpkg"], _opts(min_valid=2))
    assert key != extract_module.cache_key(data["stack"], data["gpkg"], _opts(min_valid=2, pixels="mean"))
    capsys.readouterr()


def test_stac_item_collection_gives_the_same_series_as_the_folder(data: dict, tmp_path: Path) -> None:
    pystac = pytest.importorskip("pystac")
    import rasterio.shutil

    items = []
    for t, d in enumerate(DATES):
        item = pystac.Item(
            id=f"S2_{d:%Y%m%d}",
            geometry=None,
            bbox=None,
            properties={},
            datetime=dt.datetime(d.year, d.month, d.day, 10, 30, tzinfo=dt.timezone.utc),
        )
        for b, band in enumerate(BANDS):
            plain, href = tmp_path / "plain.tif", f"{d:%Y%m%d}_{band}.tif"
            with rasterio.open(plain, "w", **_profile(1)) as ds:
                ds.write(data["vals"][t, b][None])
            rasterio.shutil.copy(plain, tmp_path / href, driver="COG", BLOCKSIZE=16)
            item.add_asset(
                band,
                pystac.Asset(
                    href=href,
                    media_type=pystac.MediaType.COG,
                    roles=["data"],
                    extra_fields={"raster:bands": [{"scale": 0.0001, "nodata": 0}]},
                ),
            )
        items.append(item)
    stac = tmp_path / "items.json"
    pystac.ItemCollection(items).save_object(dest_href=str(stac))
    opts = _opts(cloud_band="none")
    from_stac = _series(extract(stac, data["gpkg"], tmp_path / "stac.parquet", opts).output)
    from_folder = _series(extract(data["folder"], data["gpkg"], tmp_path / "folder.parquet", opts).output)
    pd.testing.assert_frame_equal(from_stac, from_folder)
