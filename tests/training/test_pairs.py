"""Tests for training.data.pairs: pairs from an S2 stack and real-shaped second-modality scenes (GeoTIFFs written here)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import shapely
from affine import Affine
from rasterio.crs import CRS
from rasterio.warp import Resampling, calculate_default_transform, reproject

from training.data.datasets import _invalid, fill_linear, pointwise_pairs, timewise_pairs
from training.data.denethor import read_scene
from training.data.pairs import NpyAppender, PairConfig, build_pairs, main
from training.data.scenes import PS_BANDS, SUPERDOVE_BANDS, UDM2_BANDS
from training.simulate.ps_scenes import SCENES_DIR

REPO = Path(__file__).resolve().parents[2]
CRS33 = CRS.from_epsg(32633)
S2_LEFT, S2_TOP = 500_000.0, 5_000_080.0
S2_T = Affine(10.0, 0.0, S2_LEFT, 0.0, -10.0, S2_TOP)
PS_T = Affine(3.0, 0.0, S2_LEFT, 0.0, -3.0, S2_TOP)
DATES = ("2021-06-01", "2021-06-06")
BANDS4 = ("B02", "B03", "B04", "B08")
SIZE = 8  # S2 px per side
PS_SIZE = 30  # 3 m px per side: covers the 80 m stack with the last 3 x 3 windows (rows 23..25) inside
CFG = PairConfig(s2_bands=BANDS4, block_px=5)  # blocks of 5 px: block edges inside the stack are exercised


def _s2_stack(path: Path, clp: np.ndarray | None = None) -> Path:
    """8 x 8 px, two dates, B02 B03 B04 B08 + CLP (x 255), time-major descriptions, reflectance scale 10000."""
    names = (*BANDS4, "CLP")
    data = np.zeros((len(DATES), len(names), SIZE, SIZE), dtype=np.uint16)
    rr, cc = np.mgrid[0:SIZE, 0:SIZE]
    for t in range(len(DATES)):
        for b in range(len(BANDS4)):
            data[t, b] = 1000 + 100 * t + 10 * b + rr * SIZE + cc
    if clp is not None:
        data[:, -1] = clp
    profile = {
        "driver": "GTiff",
        "dtype": "uint16",
        "count": data.shape[0] * data.shape[1],
        "height": SIZE,
        "width": SIZE,
        "crs": CRS33,
        "transform": S2_T,
        "nodata": 0,
    }
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data.reshape(-1, SIZE, SIZE))
        dst.descriptions = tuple(f"{d}_{n}" for d in DATES for n in names)
        dst.update_tags(reflectance_scale="10000")
    return path


def _ps_full(seed: int = 0, bands: int = 4) -> np.ndarray:
    """(bands, 30, 30) uint16 values, distinct per pixel and band, never 0."""
    rng = np.random.default_rng(seed)
    return rng.integers(1, 60_000, size=(bands, PS_SIZE, PS_SIZE), dtype=np.uint16)


def _tif(
    path: Path,
    data: np.ndarray,
    transform: Affine,
    crs: CRS | None = CRS33,
    names: tuple[str, ...] | None = PS_BANDS,
    nodata: float | None = 0,
) -> Path:
    profile = {
        "driver": "GTiff",
        "dtype": data.dtype.name,
        "count": data.shape[0],
        "height": data.shape[1],
        "width": data.shape[2],
        "transform": transform,
        "nodata": nodata,
    }
    if crs is not None:
        profile["crs"] = crs
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
        if names is not None:
            dst.descriptions = names
    return path


def _udm2(path: Path, clear: np.ndarray, transform: Affine, crs: CRS = CRS33) -> Path:
    data = np.zeros((8, *clear.shape), dtype=np.uint8)
    data[0] = clear
    data[5] = ~clear.astype(bool)
    return _tif(path, data, transform, crs, UDM2_BANDS, None)


def _expected_ps(full: np.ndarray, rows: np.ndarray, cols: np.ndarray, k: int = 3) -> np.ndarray:
    """The k x k windows the pairing must give for S2 (row, col), read by hand from the 3 m array."""
    out = []
    for r, c in zip(rows, cols, strict=True):
        pr, pc = int(np.floor(r * 10 / 3 + 1e-6)), int(np.floor(c * 10 / 3 + 1e-6))
        out.append(np.moveaxis(full[:, pr : pr + k, pc : pc + k], 0, -1).ravel())
    return np.asarray(out, dtype=np.float32)


def _scenes(folder: Path, full: np.ndarray, dates: tuple[str, ...] = DATES) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for d in dates:
        stamp = d.replace("-", "")
        _tif(folder / f"{stamp}_100000_1_3B_AnalyticMS_SR.tif", full, PS_T)
        _udm2(folder / f"{stamp}_100000_1_3B_udm2.tif", np.ones(full.shape[1:], dtype=np.uint8), PS_T)
    return folder


def _load(out: Path, alignment: str = "point") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return tuple(np.load(out / alignment / f"{n}.npy") for n in ("s2", "ps", "index"))  # type: ignore[return-value]


def test_pairs_equal_denethor_reader_on_simulated_scenes(sim_scene_dir: Path, tmp_path: Path) -> None:
    """The pairs from the simulator's real-shaped scenes equal those of the aligned DENETHOR layout, exactly."""
    root = sim_scene_dir / "scene_a"
    scenes = root / SCENES_DIR
    crss = set()
    for f in sorted(scenes.glob("*_AnalyticMS_SR.tif")):
        with rasterio.open(f) as src:
            crss.add(src.crs.to_epsg())
            assert src.descriptions == PS_BANDS
    assert crss == {25833, 25832}  # half of the days' second scene lies in another UTM zone
    out = tmp_path / "pairs"
    summary = build_pairs(
        root / "s2_stack.tif", [scenes], out, PairConfig(polygons=str(root / "fields.gpkg")), progress=False
    )
    scene = read_scene(root)
    s2, ps, index = pointwise_pairs(scene, scene.field_ids, n_per_stamp=10**9, return_index=True)
    m2, mp, mi = _load(out)
    o1, o2 = np.lexsort(index.T[::-1]), np.lexsort(mi.T[::-1])
    np.testing.assert_array_equal(index[o1], mi[o2])  # the same (stamp, row, col), every one of them
    assert np.abs(s2[o1] - m2[o2]).max() == 0 and np.abs(ps[o1] - mp[o2]).max() == 0
    assert summary.point_pairs == len(index) > 1000
    assert summary.dropped["s2 cloud"] > 0 and summary.dropped["second-modality mask"] == 0

    t2, tp, tix = timewise_pairs(scene, scene.field_ids, n_pixels=10**9, return_index=True)
    n2, nps, nix = _load(out, "time")
    o1, o2 = np.lexsort(tix.T[::-1]), np.lexsort(nix.T[::-1])
    np.testing.assert_array_equal(tix[o1], nix[o2])
    cloud = np.moveaxis(scene.cloud_probability()[:, tix[:, 0], tix[:, 1]], 0, 1)
    invalid = _invalid(t2, cloud, 0.4)
    days = np.array([(d - scene.dates[0]).days for d in scene.dates], dtype=np.float64)
    filled, _ = fill_linear(
        t2, invalid, days
    )  # training.data.pairs fills masked observations as inference does
    assert np.abs(filled[o1] - n2[o2]).max() == 0 and np.abs(tp[o1] - nps[o2]).max() == 0
    np.testing.assert_array_equal(~invalid[o1], np.load(out / "time" / "s2_valid.npy")[o2])
    assert np.load(out / "time" / "ps_valid.npy").all()
    manifest = json.loads((out / "pairs.json").read_text())
    assert manifest["counts"]["point_pairs"] == len(index) and manifest["counts"]["time_series"] == len(tix)


