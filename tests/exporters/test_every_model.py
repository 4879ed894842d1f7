"""Every base-model family x every encoder kind exports, and a downstream run directory exports its best run."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest
import torch

from cropmap.contract.metadata import ClassInfo, TimeGrid
from cropmap.runtime import load_bundle
from exporters.__main__ import main as exporters_main
from exporters.best import select_best
from exporters.to_onnx import export_bundle
from training.downstream.classifier import classifier_metadata, load_classifier, save_classifier
from training.downstream.run import DownstreamConfig, EncoderSpec, TaskData, run_comparison
from training.models import MODELS, build_model
from training.models.encoder import ENCODERS, ResMLP, TimeWiseEncoder, compute_norm_stats, save_encoder

BANDS = ("B02", "B03", "B04", "B08")
T, C, K = 6, len(BANDS), 3
GRID = TimeGrid("01-01", tuple(range(0, 60 * T, 60)), tuple(f"2020-{m:02d}-01" for m in range(1, 2 * T, 2)))
CLASSES = tuple(ClassInfo(k + 1, f"crop {k + 1}", "#336699") for k in range(K))
ENCODER_KINDS = ("none", *sorted(ENCODERS))


def _encoder(kind: str) -> torch.nn.Module | None:
    if kind == "none":
        return None
    if kind == "resmlp":
        enc = ResMLP(C, hidden=16, n_layers=2, out_dim=8)
    else:
        enc = TimeWiseEncoder(C, d_model=16, n_layers=2, n_heads=2, out_dim=8, max_len=T)
    enc.train()
    with torch.no_grad():  # move BatchNorm statistics off their defaults
        enc(torch.randn(32, T, C))
    return enc.eval()


def test_encoder_kinds_cover_the_registry() -> None:
    assert set(ENCODER_KINDS) == {"none", *ENCODERS}


@pytest.mark.parametrize("encoder_kind", ENCODER_KINDS)
@pytest.mark.parametrize("family", sorted(MODELS))
def test_every_family_and_encoder_exports_with_parity(family: str, encoder_kind: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    encoder = _encoder(encoder_kind)
    base = build_model(family, C if encoder is None else 8, K).eval()
    x = np.random.default_rng(1).uniform(100, 6000, (2000, T, C)).astype(np.float32)
    stats = compute_norm_stats(x)
    meta = classifier_metadata(
        encoder=encoder,
        base_model=base,
        family=family,
        pretraining="none",
        bands=BANDS,
        time_grid=GRID,
        classes=CLASSES,
        min_valid_steps=2,
        training_data="random",
        metrics={},
        nodata=0.0,
    )
    out = tmp_path / "m.onnx"
    report = export_bundle(
        encoder=encoder, base_model=base, norm_stats=stats, metadata=meta, out=out, example=x
    )
    assert report.passed and report.n == 2000
    assert report.max_abs_logit_diff <= 1e-4 and report.argmax_agreement == 1.0
    bundle = load_bundle(out)
    assert bundle.metadata.provenance.base_model == family
    assert bundle.run(x[:3]).shape == (3, K)
    # Readable by a worker running as another user: the mode a plain open() gives, not mkstemp's 0600.
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(out.stat().st_mode) == 0o666 & ~umask
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".png")) == ["m.onnx"]


def _toy_task(n: int = 30, seed: int = 0) -> TaskData:
    rng = np.random.default_rng(seed)

    def make(m: int) -> tuple[np.ndarray, np.ndarray]:
        xs, ys = [], []
        for k in range(K):
            time = np.arange(T)[None, :, None]
            xs.append(1500 + 2500 * np.exp(-((time - 1 - 2 * k) ** 2) / 2.0) + rng.normal(0, 150, (m, T, C)))
            ys.append(np.full(m, k))
        return np.concatenate(xs).astype(np.float32), np.concatenate(ys).astype(np.int64)

    (x_tr, y_tr), (x_va, y_va) = make(n), make(n // 2)
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


def test_downstream_keeps_models_and_exporters_best_picks_by_metric(tmp_path: Path, capsys) -> None:
    data = _toy_task()
    torch.manual_seed(0)
    enc = ResMLP(C, hidden=16, n_layers=2, out_dim=8)
    enc_path = save_encoder(tmp_path / "enc.pt", enc.eval(), compute_norm_stats(data.x_train))
    # Without trees and without a model-selection split (tests/exporters/test_trees.py covers both).
    cfg = DownstreamConfig(
        task="real",
        families=("lstm", "transformer"),
        variants=1,
        epochs=3,
        batch_size=16,
        default_variant=True,
        recipe="papers",
        baselines=False,
        trees=(),
        selection_holdout=0.0,
    )
    run = tmp_path / "run"
    results = run_comparison(cfg, data, [EncoderSpec("unimodal", 0.2, enc_path)], run, show_progress=False)
    recs = [json.loads(line) for line in results.read_text().splitlines()]
    assert len(recs) == 2 * 2 * 2  # families x (default + 1 sampled) x (supervised + unimodal)
    assert {r["variant"] for r in recs} == {-1, 0} and {r["hp_source"] for r in recs} == {
        "defaults",
        "sampled",
    }
    for r in recs:  # every run kept a model that rebuilds to the recorded validation accuracy
        clf = load_classifier(run / r["model"])
        assert clf.metadata.provenance.base_model == r["family"]
        assert (clf.encoder is None) == (r["method"] == "supervised")
        assert clf.metadata.classes == CLASSES and clf.metadata.time_grid == GRID
    assert (run / "validation-taskreal.npz").is_file()

    # A rerun skips everything and writes nothing new.
    mtimes = {p: p.stat().st_mtime_ns for p in (run / "models").iterdir()}
    run_comparison(cfg, data, [EncoderSpec("unimodal", 0.2, enc_path)], run, show_progress=False)
    assert {p: p.stat().st_mtime_ns for p in (run / "models").iterdir()} == mtimes

    for metric, key in (("macro_f1", "macro_f1"), ("accuracy", "val_accuracy")):
        choice = select_best(run, metric=metric)
        assert choice.value == max(r[key] for r in recs)
    out = tmp_path / "best.onnx"
    assert exporters_main(["--best", str(run), "-o", str(out), "--metric", "accuracy"]) == 0
    printed = capsys.readouterr().out
    assert "best of 8 runs by validation accuracy" in printed and "argmax agreement 100.00 %" in printed
    meta = load_bundle(out).metadata
    best = select_best(run, metric="accuracy")
    assert meta.provenance.metrics["selected_by_val_accuracy"] == pytest.approx(best.value)
    assert (
        best.record["family"] in meta.provenance.training_data
        and best.record["method"] in meta.provenance.training_data
    )
    # The single-checkpoint path keeps working.
    single = tmp_path / "single.onnx"
    assert exporters_main([str(run / recs[0]["model"]), "-o", str(single)]) == 0


def test_family_ensembles_are_saved_and_export_as_one_bundle(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import dataclasses

    from training.downstream import recipe

    monkeypatch.setitem(recipe.RECIPES, "robust", dataclasses.replace(recipe.RECIPES["robust"], min_steps=30))
    data = _toy_task()
    torch.manual_seed(0)
    enc_path = save_encoder(
        tmp_path / "enc.pt",
        ResMLP(C, hidden=16, n_layers=2, out_dim=8).eval(),
        compute_norm_stats(data.x_train),
    )
    cfg = DownstreamConfig(
        task="real",
        families=("lstm",),
        variants=0,
        default_variant=True,
        repeats=2,
        epochs=1,
        batch_size=16,
        trees=(),
    )
    run = tmp_path / "run"
    results = run_comparison(cfg, data, [EncoderSpec("unimodal", 0.2, enc_path)], run, show_progress=False)
    recs = [json.loads(line) for line in results.read_text().splitlines()]
    ens = [r for r in recs if r["hp_source"] == "ensemble"]
    assert sorted((r["family"], r["method"]) for r in ens) == [
        ("lstm_ensemble", "supervised"),
        ("lstm_ensemble", "unimodal"),
    ]
    for r in ens:
        clf = load_classifier(run / r["model"])
        assert clf.metadata.provenance.base_model == "ensemble" and len(clf.base_model.members) == 2
        assert np.asarray(r["confusion"]).sum() == len(data.y_val)
    out = tmp_path / "ens.onnx"
    (best,) = [r for r in ens if r["model"] == "models/real-lstm-ensemble-unimodal-0.2.pt"]
    assert exporters_main([str(run / best["model"]), "-o", str(out)]) == 0
    bundle = load_bundle(out)
    assert (
        bundle.metadata.embedding is not None and bundle.metadata.embedding.dim == 2 * 2 * 128
    )  # 2 bi-LSTMs
    assert bundle.run(data.x_val[:4]).shape == (4, K)


def test_export_errors_are_one_line(tmp_path: Path, capsys) -> None:
    assert exporters_main(["--best", str(tmp_path), "-o", str(tmp_path / "m.onnx")]) == 1
    err = capsys.readouterr().err
    assert (
        err.startswith("Error: ")
        and "results.jsonl" in err
        and err.count("\n") == 1
        and "Traceback" not in err
    )
    assert exporters_main([str(tmp_path / "missing.pt"), "-o", str(tmp_path / "m.onnx")]) == 1
    assert "does not exist" in capsys.readouterr().err
    data = _toy_task(n=6)
    base = build_model("lstm", C, K)
    meta = classifier_metadata(
        encoder=None,
        base_model=base,
        family="lstm",
        pretraining="none",
        bands=BANDS,
        time_grid=GRID,
        classes=CLASSES,
        min_valid_steps=2,
        training_data="toy",
        metrics={},
        nodata=0.0,
    )
    ckpt = save_classifier(
        tmp_path / "c.pt",
        encoder=None,
        encoder_name=None,
        base_model=base,
        base_model_name="lstm",
        base_model_config={},
        norm_stats=compute_norm_stats(data.x_train),
        metadata=meta,
        parity_inputs=data.x_val,
    )
    (tmp_path / "exists.onnx").write_bytes(b"keep")
    assert exporters_main([str(ckpt), "-o", str(tmp_path / "exists.onnx")]) == 1
    assert "pass --overwrite" in capsys.readouterr().err
    assert (tmp_path / "exists.onnx").read_bytes() == b"keep"
    (tmp_path / "dir.onnx").mkdir()
    assert exporters_main([str(ckpt), "-o", str(tmp_path / "dir.onnx"), "--overwrite"]) == 1
    assert "not a file" in capsys.readouterr().err
