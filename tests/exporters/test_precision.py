"""fp16 and int8 bundles: every base family x encoder kind reduces, the agreement with fp32 is measured and recorded,
and an export below the threshold is refused in one line with nothing written."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from cropmap.contract.metadata import ClassInfo, TimeGrid
from cropmap.runtime import load_bundle
from exporters.__main__ import main as exporters_main
from exporters.quantize import PrecisionError, reduce_precision, unshare_initializers
from exporters.to_onnx import ExportError, export_bundle, split_precision_data
from training.downstream.classifier import classifier_metadata, save_classifier
from training.models import MODELS, build_model
from training.models.encoder import ENCODERS, ResMLP, TimeWiseEncoder, compute_norm_stats

BANDS = ("B02", "B03", "B04", "B08")
T, C, K = 6, len(BANDS), 3
GRID = TimeGrid("01-01", tuple(range(0, 60 * T, 60)), tuple(f"2020-{m:02d}-01" for m in range(1, 2 * T, 2)))
CLASSES = tuple(ClassInfo(k + 1, f"crop {k + 1}", "#336699") for k in range(K))
ENCODER_KINDS = ("none", *sorted(ENCODERS))
AGREEMENT_FLOOR = 0.8
"""Where these tests check that the recorded agreement is the measured one, the threshold only refuses a broken
graph (about 1/3 on three classes): how close a briefly trained toy model's int8 graph comes to 100 % depends on the
quantiser's rounding, not on cropmap. The refusal itself is tested on models whose margins decide the outcome."""
SEPARATED = 0.9
"""Training accuracy at which :func:`_model` stops training after its first ten steps."""
MAX_STEPS = 200
SMALL = {
    "lstm": {"hidden": 16},
    "inception_time": {"layers": 2, "hidden": 16, "kernel": 5, "bottleneck": 8},
    "transformer": {"d_model": 16, "heads": 2, "layers": 2},
}


def _series(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Three classes of raw series that differ by the date of a reflectance peak (as crops do)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, K, n)
    t = np.arange(T)[None, :, None]
    x = 1500 + 3000 * np.exp(-((t - 1 - 1.5 * y[:, None, None]) ** 2) / 1.5) + rng.normal(0, 200, (n, T, C))
    return x.astype(np.float32), y


def _model(family: str, encoder_kind: str) -> tuple[torch.nn.Module | None, torch.nn.Module]:
    """A freshly initialised encoder and base model, trained briefly so that their classes separate.

    Ten Adam steps separate most pairs; a pair that still misclassifies more than :data:`SEPARATED` of its
    training series after them (the Transformer behind a ResMLP encoder: chance accuracy, logit margins of
    about 0.01, which any rounding flips) trains on, up to :data:`MAX_STEPS`, so that the agreement the
    reduced graph reaches measures the quantiser and not a coin toss between tied logits.
    """
    torch.manual_seed(0)
    if encoder_kind == "none":
        encoder = None
    elif encoder_kind == "resmlp":
        encoder = ResMLP(C, hidden=16, n_layers=2, out_dim=8)
    else:
        encoder = TimeWiseEncoder(C, d_model=16, n_layers=2, n_heads=2, out_dim=8, max_len=T)
    base = build_model(family, C if encoder is None else 8, K, **SMALL[family])
    x, y = _series(256, 0)
    stats = compute_norm_stats(x)
    mean, std = torch.tensor(stats["mean"]), torch.tensor(stats["std"])
    params = [*base.parameters(), *(encoder.parameters() if encoder is not None else [])]
    opt = torch.optim.Adam(params, lr=1e-2)
    xt, yt = (torch.from_numpy(x) - mean) / std, torch.from_numpy(y)
    for step in range(MAX_STEPS):
        opt.zero_grad()
        z = encoder(xt) if encoder is not None else xt
        logits = base(z)
        if step >= 10 and (logits.argmax(1) == yt).float().mean() >= SEPARATED:
            break
        torch.nn.functional.cross_entropy(logits, yt).backward()
        opt.step()
    else:
        raise AssertionError(
            f"{family} + {encoder_kind}: the toy classes do not separate in {MAX_STEPS} steps"
        )
    if encoder is not None:
        encoder.eval()
    return encoder, base.eval()


