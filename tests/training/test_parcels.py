"""A user's labelled parcels as a task: legend, grid, split, and one-line refusals of bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from training.data.parcels import load_parcels, time_grid
from training.downstream.run import main

ROOT = Path(__file__).resolve().parents[2]
FRANCE = ROOT / "sample_data" / "worldcereal" / "2022_FRA_LPIS_POLY_110_monthly.geoparquet"
FLANDERS = ROOT / "sample_data" / "worldcereal" / "2021_BEL_LPIS-Flanders_POLY_110_monthly.parquet"


def test_grids() -> None:
    monthly = time_grid("monthly", "11-01", 2021)
    assert monthly.reference_dates[0] == "2021-11-01" and monthly.reference_dates[-1] == "2022-10-01"
    dekadal = time_grid("dekadal", "11-01", 2021)
    assert len(dekadal.day_of_season) == 36 and dekadal.reference_dates[1] == "2021-11-11"
    given = time_grid("12-01,03-15,06-01", "11-01", 2021)
    assert given.reference_dates == ("2021-12-01", "2022-03-15", "2022-06-01")
    for bad in ("weekly", "06-01,03-01"):
        with pytest.raises(ValueError, match="grid"):
            time_grid(bad, "11-01", 2021)


def test_france_top6_with_missing_steps_split_seed_and_split_file(tmp_path: Path) -> None:
    df = pd.read_parquet(FRANCE)
    gappy = tmp_path / "gappy.parquet"
    df.drop(df.sample(frac=0.05, random_state=0).index).to_parquet(gappy)  # parcels now miss time steps
    task = load_parcels(gappy, top_classes=6, grid="dekadal", split_seed=1)
    assert task.x_train.shape[1:] == (36, 9) and np.isfinite(task.x_train).all()
    assert len(task.classes) == 6 and task.classes[0].name == "grassland_with_tree_shrub"
    other = load_parcels(gappy, top_classes=6, grid="dekadal", split_seed=2)
    assert set(task.ids_val) != set(other.ids_val)  # the split has its own seed
    split = tmp_path / "split.csv"
    ids = np.concatenate([task.ids_train, task.ids_val])
    pd.DataFrame(
        {"sample_id": ids, "split": ["train"] * len(task.ids_train) + ["val"] * len(task.ids_val)}
    ).to_csv(split, index=False)
    given = load_parcels(gappy, top_classes=6, grid="dekadal", split_file=split)
    assert sorted(given.ids_val) == sorted(task.ids_val)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--label-column", "crop"], "label column 'crop' not found"),
        (["--classes", "40", "--set", "min_class_parcels=0"], "fewer than 2 usable parcels"),
        (
            ["--classes", "40", "--set", "min_class_parcels=200"],
            "fewer than 2 classes have 200 usable parcels",
        ),
        (["--season", "2022"], "does not fit the data"),  # the data end in 2023-01
        (["--season", "2030"], "no valid observation in season 2030"),
    ],
)
def test_bad_input_is_one_line(args: list[str], message: str, tmp_path: Path, capsys) -> None:
    rc = main(
        [
            "--task",
            "real",
            "--data",
            str(FRANCE),
            "--families",
            "lstm",
            "--variants",
            "1",
            "--epochs",
            "1",
            "--out",
            str(tmp_path / "o"),
            "--no-progress",
            *args,
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and err[-1].startswith("Error: ") and message in err[-1]
    assert not any("Traceback" in line for line in err)
