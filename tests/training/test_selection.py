"""The model-selection split, the tree checks and the classes left out for too few parcels."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from training.data.parcels import load_parcels
from training.downstream.run import DownstreamConfig, TaskData
from training.downstream.selection import carve_selection, holdout_fraction, select_scores
from training.downstream.trees import tree_families

ROOT = Path(__file__).resolve().parents[2]
FLANDERS = ROOT / "sample_data" / "worldcereal" / "2021_BEL_LPIS-Flanders_POLY_110_monthly.parquet"


def _task() -> TaskData:
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), [20, 10, 5])
    x = rng.uniform(0, 1000, (len(y), 4, 2)).astype(np.float32)
    return TaskData(x, y, x[:6], y[:6] % 3, ("a", "b", "c"), ("B02", "B03"))


def test_carve_is_stratified_seeded_and_disjoint() -> None:
    data = _task()
    fit, x_sel, y_sel = carve_selection(data, 0.2, seed=3)
    assert x_sel is not None and y_sel is not None
    assert np.bincount(y_sel).tolist() == [4, 2, 1] and len(fit.y_train) == len(data.y_train) - 7
    # no training series is also a selection series, and the validation (test) series are untouched
    both = np.concatenate([fit.x_train, x_sel]).reshape(len(data.y_train), -1)
    assert len(np.unique(both, axis=0)) == len(data.y_train)
    assert fit.x_val is data.x_val and fit.y_val is data.y_val
    again = carve_selection(data, 0.2, seed=3)[1]
    np.testing.assert_array_equal(again, x_sel)
    assert carve_selection(data, 0.0, seed=3) == (data, None, None)
    assert select_scores(np.array([0, 1, 1]), np.array([0, 1, 0]), 2)["select_accuracy"] == pytest.approx(
        2 / 3
    )


def test_defaults_depend_on_the_task_and_bad_values_are_refused() -> None:
    assert (
        holdout_fraction(DownstreamConfig(task="real")) == 0.2
        and holdout_fraction(DownstreamConfig(task="1")) == 0
    )
    assert tree_families(DownstreamConfig(task="real")) == ("forest", "boosting")
    assert tree_families(DownstreamConfig(task="1")) == () and tree_families(DownstreamConfig(trees=())) == ()
    with pytest.raises(ValueError, match="selection_holdout must be in"):
        DownstreamConfig(selection_holdout=0.6)
    with pytest.raises(ValueError, match="unknown tree family"):
        DownstreamConfig(trees=("catboost",))


def test_classes_with_too_few_parcels_are_left_out_with_a_count(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="training.data.parcels"):
        task = load_parcels(FLANDERS, top_classes=6, season=2020, min_class_parcels=5)
    assert len(task.classes) == 4
    text = caplog.text
    assert (
        "2 of the 6 most frequent classes have fewer than 5 usable parcels and are left out (4 parcels"
        in text
    )
    assert "grid monthly, 12 stamps 2020-11-01 .. 2021-10-01 (season 2020 from 11-01" in text
    assert (
        len(load_parcels(FLANDERS, top_classes=6, season=2020).classes) == 6
    )  # the function's default keeps all
    with pytest.raises(ValueError, match="fewer than 2 classes have 50 usable parcels"):
        load_parcels(FLANDERS, top_classes=6, season=2020, min_class_parcels=50)


def test_splits_of_the_training_samples_keep_each_parcel_on_one_side() -> None:
    import numpy as np

    from training.downstream.recipe import selection_split

    rng = np.random.default_rng(0)
    parcels = np.repeat(np.arange(30), rng.integers(3, 40, 30))  # pixels of 30 parcels
    y = parcels % 3
    for seed in range(5):
        fit, sel = selection_split(y, 0.25, seed, groups=parcels)
        assert not set(parcels[fit]) & set(parcels[sel]) and len(fit) + len(sel) == len(y)
        assert [len(set(parcels[sel][y[sel] == k])) for k in range(3)] == [round(0.25 * 10)] * 3
    fit, sel = selection_split(y, 0.25, 0)  # without groups: by sample
    assert set(parcels[fit]) & set(parcels[sel])


def test_carving_the_selection_split_keeps_parcels_whole_and_carries_their_ids() -> None:
    import numpy as np

    from training.downstream.run import TaskData
    from training.downstream.selection import carve_selection

    parcels = np.repeat(np.arange(12), 5)
    y = parcels % 2
    x = np.random.default_rng(0).normal(size=(60, 3, 2)).astype(np.float32)
    data = TaskData(x, y, x[:4], y[:4], ("a", "b"), ("B04", "B08"), groups_train=parcels)
    fitted, x_sel, y_sel = carve_selection(data, 0.34, seed=0)
    assert fitted.groups_train is not None and len(fitted.groups_train) == len(fitted.y_train)
    assert len(x_sel) == 20 and len(y_sel) == 20  # round(0.34 x 6) = 2 whole parcels of 5 pixels per class
    assert len(set(fitted.groups_train)) == 8 and len(fitted.y_train) == 40  # the other 8 parcels, whole
