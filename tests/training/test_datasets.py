"""Tests for the pre-training pairs, balanced downstream sets and task definitions."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from training.data.datasets import (
    MAX_CLOUD_PROBABILITY,
    balanced_pixels,
    class_names,
    fill_linear,
    pointwise_pairs,
    scene_a_splits,
    task_sets,
    timewise_pairs,
)
from training.data.denethor import Scene, ps_patches, read_scene


@pytest.fixture(scope="module")
def scene(sim_scene_dir: Path) -> Scene:
    return read_scene(sim_scene_dir / "scene_a")


def test_pointwise_pairs_are_clear_pixels_of_the_given_fields(scene: Scene) -> None:
    pool = scene_a_splits(scene)["pretrain"]
    s2, ps, index = pointwise_pairs(scene, pool, n_per_stamp=40, seed=0, return_index=True)
    assert s2.shape == (index.shape[0], 12) and ps.shape == (index.shape[0], 36)
    assert s2.dtype == ps.dtype == np.float32
    t, r, c = index.T
    assert np.isin(scene.field_raster[r, c], pool).all()
    assert (scene.cloud_probability()[t, r, c] <= MAX_CLOUD_PROBABILITY).all()
    assert (s2 != 0).any(axis=1).all()  # no gap observations
    np.testing.assert_array_equal(s2, scene.s2[t, r, c].astype(np.float32))  # raw DN, unscaled
    np.testing.assert_array_equal(ps, ps_patches(scene, r, c, t))
    per_stamp = np.bincount(t, minlength=len(scene.dates))
    assert per_stamp.max() == 40 and per_stamp.sum() > 40 * len(scene.dates) // 3
    assert len({(a, b, d) for a, b, d in index.tolist()}) == len(index)  # no duplicate within a stamp


def test_pointwise_pairs_take_all_clear_pixels_when_fewer_exist(
    scene: Scene, caplog: pytest.LogCaptureFixture
) -> None:
    pool = scene_a_splits(scene)["val"]
    n_pixels = int(np.isin(scene.field_raster, pool).sum())
    with caplog.at_level(logging.INFO, logger="training.data.datasets"):
        _s2, _, index = pointwise_pairs(scene, pool, n_per_stamp=10 * n_pixels, seed=0, return_index=True)
    assert "fewer than" in caplog.text
    assert np.bincount(index[:, 0]).max() <= n_pixels


def test_pointwise_pairs_are_seeded(scene: Scene) -> None:
    pool = scene_a_splits(scene)["pretrain"]
    a = pointwise_pairs(scene, pool, 20, seed=1)
    b = pointwise_pairs(scene, pool, 20, seed=1)
    c = pointwise_pairs(scene, pool, 20, seed=2)
    np.testing.assert_array_equal(a[0], b[0])
    assert not np.array_equal(a[0], c[0])


def test_timewise_pairs_align_ps_series_with_s2_stamps(scene: Scene) -> None:
    pool = scene_a_splits(scene)["pretrain"]
    s2, ps = timewise_pairs(scene, pool, n_pixels=25, seed=0)
    t_count = len(scene.dates)
    assert s2.shape == (25, t_count, 12) and ps.shape == (25, t_count, 36)
    # Recover the pixels from their S2 series and check the PS series stamp by stamp.
    flat = scene.s2.reshape(t_count, -1, 12)
    for n in range(3):
        match = np.flatnonzero((flat == s2[n][:, None, :]).all(axis=(0, 2)))
        assert match.size == 1
        r, c = divmod(int(match[0]), scene.shape[1])
        assert scene.field_raster[r, c] in pool
        expected = ps_patches(scene, np.full(t_count, r), np.full(t_count, c), np.arange(t_count))
        np.testing.assert_array_equal(ps[n], expected)


def test_balanced_pixels_have_n_per_class(scene: Scene, caplog: pytest.LogCaptureFixture) -> None:
    fields = scene_a_splits(scene)["pretrain"]
    with caplog.at_level(logging.WARNING, logger="training.data.datasets"):
        x, y = balanced_pixels(scene, fields, n_per_class=30, seed=0)
    names = class_names(scene)
    assert x.shape == (30 * len(names), len(scene.dates), 12) and x.dtype == np.float32
    assert y.dtype == np.int64
    assert np.bincount(y, minlength=len(names)).tolist() == [30] * len(names)
    # Each series is a real pixel of a field of its class.
    flat = scene.s2.reshape(len(scene.dates), -1, 12)
    crop = scene.crop_raster.ravel()
    for n in range(5):
        match = np.flatnonzero((flat == x[n][:, None, :]).all(axis=(0, 2)))
        assert names[y[n]] == scene.crop_names[int(crop[match[0]])]
    small = [n for n in names if f"class {n!r} has" in caplog.text]
    assert small, "a tiny scene must have classes sampled with replacement"
    assert "sampling with replacement" in caplog.text


def test_balanced_pixels_reject_foreign_fields_and_classes(scene: Scene) -> None:
    with pytest.raises(ValueError, match="cover no S2 pixel"):
        balanced_pixels(scene, [999_999], 5)
    with pytest.raises(ValueError, match="is not among the classes"):
        balanced_pixels(scene, scene.field_ids, 5, classes=("Wheat",))
    with pytest.raises(ValueError, match="fill must be"):
        balanced_pixels(scene, scene.field_ids, 5, fill="cubic")  # type: ignore[arg-type]


def test_fill_linear_interpolates_between_clear_observations() -> None:
    x = np.array([[[0.0], [10.0], [0.0], [0.0], [40.0], [0.0]]], dtype=np.float32)  # (1, 6, 1)
    invalid = np.array([[True, False, True, True, False, True]])
    filled, empty = fill_linear(x, invalid)
    np.testing.assert_allclose(filled[0, :, 0], [10, 10, 20, 30, 40, 40])
    assert not empty.any()
    days = np.array([0.0, 1, 2, 3, 4, 5]) ** 2  # irregular stamps: interpolation runs in days, not steps
    by_day, _ = fill_linear(x, invalid, days)
    expected = [10, 10, 10 + 30 * 3 / 15, 10 + 30 * 8 / 15, 40, 40]
    np.testing.assert_allclose(by_day[0, :, 0], expected, rtol=1e-6)
    none, empty = fill_linear(x, np.ones((1, 6), dtype=bool))
    assert empty.all()
    np.testing.assert_array_equal(none, x)


def test_balanced_pixels_linear_fill_leaves_no_cloud(scene: Scene) -> None:
    fields = scene_a_splits(scene)["train"]
    raw, y_raw = balanced_pixels(scene, fields, 20, seed=3)
    filled, y_filled = balanced_pixels(scene, fields, 20, seed=3, fill="linear")
    np.testing.assert_array_equal(y_raw, y_filled)
    assert (raw == 0).all(axis=-1).any() or (raw[..., 1] > 3000).any()  # the raw series hold gaps or clouds
    changed = (raw != filled).any(axis=-1)
    assert changed.any()
    assert not (filled[..., 1] > 3000).any()  # cloud-bright blue replaced by clear neighbours


def test_task_sets_use_disjoint_fields(sim_scene_dir: Path) -> None:
    one = task_sets(sim_scene_dir, 1, n_train=12, n_val=4, seed=0)
    assert one.x_train.shape == (12 * 9, len(one.dates), 12)
    assert one.x_val.shape == (4 * 9, len(one.dates), 12)
    assert one.class_names[0] == "Wheat" and len(one.class_names) == 9
    assert set(one.splits) == {"pretrain", "train", "val"}
    groups = [set(one.pretrain_field_ids.tolist())] + [set(one.splits[k].tolist()) for k in ("train", "val")]
    assert not (groups[0] & groups[1] or groups[0] & groups[2] or groups[1] & groups[2])
    two = task_sets(sim_scene_dir, 2, n_train=12, n_val=4, seed=0)
    assert all(d.year == 2019 for d in two.dates)
    assert set(two.splits) == {"train", "val"}
    np.testing.assert_array_equal(two.pretrain_field_ids, one.pretrain_field_ids)
    assert two.class_names == one.class_names
    with pytest.raises(ValueError, match="task must be 1 or 2"):
        task_sets(sim_scene_dir, 3)