def _export(
    tmp_path: Path, family: str, encoder_kind: str, precision: str, **kw
) -> tuple[Path, Path, np.ndarray]:
    encoder, base = _model(family, encoder_kind)
    x, y = _series(600, 1)
    meta = classifier_metadata(
        encoder=encoder,
        base_model=base,
        family=family,
        pretraining="none",
        bands=BANDS,
        time_grid=GRID,
        classes=CLASSES,
        min_valid_steps=2,
        training_data="toy",
        metrics={},
        nodata=0.0,
    )
    stats = compute_norm_stats(_series(256, 0)[0])
    fp32 = tmp_path / "fp32.onnx"
    export_bundle(
        encoder=encoder, base_model=base, norm_stats=stats, metadata=meta, out=fp32, example=x[:200]
    )
    out = tmp_path / f"{precision}.onnx"
    report = export_bundle(
        encoder=encoder,
        base_model=base,
        norm_stats=stats,
        metadata=meta,
        out=out,
        example=x[:200],
        precision=precision,
        precision_data=split_precision_data(x[200:], y[200:], train_x=_series(256, 0)[0]),
        **kw,
    )
    assert report.precision is not None and report.precision.dtype == precision
    return fp32, out, x


def _check_recorded_agreement(fp32: Path, out: Path, x: np.ndarray, precision: str) -> None:
    a, b = load_bundle(fp32), load_bundle(out)
    rec = b.metadata.precision
    assert rec is not None and b.metadata.dtype == precision and a.metadata.precision is None
    held_out = x[200:]  # the evaluation series given to the export
    want, got = a.run(held_out), b.run(held_out)
    assert (
        got.dtype == np.float32 and got.shape == want.shape
    )  # the contract's float32 I/O at every precision
    assert rec.n == len(held_out)
    assert rec.argmax_agreement == pytest.approx(float((want.argmax(1) == got.argmax(1)).mean()))
    assert rec.max_abs_logit_diff == pytest.approx(float(np.abs(want - got).max()), rel=1e-5, abs=1e-6)
    assert rec.argmax_agreement >= rec.min_agreement
    assert rec.accuracy is not None and rec.accuracy_fp32 is not None
    _, emb = b.run(held_out[:5], embedding=True)
    assert emb.dtype == np.float32 and emb.shape[0] == 5
    model = onnx.load(str(out), load_external_data=False)
    assert not any(i.data_location == onnx.TensorProto.EXTERNAL for i in model.graph.initializer)
    assert sorted(p.name for p in out.parent.iterdir() if p.suffix == ".onnx") == sorted(
        {fp32.name, out.name}
    )


@pytest.mark.parametrize(
    ("family", "encoder_kind", "precision"),
    [
        ("transformer", "none", "int8"),  # fresh Transformers share identical initialisers
        ("lstm", "resmlp", "fp16"),
        (
            "transformer",
            "timewise",
            "fp16",
        ),  # float16 attention Transposes crashed ONNX Runtime's CPU optimiser
    ],
)
def test_reduced_precision_bundle_records_measured_agreement(
    family, encoder_kind, precision, tmp_path: Path
) -> None:
    fp32, out, x = _export(tmp_path, family, encoder_kind, precision, min_agreement=AGREEMENT_FLOOR)
    _check_recorded_agreement(fp32, out, x, precision)


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp16", "int8"])
@pytest.mark.parametrize("encoder_kind", ENCODER_KINDS)
@pytest.mark.parametrize("family", sorted(MODELS))
def test_every_family_and_encoder_reduces(
    family: str, encoder_kind: str, precision: str, tmp_path: Path
) -> None:
    fp32, out, x = _export(tmp_path, family, encoder_kind, precision, min_agreement=AGREEMENT_FLOOR)
    _check_recorded_agreement(fp32, out, x, precision)


