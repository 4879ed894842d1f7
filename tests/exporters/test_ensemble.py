"""Cross-family ensembles: every kept run's probabilities averaged in one bundle, weighed on the selection split."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from test_trees import K, _task

from cropmap.runtime import load_bundle
from exporters.__main__ import main as exporters_main
from exporters.ensemble import ENSEMBLE_FAMILY, paired_stderr
from exporters.parity import softmax
from exporters.score import main as score_main
from training.downstream.run import DownstreamConfig, run_comparison


def _cfg(**changes: object) -> DownstreamConfig:
    """A small downstream configuration: one LSTM run and the feature forest, untuned."""
    base: dict[str, object] = {
        "task": "real",
        "families": ("lstm",),
        "variants": 0,
        "default_variant": True,
        "epochs": 1,
        "batch_size": 16,
        "recipe": "papers",
        "baselines": False,
        "trees": ("forest",),
        "tree_trials": 0,
    }
    return DownstreamConfig(**{**base, **changes})  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A downstream run with a neural family (two seeds) and a tree family."""
    cfg = _cfg(repeats=2, epochs=2)
    out = tmp_path_factory.mktemp("ens") / "run"
    run_comparison(cfg, _task(), [], out, show_progress=False)
    return out


def _probabilities(bundle: Path, x: np.ndarray) -> np.ndarray:
    return softmax(load_bundle(bundle).run(x))