def test_pairs_aligned_scene_gives_the_windows_by_hand(tmp_path: Path) -> None:
    clp = np.zeros((SIZE, SIZE), dtype=np.uint16)
    clp[2, 3] = 200  # 200 / 255 > 0.4: cloudy at both dates
    stack = _s2_stack(tmp_path / "s2.tif", clp)
    full = _ps_full()
    summary = build_pairs(stack, [_scenes(tmp_path / "ps", full)], tmp_path / "out", CFG, progress=False)
    s2, ps, index = _load(tmp_path / "out")
    assert len(index) == 2 * (SIZE * SIZE - 1) and summary.dropped["s2 cloud"] == 2
    assert not ((index[:, 1] == 2) & (index[:, 2] == 3)).any()
    np.testing.assert_array_equal(ps, _expected_ps(full, index[:, 1], index[:, 2]))
    np.testing.assert_array_equal(s2[:, 0], 1000 + 100 * index[:, 0] + index[:, 1] * SIZE + index[:, 2])
    assert ps.dtype == np.float32 and ps.shape[1] == 36


def test_pairs_reprojects_a_scene_in_another_crs(tmp_path: Path) -> None:
    """A scene delivered in another UTM zone (and origin) is warped back onto the S2 grid, never assumed aligned."""
    stack = _s2_stack(tmp_path / "s2.tif")
    full = _ps_full(1)
    build_pairs(stack, [_scenes(tmp_path / "ps", full)], tmp_path / "same", CFG, progress=False)
    other = CRS.from_epsg(32632)
    bounds = rasterio.transform.array_bounds(PS_SIZE, PS_SIZE, PS_T)
    t2, w2, h2 = calculate_default_transform(CRS33, other, PS_SIZE, PS_SIZE, *bounds, resolution=1.0)
    warped = np.zeros((4, h2, w2), dtype=np.uint16)
    reproject(
        full,
        warped,
        src_transform=PS_T,
        src_crs=CRS33,
        src_nodata=0,
        dst_transform=t2,
        dst_crs=other,
        dst_nodata=0,
        resampling=Resampling.nearest,
    )
    folder = tmp_path / "ps_other"
    folder.mkdir()
    for d in DATES:
        stamp = d.replace("-", "")
        _tif(folder / f"{stamp}_1_3B_AnalyticMS_SR.tif", warped, t2, other)
        _udm2(folder / f"{stamp}_1_3B_udm2.tif", (warped[0] > 0).astype(np.uint8), t2, other)
    build_pairs(stack, [folder], tmp_path / "other", CFG, progress=False)
    a, b = _load(tmp_path / "same"), _load(tmp_path / "other")
    np.testing.assert_array_equal(a[2], b[2])
    assert (
        np.abs(a[1] - b[1]).max() == 0
    )  # 1 m warp: every 3 m centre maps back to a pixel of its own 3 m pixel
    manifest = json.loads((tmp_path / "other" / "pairs.json").read_text())
    assert {s["crs"] for s in manifest["provenance"]["scenes"]} == {"EPSG:32632"}


