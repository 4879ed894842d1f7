"""Tests for the WorldCereal extraction readers, on small copies of real files (tests/data/worldcereal)."""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cropmap.contract.metadata import TimeGrid
from cropmap.contract.timegrid import fill_gaps
from training.data.worldcereal import (
    FLANDERS_CLASSES,
    NODATA,
    coarse_labels,
    format_ewoc_code,
    on_time_grid,
    read_class_names,
    read_extraction,
    read_long,
    read_wide,
)

DATA = Path(__file__).resolve().parents[1] / "data" / "worldcereal"
FLANDERS = DATA / "2021_BEL_LPIS-Flanders_POLY_110_monthly.parquet"
AFRICA = DATA / "test_public_extractions_africa_wide.parquet"
PROMETHEO = DATA / "prometheo_worldcereal_dataset_wide.parquet"
MAPPINGS = Path(__file__).resolve().parents[2] / "training" / "data" / "crop_type_class_mappings.csv"

NINE = ("B02", "B03", "B04", "B05", "B06", "B07", "B08", "B11", "B12")


def _nov_oct_grid() -> TimeGrid:
    ref = [dt.date(2020, 11, 1), dt.date(2020, 12, 1)] + [dt.date(2021, m, 1) for m in range(1, 11)]
    probe = TimeGrid("11-01", (0,), ())
    return TimeGrid("11-01", tuple(probe.position_of(d) for d in ref), tuple(d.isoformat() for d in ref))


def test_read_long_flanders_shapes_bands_and_nodata(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="training.data.worldcereal"):
        s = read_long(FLANDERS)
    assert s.values.shape == (100, 16, 9)
    assert s.values.dtype == np.float32
    assert s.bands == NINE
    assert "skipping bands B8A" in caplog.text
    # Compare against the raw file: one sample, one date, one band; 65535 becomes NaN.
    df = pd.read_parquet(FLANDERS)
    row = df[(df.sample_id == s.sample_ids[5]) & (df.timestamp == pd.Timestamp("2021-06-01"))].iloc[0]
    t = list(s.dates[5]).index(np.datetime64("2021-06-01"))
    for c, band in enumerate(s.bands):
        raw = row[f"S2-L2A-{band}"]
        got = s.values[5, t, c]
        assert np.isnan(got) if raw == NODATA else got == raw
    n_nodata = int((df[[f"S2-L2A-{b}" for b in NINE]].to_numpy() == NODATA).sum())
    assert int(np.isnan(s.values).sum()) == n_nodata > 0
    assert np.all(np.diff(s.dates.astype("int64"), axis=1) > 0)
    assert set(s.labels.tolist()) == set(df.ewoc_code.unique().tolist())
    assert len(set(s.sample_ids.tolist())) == 100


def test_read_long_band_selection_and_errors() -> None:
    s = read_long(FLANDERS, bands=["B8", "b04"])
    assert s.bands == ("B08", "B04")
    with pytest.raises(ValueError, match="hold only nodata"):
        read_long(FLANDERS, bands=["B8A"])
    with pytest.raises(ValueError, match=r"requested but the file holds"):
        read_long(FLANDERS, bands=["B01"])
    with pytest.raises(ValueError, match="label column 'crop' not found"):
        read_long(FLANDERS, label_column="crop")


def test_read_long_puts_ragged_series_on_the_union_of_timestamps(tmp_path: Path) -> None:
    df = pd.read_parquet(FLANDERS)
    first = df.sort_values(["sample_id", "timestamp"]).iloc[0]
    df = df.drop(
        index=df.index[(df["sample_id"] == first["sample_id"]) & (df["timestamp"] == first["timestamp"])]
    )
    path = tmp_path / "ragged.parquet"
    df.to_parquet(path)
    full, ragged = read_long(FLANDERS), read_long(path)
    assert ragged.values.shape == full.values.shape
    row = list(ragged.sample_ids).index(str(first["sample_id"]))
    assert np.isnan(ragged.values[row, 0]).all()  # the missing row is a gap
    np.testing.assert_array_equal(ragged.values[row, 1:], full.values[row, 1:])
    np.testing.assert_array_equal(ragged.dates, full.dates)