def test_fresh_transformer_shares_initialisers_and_unsharing_keeps_outputs(tmp_path: Path) -> None:
    torch.manual_seed(0)
    base = build_model("transformer", C, K, **SMALL["transformer"]).eval()
    x = _series(64, 2)[0]
    meta = classifier_metadata(
        encoder=None,
        base_model=base,
        family="transformer",
        pretraining="none",
        bands=BANDS,
        time_grid=GRID,
        classes=CLASSES,
        min_valid_steps=2,
        training_data="toy",
        metrics={},
        nodata=0.0,
    )
    out = tmp_path / "t.onnx"
    export_bundle(
        encoder=None, base_model=base, norm_stats=compute_norm_stats(x), metadata=meta, out=out, example=x
    )
    model = onnx.load(str(out))
    n = unshare_initializers(model)
    assert n > 0  # the pitfall is real in this graph
    inits = {i.name for i in model.graph.initializer}
    used = [name for node in model.graph.node for name in node.input if name in inits]
    assert len(used) == len(set(used))
    onnx.save(model, str(tmp_path / "u.onnx"))
    import onnxruntime as ort

    a = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    b = ort.InferenceSession(str(tmp_path / "u.onnx"), providers=["CPUExecutionProvider"])
    np.testing.assert_array_equal(a.run(None, {meta.input_name: x})[0], b.run(None, {meta.input_name: x})[0])


def _lstm_with_margin(x: np.ndarray, margin: float) -> torch.nn.Module:
    """An LSTM whose decision between classes 1 and 2 is set by construction, whatever its weights.

    ``margin > 0``: class 1 wins every series by at least ``margin`` logits. ``margin == 0``: classes 1 and 2
    differ by about 1e-4 logits, each winning on about half of the series (their bias difference sits in
    the middle of the fp32 margins), a decision some hundred times finer than the logit changes any 8-bit graph makes
    (int8 weight and activation steps move these logits by about 1e-2), so no reduced graph keeps all of it.
    Class 3 never wins.
    """
    torch.manual_seed(0)
    base = build_model("lstm", C, K, **SMALL["lstm"]).eval()
    stats = compute_norm_stats(x)
    xn = (torch.from_numpy(x) - torch.tensor(stats["mean"])) / torch.tensor(stats["std"])
    with torch.no_grad():
        base.head.weight[1] = base.head.weight[0] + 1e-3 * torch.randn_like(base.head.weight[0])
        base.head.bias[1] = base.head.bias[0]
        base.head.bias[2] = -100.0
        logits = base(xn)
        d = (logits[:, 1] - logits[:, 0]).sort().values
        lo, hi = int(0.4 * len(d)), int(0.6 * len(d))
        gap = int((d[lo + 1 : hi + 1] - d[lo:hi]).argmax()) + lo
        split = (d[gap] + d[gap + 1]) / 2  # amid the widest gap near the median: no series sits on the tie
        if margin > 0:
            base.head.weight[1] = base.head.weight[0]
            base.head.bias[0] = base.head.bias[1] + margin
        else:
            base.head.bias[1] -= split
    return base


def _fp32_bundle(tmp_path: Path, base: torch.nn.Module, x: np.ndarray) -> Path:
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
    fp32 = tmp_path / "fp32.onnx"
    export_bundle(
        encoder=None, base_model=base, norm_stats=compute_norm_stats(x), metadata=meta, out=fp32, example=x
    )
    return fp32