def test_pairs_mosaic_two_scenes_of_one_day_and_udm2(tmp_path: Path) -> None:
    """Two overlapping scenes of a day, each with its own origin, make one mosaic; UDM2-masked pixels are filled
    from the other scene, and where no scene is clear the pair is dropped as masked."""
    stack = _s2_stack(tmp_path / "s2.tif")
    full = _ps_full(2)
    folder = tmp_path / "ps"
    folder.mkdir()
    for d in DATES:
        stamp = d.replace("-", "")
        west, east = full[:, :, :18], full[:, :, 12:]
        _tif(folder / f"{stamp}_100000_1_3B_AnalyticMS_SR.tif", west, PS_T)
        clear = np.ones(west.shape[1:], dtype=np.uint8)
        clear[0:9, 12:18] = 0  # cloud in scene 1 over the overlap: scene 2 is clear there
        _udm2(folder / f"{stamp}_100000_1_3B_udm2.tif", clear, PS_T)
        t_east = PS_T @ Affine.translation(12, 0)
        _tif(folder / f"{stamp}_100010_2_3B_AnalyticMS_SR.tif", east, t_east)
        clear2 = np.ones(east.shape[1:], dtype=np.uint8)
        clear2[20:30, 0:6] = 0  # cloud in scene 2 over the overlap: scene 1 is clear there
        if d == DATES[1]:
            clear2[0:3, 10:18] = 0  # a cloud only scene 2 sees
        _udm2(folder / f"{stamp}_100010_2_3B_udm2.tif", clear2, t_east)
    summary = build_pairs(stack, [folder], tmp_path / "out", CFG, progress=False)
    _s2, ps, index = _load(tmp_path / "out")
    np.testing.assert_array_equal(ps, _expected_ps(full, index[:, 1], index[:, 2]))
    # S2 rows 0 (PS rows 0..2) at cols whose window touches PS cols 22..29 are masked on the second date.
    masked = {(1, 0, c) for c in range(SIZE) if int(np.floor(c * 10 / 3 + 1e-6)) + 2 >= 22}
    assert summary.dropped["second-modality mask"] == len(masked)
    assert len(index) == 2 * SIZE * SIZE - len(masked)
    assert not {tuple(i) for i in index.tolist()} & masked


