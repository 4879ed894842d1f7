"""Tree families: features inside the graph, parity with predict_proba, the bundle contract, --best among all."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cropmap.contract.metadata import ClassInfo, TimeGrid
from cropmap.runtime import load_bundle
from exporters.__main__ import main as exporters_main
from exporters.best import select_best
from exporters.score import main as score_main
from exporters.trees import PROB_ATOL, _session, feature_graph
from training.downstream.run import DownstreamConfig, TaskData, run_comparison
from training.downstream.trees import (
    TREE_OPSET,
    feature_names,
    fit_tree,
    load_tree_classifier,
    predict_proba,
    tree_features,
)

BANDS = ("B02", "B03", "B04", "B08", "B11")
T, C, K = 6, len(BANDS), 3
GRID = TimeGrid("01-01", tuple(range(0, 60 * T, 60)), tuple(f"2020-{m:02d}-01" for m in range(1, 2 * T, 2)))
CLASSES = tuple(ClassInfo(k + 1, f"crop {k + 1}", "#336699") for k in range(K))


def _series(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(K), n)
    t = np.arange(T)[None, :, None]
    x = (
        1500
        + 2500 * np.exp(-((t - 1 - 2 * y[:, None, None]) ** 2) / 2.0)
        + rng.normal(0, 300, (len(y), T, C))
    )
    return np.clip(x, 1, None).astype(np.float32), y.astype(np.int64)


def _task(n: int = 30) -> TaskData:
    (x_tr, y_tr), (x_va, y_va) = _series(n, 0), _series(n // 2, 1)
    return TaskData(
        x_tr,
        y_tr,
        x_va,
        y_va,
        class_names=tuple(c.name for c in CLASSES),
        bands=BANDS,
        classes=CLASSES,
        time_grid=GRID,
        nodata=0.0,
        description="toy series",
    )


def test_feature_graph_computes_the_training_features() -> None:
    x, _ = _series(200, 3)
    want = tree_features(x, BANDS)
    assert want.shape == (len(x), len(feature_names(BANDS, T)))
    # flattened series, 3 indices (NDVI, NDWI, NDMI: B03, B04, B08, B11 present), 4 stats of 5 + 3, 3 peak dates
    assert want.shape[1] == T * C + 3 * T + 4 * (C + 3) + 3
    got = _session(feature_graph(BANDS, T, opset=TREE_OPSET).SerializeToString()).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)
    # without the bands of any index: the flattened series and the band statistics only
    assert tree_features(x[:, :, :2], BANDS[:2]).shape[1] == T * 2 + 4 * 2


def test_tree_features_refuse_a_band_mismatch() -> None:
    with pytest.raises(ValueError, match=r"expected \(N, T, 5\)"):
        tree_features(np.zeros((2, T, 4), np.float32), BANDS)


@pytest.mark.parametrize("family", [pytest.param("forest", marks=pytest.mark.slow), "boosting"])
def test_tree_bundle_reproduces_predict_proba_and_fits_the_contract(family: str, tmp_path: Path) -> None:
    data = _task()
    cfg = DownstreamConfig(
        task="real",
        families=("lstm",),
        variants=0,
        default_variant=True,
        epochs=1,
        batch_size=16,
        recipe="papers",
        baselines=False,
        trees=(family,),
        tree_trials=1 if family == "boosting" else 0,
    )
    run = tmp_path / "run"
    from training.downstream.store import ResultsStore
    from training.downstream.trees import run_trees

    run.mkdir()
    x_sel, y_sel = _series(4, 5)
    np.savez(run / "selection-taskreal.npz", x=x_sel, y=y_sel)
    run_trees(
        cfg,
        data,
        setup={"task": "real", "n_val": len(data.y_val)},
        results=ResultsStore.in_dir(run),
        done={},
        out=run,
        save=True,
        x_sel=x_sel,
        y_sel=y_sel,
    )
    rec = json.loads((run / "results.jsonl").read_text())
    clf = load_tree_classifier(run / rec["model"])
    assert clf.family == family and clf.metadata.embedding is None
    out = tmp_path / f"{family}.onnx"
    assert exporters_main([str(run / rec["model"]), "-o", str(out)]) == 0
    bundle = load_bundle(out)
    x_val = data.x_val
    logits = bundle.run(x_val)
    assert logits.shape == (len(x_val), K)
    # softmax(logits) is the training library's predict_proba (log-probabilities as logits)
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    ref = predict_proba(
        fit_tree(family, tree_features(data.x_train, BANDS), data.y_train, rec["hp"], seed=_seed(family)),
        tree_features(x_val, BANDS),
        K,
    )
    assert np.abs(p - ref).max() <= PROB_ATOL
    assert ((p.argmax(1) == data.y_val).mean()) == pytest.approx(rec["val_accuracy"])
    # python -m exporters.score gives the record's numbers on the same series
    np.savez(tmp_path / "val.npz", x=x_val, y=data.y_val)
    assert (
        score_main([str(out), "--data", str(tmp_path / "val.npz"), "--json", str(tmp_path / "s.json")]) == 0
    )
    scored = json.loads((tmp_path / "s.json").read_text())
    assert scored["accuracy"] == pytest.approx(rec["val_accuracy"]) and scored["macro_f1"] == pytest.approx(
        rec["macro_f1"]
    )
    # exporters --best takes a tree model like any other, calibrated on the selection series
    assert exporters_main(["--best", str(run), "-o", str(tmp_path / "best.onnx")]) == 0
    best = load_bundle(tmp_path / "best.onnx").metadata
    assert best.calibration is not None and best.calibration.n == len(y_sel)
    assert best.provenance.metrics["test_accuracy"] == pytest.approx(rec["val_accuracy"])
    assert best.provenance.metrics["selected_by_selection_macro_f1"] == pytest.approx(rec["select_macro_f1"])
    # reduced precision is refused with one line
    assert (
        exporters_main([str(run / rec["model"]), "-o", str(tmp_path / "q.onnx"), "--precision", "int8"]) == 1
    )
    assert not (tmp_path / "q.onnx").exists()


def _seed(family: str) -> int:
    from training.downstream.run import run_seed

    return run_seed(0, "real", family, 0, "supervised", None)


@pytest.mark.slow
def test_downstream_records_trees_and_best_chooses_on_the_selection_split(tmp_path: Path, capsys) -> None:
    data = _task()
    cfg = DownstreamConfig(
        task="real",
        families=("lstm",),
        variants=0,
        default_variant=True,
        epochs=2,
        batch_size=16,
        recipe="papers",
        baselines=True,
        trees=("boosting",),
        tree_trials=2,
    )
    run = tmp_path / "run"
    run_comparison(cfg, data, [], run, show_progress=False)
    recs = [json.loads(line) for line in (run / "results.jsonl").read_text().splitlines()]
    fams = {r["family"] for r in recs}
    assert fams == {"boosting", "lstm", "random_forest", "majority"}
    n_sel = round(0.2 * 30) * K
    for r in recs:
        assert r["selection_holdout"] == 0.2 and r["n_select"] == n_sel and r["n_train"] == 3 * 30 - n_sel
        assert r["n_val"] == len(data.y_val)
        if r["model"]:
            assert 0.0 <= r["select_macro_f1"] <= 1.0
    with np.load(run / "selection-taskreal.npz") as sel:
        assert sel["x"].shape == (n_sel, T, C)
        # the selection series are training series, never validation (test) ones
        assert not any((data.x_val == s).all(axis=(1, 2)).any() for s in sel["x"])
    choice = select_best(run)
    kept = [r for r in recs if r["model"]]
    assert choice.split == "selection" and choice.n_candidates == len(kept)
    assert choice.value == max(r["select_macro_f1"] for r in kept)
    out = tmp_path / "best.onnx"
    assert exporters_main(["--best", str(run), "-o", str(out), "--ensemble", "never"]) == 0
    printed = capsys.readouterr().out
    assert f"best of {len(kept)} runs by selection macro_f1" in printed and "untouched test split" in printed
    meta = load_bundle(out).metadata
    assert meta.calibration is not None and meta.calibration.n == n_sel
    assert meta.provenance.metrics["test_accuracy"] == pytest.approx(choice.record["val_accuracy"])
    # validation ranking is still there when asked for
    assert select_best(run, split="validation").split == "validation"


def _records(run: Path, rows: list[dict]) -> None:
    (run / "models").mkdir(parents=True)
    lines = []
    for i, row in enumerate(rows):
        model = f"models/m{i}.pt"
        (run / model).write_bytes(b"")
        lines.append(
            json.dumps(
                {
                    "task": "real",
                    "variant": -1,
                    "method": "supervised",
                    "corruption": None,
                    "n_val": 30,
                    "model": model,
                    **row,
                }
            )
        )
    (run / "results.jsonl").write_text("\n".join(lines) + "\n")


def test_best_ranks_on_the_selection_split_and_says_when_it_cannot(tmp_path: Path) -> None:
    from exporters.to_onnx import ExportError

    run = tmp_path / "run"
    _records(
        run,
        [
            {
                "family": "lstm",
                "val_accuracy": 0.9,
                "macro_f1": 0.9,
                "select_accuracy": 0.5,
                "select_macro_f1": 0.5,
            },
            {
                "family": "boosting",
                "val_accuracy": 0.6,
                "macro_f1": 0.6,
                "select_accuracy": 0.7,
                "select_macro_f1": 0.7,
            },
        ],
    )
    choice = select_best(run)  # the best test score is never what picks
    assert choice.split == "selection" and choice.record["family"] == "boosting" and choice.value == 0.7
    assert (
        "by selection macro_f1 = 0.7000" in choice.describe()
        and "untouched test split (30 samples)" in choice.describe()
    )
    assert select_best(run, split="validation").record["family"] == "lstm"
    old = tmp_path / "old"
    _records(old, [{"family": "lstm", "val_accuracy": 0.9, "macro_f1": 0.9}])
    assert select_best(old).split == "validation"  # auto: a folder trained without a selection split
    with pytest.raises(
        ExportError, match=r"runs of \['lstm'\] .* were not scored on a model-selection split"
    ):
        select_best(old, split="selection")
