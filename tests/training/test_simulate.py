"""Tests for the bi-modal scene simulator (layout, determinism, physics the method relies on)."""

from __future__ import annotations

import datetime as dt
import json
import pickle
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio

from training.simulate import run as sim
from training.simulate.cli import PRESET_NAMES
from training.simulate.run import CROP_NAMES, PRESETS, SimulationConfig, main, simulate

MICRO = SimulationConfig(size_px=16, n_fields=9, n_stamps=4, ps_interval_days=120, seed=3)


def test_simulate_writes_denethor_layout(sim_scene_dir: Path) -> None:
    cfg = PRESETS["tiny"]
    for name, year in (("scene_a", 2018), ("scene_b", 2019)):
        root = sim_scene_dir / name
        bands = np.load(root / "s2" / "bands.npy", mmap_mode="r")
        clp = np.load(root / "s2" / "clp.npy", mmap_mode="r")
        assert bands.shape == (cfg.n_stamps, cfg.size_px, cfg.size_px, 12)
        assert bands.dtype == np.uint16
        assert clp.shape == (cfg.n_stamps, cfg.size_px, cfg.size_px, 1)
        assert clp.dtype == np.uint8
        stamps = pickle.loads((root / "s2" / "timestamp.pkl").read_bytes())
        assert len(stamps) == cfg.n_stamps
        assert all(isinstance(s, dt.datetime) and s.year == year for s in stamps)
        assert stamps == sorted(stamps)
        bbox = pickle.loads((root / "s2" / "bbox.pkl").read_bytes())
        assert bbox["crs"] == "EPSG:25833"
        assert bbox["max_x"] - bbox["min_x"] == pytest.approx(cfg.size_px * 10)
        ps_dirs = sorted((root / "planet").iterdir())
        ps_dates = {dt.date.fromisoformat(p.name) for p in ps_dirs}
        assert {s.date() for s in stamps} <= ps_dates  # every S2 day has a same-day PS image
        with rasterio.open(ps_dirs[0] / "sr.tif") as src:
            assert src.crs.to_epsg() == 25833
            assert src.count == 4
            assert src.res == (3.0, 3.0)
            assert (src.bounds.left, src.bounds.top) == (bbox["min_x"], bbox["max_y"])
            assert src.width == int(np.ceil(cfg.size_px * 10 / 3))
            assert src.descriptions == ("blue", "green", "red", "nir")
        labels = gpd.read_file(root / "labels.geojson")
        assert labels.crs.to_epsg() == 25833
        assert len(labels) == cfg.n_fields
        assert set(labels.crop_name) == set(CROP_NAMES)
        assert (labels.crop_id == [CROP_NAMES.index(n) + 1 for n in labels.crop_name]).all()
        assert labels.field_id.is_unique


def test_simulate_is_deterministic_per_seed(tmp_path: Path) -> None:
    a = simulate(tmp_path / "a", MICRO)
    b = simulate(tmp_path / "b", MICRO)
    c = simulate(tmp_path / "c", SimulationConfig(**{**MICRO.__dict__, "seed": 4}))
    load = lambda p: np.load(p / "s2" / "bands.npy")
    np.testing.assert_array_equal(load(a["scene_a"]), load(b["scene_a"]))
    assert not np.array_equal(load(a["scene_a"]), load(c["scene_a"]))
    assert not np.array_equal(load(a["scene_a"]), load(a["scene_b"]))
    assert json.loads((tmp_path / "a" / "simulation.json").read_text())["seed"] == 3


