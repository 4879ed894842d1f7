"""Parity between a torch model and its exported ONNX graph, measured on real inputs.

An exported bundle is only trusted when ONNX Runtime reproduces the torch logits:
the largest absolute logit difference must be within ``atol`` and the predicted
class must agree on every input. :func:`check_parity` measures both and raises
:class:`ParityError` with the numbers when either fails.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cropmap.errors import CropmapError

logger = logging.getLogger(__name__)


class ParityError(CropmapError, RuntimeError):
    """ONNX Runtime does not reproduce the torch model within tolerance."""


@dataclass(frozen=True)
class ParityReport:
    """Torch vs ONNX Runtime agreement on one set of inputs."""

    n: int
    """Number of inputs compared."""
    max_abs_logit_diff: float
    """Largest ``|torch - onnx|`` over all logits."""
    argmax_agreement: float
    """Fraction of inputs (0..1) whose predicted class is the same."""
    atol: float
    """Tolerance the check was run with."""
    max_abs_embedding_diff: float | None = None
    """Largest difference of the embedding output, when both sides have one."""
    calibration: Any = None
    """The :class:`cropmap.contract.metadata.Calibration` fitted by ``export_bundle(calibration_data=...)``, else ``None``."""
    precision: Any = None
    """The :class:`cropmap.contract.metadata.Precision` of an fp16/int8 export (agreement with fp32), else ``None``."""

    @property
    def passed(self) -> bool:
        """Whether ``max_abs_logit_diff <= atol`` and the argmax agrees everywhere."""
        return self.max_abs_logit_diff <= self.atol and self.argmax_agreement == 1.0

    def summary(self) -> str:
        """One line with the measured numbers."""
        emb = (
            ""
            if self.max_abs_embedding_diff is None
            else f", max |embedding diff| {self.max_abs_embedding_diff:.3g}"
        )
        text = (
            f"{self.n} inputs: max |logit diff| {self.max_abs_logit_diff:.3g} (atol {self.atol:g}), "
            f"argmax agreement {100 * self.argmax_agreement:.2f} %{emb}"
        )
        if self.precision is not None:
            from exporters.quantize import summary

            text += f"; then {summary(self.precision)}"
        return text


def _torch_outputs(model: nn.Module, x: np.ndarray, batch_size: int) -> tuple[np.ndarray, np.ndarray | None]:
    logits, embeds = [], []
    with torch.no_grad():
        for start in range(0, len(x), batch_size):
            out = model(torch.from_numpy(x[start : start + batch_size]))
            if isinstance(out, tuple):
                logits.append(out[0].numpy())
                embeds.append(out[1].numpy())
            else:
                logits.append(out.numpy())
    return np.concatenate(logits), (np.concatenate(embeds) if embeds else None)


def check_parity(
    torch_model: nn.Module,
    onnx_path: str | Path,
    x: np.ndarray,
    *,
    atol: float = 1e-4,
    input_name: str | None = None,
    output_name: str | None = None,
    embedding_name: str | None = None,
    batch_size: int = 512,
) -> ParityReport:
    """Compare torch and ONNX Runtime outputs on ``x``; raise unless they agree.

    Args:
        torch_model: The model that was exported; returns logits ``(B, K)`` or a tuple
            ``(logits, embedding)``. It is put in eval mode.
        onnx_path: The exported graph.
        x: float32 ``(N, T, C)`` real, gap-free inputs (raw digital numbers).
        atol: Largest allowed absolute logit difference.
        input_name: Graph input; default the graph's only input.
        output_name: Logits output; default the graph's first output.
        embedding_name: Embedding output to compare as well (reported, not gated).
        batch_size: Inputs per forward pass.

    Returns:
        The measured agreement (``passed`` is True).

    Raises:
        ValueError: If ``x`` is empty, not 3-D or not finite.
        ParityError: If ``max_abs_logit_diff > atol`` or any predicted class differs.
    """
    import onnxruntime as ort

    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 3 or len(x) == 0:
        raise ValueError(f"parity inputs have shape {x.shape}; expected a non-empty (N, T, C) array")
    if not np.isfinite(x).all():
        raise ValueError("parity inputs contain NaN/inf; pass gap-filled series as the graph receives them")
    torch_model.eval()
    want, want_emb = _torch_outputs(torch_model, x, batch_size)

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(str(onnx_path), sess_options=opts, providers=["CPUExecutionProvider"])
    in_name = input_name or session.get_inputs()[0].name
    out_name = output_name or session.get_outputs()[0].name
    names = [out_name] + ([embedding_name] if embedding_name else [])
    got_parts: list[list[np.ndarray]] = [[] for _ in names]
    for start in range(0, len(x), batch_size):
        outs = session.run(names, {in_name: x[start : start + batch_size]})
        for part, out in zip(got_parts, outs, strict=True):
            part.append(out)
    got = np.concatenate(got_parts[0])
    if got.shape != want.shape:
        raise ParityError(f"ONNX logits have shape {got.shape}; torch gives {want.shape}")
    emb_diff = None
    if embedding_name and want_emb is not None:
        got_emb = np.concatenate(got_parts[1])
        if got_emb.shape != want_emb.shape:
            raise ParityError(f"ONNX embedding has shape {got_emb.shape}; torch gives {want_emb.shape}")
        emb_diff = float(np.abs(got_emb - want_emb).max())
    report = ParityReport(
        n=len(x),
        max_abs_logit_diff=float(np.abs(got - want).max()),
        argmax_agreement=float((got.argmax(axis=1) == want.argmax(axis=1)).mean()),
        atol=atol,
        max_abs_embedding_diff=emb_diff,
    )
    if not report.passed:
        raise ParityError(f"ONNX Runtime does not reproduce torch for {onnx_path}: {report.summary()}")
    logger.info("parity %s: %s", Path(onnx_path).name, report.summary())
    return report


def softmax(z: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64."""
    z = np.asarray(z, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def probability_parity(p_onnx: np.ndarray, p_ref: np.ndarray, atol: float, what: str) -> ParityReport:
    """Compare a bundle's class probabilities with the reference side's (tree and ensemble bundles).

    Raises:
        ParityError: If they differ by more than ``atol`` or the class differs on any input; the message starts
            with ``what`` (what does not reproduce what).
    """
    p_onnx = np.asarray(p_onnx, dtype=np.float64)
    p_ref = np.asarray(p_ref, dtype=np.float64)
    diff = float(np.abs(p_onnx - p_ref).max())
    agree = float(np.mean(p_onnx.argmax(1) == p_ref.argmax(1)))
    report = ParityReport(n=len(p_ref), max_abs_logit_diff=diff, argmax_agreement=agree, atol=atol)
    if not report.passed:
        raise ParityError(
            f"{what}: max |probability diff| {diff:.3g} (atol {atol:g}), class agreement {100 * agree:.2f} % "
            f"on {len(p_ref)} series"
        )
    return report
