"""Tests for the DENETHOR-layout reader and the S2 -> PlanetScope patch alignment."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio

from training.data.denethor import S2_BAND_NAMES, ps_patches, read_scene


@pytest.fixture
def scene_copy(sim_scene_dir: Path, tmp_path: Path) -> Path:
    """A writable copy of the simulated scene A (for tests that break files)."""
    return Path(shutil.copytree(sim_scene_dir / "scene_a", tmp_path / "scene"))


def test_read_scene_exposes_grid_dates_and_labels(sim_scene_dir: Path) -> None:
    scene = read_scene(sim_scene_dir / "scene_a")
    t, h, w, c = scene.s2.shape
    assert c == 12 and scene.band_names == S2_BAND_NAMES
    assert isinstance(scene.s2, np.memmap)
    assert scene.clp.shape == (t, h, w)
    assert len(scene.dates) == t and all(d.year == 2018 for d in scene.dates)
    assert scene.crs == "EPSG:25833"
    assert scene.transform.a == pytest.approx(10.0) and scene.transform.e == pytest.approx(-10.0)
    assert (scene.transform.c, scene.transform.f) == (scene.bbox[0], scene.bbox[3])
    prob = scene.cloud_probability()
    assert prob.dtype == np.float32 and prob.min() >= 0.0 and prob.max() <= 1.0
    assert len(scene.class_names) == 9 and scene.class_names[0] == "Wheat"
    labels = gpd.read_file(sim_scene_dir / "scene_a" / "labels.geojson")
    assert set(scene.field_ids) <= set(labels.field_id)
    # Every labelled pixel carries its field's crop, unlabelled pixels carry none.
    for fid in scene.field_ids:
        crops = np.unique(scene.crop_raster[scene.field_raster == fid])
        assert crops.tolist() == [scene.field_crops[int(fid)]]
    np.testing.assert_array_equal(scene.crop_raster == 0, scene.field_raster == 0)
    assert 0 < (scene.field_raster > 0).mean() < 1


def test_ps_patches_take_the_3x3_pixels_at_int_r_10_over_3(sim_scene_dir: Path) -> None:
    scene = read_scene(sim_scene_dir / "scene_a")
    h, w = scene.shape
    rows = np.array([0, 1, 2, 3, h - 1, 7])
    cols = np.array([0, 5, w - 1, 3, w - 1, 0])
    dates = np.array([0, 3, 5, len(scene.dates) - 1, 2, 3])
    got = ps_patches(scene, rows, cols, dates)
    assert got.shape == (rows.size, 36) and got.dtype == np.float32
    for n, (r, c, t) in enumerate(zip(rows, cols, dates, strict=True)):
        path = scene.root / "planet" / scene.dates[t].isoformat() / "sr.tif"
        with rasterio.open(path) as src:
            full = src.read()  # (4, H_ps, W_ps)
        pr, pc = int(r * 10 / 3), int(c * 10 / 3)
        expected = np.moveaxis(full[:, pr : pr + 3, pc : pc + 3], 0, -1).reshape(36)  # (row, col, band)
        np.testing.assert_array_equal(got[n], expected.astype(np.float32))


def test_ps_index_matches_by_day_of_year_and_refuses_missing_days(scene_copy: Path) -> None:
    scene = read_scene(scene_copy)
    idx = scene.ps_index()
    assert [scene.ps_dates[i] for i in idx] == list(scene.dates)
    shutil.rmtree(scene_copy / "planet" / scene.dates[2].isoformat())
    scene = read_scene(scene_copy)
    with pytest.raises(ValueError, match=f"S2 stamp {scene.dates[2].isoformat()} .* no PlanetScope image"):
        scene.ps_index()
    nearest = scene.ps_index(max_day_offset=40)
    assert scene.ps_dates[nearest[2]] != scene.dates[2]


def test_ps_archive_also_reads_flat_date_files(scene_copy: Path) -> None:
    first = min((scene_copy / "planet").iterdir())
    shutil.move(first / "sr.tif", scene_copy / "planet" / f"{first.name}.tif")
    first.rmdir()
    scene = read_scene(scene_copy)
    assert scene.ps_paths[0].name == f"{first.name}.tif"


def test_labels_in_another_crs_are_reprojected(scene_copy: Path) -> None:
    before = read_scene(scene_copy).field_raster
    labels = gpd.read_file(scene_copy / "labels.geojson").to_crs("EPSG:32633")
    labels.to_file(scene_copy / "labels.geojson", driver="GeoJSON")
    after = read_scene(scene_copy).field_raster
    assert (before == after).mean() > 0.99  # only pixel centres on a reprojected edge may flip


def test_labels_without_field_id_are_numbered_by_row(scene_copy: Path) -> None:
    labels = gpd.read_file(scene_copy / "labels.geojson").drop(columns="field_id")
    labels.to_file(scene_copy / "labels.geojson", driver="GeoJSON")
    scene = read_scene(scene_copy)
    assert set(scene.field_crops) == set(range(1, len(labels) + 1))


@pytest.mark.parametrize(
    ("breakage", "error", "message"),
    [
        ("no_s2", FileNotFoundError, "not a DENETHOR-layout scene"),
        ("bad_clp", ValueError, "clp has shape"),
        ("bbox_without_crs", ValueError, "carries no CRS"),
        ("bbox_tuple", ValueError, "carries no CRS"),
        ("wrong_band_names", ValueError, "lists bands"),
        ("few_dates", ValueError, "dates; bands has"),
        ("no_crop_name", ValueError, r"lacks column\(s\) \['crop_name'\]"),
        ("no_planet", FileNotFoundError, "planet not found"),
    ],
)
def test_read_scene_rejects_broken_layouts(
    scene_copy: Path, breakage: str, error: type[Exception], message: str
) -> None:
    s2 = scene_copy / "s2"
    if breakage == "no_s2":
        shutil.rmtree(s2)
    elif breakage == "bad_clp":
        np.save(s2 / "clp.npy", np.zeros((2, 3, 4), dtype=np.uint8))
    elif breakage in ("bbox_without_crs", "bbox_tuple"):
        bbox = pickle.loads((s2 / "bbox.pkl").read_bytes())
        bbox.pop("crs")
        value = bbox if breakage == "bbox_without_crs" else tuple(bbox.values())
        (s2 / "bbox.pkl").write_bytes(pickle.dumps(value))
    elif breakage == "wrong_band_names":
        (s2 / "band_names.json").write_text(json.dumps(["B02"] * 12))
    elif breakage == "few_dates":
        stamps = pickle.loads((s2 / "timestamp.pkl").read_bytes())
        (s2 / "timestamp.pkl").write_bytes(pickle.dumps(stamps[:-1]))
    elif breakage == "no_crop_name":
        labels = gpd.read_file(scene_copy / "labels.geojson").drop(columns="crop_name")
        labels.to_file(scene_copy / "labels.geojson", driver="GeoJSON")
    elif breakage == "no_planet":
        shutil.rmtree(scene_copy / "planet")
    with pytest.raises(error, match=message):
        read_scene(scene_copy)


def test_ps_patches_reject_bad_indices_and_foreign_crs(scene_copy: Path) -> None:
    scene = read_scene(scene_copy)
    with pytest.raises(ValueError, match="outside the"):
        ps_patches(scene, np.array([scene.shape[0]]), np.array([0]), np.array([0]))
    with pytest.raises(ValueError, match="date indices outside"):
        ps_patches(scene, np.array([0]), np.array([0]), np.array([len(scene.dates)]))
    with pytest.raises(ValueError, match="differ in length"):
        ps_patches(scene, np.array([0, 1]), np.array([0]), np.array([0]))
    first = scene.ps_paths[0]
    with rasterio.open(first, "r+") as dst:
        dst.crs = "EPSG:32633"
    with pytest.raises(ValueError, match="is in EPSG:32633; the S2 grid is in EPSG:25833"):
        ps_patches(read_scene(scene_copy), np.array([0]), np.array([0]), np.array([0]))
