"""Tests for the base-model registry and the three base models."""

from __future__ import annotations

import pytest
import torch

from training.models import MODELS, build_model, list_models
from training.models.inception_time import InceptionTimeConfig
from training.models.lstm import LSTMClassifier

SMALL_HP = {
    "lstm": {"hidden": 8, "layers": 2, "dropout": 0.1},
    "inception_time": {"layers": 4, "hidden": 16, "kernel": 8, "bottleneck": 4},
    "transformer": {"d_model": 16, "heads": 2, "layers": 2},
}


def test_registry_names_match_builders() -> None:
    assert set(list_models()) == {b.__name__ for b in MODELS.values()}
    assert set(MODELS) == set(SMALL_HP)


def test_build_model_unknown_name_lists_choices() -> None:
    with pytest.raises(
        ValueError, match=r"unknown model 'gru'; choose from \['inception_time', 'lstm', 'transformer'\]"
    ):
        build_model("gru", 12, 9)


@pytest.mark.parametrize("name", sorted(SMALL_HP))
def test_build_model_unknown_hyperparameter_raises(name: str) -> None:
    with pytest.raises(ValueError, match=r"unknown .*Config hyper-parameter.*'lr'"):
        build_model(name, 12, 9, lr=1e-3)


@pytest.mark.parametrize("name", sorted(SMALL_HP))
@pytest.mark.parametrize("t", [1, 7, 24])
def test_model_shapes(name: str, t: int) -> None:
    torch.manual_seed(0)
    model = build_model(name, 5, 3, **SMALL_HP[name]).eval()
    x = torch.randn(6, t, 5)
    logits = model(x)
    feats = model.features(x)
    assert logits.shape == (6, 3)
    assert feats.shape == (6, model.feature_dim)
    assert torch.isfinite(logits).all()
    # The head is linear on features(): features are exactly the pre-classifier representation.
    torch.testing.assert_close(model.head(feats), logits)


@pytest.mark.parametrize("name", sorted(SMALL_HP))
def test_every_parameter_receives_gradient(name: str) -> None:
    torch.manual_seed(0)
    model = build_model(name, 5, 3, **SMALL_HP[name]).train()
    x = torch.randn(8, 20, 5)
    y = torch.randint(0, 3, (8,))
    torch.nn.functional.cross_entropy(model(x), y).backward()
    named = list(model.named_parameters())
    assert named
    for pname, p in named:
        assert p.grad is not None, f"{name}.{pname} has no gradient"
        assert p.grad.abs().sum() > 0, f"{name}.{pname} has an all-zero gradient"


def test_inception_time_paper_space_registers_every_module() -> None:
    # The papers' largest depth: 8 modules -> blocks of 3, 3, 2, each with a shortcut.
    model = build_model("inception_time", 12, 9, layers=8, hidden=128, kernel=40)
    n_modules = sum(1 for m in model.modules() if type(m).__name__ == "InceptionModule")
    n_blocks = sum(1 for m in model.modules() if type(m).__name__ == "InceptionBlock")
    assert (n_modules, n_blocks) == (8, 3)
    assert InceptionTimeConfig(kernel=40).kernel_sizes() == (39, 19, 9)
    assert InceptionTimeConfig(kernel=136).kernel_sizes() == (135, 67, 33)
    # All parameters are reachable through the registered module tree.
    assert sum(p.numel() for p in model.parameters()) > 100_000


def test_lstm_features_are_final_states_of_both_directions() -> None:
    torch.manual_seed(0)
    model = build_model("lstm", 4, 3, hidden=6, layers=3).eval()
    assert isinstance(model, LSTMClassifier)
    x = torch.randn(2, 9, 4)
    out, _ = model.lstm(x)  # (B, T, 2 * hidden)
    expected = torch.cat([out[:, -1, :6], out[:, 0, 6:]], dim=-1)
    torch.testing.assert_close(model.features(x), expected)


def test_transformer_layers_start_from_different_weights() -> None:
    model = build_model("transformer", 5, 3, d_model=16, heads=2, layers=3)
    w = [layer.linear1.weight for layer in model.encoder_layers]
    assert not torch.equal(w[0], w[1]) and not torch.equal(w[1], w[2])


@pytest.mark.parametrize(
    ("name", "hp", "match"),
    [
        ("lstm", {"hidden": 0}, "hidden must be >= 1"),
        ("inception_time", {"hidden": 30}, "multiple of 4"),
        ("transformer", {"d_model": 30, "heads": 4}, "multiple of heads"),
    ],
)
def test_invalid_hyperparameter_values_raise(name: str, hp: dict[str, int], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        build_model(name, 12, 9, **hp)


# The legacy exporter warns about traced shape checks and LSTM batch sizes; the ORT run below
# checks that the graph is nevertheless correct at another batch size.
@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
@pytest.mark.filterwarnings("ignore:Exporting a model to ONNX with a batch_size other than 1")
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("name", sorted(SMALL_HP))
def test_models_export_to_onnx_with_dynamic_batch(name: str, tmp_path: pytest.TempPathFactory) -> None:
    ort = pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    model = build_model(name, 5, 3, **SMALL_HP[name]).eval()
    path = tmp_path / f"{name}.onnx"  # type: ignore[operator]
    torch.onnx.export(
        model,
        (torch.randn(2, 10, 5),),
        str(path),
        input_names=["x"],
        output_names=["logits"],
        dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}},
        dynamo=False,
    )
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = torch.randn(7, 10, 5)
    (got,) = sess.run(None, {"x": x.numpy()})
    with torch.no_grad():
        expected = model(x).numpy()
    assert got.shape == (7, 3)
    torch.testing.assert_close(torch.from_numpy(got), torch.from_numpy(expected), rtol=1e-4, atol=1e-5)