def test_read_wide_africa_dates_and_values() -> None:
    s = read_wide(AFRICA)
    assert s.values.shape == (500, 12, 10)
    assert s.bands == ("B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12")
    assert str(s.dates[0, 0]) == "2016-12-01" and str(s.dates[0, -1]) == "2017-11-01"
    df = pd.read_parquet(AFRICA)
    raw = df["OPTICAL-B11-ts7-20m"].to_numpy()
    got = s.values[:, 7, s.bands.index("B11")]
    assert np.array_equal(np.isnan(got), raw == NODATA)
    assert np.array_equal(got[raw != NODATA], raw[raw != NODATA].astype(np.float32))
    assert s.labels.tolist() == df.ewoc_code.tolist()


def test_read_wide_prometheo_needs_its_label_column() -> None:
    with pytest.raises(ValueError, match="CROPTYPE_LABEL"):
        read_wide(PROMETHEO)
    s = read_extraction(PROMETHEO, label_column="CROPTYPE_LABEL")
    assert s.values.shape == (50, 16, 9)  # B8A holds no data there
    assert str(s.dates[0, 0]) == "2020-08-01" and str(s.dates[0, -1]) == "2021-11-01"
    assert s.sample_ids[0].startswith("2021_BE_Flanders")


def test_read_wide_rejects_dates_that_miss_end_date(tmp_path: Path) -> None:
    df = pd.read_parquet(AFRICA)
    df["end_date"] = "2018-01-01"
    path = tmp_path / "bad.parquet"
    df.to_parquet(path)
    with pytest.raises(ValueError, match="do not end in the month of end_date"):
        read_wide(path)


def test_read_extraction_rejects_other_files(tmp_path: Path) -> None:
    path = tmp_path / "x.parquet"
    pd.DataFrame({"a": [1, 2]}).to_parquet(path)
    with pytest.raises(ValueError, match="neither long"):
        read_extraction(path)


def test_on_time_grid_matches_fill_gaps_on_the_season() -> None:
    s = read_long(FLANDERS)
    grid = _nov_oct_grid()
    g = on_time_grid(s, grid, season=2020, min_valid=6)
    assert g.x.shape == (100, 12, 9)
    # The season is 2020-11 .. 2021-10: observations 3..14 of the 16 monthly steps.
    want, n_valid, ok = fill_gaps(
        s.values[:, 3:15], np.array(grid.day_of_season), grid.day_of_season, min_valid=6
    )
    np.testing.assert_array_equal(g.ok, ok)
    np.testing.assert_array_equal(g.n_valid, n_valid)
    np.testing.assert_array_equal(g.x[ok], want[ok])
    assert np.isfinite(g.x[g.ok]).all()
    assert np.isnan(g.x[~g.ok]).all()
    assert 0 < int((~g.ok).sum()) < 10  # real data: a few parcels are too cloudy


def test_on_time_grid_other_season_and_empty_season() -> None:
    s = read_long(FLANDERS)
    grid = _nov_oct_grid()
    g = on_time_grid(s, grid, season=2019, min_valid=1)  # only 2020-08..10 fall in the 2019 season
    assert g.n_valid.max() <= 3
    g = on_time_grid(s, grid, season=2030, min_valid=1)
    assert not g.ok.any()


def test_read_class_names_and_ewoc_format() -> None:
    names = read_class_names(MAPPINGS)
    assert names[1101060000] == "maize"
    assert names[2001020000] == "managed_grasslands"
    assert format_ewoc_code(1101060000) == "11-01-06-000-0"
    assert read_class_names(MAPPINGS, column="level_2")[1101060000] == "cereals"
    with pytest.raises(ValueError, match="column 'nope' not found"):
        read_class_names(MAPPINGS, column="nope")


def test_coarse_labels_flanders() -> None:
    s = read_long(FLANDERS)
    coarse = coarse_labels(s.labels)
    counts = {c.name: int((coarse == c.code).sum()) for c in FLANDERS_CLASSES}
    assert counts == {
        "grassland": 28,
        "maize": 12,
        "other arable crops": 20,
        "non-cropland and perennial": 40,
    }
    assert coarse_labels(np.array([1101060000, 1101010001]))[0] == 2  # longest prefix wins
    with pytest.raises(ValueError, match="00-00-00-000-0"):
        coarse_labels(np.array([0, 1101060000]))
