"""Tests for the Sentinel-2 / Sentinel-1 pairing of WorldCereal extractions (training.data.s1pairs)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from training.data import s1pairs
from training.data.s1pairs import S1_NODATA, extraction_pairs, s1_to_db, write_pairs
from training.evaluate.cli import S1_DATASETS
from training.pretrain.run import main as pretrain_main

DATA = Path(__file__).resolve().parents[1] / "data" / "worldcereal"
FLANDERS = DATA / "2021_BEL_LPIS-Flanders_POLY_110_monthly.parquet"
AFRICA = DATA / "test_public_extractions_africa_wide.parquet"
NINE = ["B02", "B03", "B04", "B05", "B06", "B07", "B08", "B11", "B12"]
S2_COLS = [f"S2-L2A-{b}" for b in NINE]
TINY = [
    "--set",
    "epochs=1",
    "--set",
    "batch_size=64",
    "--set",
    "encoder.hidden=16",
    "--set",
    "encoder.n_layers=2",
    "--set",
    "encoder.out_dim=16",
    "--set",
    "projector.hidden=16",
    "--set",
    "projector.out=16",
    "--no-progress",
]


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def _frame(path: Path = FLANDERS) -> pd.DataFrame:
    df = pd.read_parquet(path)
    df["sample_id"] = df["sample_id"].astype(str)
    df["date"] = df["timestamp"].to_numpy().astype("datetime64[D]")
    return df.set_index(["sample_id", "date"])


def test_long_pairs_equal_parquet_cells() -> None:
    before = _md5(FLANDERS)
    pairs = extraction_pairs(FLANDERS)
    df = _frame()
    s2_ok = (df[S2_COLS] != 65535).all(axis=1) & ~(df[S2_COLS] == 0).all(axis=1)
    s1_ok = (df[["S1-SIGMA0-VV", "S1-SIGMA0-VH"]] != S1_NODATA).all(axis=1)
    c = pairs.counts
    assert (c.observations, c.samples) == (1600, 100)
    assert c.pairs == c.both_valid == int((s2_ok & s1_ok).sum()) == 1379
    assert c.s2_missing == int((~s2_ok & s1_ok).sum()) == 221
    assert c.s1_missing == c.both_missing == 0
    assert pairs.s2.shape == (1379, 9) and pairs.s1.shape == (1379, 2)
    assert pairs.bands == tuple(NINE) and pairs.s1_bands == ("VV", "VH") and pairs.units == "db"
    assert np.isfinite(pairs.s2).all() and np.isfinite(pairs.s1).all()
    # every pair is one parquet row: same sample, same date, the cells' values
    rows = df.loc[list(zip(pairs.sample_ids, pairs.dates, strict=True))]
    assert bool(s2_ok.loc[rows.index].all())
    np.testing.assert_array_equal(pairs.s2, rows[S2_COLS].to_numpy(dtype=np.float32))
    dn = rows[["S1-SIGMA0-VV", "S1-SIGMA0-VH"]].to_numpy(dtype=np.float64)
    np.testing.assert_allclose(pairs.s1, 20 * np.log10(dn) - 83, rtol=0, atol=1e-4)
    np.testing.assert_array_equal(pairs.labels, rows["ewoc_code"].to_numpy())
    # the dropped rows are exactly the ones with S2 nodata
    assert set(df.index[~s2_ok]).isdisjoint(zip(pairs.sample_ids, pairs.dates, strict=True))
    raw = extraction_pairs(FLANDERS, units="dn")
    np.testing.assert_array_equal(raw.s1, dn.astype(np.float32))
    assert _md5(FLANDERS) == before


def test_s1_nodata_dropped_and_counted(tmp_path: Path) -> None:
    df = pd.read_parquet(FLANDERS)
    clear = np.flatnonzero(((df[S2_COLS] != 65535).all(axis=1)).to_numpy())
    df.loc[df.index[clear[:5]], "S1-SIGMA0-VV"] = S1_NODATA  # one polarisation missing: the observation is
    df.loc[df.index[clear[5:8]], "S1-SIGMA0-VH"] = 0  # no data as a whole; 0 has no logarithm
    s2_gap = np.flatnonzero(((df[S2_COLS] == 65535).any(axis=1)).to_numpy())
    df.loc[df.index[s2_gap[:4]], "S1-SIGMA0-VH"] = S1_NODATA
    path = tmp_path / "edited.parquet"
    df.to_parquet(path)
    pairs = extraction_pairs(path)
    c = pairs.counts
    assert (c.s1_missing, c.both_missing, c.s2_missing) == (8, 4, 217)
    assert c.pairs == 1379 - 8
    assert np.isfinite(pairs.s1).all() and pairs.s1.min() > -60 and pairs.s1.max() < 20
    dropped = set(
        zip(
            df["sample_id"].astype(str).iloc[clear[:8]],
            df["timestamp"].iloc[clear[:8]].to_numpy().astype("datetime64[D]"),
            strict=True,
        )
    )
    assert dropped.isdisjoint(zip(pairs.sample_ids, pairs.dates, strict=True))


def test_wide_layout_pairs_by_time_step() -> None:
    pairs = extraction_pairs(AFRICA, units="dn")
    df = pd.read_parquet(AFRICA)
    bands = ["B02", "B03", "B04", "B05", "B06", "B07", "B08", "B11", "B12", "B8A"]
    assert set(pairs.bands) == set(bands)
    res = {b: 10 if b in ("B02", "B03", "B04", "B08") else 20 for b in bands}
    cols = [f"OPTICAL-{b}-ts{i}-{res[b]}m" for b in pairs.bands for i in range(12)]
    s2 = df[cols].to_numpy().reshape(len(df), len(pairs.bands), 12).transpose(0, 2, 1)  # (N, T, C)
    s1 = np.stack([df[[f"SAR-{p}-ts{i}-20m" for i in range(12)]].to_numpy() for p in ("VV", "VH")], -1)
    s2_ok = (s2 != 65535).all(-1) & ~(s2 == 0).all(-1)
    s1_ok = ((s1 != 65535) & (s1 > 0)).all(-1)
    c = pairs.counts
    assert c.observations == 6000 and c.pairs == int((s2_ok & s1_ok).sum())
    assert (c.s2_missing, c.s1_missing, c.both_missing) == (
        int((~s2_ok & s1_ok).sum()),
        int((s2_ok & ~s1_ok).sum()),
        int((~s2_ok & ~s1_ok).sum()),
    )
    assert c.s1_missing > 0 and c.both_missing > 0
    i, t = np.nonzero(s2_ok & s1_ok)
    np.testing.assert_array_equal(pairs.s2, s2[i, t].astype(np.float32))
    np.testing.assert_array_equal(pairs.s1, s1[i, t].astype(np.float32))
    start = pd.to_datetime(df["start_date"]).to_numpy().astype("datetime64[M]")
    np.testing.assert_array_equal(
        pairs.dates, (start[i] + t.astype("timedelta64[M]")).astype("datetime64[D]")
    )


def test_timewise_keeps_complete_samples_only() -> None:
    pairs = extraction_pairs(FLANDERS, alignment="time")
    df = _frame()
    ok = ((df[S2_COLS] != 65535).all(axis=1)).groupby(level=0).all()
    assert pairs.s2.shape == (int(ok.sum()), 16, 9) and pairs.s1.shape == (int(ok.sum()), 16, 2)
    assert pairs.counts.samples_kept == int(ok.sum()) == 16
    assert sorted(pairs.sample_ids) == sorted(ok.index[ok])
    assert (np.diff(pairs.dates, axis=1) > np.timedelta64(0, "D")).all()


def test_db_conversion() -> None:
    got = s1_to_db(np.array([10 ** (73 / 20), 65535, 0, 1], dtype=np.float64))
    np.testing.assert_allclose(got[[0, 3]], [-10.0, -83.0], atol=1e-4)
    assert np.isnan(got[1]) and np.isnan(got[2])


def test_cli_missing_s1_columns_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    df = pd.read_parquet(FLANDERS).drop(columns=["S1-SIGMA0-VV", "S1-SIGMA0-VH"])
    path = tmp_path / "no_s1.parquet"
    df.to_parquet(path)
    assert s1pairs.main([str(path), "-o", str(tmp_path / "out.npz")]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("Error: ")
    assert "'S1-SIGMA0-<VV|VH>'" in err and "'SAR-<VV|VH>-ts<i>-<res>m'" in err
    assert "no Sentinel-1 column" in err
    assert not (tmp_path / "out.npz").exists()
    # one polarisation present, both asked for: names what was found
    pd.read_parquet(FLANDERS).drop(columns=["S1-SIGMA0-VH"]).to_parquet(path)
    assert s1pairs.main([str(path), "-o", str(tmp_path / "out.npz")]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "['VH'] not found" in err and "S1-SIGMA0-VV" in err
    assert s1pairs.main([str(tmp_path / "absent.parquet"), "-o", str(tmp_path / "out.npz")]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("Error: ") and "absent.parquet does not exist" in err
    assert s1pairs.main([str(FLANDERS), "-o", str(tmp_path / "out.npz"), "--units", "db10"]) == 2
    assert "Invalid value for '--units'" in capsys.readouterr().err


def test_cli_writes_what_pretrain_reads(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "pairs.npz"
    assert s1pairs.main([str(FLANDERS), "-o", str(out)]) == 0
    assert "1,379 point-wise pairs" in capsys.readouterr().out
    with np.load(out) as npz:
        assert npz["s2"].shape == (1379, 9) and npz["ps"].shape == (1379, 2)
        assert list(npz["bands"]) == NINE and list(npz["ps_bands"]) == ["VV", "VH"]
        assert len(npz["sample_id"]) == len(npz["date"]) == len(npz["label"]) == 1379
    assert [p.name for p in tmp_path.iterdir()] == ["pairs.npz"]  # no temporary left behind
    stamp = out.stat().st_mtime_ns
    assert s1pairs.main([str(FLANDERS), "--out", str(out)]) == 1  # --out: the old spelling of -o
    assert capsys.readouterr().err == f"Error: --output {out} exists; pass --overwrite to replace it\n"
    assert out.stat().st_mtime_ns == stamp
    assert s1pairs.main([str(FLANDERS), "-o", str(out), "--overwrite", "--alignment", "time"]) == 0
    assert "16 time-wise pairs" in capsys.readouterr().out
    assert s1pairs.main([str(FLANDERS), "-o", str(out), "--overwrite"]) == 0
    capsys.readouterr()
    run = tmp_path / "run"
    args = ["--data", str(out), "--out", str(run), "--mode", "bimodal", "--alignment", "point", *TINY]
    assert pretrain_main(args) == 0
    enc = torch.load(run / "encoder.pt", weights_only=True)
    assert enc["ps_in_dim"] == 2 and enc["in_dim"] == 9 and enc["bands"] == NINE
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert len(state["ps_norm_stats"]["mean"]) == 2


def test_timewise_and_single_polarisation_pretrain(tmp_path: Path) -> None:
    pairs = extraction_pairs(FLANDERS, alignment="time", polarisations=["VH"])
    assert pairs.s1.shape == (16, 16, 1)
    out = write_pairs(pairs, tmp_path / "time.npz")
    tw = [
        "--set",
        "timewise.d_model=16",
        "--set",
        "timewise.n_layers=1",
        "--set",
        "timewise.n_heads=2",
        "--set",
        "timewise.out_dim=16",
        "--set",
        "batch_size=8",
    ]
    run = tmp_path / "run"
    args = ["--data", str(out), "--out", str(run), "--mode", "bimodal", "--alignment", "time", *TINY, *tw]
    assert pretrain_main(args) == 0
    assert torch.load(run / "encoder.pt", weights_only=True)["ps_in_dim"] == 1


def test_experiment_refuses_doc_without_markers(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from training.evaluate import s1_bimodal

    doc = tmp_path / "doc.md"
    doc.write_text("# no markers\n")
    assert s1_bimodal.main(["--out", str(tmp_path / "run"), "--write-doc", str(doc)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("Error: ") and "s1-bimodal" in err
    assert not (tmp_path / "run").exists() and doc.read_text() == "# no markers\n"
    # The old list spellings still parse (--seeds 0 1 2, --datasets a b); a bad value is a usage error.
    old = ["--seeds", "0", "1", "--datasets", "flanders2021", "france2022", "--epochs", "1"]
    assert s1_bimodal.main(["--out", str(tmp_path / "run"), *old, "--write-doc", str(doc)]) == 1
    assert "lacks the" in capsys.readouterr().err
    assert s1_bimodal.main(["--datasets", "mars2030", "--write-doc", str(doc)]) == 2
    assert "Invalid value for '--dataset'" in capsys.readouterr().err
    assert sorted(s1_bimodal.DATASETS) == list(S1_DATASETS)


def test_list_options_spread_like_nargs_plus() -> None:
    import click

    from training.evaluate.cli import ListOptionsCommand

    class Cmd(ListOptionsCommand):
        list_options = ("--seeds",)

    @click.command(cls=Cmd)
    @click.option("--seeds", type=int, multiple=True)
    @click.option("--epochs", type=int)
    @click.argument("rest", nargs=-1)
    def cmd(seeds: tuple[int, ...], epochs: int | None, rest: tuple[str, ...]) -> None:
        click.echo(f"{seeds} {epochs} {rest}")

    from click.testing import CliRunner

    res = CliRunner().invoke(cmd, ["--seeds", "0", "1", "2", "--epochs", "3", "x"])
    assert res.output == "(0, 1, 2) 3 ('x',)\n"
    res = CliRunner().invoke(cmd, ["--epochs", "3", "x", "--seeds", "4", "--seeds", "5"])
    assert res.output == "(4, 5) 3 ('x',)\n"


@pytest.mark.slow
def test_experiment_runs_on_flanders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import json

    from training.evaluate import s1_bimodal

    monkeypatch.chdir(Path(__file__).resolve().parents[2])
    doc = tmp_path / "doc.md"
    doc.write_text(f"head\n{s1_bimodal.START}\nold\n{s1_bimodal.END}\ntail\n")
    out = tmp_path / "run"
    args = ["--out", str(out), "--datasets", "flanders2021", "--seeds", "0", "1", "--epochs", "1"]
    args += ["--write-doc", str(doc)]
    assert s1_bimodal.main(args) == 0
    runs = json.loads((out / "results.json").read_text())
    assert [r["seed"] for r in runs] == [0, 1]
    for r in runs:
        assert set(r["scores"]) == {*s1_bimodal.FEATURES, s1_bimodal.RAW_S2S1}
        assert all(0.0 <= v <= 1.0 for s in r["scores"].values() for v in s.values())
        assert r["pairs"]["pretrain"] + r["pairs"]["held_out"] == r["pairs"]["file"]["pairs"] == 1379
    text = doc.read_text()
    assert text.startswith("head\n") and text.endswith("tail\n") and "old" not in text
    assert "| bi-modal S2 + S1 (Eq. 1) |" in text