def test_simulate_refuses_existing_scene(tmp_path: Path) -> None:
    (tmp_path / "scene_a").mkdir()
    with pytest.raises(FileExistsError, match="scene_a exists already"):
        simulate(tmp_path, MICRO)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"size_px": 8}, "size_px must be >= 12"),
        ({"n_fields": 5}, "n_fields must be >= 9"),
        ({"size_px": 16, "n_fields": 40}, "too many"),
        ({"n_stamps": 1}, "n_stamps must be in 2..365"),
        ({"ps_interval_days": 0}, "ps_interval_days"),
    ],
)
def test_config_rejects_bad_values(kwargs: dict[str, int], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SimulationConfig(**kwargs)


def test_cli_writes_scenes_and_reports_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--out", str(tmp_path), "--preset", "tiny", "--size-px", "16", "--n-fields", "9"]
    argv += ["--n-stamps", "3"]
    assert main(argv) == 0
    assert "simulated" in capsys.readouterr().out
    assert np.load(tmp_path / "scene_b" / "s2" / "bands.npy", mmap_mode="r").shape == (3, 16, 16, 12)
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("Error: ") and err.count("\n") == 1 and "scene_a exists already" in err, err
    assert main(["-o", str(tmp_path / "x"), "--preset", "tiny", "--config", "sim.toml"]) == 2
    assert "give --preset or --config, not both" in capsys.readouterr().err
    assert main(["-o", str(tmp_path / "x"), "--preset", "huge"]) == 2
    assert "Invalid value for '--preset'" in capsys.readouterr().err
    assert main(["-o", str(tmp_path / "x"), "--size-px", "4"]) == 1  # bad input: one line, nothing written
    err = capsys.readouterr().err
    assert (
        err == "Error: size_px must be >= 12 (S2 pixels per side), got 4\n" and not (tmp_path / "x").exists()
    )
    assert sorted(PRESETS) == list(PRESET_NAMES)


def test_s2_is_the_10m_aggregate_of_the_surface_ps_sees(sim_scene_dir: Path) -> None:
    """Over clear pixels, S2 NIR (B08) tracks the mean of the 3 x 3 PS NIR pixels under it."""
    root = sim_scene_dir / "scene_a"
    bands = np.load(root / "s2" / "bands.npy")
    clp = np.load(root / "s2" / "clp.npy")[..., 0]
    stamps = pickle.loads((root / "s2" / "timestamp.pkl").read_bytes())
    h = bands.shape[1]
    r = (np.arange(h) * 10) // 3
    correlations = []
    for t, stamp in enumerate(stamps):
        with rasterio.open(root / "planet" / stamp.date().isoformat() / "sr.tif") as src:
            nir = src.read(4).astype(np.float64)
        ps_mean = np.mean([nir[np.ix_(r + i, r + j)] for i in range(3) for j in range(3)], axis=0)
        clear = (clp[t] < 20) & (bands[t, ..., 7] > 0)
        if clear.sum() > 100:
            correlations.append(np.corrcoef(bands[t, ..., 7][clear], ps_mean[clear])[0, 1])
    assert len(correlations) >= 3
    assert np.median(correlations) > 0.85


def test_clouds_raise_clp_and_brighten_blue(sim_scene_dir: Path) -> None:
    bands = np.load(sim_scene_dir / "scene_a" / "s2" / "bands.npy")
    clp = np.load(sim_scene_dir / "scene_a" / "s2" / "clp.npy")[..., 0]
    valid = bands[..., 1] > 0
    cloudy, clear = valid & (clp > 200), valid & (clp < 20)
    assert cloudy.sum() > 50 and clear.sum() > 50
    assert bands[..., 1][cloudy].mean() > 3 * bands[..., 1][clear].mean()


def test_gaps_are_zero_in_every_band(tmp_path: Path) -> None:
    cfg = SimulationConfig(**{**MICRO.__dict__, "gap_probability": 1.0})
    bands = np.load(simulate(tmp_path, cfg)["scene_a"] / "s2" / "bands.npy")
    zero = bands == 0
    assert zero.any(axis=(1, 2, 3)).all()  # every stamp lost a swath
    np.testing.assert_array_equal(zero.all(axis=-1), zero.any(axis=-1))  # never a partial band vector


def test_spectra_make_oats_and_barley_differ_in_s2_only() -> None:
    """Oats vs Barley: close in the four PS bands, apart in S2 red edge and SWIR (what S2 adds to PS)."""
    bands = sim._endmember_bands()
    oats, barley = bands["Oats"], bands["Barley"]
    diff = np.abs(oats - barley)
    assert diff[12:].max() < 0.004  # below the PS noise (0.006 reflectance)
    b05, b11, b12 = 4, 10, 11
    assert min(diff[b05], diff[b11], diff[b12]) > 0.015


def test_textures_differ_between_winter_cereals_at_3m(sim_scene_dir: Path) -> None:
    """Wheat's tramlines spread its 3 x 3 PS pixels more than patchy Rye does; 10 m S2 NIR means are close."""
    from training.data.denethor import ps_patches, read_scene

    scene = read_scene(sim_scene_dir / "scene_a")
    clear = scene.cloud_probability() < 0.1
    season = [t for t, d in enumerate(scene.dates) if 120 <= d.timetuple().tm_yday <= 175]
    t = max(season, key=lambda i: int(clear[i].sum()))
    spread, s2_nir = {}, {}
    for name in ("Wheat", "Rye"):
        rows, cols = np.nonzero((scene.crop_raster == CROP_NAMES.index(name) + 1) & clear[t])
        assert rows.size > 10
        nir = ps_patches(scene, rows, cols, np.full(rows.size, t)).reshape(-1, 9, 4)[..., 3]
        spread[name] = float(np.median(nir.std(axis=1) / nir.mean(axis=1)))
        s2_nir[name] = float(scene.s2[t][rows, cols, 7].mean())
    assert spread["Wheat"] > 1.5 * spread["Rye"]
    assert abs(s2_nir["Wheat"] - s2_nir["Rye"]) < 0.1 * s2_nir["Wheat"]


def test_scene_b_greens_up_later() -> None:
    """Scene B's phenology is shifted: its winter wheat reaches half cover days later than scene A's."""
    rng = np.random.default_rng(0)
    half_cover_day = []
    for spec in (sim.SCENE_A, sim.SCENE_B):
        surface = sim._Surface(rng, SimulationConfig(size_px=32, n_fields=27), spec)
        wheat = surface.crop_of_cell == CROP_NAMES.index("Wheat")
        days = np.arange(60, 160)
        cover = np.array([surface.fractions(float(d))[0][wheat].mean() for d in days])
        half_cover_day.append(days[np.argmax(cover > 0.5)])
    assert half_cover_day[1] >= half_cover_day[0] + 4


@pytest.mark.slow
def test_ps_adds_information_early_in_the_season(tmp_path: Path) -> None:
    """On the default scene, a probe on one April date classifies better from S2 + PS than from S2 alone."""
    torch = pytest.importorskip("torch")
    from training.data.datasets import scene_a_splits
    from training.data.denethor import ps_patches, read_scene

    scene = read_scene(simulate(tmp_path, PRESETS["default"])["scene_a"])
    splits = scene_a_splits(scene)
    clear = scene.cloud_probability() < 0.1
    doys = np.array([d.timetuple().tm_yday for d in scene.dates])
    t = int(np.argmin(np.abs(doys - 110) + 100 * (clear.mean(axis=(1, 2)) < 0.8)))

    def features(fields: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        r, c = np.nonzero(np.isin(scene.field_raster, fields))
        s2 = scene.s2[t][r, c].astype(np.float32)
        return s2, ps_patches(scene, r, c, np.full(r.size, t)), (scene.crop_raster[r, c] - 1).astype(np.int64)

    def accuracy(x: np.ndarray, y: np.ndarray, xv: np.ndarray, yv: np.ndarray) -> float:
        torch.manual_seed(0)
        mu, sd = x.mean(0), x.std(0) + 1e-6
        xt, xvt = torch.tensor((x - mu) / sd), torch.tensor((xv - mu) / sd)
        yt = torch.tensor(y)
        net = torch.nn.Sequential(torch.nn.Linear(x.shape[1], 128), torch.nn.ReLU(), torch.nn.Linear(128, 9))
        opt = torch.optim.Adam(net.parameters(), 3e-3, weight_decay=1e-4)
        for _ in range(100):
            perm = torch.randperm(len(xt))
            for i in range(0, len(xt), 256):
                b = perm[i : i + 256]
                opt.zero_grad()
                torch.nn.functional.cross_entropy(net(xt[b]), yt[b]).backward()
                opt.step()
        with torch.no_grad():
            return float((net(xvt).argmax(1).numpy() == yv).mean())

    s2, ps, y = features(np.concatenate([splits["pretrain"], splits["train"]]))
    s2v, psv, yv = features(splits["val"])
    acc_s2 = accuracy(s2, y, s2v, yv)
    acc_both = accuracy(np.hstack([s2, ps]), y, np.hstack([s2v, psv]), yv)
    assert acc_both > acc_s2 + 0.1, (acc_s2, acc_both)


def test_cli_reads_a_toml_config_and_applies_flags_on_top(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "sim.toml"
    config.write_text("size_px = 16\nn_fields = 9\nn_stamps = 5\nps_interval_days = 200\nseed = 2\n")
    assert main(["--out", str(tmp_path / "out"), "--config", str(config), "--n-stamps", "3"]) == 0
    written = json.loads((tmp_path / "out" / "simulation.json").read_text())
    assert (written["size_px"], written["n_stamps"], written["seed"]) == (16, 3, 2)
    config.write_text("size_px = 16\ncolour = 'red'\n")
    assert main(["--out", str(tmp_path / "other"), "--config", str(config)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("Error: ") and err.count("\n") == 1 and "colour" in err, err


def test_shipped_simulate_config_is_valid() -> None:
    from training.config import load_config

    path = Path(__file__).resolve().parents[2] / "training" / "configs" / "simulate.toml"
    assert load_config(SimulationConfig, path) == PRESETS["large"]


# ----------------------------------------------------------------------------------------------------------
# cropmap inputs: s2_stack.tif and fields.gpkg (training.simulate.scene_export)
# ----------------------------------------------------------------------------------------------------------

STACK_BANDS = (*sim.S2_BAND_NAMES, "CLP")


def _stack_grid(root: Path) -> tuple[np.ndarray, np.ndarray, list[dt.datetime], dict[str, object]]:
    s2 = root / "s2"
    bands = np.load(s2 / "bands.npy")
    clp = np.load(s2 / "clp.npy")[..., 0]
    stamps = pickle.loads((s2 / "timestamp.pkl").read_bytes())
    return bands, clp, stamps, pickle.loads((s2 / "bbox.pkl").read_bytes())


def test_stack_is_the_s2_series_time_major_with_tags_and_nodata(sim_scene_dir: Path) -> None:
    cfg = PRESETS["tiny"]
    for name in ("scene_a", "scene_b"):
        root = sim_scene_dir / name
        bands, clp, stamps, bbox = _stack_grid(root)
        n_t, h, w, _ = bands.shape
        with rasterio.open(root / "s2_stack.tif") as src:
            assert src.count == cfg.n_stamps * len(STACK_BANDS)
            assert set(src.dtypes) == {"uint16"}
            assert src.nodatavals == (0.0,) * src.count
            assert src.crs.to_epsg() == 25833
            assert src.transform == rasterio.Affine(10.0, 0.0, bbox["min_x"], 0.0, -10.0, bbox["max_y"])
            assert src.descriptions == tuple(f"{s.date()}_{b}" for s in stamps for b in STACK_BANDS)
            tags = src.tags()
            assert tags["reflectance_scale"] == "10000"
            assert tags["dates"] == ",".join(s.date().isoformat() for s in stamps)
            assert tags["bands"] == ",".join(STACK_BANDS)
            assert src.compression is not None and src.block_shapes[0] == (32, 32)
            raw = src.read().reshape(n_t, len(STACK_BANDS), h, w)
        np.testing.assert_array_equal(raw[:, :12], bands.transpose(0, 3, 1, 2))
        np.testing.assert_array_equal(raw[:, 12], clp)
        assert not [p.name for p in root.iterdir() if p.name.startswith(".")]  # no temporary file left


def test_cropmap_reads_the_stack_dates_bands_and_values(sim_scene_dir: Path) -> None:
    from rasterio.windows import Window

    from cropmap.stack import open_stack

    root = sim_scene_dir / "scene_b"
    bands, _, stamps, _ = _stack_grid(root)
    stack = open_stack(root / "s2_stack.tif")
    assert stack.dates == tuple(s.date() for s in stamps)
    assert stack.bands == STACK_BANDS
    assert stack.has_nodata and stack.dtype == "uint16"
    assert stack.scale is not None and stack.scale.reflectance_scale == pytest.approx(10000)
    got = stack.read(Window(0, 0, stack.width, stack.height), range(len(stack.dates)), ["B02", "B8A", "B12"])
    want = bands[..., [1, 8, 11]].transpose(0, 3, 1, 2).astype(np.float32)
    want[want == 0] = np.nan  # 0 = no data in bands.npy, NaN once read
    np.testing.assert_array_equal(got, want)


def test_stack_gaps_read_as_missing(tmp_path: Path) -> None:
    from rasterio.windows import Window

    from cropmap.stack import open_stack

    cfg = SimulationConfig(**{**MICRO.__dict__, "gap_probability": 1.0})
    root = simulate(tmp_path, cfg)["scene_a"]
    stack = open_stack(root / "s2_stack.tif")
    window = Window(0, 0, stack.width, stack.height)
    got = stack.read(window, range(len(stack.dates)), list(sim.S2_BAND_NAMES))
    gaps = np.load(root / "s2" / "bands.npy").transpose(0, 3, 1, 2) == 0
    assert gaps.any()
    np.testing.assert_array_equal(np.isnan(got), gaps)


def test_stack_cloud_band_is_found_by_cropmaps_cloud_masking(sim_scene_dir: Path) -> None:
    clouds = pytest.importorskip("cropmap.contract.clouds")
    from cropmap.stack import open_stack

    stack = open_stack(sim_scene_dir / "scene_a" / "s2_stack.tif")
    rule = clouds.resolve_cloud_mask(stack.bands, stack.dtype)
    assert (rule.band, rule.kind, rule.scale) == ("CLP", "probability", 255.0)


def test_fields_gpkg_holds_the_labels_and_is_a_cropmap_mask(sim_scene_dir: Path) -> None:
    import pyogrio

    from cropmap.mask import load_polygons
    from cropmap.stack import open_stack

    root = sim_scene_dir / "scene_a"
    assert [layer for layer, _ in pyogrio.list_layers(root / "fields.gpkg")] == ["fields"]
    fields = gpd.read_file(root / "fields.gpkg", layer="fields")
    labels = gpd.read_file(root / "labels.geojson")
    assert list(fields.columns) == ["field_id", "class_code", "class_name", "geometry"]
    assert fields.crs.to_epsg() == 25833
    assert fields.field_id.tolist() == labels.field_id.tolist()
    assert fields.class_code.tolist() == labels.crop_id.tolist()
    assert fields.class_name.tolist() == labels.crop_name.tolist()
    assert fields.geom_equals(labels.geometry).all()
    stack = open_stack(root / "s2_stack.tif")
    left, top = stack.transform.c, stack.transform.f
    bounds = (left, top - 10.0 * stack.height, left + 10.0 * stack.width, top)
    assert len(load_polygons(root / "fields.gpkg", stack.crs, bounds).geometries) == len(labels)


def test_cropmap_classify_runs_on_the_simulated_stack(sim_scene_dir: Path, tmp_path: Path) -> None:
    """The shipped sample bundle (Flanders legend) maps the simulated stack with the fields as mask, as is."""
    from click.testing import CliRunner

    from cropmap.cli import main as cropmap_main

    root = sim_scene_dir / "scene_a"
    out = tmp_path / "map.tif"
    args = ["classify", str(root / "s2_stack.tif"), "--mask", str(root / "fields.gpkg"), "-o", str(out)]
    res = CliRunner().invoke(cropmap_main, [*args, "--season", "2017", "--no-quicklook"])
    assert res.exit_code == 0, res.output
    with rasterio.open(out) as src, rasterio.open(root / "s2_stack.tif") as stack:
        assert (src.crs, src.transform, src.shape) == (stack.crs, stack.transform, stack.shape)
        assert (src.read(1) > 0).sum() > 0.9 * PRESETS["tiny"].n_fields * 16


def test_scene_export_cli_reports_a_missing_scene(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from training.simulate.scene_export import main as export_main

    assert export_main([str(tmp_path / "nowhere")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("Error: ") and "nowhere" in err and len(err.splitlines()) == 1


def test_scene_export_and_ps_scenes_refuse_existing_outputs(
    sim_scene_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from training.simulate.ps_scenes import main as ps_main
    from training.simulate.scene_export import main as export_main

    scene = sim_scene_dir / "scene_a"
    stamp = (scene / "s2_stack.tif").stat().st_mtime_ns
    assert export_main([str(scene)]) == 1  # written by the simulator already
    err = capsys.readouterr().err
    assert err.startswith("Error: ") and err.count("\n") == 1 and "pass --overwrite" in err, err
    assert (scene / "s2_stack.tif").stat().st_mtime_ns == stamp
    assert ps_main([str(scene)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("Error: ") and err.count("\n") == 1 and "planet_scenes exists already" in err, err
    assert ps_main([str(tmp_path / "nowhere")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("Error: ") and err.count("\n") == 1 and "nowhere" in err, err
    assert ps_main([]) == 2
