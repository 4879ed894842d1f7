"""Export tiny real-architecture models (ResMLP + BiLSTM) and check the bundle contract and parity."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from cropmap.contract.metadata import (
    METADATA_KEY,
    BundleMetadata,
    ClassInfo,
    EmbeddingInfo,
    Provenance,
    TimeGrid,
)
from cropmap.errors import BundleError
from cropmap.runtime import load_bundle
from exporters.__main__ import main as exporters_main
from exporters.parity import ParityError, check_parity
from exporters.to_onnx import ExportError, build_graph, export_bundle, load_classifier, save_classifier
from training.models import build_model
from training.models.encoder import Normalize, NormalizedEncoder, ResMLP

BANDS = ("B02", "B03", "B04", "B08")
T, C, K, E = 5, len(BANDS), 3, 8


def _meta(*, embedding: bool = True, n_classes: int = K) -> BundleMetadata:
    return BundleMetadata(
        schema_version=1,
        model_name="resmlp_lstm",
        input_name="s2",
        output_name="logits",
        bands=BANDS,
        reflectance_scale=10000.0,
        nodata=65535.0,
        time_grid=TimeGrid("11-01", (0, 61, 120, 181, 242), ("2020-11-01",) * 5),
        min_valid_steps=3,
        gap_fill="linear",
        classes=tuple(ClassInfo(i + 1, f"class {i + 1}", "#10a0c0") for i in range(n_classes)),
        embedding=EmbeddingInfo("embedding", 12, "BiLSTM features before the head") if embedding else None,
        provenance=Provenance(
            "resmlp-1x16", "lstm", "none", "random test data", "test", "2026-01-01T00:00:00"
        ),
    )


@pytest.fixture
def tiny() -> tuple[ResMLP, torch.nn.Module, dict[str, list[float]], np.ndarray]:
    torch.manual_seed(0)
    encoder = ResMLP(C, hidden=16, n_layers=2, out_dim=E, dropout=0.1)
    base = build_model("lstm", E, K, hidden=6, layers=2, dropout=0.3)
    # Train mode briefly so BatchNorm running stats are not the defaults.
    encoder.train()
    with torch.no_grad():
        encoder(torch.randn(64, C) * 3 + 1)
    encoder.eval()
    base.eval()
    x = np.random.default_rng(0).uniform(100, 6000, (40, T, C)).astype(np.float32)
    stats = {"mean": x.reshape(-1, C).mean(0).tolist(), "std": x.reshape(-1, C).std(0).tolist()}
    return encoder, base, stats, x


def test_export_bundle_loads_and_matches_torch(tiny, tmp_path: Path) -> None:
    encoder, base, stats, x = tiny
    out = tmp_path / "m.onnx"
    report = export_bundle(
        encoder=encoder, base_model=base, norm_stats=stats, metadata=_meta(), out=out, example=x
    )
    assert report.passed and report.n == 40 and report.max_abs_logit_diff <= 1e-4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]  # single file, no temp or .data left over
    bundle = load_bundle(out)
    assert bundle.metadata == _meta()
    graph = build_graph(encoder=encoder, base_model=base, norm_stats=stats)
    for n in (1, 7):  # dynamic batch axis
        logits, emb = bundle.run(x[:n], embedding=True)
        want_logits, want_emb = graph(torch.from_numpy(x[:n]))
        assert logits.shape == (n, K) and emb.shape == (n, 12)
        np.testing.assert_allclose(logits, want_logits.detach().numpy(), atol=1e-4)
        np.testing.assert_allclose(emb, want_emb.detach().numpy(), atol=1e-4)
    # Dropout and BatchNorm in eval mode: repeated runs are identical and equal the eval torch model.
    np.testing.assert_array_equal(bundle.run(x[:3]), bundle.run(x[:3]))
    model = onnx.load(str(out))
    onnx.checker.check_model(model)
    assert {p.key for p in model.metadata_props} == {METADATA_KEY}
    assert not any(init.data_location == onnx.TensorProto.EXTERNAL for init in model.graph.initializer)


def test_export_normalisation_is_inside_the_graph(tiny, tmp_path: Path) -> None:
    encoder, base, stats, x = tiny
    out = tmp_path / "m.onnx"
    export_bundle(encoder=encoder, base_model=base, norm_stats=stats, metadata=_meta(), out=out, example=x)
    other = {"mean": [0.0] * C, "std": [1.0] * C}
    graph_other = build_graph(encoder=encoder, base_model=base, norm_stats=other)
    got = load_bundle(out).run(x[:10])
    assert np.abs(got - graph_other(torch.from_numpy(x[:10]))[0].detach().numpy()).max() > 1e-3


def test_export_without_embedding_and_from_normalized_encoder(tiny, tmp_path: Path) -> None:
    encoder, base, stats, x = tiny
    wrapped = NormalizedEncoder(Normalize(stats["mean"], stats["std"]), encoder, frozen=True)
    out = tmp_path / "m.onnx"
    export_bundle(
        encoder=wrapped, base_model=base, norm_stats=None, metadata=_meta(embedding=False), out=out, example=x
    )
    bundle = load_bundle(out)
    assert [o.name for o in bundle.session.get_outputs()] == ["logits"]
    with pytest.raises(ExportError, match="already normalises"):
        export_bundle(
            encoder=wrapped,
            base_model=base,
            norm_stats=stats,
            metadata=_meta(),
            out=out,
            example=x,
            overwrite=True,
        )


def test_export_rejects_mismatched_metadata(tiny, tmp_path: Path) -> None:
    encoder, base, stats, x = tiny
    out = tmp_path / "m.onnx"
    with pytest.raises(ExportError, match="metadata lists 4 classes"):
        export_bundle(
            encoder=encoder,
            base_model=base,
            norm_stats=stats,
            metadata=_meta(n_classes=4),
            out=out,
            example=x,
        )
    with pytest.raises(ExportError, match=r"metadata expects \(B, 5, 4\)"):
        export_bundle(
            encoder=encoder, base_model=base, norm_stats=stats, metadata=_meta(), out=out, example=x[:, :4]
        )
    bad_emb = dataclasses.replace(_meta(), embedding=EmbeddingInfo("embedding", 99, "wrong size"))
    with pytest.raises(ExportError, match="embedding has 12 features; metadata says 99"):
        export_bundle(
            encoder=encoder, base_model=base, norm_stats=stats, metadata=bad_emb, out=out, example=x
        )
    with pytest.raises(ExportError, match="norm_stats are required"):
        export_bundle(encoder=encoder, base_model=base, norm_stats=None, metadata=_meta(), out=out, example=x)
    with pytest.raises(ExportError, match="NaN"):
        export_bundle(
            encoder=encoder,
            base_model=base,
            norm_stats=stats,
            metadata=_meta(),
            out=out,
            example=np.where(x > 5000, np.nan, x),
        )
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_parity_fails_loudly_on_a_broken_graph(tiny, tmp_path: Path) -> None:
    encoder, base, stats, x = tiny
    out = tmp_path / "m.onnx"
    export_bundle(encoder=encoder, base_model=base, norm_stats=stats, metadata=_meta(), out=out, example=x)
    # Corrupt one weight of the graph: the bundle still loads, but no longer reproduces torch.
    model = onnx.load(str(out))
    init = max(model.graph.initializer, key=lambda t: onnx.numpy_helper.to_array(t).size)
    arr = onnx.numpy_helper.to_array(init).copy()
    arr.flat[: arr.size // 2] *= -3.0
    init.CopyFrom(onnx.numpy_helper.from_array(arr, init.name))
    broken = tmp_path / "broken.onnx"
    onnx.save(model, str(broken))
    load_bundle(broken)
    graph = build_graph(encoder=encoder, base_model=base, norm_stats=stats)
    with pytest.raises(ParityError, match=r"max \|logit diff\| .* argmax agreement"):
        check_parity(graph, broken, x, atol=1e-4, input_name="s2", output_name="logits")
    report = check_parity(graph, out, x, atol=1e-4, input_name="s2", output_name="logits")
    assert report.argmax_agreement == 1.0


def test_broken_metadata_is_rejected_by_load_bundle(tiny, tmp_path: Path) -> None:
    encoder, base, stats, x = tiny
    out = tmp_path / "m.onnx"
    export_bundle(encoder=encoder, base_model=base, norm_stats=stats, metadata=_meta(), out=out, example=x)
    model = onnx.load(str(out))
    doc = _meta().to_json().replace('"schema_version": 1', '"schema_version": 99')
    onnx.helper.set_model_props(model, {METADATA_KEY: doc})
    onnx.save(model, str(tmp_path / "v99.onnx"))
    with pytest.raises(BundleError, match="schema version is 99"):
        load_bundle(tmp_path / "v99.onnx")


def test_checkpoint_round_trip_and_cli(tiny, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    encoder, base, stats, x = tiny
    ckpt = tmp_path / "clf.pt"
    save_classifier(
        ckpt,
        encoder=encoder,
        encoder_name="resmlp",
        base_model=base,
        base_model_name="lstm",
        base_model_config={"hidden": 6, "layers": 2, "dropout": 0.3},
        norm_stats=stats,
        metadata=_meta(),
        parity_inputs=x[:16],
    )
    clf = load_classifier(ckpt)
    assert clf.metadata == _meta() and clf.parity_inputs.shape == (16, T, C)
    out = tmp_path / "cli.onnx"
    assert exporters_main([str(ckpt), "-o", str(out)]) == 0
    assert "argmax agreement 100.00 %" in capsys.readouterr().out
    meta = load_bundle(out).metadata
    assert meta.classes == _meta().classes and meta.provenance.created != _meta().provenance.created
    graph = build_graph(encoder=encoder, base_model=base, norm_stats=stats)
    np.testing.assert_allclose(
        load_bundle(out).run(x[:5]), graph(torch.from_numpy(x[:5]))[0].detach().numpy(), atol=1e-4
    )
    assert exporters_main([str(ckpt), "-o", str(out)]) == 1  # exists, no --overwrite
    assert "exists" in capsys.readouterr().err
    assert exporters_main([str(tmp_path / "missing.pt"), "-o", str(tmp_path / "x.onnx")]) == 1


def test_export_bundle_never_overwrites_by_default(tiny, tmp_path: Path) -> None:
    """Overwriting is never a library default (as for ``export_checkpoint`` and ``export_best``): an existing bundle
    is an error naming --overwrite and stays byte for byte; ``overwrite=True`` replaces it."""
    encoder, base, stats, x = tiny
    out = tmp_path / "m.onnx"
    out.write_bytes(b"an earlier bundle")
    with pytest.raises(
        FileExistsError, match=r"m\.onnx exists; pass --overwrite \(overwrite=True\) to replace it"
    ):
        export_bundle(
            encoder=encoder, base_model=base, norm_stats=stats, metadata=_meta(), out=out, example=x
        )
    assert out.read_bytes() == b"an earlier bundle" and sorted(p.name for p in tmp_path.iterdir()) == [
        "m.onnx"
    ]
    export_bundle(
        encoder=encoder,
        base_model=base,
        norm_stats=stats,
        metadata=_meta(),
        out=out,
        example=x,
        overwrite=True,
    )
    assert load_bundle(out).metadata == _meta()
