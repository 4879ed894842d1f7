"""Tests for field-level splits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from training.data.denethor import read_scene
from training.data.splits import SCENE_A_FRACTIONS, SCENE_B_FRACTIONS, split_fields


@settings(max_examples=60, deadline=None)
@given(
    ids=st.lists(st.integers(1, 10_000), min_size=1, max_size=300, unique=True),
    seed=st.integers(0, 2**31),
    use_scene_b=st.booleans(),
)
def test_split_is_a_partition_close_to_the_fractions(ids: list[int], seed: int, use_scene_b: bool) -> None:
    fractions = SCENE_B_FRACTIONS if use_scene_b else SCENE_A_FRACTIONS
    out = split_fields(ids, fractions, seed)
    assert list(out) == list(fractions)
    joined = np.concatenate(list(out.values()))
    assert sorted(joined.tolist()) == sorted(ids)  # every field exactly once
    for name, share in fractions.items():
        assert abs(out[name].size - share * len(ids)) < 1.0


def test_split_is_seeded_and_ignores_input_order() -> None:
    ids = np.arange(1, 201)
    a = split_fields(ids, SCENE_A_FRACTIONS, seed=7)
    b = split_fields(ids[::-1].copy(), SCENE_A_FRACTIONS, seed=7)
    c = split_fields(ids, SCENE_A_FRACTIONS, seed=8)
    for name in SCENE_A_FRACTIONS:
        np.testing.assert_array_equal(a[name], b[name])
    assert any(not np.array_equal(a[n], c[n]) for n in SCENE_A_FRACTIONS)


def test_stratified_split_puts_every_class_in_every_split() -> None:
    rng = np.random.default_rng(0)
    ids = np.arange(1, 61)
    strata = np.repeat(np.arange(9), [3, 3, 4, 5, 6, 7, 8, 10, 14])
    rng.shuffle(strata)
    out = split_fields(ids, SCENE_A_FRACTIONS, seed=1, strata=strata)
    crop_of = dict(zip(ids.tolist(), strata.tolist(), strict=True))
    for name, members in out.items():
        assert {crop_of[int(i)] for i in members} == set(range(9)), name
    assert out["pretrain"].size > out["train"].size > out["val"].size


def test_no_field_pixels_land_in_two_splits(sim_scene_dir: Path) -> None:
    scene = read_scene(sim_scene_dir / "scene_a")
    strata = [scene.field_crops[int(i)] for i in scene.field_ids]
    out = split_fields(scene.field_ids, SCENE_A_FRACTIONS, seed=0, strata=strata)
    owner = np.full(scene.shape, -1)
    for k, members in enumerate(out.values()):
        pixels = np.isin(scene.field_raster, members)
        assert not (owner[pixels] >= 0).any(), "a pixel belongs to two splits"
        owner[pixels] = k
    np.testing.assert_array_equal(owner >= 0, scene.field_raster > 0)  # and every field pixel to one


@pytest.mark.parametrize(
    ("ids", "fractions", "strata", "message"),
    [
        ([1, 1, 2], {"a": 1.0}, None, "duplicates"),
        ([1, 2], {"a": 0.5, "b": 0.6}, None, "sum to 1"),
        ([1, 2], {"a": 1.2, "b": -0.2}, None, "positive"),
        ([1, 2], {}, None, "empty"),
        ([1, 2], {"a": 1.0}, [0], "strata has 1 entries"),
    ],
)
def test_split_rejects_bad_arguments(
    ids: list[int], fractions: dict[str, float], strata: list[int] | None, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        split_fields(ids, fractions, 0, strata=strata)