def test_below_threshold_is_refused_and_nothing_written(tmp_path: Path) -> None:
    x = _series(400, 3)[0]
    fp32 = _fp32_bundle(tmp_path, _lstm_with_margin(x, margin=0.0), x)
    want = load_bundle(fp32).run(x[200:]).argmax(1)
    assert 60 <= int((want == 1).sum()) <= 140 and set(want.tolist()) <= {
        0,
        1,
    }  # the near-tie splits the series
    # Both int8 methods are built and measured; neither keeps every near-tied decision, so the strictest
    # threshold refuses the export, names what each method reached, and writes nothing.
    with pytest.raises(
        PrecisionError, match=r"agrees with fp32 on fewer than 100 % of 200 held-out series"
    ) as err:
        reduce_precision(
            fp32, tmp_path / "int8.onnx", "int8", calib_x=x[:200], eval_x=x[200:], min_agreement=1.0
        )
    assert "int8 static QDQ: agreement" in str(err.value) and "int8 dynamic: agreement" in str(err.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fp32.onnx"]
    # A threshold just above what the reduced graph measured is refused too (the rule, not the rounding).
    rec = reduce_precision(
        fp32,
        tmp_path / "int8.onnx",
        "int8",
        calib_x=x[:200],
        eval_x=x[200:],
        int8_method="dynamic",
        min_agreement=0.01,
    )
    assert rec.argmax_agreement < 1.0
    (tmp_path / "int8.onnx").unlink()
    with pytest.raises(PrecisionError, match="fewer than"):
        reduce_precision(
            fp32,
            tmp_path / "int8.onnx",
            "int8",
            calib_x=x[:200],
            eval_x=x[200:],
            int8_method="dynamic",
            min_agreement=min(1.0, rec.argmax_agreement + 1e-9),
        )
    assert not (tmp_path / "int8.onnx").exists()
    with pytest.raises(PrecisionError, match=r"expected one of \('fp16', 'int8'\)"):
        reduce_precision(fp32, tmp_path / "x.onnx", "fp32", calib_x=x, eval_x=x)
    with pytest.raises(ExportError, match="needs precision_data"):
        export_bundle(
            encoder=None,
            base_model=_lstm_with_margin(x, margin=0.0),
            norm_stats=compute_norm_stats(x),
            metadata=load_bundle(fp32).metadata,
            out=tmp_path / "y.onnx",
            example=x,
            precision="int8",
        )


def test_model_that_agrees_is_accepted_at_the_strictest_threshold(tmp_path: Path) -> None:
    # The same network with one class ahead by 50 logits: no 8-bit rounding (about 1e-2 here) can change
    # a decision, so int8 agrees on every series and even a threshold of 100 % accepts it.
    x = _series(400, 3)[0]
    fp32 = _fp32_bundle(tmp_path, _lstm_with_margin(x, margin=50.0), x)
    rec = reduce_precision(
        fp32, tmp_path / "int8.onnx", "int8", calib_x=x[:200], eval_x=x[200:], min_agreement=1.0
    )
    assert rec.argmax_agreement == 1.0 and rec.min_agreement == 1.0 and rec.max_abs_logit_diff < 1.0
    assert load_bundle(tmp_path / "int8.onnx").metadata.precision == rec


def test_cli_precision_flag_and_one_line_refusal(tmp_path: Path, capsys) -> None:
    encoder, base = _model("lstm", "resmlp")
    x, y = _series(300, 4)
    meta = classifier_metadata(
        encoder=encoder,
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
        encoder=encoder,
        encoder_name="resmlp",
        base_model=base,
        base_model_name="lstm",
        base_model_config=SMALL["lstm"],
        norm_stats=compute_norm_stats(x),
        metadata=meta,
        parity_inputs=x,
        parity_labels=y,
    )
    out = tmp_path / "m.onnx"
    assert exporters_main([str(ckpt), "-o", str(out), "--precision", "int8", "--min-agreement", "0.9"]) == 0
    printed = capsys.readouterr().out
    assert "then int8" in printed and "held-out series" in printed
    rec = load_bundle(out).metadata.precision
    assert rec is not None and rec.dtype == "int8" and rec.n == 150 and "split at random" in rec.data
    np.savez(tmp_path / "train.npz", x=_series(200, 5)[0])
    out2 = tmp_path / "m16.onnx"
    assert (
        exporters_main(
            [
                str(ckpt),
                "-o",
                str(out2),
                "--precision",
                "fp16",
                "--calibration-data",
                str(tmp_path / "train.npz"),
                "--min-agreement",
                "0.9",
            ]
        )
        == 0
    )
    rec = load_bundle(out2).metadata.precision
    assert rec is not None and rec.n == 300 and "200 training series" in rec.data
    capsys.readouterr()
    assert (
        exporters_main(
            [
                str(ckpt),
                "-o",
                str(tmp_path / "bad.onnx"),
                "--precision",
                "int8",
                "--calibration-data",
                str(tmp_path / "missing.npz"),
            ]
        )
        == 1
    )
    err = capsys.readouterr().err
    assert err.startswith("Error: ") and err.count("\n") == 1 and "missing.npz" in err
    assert not (tmp_path / "bad.onnx").exists()


def test_reduce_precision_never_overwrites_by_default(tmp_path: Path) -> None:
    """Overwriting is never a library default: an existing output is refused before any work and kept."""
    x = _series(64, 3)[0]
    fp32 = _fp32_bundle(tmp_path, _lstm_with_margin(x, margin=50.0), x)
    out = tmp_path / "int8.onnx"
    out.write_bytes(b"an earlier bundle")
    with pytest.raises(FileExistsError, match=r"int8\.onnx exists; pass --overwrite \(overwrite=True\)"):
        reduce_precision(fp32, out, "int8", calib_x=x[:32], eval_x=x[32:])
    assert out.read_bytes() == b"an earlier bundle"