def test_pairs_superdove_bands_by_name(tmp_path: Path) -> None:
    """8-band SuperDove scenes give blue, green, red, nir by their descriptions, not bands 1-4."""
    stack = _s2_stack(tmp_path / "s2.tif")
    full8 = _ps_full(3, bands=8)
    folder = tmp_path / "ps"
    folder.mkdir()
    for d in DATES:
        stamp = d.replace("-", "")
        _tif(folder / f"{stamp}_1_3B_AnalyticMS_SR_8b.tif", full8, PS_T, names=SUPERDOVE_BANDS)
        _udm2(folder / f"{stamp}_1_3B_udm2.tif", np.ones((PS_SIZE, PS_SIZE), dtype=np.uint8), PS_T)
    build_pairs(stack, [folder], tmp_path / "out", CFG, progress=False)
    _, ps, index = _load(tmp_path / "out")
    want = full8[[SUPERDOVE_BANDS.index(b) for b in PS_BANDS]]
    np.testing.assert_array_equal(ps, _expected_ps(want, index[:, 1], index[:, 2]))


def test_pairs_s1_like_second_modality_k1(tmp_path: Path) -> None:
    """Sentinel-1 VV/VH at 10 m, float dB, no usable-data mask, another origin: k = 1 pairs pixel with pixel."""
    stack = _s2_stack(tmp_path / "s2.tif")
    rng = np.random.default_rng(4)
    s1 = rng.normal(-12, 3, size=(2, SIZE + 2, SIZE + 2)).astype(np.float32)
    t1 = S2_T @ Affine.translation(-1, -2)  # one column left, two rows above the stack's origin
    folder = tmp_path / "s1"
    folder.mkdir()
    for d in DATES:
        _tif(
            folder / f"S1A_IW_{d.replace('-', '')}T052000_VV_VH.tif", s1, t1, names=("VV", "VH"), nodata=None
        )
    cfg = PairConfig(s2_bands=BANDS4, second_bands=("VV", "VH"), k=1, second_res_m=10.0, mask_band="none")
    build_pairs(stack, [folder], tmp_path / "out", cfg, progress=False)
    _, ps, index = _load(tmp_path / "out")
    assert ps.shape == (2 * SIZE * SIZE, 2)
    np.testing.assert_array_equal(ps, np.moveaxis(s1[:, index[:, 1] + 2, index[:, 2] + 1], 0, 1))
    manifest = json.loads((tmp_path / "out" / "pairs.json").read_text())
    assert manifest["second_bands"] == ["VV", "VH"] and manifest["k"] == 1


def test_pairs_inside_polygons_only(tmp_path: Path) -> None:
    stack = _s2_stack(tmp_path / "s2.tif")
    poly = shapely.box(S2_LEFT + 20, S2_TOP - 50, S2_LEFT + 50, S2_TOP - 10)  # rows 1..4, cols 2..4
    gpd.GeoDataFrame({"id": [1]}, geometry=[poly], crs=CRS33.to_wkt()).to_crs(4326).to_file(
        tmp_path / "f.gpkg"
    )
    cfg = PairConfig(s2_bands=BANDS4, block_px=5, polygons=str(tmp_path / "f.gpkg"))
    build_pairs(stack, [_scenes(tmp_path / "ps", _ps_full())], tmp_path / "out", cfg, progress=False)
    _, _, index = _load(tmp_path / "out")
    assert {(r, c) for _, r, c in index.tolist()} == {(r, c) for r in range(1, 5) for c in range(2, 5)}
    _, _, tix = _load(tmp_path / "out", "time")
    assert len(tix) == 12


def _bad_inputs(tmp_path: Path) -> dict[str, tuple[list[str], str]]:
    stack = str(_s2_stack(tmp_path / "s2.tif"))
    full = _ps_full()
    far = tmp_path / "far"
    far.mkdir()
    _tif(far / "20210601_1_3B_AnalyticMS_SR.tif", full, PS_T @ Affine.translation(10_000, 0))
    _udm2(
        far / "20210601_1_3B_udm2.tif",
        np.ones(full.shape[1:], dtype=np.uint8),
        PS_T @ Affine.translation(10_000, 0),
    )
    later = _scenes(tmp_path / "later", full, ("2021-07-01",))
    nocrs = tmp_path / "nocrs"
    nocrs.mkdir()
    _tif(nocrs / "20210601_1_3B_AnalyticMS_SR.tif", full, PS_T, crs=None)
    noband = tmp_path / "noband"
    noband.mkdir()
    _tif(noband / "20210601_1_3B_AnalyticMS_SR.tif", full, PS_T, names=("blue", "green", "red", "rededge"))
    unnamed = tmp_path / "unnamed"
    unnamed.mkdir()
    _tif(unnamed / "20210601_1_3B_AnalyticMS_SR.tif", full, PS_T, names=None)
    return {
        "no band names": (
            [stack, str(unnamed)],
            "has no band names (descriptions); bands are chosen by name, never",
        ),
        "no overlap": ([stack, str(far)], "Error: no overlap: none of the 1 scenes overlaps the S2 stack"),
        "no matching dates": ([stack, str(later)], "Error: no matching dates: none of the 2 S2 dates"),
        "no crs": ([stack, str(nocrs)], "has no CRS; set it (gdal_edit.py -a_srs EPSG:...) before pairing"),
        "bands missing": ([stack, str(noband)], "Error: bands missing: scene"),
    }


