"""The graph rewrites (1-D -> 2-D convolutions, padding-only taps cut) give the same outputs on ONNX Runtime."""

from __future__ import annotations

import io

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from exporters.graph_opt import conv1d_as_conv2d, trim_padding_taps


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
    torch.onnx.export(_Convs().eval(), (torch.randn(2, 12, 5),), buf, input_names=["x"], output_names=["y"],
                      dynamic_axes={"x": {0: "b"}, "y": {0: "b"}}, opset_version=opset, dynamo=False)  # fmt: skip
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


class _LongKernels(nn.Module):
    """Kernels as long as or longer than the 12-step series (InceptionTime's 39 / 19 taps, "same" padding)."""

    def __init__(self) -> None:
        super().__init__()
        self.long = nn.Conv1d(5, 8, kernel_size=39, padding=19, bias=False)  # taps 8..30 meet the series
        self.mid = nn.Conv1d(8, 8, kernel_size=19, padding=9)  # every tap meets it
        self.short = nn.Conv1d(8, 4, kernel_size=30, padding=12)  # 7 outputs: taps 6..23 meet the series
        self.strided = nn.Conv1d(8, 4, kernel_size=25, padding=12, stride=2)  # left alone: stride 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.mid(self.long(x.transpose(1, 2))))
        return torch.cat([self.short(h).mean(-1), self.strided(h).mean(-1)], dim=1)


def test_taps_that_only_read_padding_are_cut_with_the_same_outputs() -> None:
    torch.manual_seed(0)
    buf = io.BytesIO()
    torch.onnx.export(_LongKernels().eval(), (torch.randn(2, 12, 5),), buf, input_names=["x"], output_names=["y"],
                      dynamic_axes={"x": {0: "b"}, "y": {0: "b"}}, opset_version=17, dynamo=False)  # fmt: skip
    model = onnx.load_from_string(buf.getvalue())
    x = np.random.default_rng(1).normal(size=(9, 12, 5)).astype(np.float32)
    before = _run(model, x)
    assert trim_padding_taps(model) == 2
    onnx.checker.check_model(model, full_check=True)
    weights = {i.name: i for i in model.graph.initializer}
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    pads = [[list(a.ints) for a in n.attribute if a.name == "pads"][0] for n in convs]
    assert [weights[n.input[1]].dims[2] for n in convs] == [23, 19, 18, 25]
    assert pads == [[11, 11], [9, 9], [6, 6], [12, 12]]
    np.testing.assert_allclose(_run(model, x), before, rtol=1e-5, atol=1e-5)
    assert trim_padding_taps(model) == 0  # nothing left to cut
    assert conv1d_as_conv2d(model) == 4  # and the 2-D rewrite still applies
    np.testing.assert_allclose(_run(model, x), before, rtol=1e-5, atol=1e-5)
