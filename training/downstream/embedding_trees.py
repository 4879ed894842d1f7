"""Tree families on a frozen encoder's per-stamp embeddings (the WorldCereal recipe: a pre-trained encoder's
embeddings into gradient-boosted trees).

For a run with pre-trained encoders (``--encoder``), every tree family of ``DownstreamConfig.trees`` is trained a
second time per encoder (method ``unimodal`` / ``bimodal``), on these features of the raw series ``(N, T, C)``:

1. the encoder's embeddings of every stamp, flattened, ``T * D`` values (time-major);
2. their temporal statistics per embedding dimension: mean, standard deviation (population), minimum and maximum,
   ``4 * D`` values.

The feature stage (the encoder's own standardisation, the frozen encoder per stamp, the flattening and the
statistics) is exported **once, at training time**, to ONNX (:func:`feature_onnx`), checked against torch, and the
trees are fitted on the features that ONNX graph computes. The checkpoint keeps that graph; the bundle is that graph
followed by the converted trees (:func:`exporters.trees.build_tree_graph`), so the bundle computes exactly the
features the trees were fitted on and its parity with ``predict_proba`` is as tight as for the derived-feature trees.
"""

from __future__ import annotations

import logging
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

logger = logging.getLogger(__name__)

FEATURE_ATOL = 1e-3
"""Largest allowed ``|torch - ONNX Runtime|`` feature (embedding units) when the feature stage is exported."""

EMBED_STATS = ("mean", "std", "min", "max")


def embedding_feature_names(dim: int, n_steps: int) -> list[str]:
    """The names of the features, in order (``e<d>_t<t>``, then ``e<d>_<stat>``)."""
    flat = [f"e{d}_t{t}" for t in range(n_steps) for d in range(dim)]
    return flat + [f"e{d}_{s}" for s in EMBED_STATS for d in range(dim)]


class EmbeddingFeatures(nn.Module):
    """Raw series ``(N, T, C)`` -> tree features ``(N, T*D + 4*D)`` through a frozen ``front`` (``(N, T, C)`` ->
    ``(N, T, D)``: standardisation and encoder)."""

    def __init__(self, front: nn.Module) -> None:
        super().__init__()
        self.front = front

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.front(x)
        mean = z.mean(dim=1)
        std = ((z - mean.unsqueeze(1)) ** 2).mean(dim=1).sqrt()
        return torch.cat([z.flatten(1), mean, std, z.amin(dim=1), z.amax(dim=1)], dim=1)


def feature_onnx(front: nn.Module, example: np.ndarray, *, opset: int) -> bytes:
    """The feature stage as an ONNX model ``x (B, T, C)`` -> ``features (B, F)``, checked against torch on ``example``.

    Raises:
        ValueError: If ONNX Runtime's features differ from torch's by more than :data:`FEATURE_ATOL`.
    """
    module = EmbeddingFeatures(front).cpu().eval()
    x = torch.from_numpy(np.ascontiguousarray(example, dtype=np.float32))
    with tempfile.TemporaryDirectory(prefix="cropmap-features-") as tmp:
        path = Path(tmp) / "features.onnx"
        with torch.no_grad(), warnings.catch_warnings():
            # The TorchScript exporter, as for the neural bundles (exporters.to_onnx); torch flags it as legacy.
            warnings.filterwarnings(
                "ignore", message="You are using the legacy TorchScript-based ONNX export"
            )
            warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
            torch.onnx.export(
                module,
                (x[:2],),
                str(path),
                input_names=["x"],
                output_names=["features"],
                dynamic_axes={"x": {0: "batch"}, "features": {0: "batch"}},
                opset_version=opset,
                dynamo=False,
            )
            want = module(x).numpy()
        blob = path.read_bytes()
    diff = float(np.abs(onnx_features(blob, example) - want).max()) if len(want) else 0.0
    if not diff <= FEATURE_ATOL:
        raise ValueError(
            f"the exported embedding features differ from torch's by {diff:.3g} (expected at most {FEATURE_ATOL:g})"
        )
    logger.info(
        "embedding feature stage exported: %d features, max |torch - ONNX Runtime| %.3g", want.shape[1], diff
    )
    return blob


def onnx_features(blob: bytes, x: np.ndarray, *, batch: int = 4096) -> np.ndarray:
    """The features the ONNX feature stage ``blob`` computes for raw series ``x`` (ONNX Runtime, CPU, one thread)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    session = ort.InferenceSession(blob, sess_options=opts, providers=["CPUExecutionProvider"])
    x = np.asarray(x, dtype=np.float32)
    parts = [session.run(None, {"x": x[i : i + batch]})[0] for i in range(0, len(x), batch)]
    return np.concatenate(parts) if parts else np.empty((0, 0), np.float32)


def features_of(blob: bytes | None, x: np.ndarray, bands: Any) -> np.ndarray:
    """The tree features of raw series ``x``: through the stored feature stage ``blob``, or the derived features
    (:func:`training.downstream.trees.tree_features`) when there is none."""
    from training.downstream.trees import tree_features

    return tree_features(x, bands) if blob is None else onnx_features(blob, x)