@pytest.mark.parametrize(
    "case", ["no overlap", "no matching dates", "no crs", "bands missing", "no band names"]
)
def test_pairs_cli_one_line_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str) -> None:
    args, expected = _bad_inputs(tmp_path)[case]
    assert main([*args, "-o", str(tmp_path / "out"), "--s2-bands", ",".join(BANDS4), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("Error: ") and expected in err and err.count("\n") == 1, err
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out*"))  # complete or absent


def test_pairs_cli_refuses_an_existing_output_and_bad_option_values(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from training.data import cli
    from training.data.pairs import S2_BAND_NAMES
    from training.data.scenes import DEFAULT_MASK_BAND

    assert (cli.PAIR_S2_BANDS, cli.PAIR_SECOND_BANDS) == (S2_BAND_NAMES, PS_BANDS)
    assert cli.DEFAULT_MASK_BAND == DEFAULT_MASK_BAND
    args, _ = _bad_inputs(tmp_path)["no crs"]
    out = tmp_path / "out"
    out.mkdir()
    assert main([*args, "--out", str(out), "--no-progress"]) == 1  # --out: the old spelling of -o
    err = capsys.readouterr().err
    assert err == f"Error: {out} exists already; pass --overwrite to replace it\n"
    assert main([*args, "-o", str(tmp_path / "new"), "--alignment", "pixel"]) == 2
    assert "Invalid value for '--alignment'" in capsys.readouterr().err
    assert main([*args, "-o", str(tmp_path / "new"), "--cloud-classes", "a,b"]) == 2
    assert "Invalid value for '--cloud-classes'" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()


def test_pairs_cli_subprocess_error_is_one_line(tmp_path: Path) -> None:
    args, expected = _bad_inputs(tmp_path)["no crs"]
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "training.data.pairs",
            *args,
            "-o",
            str(tmp_path / "out"),
            "--s2-bands",
            ",".join(BANDS4),
        ],
        check=False,
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert run.returncode == 1
    lines = [ln for ln in run.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: ") and expected in lines[0], run.stderr


def test_npy_appender_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "a.npy"
    wr = NpyAppender(path, (3, 2), np.float32)
    parts = [np.full((n, 3, 2), n, dtype=np.float32) for n in (4, 0, 7)]
    for p in parts:
        wr.append(p)
    wr.close()
    got = np.load(path, mmap_mode="r")
    np.testing.assert_array_equal(got, np.concatenate(parts))
    assert got.offset % 64 == 0


def test_pretrain_reads_pairs_folder(tmp_path: Path) -> None:
    from training.pretrain.run import main as pretrain_main

    stack = _s2_stack(tmp_path / "s2.tif")
    build_pairs(stack, [_scenes(tmp_path / "ps", _ps_full())], tmp_path / "pairs", CFG, progress=False)
    tiny = [
        "--set",
        "encoder.hidden=16",
        "--set",
        "encoder.n_layers=2",
        "--set",
        "encoder.out_dim=8",
        "--set",
        "projector.hidden=16",
        "--set",
        "projector.out=8",
        "--set",
        "epochs=1",
        "--no-progress",
    ]
    assert (
        pretrain_main(
            [
                "--data",
                str(tmp_path / "pairs"),
                "--out",
                str(tmp_path / "run"),
                "--set",
                "batch_size=32",
                *tiny,
            ]
        )
        == 0
    )
    lines = [json.loads(ln) for ln in (tmp_path / "run" / "loss_log.jsonl").read_text().splitlines()]
    assert [ln["epoch"] for ln in lines if ln["step"] is None] == [1]
    rc = pretrain_main(
        [
            "--data",
            str(tmp_path / "pairs"),
            "--out",
            str(tmp_path / "run_t"),
            "--alignment",
            "time",
            "--set",
            "batch_size=16",
            "--set",
            "timewise.d_model=16",
            "--set",
            "timewise.n_heads=2",
            "--set",
            "timewise.n_layers=1",
            "--set",
            "timewise.out_dim=8",
            *tiny,
        ]
    )
    assert rc == 0


def test_pairs_from_stac_item_collection(tmp_path: Path) -> None:
    """PS_SCENES as a STAC item collection: items dated by their datetime, bands and UDM2 from their assets."""
    import datetime as dt

    import pystac

    stack = _s2_stack(tmp_path / "s2.tif")
    full = _ps_full(5)
    folder = _scenes(tmp_path / "ps", full)
    items = []
    for d in DATES:
        stamp = d.replace("-", "")
        item = pystac.Item(
            id=f"{stamp}_100000_1",
            geometry=None,
            bbox=None,
            properties={},
            datetime=dt.datetime.fromisoformat(f"{d}T10:00:00+00:00"),
        )
        item.add_asset(
            "ortho_analytic_4b_sr",
            pystac.Asset(
                f"ps/{stamp}_100000_1_3B_AnalyticMS_SR.tif", media_type=pystac.MediaType.COG, roles=["data"]
            ),
        )
        item.add_asset("ortho_udm2", pystac.Asset(f"ps/{stamp}_100000_1_3B_udm2.tif", roles=["data"]))
        items.append(item)
    collection = tmp_path / "items.json"
    collection.write_text(json.dumps(pystac.ItemCollection(items).to_dict()))
    build_pairs(stack, [collection], tmp_path / "stac", CFG, progress=False)
    build_pairs(stack, [folder], tmp_path / "folder", CFG, progress=False)
    a, b = _load(tmp_path / "stac"), _load(tmp_path / "folder")
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)


def test_pretrain_refuses_missing_alignment(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from training.pretrain.run import main as pretrain_main

    stack = _s2_stack(tmp_path / "s2.tif")
    cfg = PairConfig(s2_bands=BANDS4, alignment=("point",))
    build_pairs(stack, [_scenes(tmp_path / "ps", _ps_full())], tmp_path / "pairs", cfg, progress=False)
    assert not (tmp_path / "pairs" / "time").exists()
    rc = pretrain_main(
        [
            "--data",
            str(tmp_path / "pairs"),
            "--out",
            str(tmp_path / "run"),
            "--alignment",
            "time",
            "--no-progress",
        ]
    )
    assert rc == 1
    err = capsys.readouterr().err
    assert "holds point-wise pairs only; rerun python -m training.pairs with --alignment time" in err


def test_pairs_outside_footprint_and_day_offset(tmp_path: Path) -> None:
    """A scene covering the west half only: eastern pixels are dropped as outside the footprint; a scene one day
    after the S2 date matches with --max-day-offset 1 only."""
    stack = _s2_stack(tmp_path / "s2.tif")
    full = _ps_full(6)
    folder = tmp_path / "ps"
    folder.mkdir()
    west = full[:, :, :15]  # PS columns 0..14: S2 columns 0..3 have their whole 3 x 3 window inside
    for d in ("2021-06-01", "2021-06-07"):
        stamp = d.replace("-", "")
        _tif(folder / f"{stamp}_1_3B_AnalyticMS_SR.tif", west, PS_T)
        _udm2(folder / f"{stamp}_1_3B_udm2.tif", np.ones(west.shape[1:], dtype=np.uint8), PS_T)
    summary = build_pairs(stack, [folder], tmp_path / "same_day", CFG, progress=False)
    _, ps, index = _load(tmp_path / "same_day")
    assert set(index[:, 0].tolist()) == {0} and set(index[:, 2].tolist()) == {0, 1, 2, 3}
    assert summary.dropped["outside second-modality footprint"] == SIZE * (SIZE - 4)
    assert summary.dropped["no second-modality date"] == SIZE * SIZE  # 2021-06-06 has no scene that day
    np.testing.assert_array_equal(ps, _expected_ps(full, index[:, 1], index[:, 2]))
    cfg = PairConfig(s2_bands=BANDS4, block_px=5, max_day_offset=1)
    build_pairs(stack, [folder], tmp_path / "offset", cfg, progress=False)
    _, _, index = _load(tmp_path / "offset")
    assert set(index[:, 0].tolist()) == {0, 1}
    manifest = json.loads((tmp_path / "offset" / "pairs.json").read_text())
    assert manifest["second_dates"] == {"2021-06-01": "2021-06-01", "2021-06-06": "2021-06-07"}
