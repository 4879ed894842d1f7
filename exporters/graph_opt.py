"""Rewrites of exported bundle graphs that ONNX Runtime runs faster, with the same results.

``conv1d_as_conv2d``: ONNX Runtime's CPU provider runs a 1-D ``Conv`` (InceptionTime's layers, over the
time axis) through a slow general path, while a 2-D ``Conv`` on a height-1 image takes its blocked (NCHWc)
kernels. Each 1-D convolution whose weights are a graph initializer becomes
``Unsqueeze(axis 2) -> Conv (kernel 1 x k) -> Squeeze(axis 2)``: the same arithmetic in the same order.
On the France InceptionTime (12 monthly stamps, 4,096 series, 2 threads) the graph ran 4.2x faster
(5,199 -> 21,864 series/s; largest logit difference 8.6e-6); see docs/benchmarks.md. The bundle's parity
with torch is checked on the rewritten graph, like any export.
"""

from __future__ import annotations

from typing import Any

__all__ = ["conv1d_as_conv2d"]


def _attrs(node: Any) -> dict[str, Any]:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def conv1d_as_conv2d(model: Any) -> int:
    """Rewrite, in place, every 1-D ``Conv`` of ``model`` (an ``onnx.ModelProto``) with initializer weights
    as a 2-D ``Conv`` over a height-1 image; returns how many were rewritten."""
    from onnx import TensorProto, helper, numpy_helper

    graph = model.graph
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    inits = {i.name: i for i in graph.initializer}
    weights_2d: dict[str, str] = {}
    axes_name = "cropmap_conv1d_axis2"
    nodes, n_rewritten = [], 0
    for node in graph.node:
        w = inits.get(node.input[1]) if node.op_type == "Conv" and len(node.input) > 1 else None
        if w is None or len(w.dims) != 3:
            nodes.append(node)
            continue
        if w.name not in weights_2d:
            arr = numpy_helper.to_array(w)
            weights_2d[w.name] = f"{w.name}_as_2d"
            graph.initializer.append(numpy_helper.from_array(arr[:, :, None, :], name=weights_2d[w.name]))
        a = _attrs(node)
        kw: dict[str, Any] = {}
        if "kernel_shape" in a:
            kw["kernel_shape"] = [1, *a["kernel_shape"]]
        if "pads" in a:
            kw["pads"] = [0, a["pads"][0], 0, a["pads"][1]]  # [h_begin, w_begin, h_end, w_end]
        for key in ("strides", "dilations"):
            if key in a:
                kw[key] = [1, *a[key]]
        for key in ("group", "auto_pad"):
            if key in a:
                kw[key] = a[key]
        stem = f"{node.name or node.output[0]}_as_2d"
        x4, y4 = f"{stem}_in", f"{stem}_out"
        if opset >= 13:  # axes are an input from opset 13 on
            if axes_name not in inits:
                axes = helper.make_tensor(axes_name, TensorProto.INT64, [1], [2])
                graph.initializer.append(axes)
                inits[axes_name] = axes
            nodes.append(
                helper.make_node("Unsqueeze", [node.input[0], axes_name], [x4], name=f"{stem}_unsqueeze")
            )
            squeeze = helper.make_node("Squeeze", [y4, axes_name], [node.output[0]], name=f"{stem}_squeeze")
        else:
            nodes.append(
                helper.make_node("Unsqueeze", [node.input[0]], [x4], name=f"{stem}_unsqueeze", axes=[2])
            )
            squeeze = helper.make_node("Squeeze", [y4], [node.output[0]], name=f"{stem}_squeeze", axes=[2])
        conv_inputs = [x4, weights_2d[w.name], *node.input[2:]]
        nodes.append(helper.make_node("Conv", conv_inputs, [y4], name=node.name, **kw))
        nodes.append(squeeze)
        n_rewritten += 1
    if n_rewritten:
        del graph.node[:]
        graph.node.extend(nodes)
        used = {i for n in graph.node for i in n.input}
        kept = [i for i in graph.initializer if i.name in used or i.name not in weights_2d]
        del graph.initializer[:]
        graph.initializer.extend(kept)
    return n_rewritten
