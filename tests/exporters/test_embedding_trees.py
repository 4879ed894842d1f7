"""Tree families on a frozen encoder's per-stamp embeddings: trained per encoder, kept, exported as one bundle that
takes raw series, weighed in the cross-family ensemble."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from test_ensemble import _cfg
from test_trees import BANDS, T, _task

from cropmap.runtime import load_bundle
from exporters.__main__ import main as exporters_main
from exporters.parity import softmax
from training.downstream.config import EncoderSpec
from training.downstream.embedding_trees import EmbeddingFeatures, embedding_feature_names, onnx_features
from training.downstream.run import run_comparison
from training.downstream.trees import load_tree_classifier
from training.models.encoder import ResMLP, compute_norm_stats, load_frozen_encoder, save_encoder

D = 8


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A downstream run with a pre-trained (here: randomly initialised) uni-modal encoder and both tree families."""
    root = tmp_path_factory.mktemp("embtrees")
    data = _task()
    torch.manual_seed(0)
    enc = ResMLP(len(BANDS), hidden=16, n_layers=2, out_dim=D)
    encoder = save_encoder(root / "encoder.pt", enc, compute_norm_stats(data.x_train))
    cfg = _cfg(trees=("forest", "boosting"))
    run_comparison(cfg, data, [EncoderSpec("unimodal", 0.2, encoder)], root / "run", show_progress=False)
    return root / "run", encoder


def _records(run: Path) -> list[dict]:  # type: ignore[type-arg]
    return [json.loads(line) for line in (run / "results.jsonl").read_text().splitlines()]


def test_tree_families_are_trained_on_the_embeddings_of_each_encoder(run: tuple[Path, Path]) -> None:
    out, encoder = run
    trees = [r for r in _records(out) if r["family"] in ("forest", "boosting")]
    by_method = {(r["family"], r["method"]) for r in trees}
    assert by_method == {(f, m) for f in ("forest", "boosting") for m in ("supervised", "unimodal")}
    for r in trees:
        if r["method"] == "unimodal":
            assert r["corruption"] == 0.2 and r["encoder"] == str(encoder)
            assert r["embedding_mode"] == "embedding_tree_features"
            assert r["in_dim"] == len(embedding_feature_names(D, T)) == T * D + 4 * D
            assert r["select_macro_f1"] is not None and (out / r["model"]).is_file()
    assert len({r["model"] for r in trees}) == 4


def test_the_feature_stage_computes_the_frozen_encoders_features(run: tuple[Path, Path]) -> None:
    out, encoder = run
    rec = next(r for r in _records(out) if r["family"] == "forest" and r["method"] == "unimodal")
    clf = load_tree_classifier(out / rec["model"])
    assert clf.feature_onnx is not None
    with np.load(out / "validation-taskreal.npz") as val:
        x = val["x"]
    with torch.no_grad():
        want = EmbeddingFeatures(load_frozen_encoder(encoder)).eval()(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(onnx_features(clf.feature_onnx, x), want, atol=1e-4)


def test_an_embedding_tree_exports_as_a_raw_series_bundle_with_parity(
    run: tuple[Path, Path], tmp_path: Path, capsys
) -> None:  # type: ignore[no-untyped-def]
    out, encoder = run
    for family in ("forest", "boosting"):
        rec = next(r for r in _records(out) if r["family"] == family and r["method"] == "unimodal")
        bundle = tmp_path / f"{family}.onnx"
        assert exporters_main([str(out / rec["model"]), "-o", str(bundle)]) == 0
        assert "vs predict_proba" in capsys.readouterr().out
        b = load_bundle(bundle)
        meta = b.metadata
        assert meta.model_name == f"embeddings_{family}" and meta.input_name == "x"
        assert meta.provenance.encoder == encoder.name and meta.provenance.pretraining == "unimodal-0.2"
        clf = load_tree_classifier(out / rec["model"])
        # raw series in, the training library's probabilities out
        np.testing.assert_allclose(softmax(b.run(clf.parity_inputs)), clf.parity_probabilities, atol=1e-5)


def test_embedding_trees_join_the_cross_family_ensemble(
    run: tuple[Path, Path], tmp_path: Path, capsys
) -> None:  # type: ignore[no-untyped-def]
    out, _ = run
    members = [r for r in _records(out) if r["model"] and not r["family"].endswith("_ensemble")]
    assert exporters_main(["--best", str(out), "-o", str(tmp_path / "e.onnx"), "--ensemble", "always"]) == 0
    printed = capsys.readouterr().out
    assert f"cross-family ensemble of {len(members)} runs" in printed
    assert sum(r["method"] == "unimodal" and r["family"] in ("forest", "boosting") for r in members) == 2
