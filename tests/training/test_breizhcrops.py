"""Tests for the BreizhCrops raw CSV reader on six real Bavarian parcels (tests/data/breizhcrops)."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cropmap.contract.bands import S2_BANDS
from training.data.breizhcrops import UnknownCropCodeError, read_classmapping, read_parcels, read_split_ids

DATA = Path(__file__).resolve().parents[1] / "data" / "breizhcrops"


@pytest.fixture
def data_copy(tmp_path: Path) -> Path:
    return Path(shutil.copytree(DATA, tmp_path / "breizhcrops"))


def test_read_parcels_returns_every_parcel_with_labels_and_splits() -> None:
    parcels = read_parcels(DATA)
    assert [p.parcel_id for p in parcels] == [71456800, 71456939, 71459051, 71459107, 71459175, 71459190]
    by_id = {p.parcel_id: p for p in parcels}
    assert [by_id[i].split for i in (71456800, 71459051, 71459175)] == ["eval", "train", "valid"]
    assert by_id[71456939].code == 422 and by_id[71456939].label == 2
    assert by_id[71456939].class_name == "clover alfalfa protein plants"
    assert by_id[71459175].class_name == "cattle meadow" and by_id[71459175].label == 16
    assert by_id[71456800].x.shape == (90, 13)
    for p in parcels:
        assert p.x.dtype == np.float32 and p.x.shape[1] == len(S2_BANDS)
        assert p.dates.dtype == np.dtype("datetime64[D]")
        assert (np.diff(p.dates) >= np.timedelta64(0, "D")).all()
        assert p.dates[0] >= np.datetime64("2018-01-01") and p.dates[-1] <= np.datetime64("2018-12-31")
        assert p.cloudy.shape == p.dates.shape


def test_bands_come_out_in_canonical_order() -> None:
    """The CSV orders columns B1, B10, B11, B12, B2, ...; the reader returns S2_BANDS order."""
    parcel = next(p for p in read_parcels(DATA) if p.parcel_id == 71459107)
    raw = pd.read_csv(DATA / "csv" / "regionA" / "71459107.csv").sort_values("doa", kind="stable")
    for k, band in enumerate(S2_BANDS):
        column = "B8A" if band == "B8A" else f"B{int(band[1:])}"
        np.testing.assert_allclose(parcel.x[:, k], raw[column].to_numpy(dtype=np.float32))
    assert parcel.x[0, S2_BANDS.index("B02")] == pytest.approx(3912.1029, rel=1e-6)


def test_empty_rows_are_nan_and_can_be_dropped() -> None:
    parcel = next(p for p in read_parcels(DATA) if p.parcel_id == 71456800)
    empty = np.isnan(parcel.x).all(axis=1)
    partial = np.isnan(parcel.x).any(axis=1) & ~empty
    assert empty.sum() == 6 and partial.sum() == 10
    assert np.datetime64("2018-02-28") in parcel.dates[empty]
    dropped = next(p for p in read_parcels(DATA, drop_empty=True) if p.parcel_id == 71456800)
    assert dropped.x.shape == (84, 13) and dropped.dates.shape == (84,) and dropped.cloudy.shape == (84,)
    assert not np.isnan(dropped.x).all(axis=1).any()


def test_qa60_cloud_bits_flag_cloudy_rows() -> None:
    parcel = next(p for p in read_parcels(DATA) if p.parcel_id == 71459107)
    raw = pd.read_csv(DATA / "csv" / "regionA" / "71459107.csv").sort_values("doa", kind="stable")
    expected = (raw["QA60"].to_numpy().astype(int) & (1024 | 2048)) != 0
    np.testing.assert_array_equal(parcel.cloudy, expected)
    assert parcel.cloudy[0]  # 2018-01-02 has QA60 = 1024 (opaque cloud)
    # Cloudy rows are brighter in blue than clear ones: the flag means what it says.
    blue = parcel.x[:, S2_BANDS.index("B02")]
    assert np.nanmedian(blue[parcel.cloudy]) > np.nanmedian(blue[~parcel.cloudy])


def test_filters_by_split_and_region() -> None:
    assert {p.parcel_id for p in read_parcels(DATA, split="valid")} == {71459175, 71459190}
    assert len(read_parcels(DATA, region="REGIONA")) == 6
    with pytest.raises(FileNotFoundError, match="region 'regionB' not found"):
        read_parcels(DATA, region="regionB")


def test_classmapping_and_split_ids() -> None:
    classes = read_classmapping(DATA / "classmapping.csv")
    assert classes.at[451, "classname"] == "machined meadow" and classes.at[451, "id"] == 15
    ids = read_split_ids(DATA)
    assert ids[("regiona", "train")] == {71459051, 71459107}


def test_unknown_crop_codes_raise_or_are_skipped(data_copy: Path, caplog: pytest.LogCaptureFixture) -> None:
    classes = pd.read_csv(data_copy / "classmapping.csv")
    classes[classes.nutzcode != 422].to_csv(data_copy / "classmapping.csv", index=False)
    with pytest.raises(UnknownCropCodeError, match=r"crop code 422 is not in classmapping\.csv"):
        read_parcels(data_copy)
    with caplog.at_level(logging.INFO, logger="training.data.breizhcrops"):
        parcels = read_parcels(data_copy, on_unknown_code="skip")
    assert len(parcels) == 5 and "skipped 1 parcels" in caplog.text


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda f: f.drop(columns="B8A"), r"band column\(s\) \['B8A'\] missing"),
        (lambda f: f.rename(columns={"QA20": "cloudiness"}), "'cloudiness' is neither a band"),
        (lambda f: f.drop(columns="doa"), "column 'doa' missing"),
        (lambda f: f.assign(label=[451] * (len(f) - 1) + [422]), "expected one label and one id"),
        (lambda f: f.assign(id=1), "its id column says 1"),
    ],
)
def test_malformed_csv_is_rejected(data_copy: Path, edit: object, message: str) -> None:
    path = data_copy / "csv" / "regionA" / "71459107.csv"
    frame = pd.read_csv(path, index_col=0)
    edit(frame).to_csv(path)  # type: ignore[operator]
    with pytest.raises(ValueError, match=message):
        read_parcels(data_copy)


def test_parcel_in_two_splits_is_an_error(data_copy: Path) -> None:
    with open(data_copy / "ids" / "regiona_valid.txt", "a") as fh:
        fh.write("\n71459107\n")
    with pytest.raises(ValueError, match=r"parcel 71459107 .* listed in splits"):
        read_parcels(data_copy)


def test_missing_layout_is_reported(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="BreizhCrops raw CSV layout"):
        read_parcels(tmp_path)
