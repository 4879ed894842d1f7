"""The 1-D -> 2-D convolution rewrite gives the same outputs on ONNX Runtime."""

from __future__ import annotations

import io

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from exporters.graph_opt import conv1d_as_conv2d


class _Convs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv1d(5, 8, kernel_size=4, padding="same", bias=False)  # even kernel: asymmetric pads
        self.b = nn.Conv1d(8, 8, kernel_size=3, padding=2, dilation=2, groups=2)
        self.c = nn.Conv1d(8, 6, kernel_size=3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c(torch.relu(self.b(self.a(x.transpose(1, 2))))).mean(dim=-1)


def _export(opset: int) -> onnx.ModelProto:
    torch.manual_seed(0)
    buf = io.BytesIO()
    torch.onnx.export(
        _Convs().eval(),
        (torch.randn(2, 12, 5),),
        buf,
        input_names=["x"],
        output_names=["y"],
        dynamic_axes={"x": {0: "b"}, "y": {0: "b"}},
        opset_version=opset,
        dynamo=False,
    )
    return onnx.load_from_string(buf.getvalue())


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    s = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return s.run(None, {"x": x})[0]


@pytest.mark.parametrize("opset", [11, 17])  # axes as an attribute (< 13) and as an input
def test_rewrite_keeps_the_outputs_and_leaves_no_1d_conv(opset: int) -> None:
    model = _export(opset)
    x = np.random.default_rng(0).normal(size=(7, 12, 5)).astype(np.float32)
    before = _run(model, x)
    assert conv1d_as_conv2d(model) == 3
    onnx.checker.check_model(model, full_check=True)
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    weights = {i.name: i for i in model.graph.initializer}
    assert len(convs) == 3 and all(len(weights[n.input[1]].dims) == 4 for n in convs)
    assert not any(len(i.dims) == 3 for i in model.graph.initializer)  # the 1-D weights are gone
    np.testing.assert_allclose(_run(model, x), before, rtol=1e-5, atol=1e-5)
    assert conv1d_as_conv2d(model) == 0  # nothing left to rewrite