def test_always_exports_the_mean_of_every_kept_run(run: Path, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    recs = [json.loads(line) for line in (run / "results.jsonl").read_text().splitlines()]
    members = [r for r in recs if r["model"] and not r["family"].endswith("_ensemble")]
    assert {r["family"] for r in members} == {"lstm", "forest"} and len(members) == 3
    out = tmp_path / "ens.onnx"
    assert exporters_main(["--best", str(run), "-o", str(out), "--ensemble", "always"]) == 0
    printed = capsys.readouterr().out
    assert "cross-family ensemble of 3 runs" in printed and "--ensemble always" in printed
    assert "max |probability diff| vs the members' mean" in printed
    # the bundle's probabilities are the mean of its members' own bundles' probabilities
    with np.load(run / "validation-taskreal.npz") as val:
        x, y = val["x"], val["y"]
    singles = []
    for i, r in enumerate(members):
        one = tmp_path / f"m{i}.onnx"
        assert exporters_main([str(run / r["model"]), "-o", str(one)]) == 0
        singles.append(_probabilities(one, x))
    bundle = load_bundle(out)
    got = softmax(bundle.run(x))
    np.testing.assert_allclose(got, np.mean(singles, axis=0), atol=1e-5)
    meta = bundle.metadata
    assert meta.model_name == ENSEMBLE_FAMILY and meta.embedding is None and len(meta.classes) == K
    with np.load(run / "selection-taskreal.npz") as sel:
        assert meta.calibration is not None and meta.calibration.n == len(sel["y"])
    # the test scores in the provenance are what `export score` measures on the test series
    pred = got.argmax(1)
    assert meta.provenance.metrics["test_accuracy"] == pytest.approx(float((pred == y).mean()))
    assert (
        score_main(
            [str(out), "--data", str(run / "validation-taskreal.npz"), "--json", str(tmp_path / "s.json")]
        )
        == 0
    )
    scored = json.loads((tmp_path / "s.json").read_text())
    assert scored["accuracy"] == pytest.approx(meta.provenance.metrics["test_accuracy"])
    assert scored["macro_f1"] == pytest.approx(meta.provenance.metrics["test_macro_f1"])


def test_never_and_auto(run: Path, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    single = tmp_path / "single.onnx"
    assert exporters_main(["--best", str(run), "-o", str(single), "--ensemble", "never"]) == 0
    assert load_bundle(single).metadata.model_name != ENSEMBLE_FAMILY
    assert "best of" in capsys.readouterr().out
    auto = tmp_path / "auto.onnx"
    assert exporters_main(["--best", str(run), "-o", str(auto)]) == 0
    printed = capsys.readouterr().out
    chose_ensemble = load_bundle(auto).metadata.model_name == ENSEMBLE_FAMILY
    assert ("cross-family ensemble of 3 runs" in printed) == chose_ensemble
    # an existing output is refused before anything is exported, and left as it was
    assert exporters_main(["--best", str(run), "-o", str(auto), "--ensemble", "always"]) == 1
    assert "exists; pass --overwrite" in capsys.readouterr().err
    assert load_bundle(auto).metadata.model_name == (
        ENSEMBLE_FAMILY if chose_ensemble else load_bundle(single).metadata.model_name
    )
    # reduced precision: refused with one line when the ensemble is chosen, nothing written
    q = tmp_path / "q.onnx"
    status = exporters_main(["--best", str(run), "-o", str(q), "--ensemble", "always", "--weights", "int8"])
    assert status == 1 and not q.exists()
    assert "fp32 only" in capsys.readouterr().err


def test_always_needs_two_families(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    cfg = _cfg(trees=())
    run = tmp_path / "run"
    run_comparison(cfg, _task(12), [], run, show_progress=False)
    status = exporters_main(["--best", str(run), "-o", str(tmp_path / "x.onnx"), "--ensemble", "always"])
    assert status == 1 and not (tmp_path / "x.onnx").exists()
    assert "at least two families" in capsys.readouterr().err


def test_paired_stderr_is_zero_for_identical_predictions_and_grows_with_disagreement() -> None:
    y = np.array([0, 1, 2] * 10)
    same = paired_stderr(y, y, y, 3, "accuracy", n=200)
    assert same == 0.0
    noisy = y.copy()
    noisy[::3] = (noisy[::3] + 1) % 3
    assert paired_stderr(y, y, noisy, 3, "accuracy", n=200) > 0.02


def test_a_single_run_replaces_the_ensemble_only_beyond_two_standard_errors(caplog) -> None:  # type: ignore[no-untyped-def]
    from exporters.ensemble import SINGLE_LEAD, single_leads

    assert SINGLE_LEAD == 2.0
    with caplog.at_level(logging.INFO, logger="exporters.ensemble"):
        assert not single_leads(
            0.15, 0.1
        )  # 1.5 standard errors: within the winner's curse, the ensemble stays
        assert not single_leads(0.2, 0.1)
        assert not caplog.records
        assert single_leads(0.25, 0.1)
    assert "more than 2 standard errors" in caplog.text
    assert not single_leads(-0.05, 0.0)  # behind the ensemble: never


def test_a_family_ensemble_is_not_a_member_its_runs_are(tmp_path: Path) -> None:
    from exporters.ensemble import member_records

    (tmp_path / "models").mkdir()
    recs = []
    for name, family in [
        ("a", "lstm"),
        ("b", "lstm"),
        ("c", "lstm_ensemble"),
        ("d", "forest"),
        ("e", "majority"),
    ]:
        if name != "e":
            (tmp_path / "models" / f"{name}.pt").write_bytes(b"")
        recs.append({"family": family, "model": None if name == "e" else f"models/{name}.pt"})
    assert [r["family"] for r in member_records(tmp_path, recs)] == ["lstm", "lstm", "forest"]


def test_cropmap_classify_runs_an_ensemble_bundle_on_the_sample_stack(tmp_path: Path) -> None:
    """An ensemble bundle on the sample stack's bands and grid maps it like any bundle (classify unchanged)."""
    import subprocess
    import sys

    import rasterio

    from cropmap.models import DEFAULT_BUNDLE
    from training.downstream.tasks import TaskData

    sample = load_bundle(DEFAULT_BUNDLE).metadata
    t, c, k = len(sample.time_grid.day_of_season), len(sample.bands), len(sample.classes)
    rng = np.random.default_rng(0)

    def series(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = np.repeat(np.arange(k), n)
        peak = np.exp(-((np.arange(t)[None, :, None] - 2 - 2 * y[:, None, None]) ** 2) / 4.0)
        x = 800 + 3000 * peak + rng.normal(0, 200, (len(y), t, c))
        return np.clip(x, 1, None).astype(np.float32), y.astype(np.int64)

    (x_tr, y_tr), (x_va, y_va) = series(20), series(8)
    data = TaskData(
        x_tr,
        y_tr,
        x_va,
        y_va,
        class_names=tuple(cl.name for cl in sample.classes),
        bands=sample.bands,
        classes=sample.classes,
        time_grid=sample.time_grid,
        nodata=sample.nodata,
        description="toy series on the sample stack's grid",
    )
    cfg = _cfg()
    run = tmp_path / "run"
    run_comparison(cfg, data, [], run, show_progress=False)
    bundle = tmp_path / "ens.onnx"
    assert exporters_main(["--best", str(run), "-o", str(bundle), "--ensemble", "always"]) == 0
    root = Path(__file__).resolve().parents[2]
    out = tmp_path / "map.tif"
    done = subprocess.run(
        [
            *(sys.executable, "-m", "cropmap", "classify"),
            str(root / "sample_data/belgium_2021/s2_stack.tif"),
            *("--mask", str(root / "sample_data/belgium_2021/cropland.gpkg")),
            *("--model", str(bundle), "-o", str(out)),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    with rasterio.open(out) as ds:
        codes = set(np.unique(ds.read(1)).tolist()) - {ds.nodata}
    assert codes and codes <= {cl.code for cl in sample.classes}
    summary = json.loads((tmp_path / "map_summary.json").read_text())
    assert ENSEMBLE_FAMILY in json.dumps(summary)
