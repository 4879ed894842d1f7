"""Torch -> ONNX: encoder, base model and normalisation exported as one cropmap bundle.

The bundle graph takes raw digital numbers and does everything else itself::

    input (B, T, C) raw DN -> Normalize -> encoder per stamp -> base model features (B, D)
                                                               -> base model head -> logits (B, K)

Outputs: the logits and, when the metadata declares one, the ``embedding`` (the base
model's features before its linear head). The batch axis is dynamic; T and C are
fixed by the metadata. Modules are exported in eval mode (BatchNorm uses its running
statistics, Dropout is off).

Exporter choice: the TorchScript-based exporter (``torch.onnx.export(..., dynamo=False)``).
It keeps the batch axis symbolic through ``nn.LSTM`` and writes one self-contained
file; the dynamo exporter may freeze dimensions and writes weights to an external
``.onnx.data`` file unless told otherwise.

The file is written atomically (temporary name, then rename) after
``onnx.checker.check_model`` and a parity check against torch on real inputs
(:func:`exporters.parity.check_parity`); a bundle that fails either never reaches
the final path.

Checkpoints (``kind="classifier"``) hold everything needed to rebuild and export a
trained classifier: see :func:`save_classifier` / :func:`load_classifier`.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cropmap.bundle import METADATA_KEY, BundleMetadata, load_bundle
from exporters.parity import ParityReport, check_parity
from training.checkpoint import load_checkpoint, save_checkpoint, validate_norm_stats
from training.models import build_model
from training.models.encoder import Normalize, NormalizedEncoder, build_encoder

logger = logging.getLogger(__name__)

CLASSIFIER_KIND = "classifier"
"""``kind`` of checkpoints :func:`load_classifier` reads."""

DEFAULT_OPSET = 17


class ExportError(RuntimeError):
    """The model cannot be exported as a bundle matching its metadata."""


class BundleGraph(nn.Module):
    """The exported computation: raw ``(B, T, C)`` -> ``(logits (B, K), embedding (B, D))``.

    Args:
        normalize: Standardisation of the raw bands.
        encoder: Per-stamp encoder ``(..., C) -> (..., E)`` (``None``: the base model reads normalised bands).
        base_model: A base model with ``features(x) -> (B, D)`` and a linear ``head`` such that
            ``forward(x) == head(features(x))`` in eval mode (every registered model).
    """

    def __init__(self, normalize: Normalize, encoder: nn.Module | None, base_model: nn.Module) -> None:
        super().__init__()
        for attr in ("features", "head"):
            if not hasattr(base_model, attr):
                raise ExportError(
                    f"base model {type(base_model).__name__} has no `{attr}`; the bundle needs features(x) and a head"
                )
        self.normalize = normalize
        self.encoder = encoder
        self.base_model = base_model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Classify raw series ``(B, T, C)``; returns logits ``(B, K)`` and features ``(B, D)``."""
        z = self.normalize(x)
        if self.encoder is not None:
            z = self.encoder(z)  # (B, T, E)
        features = self.base_model.features(z)
        return self.base_model.head(features), features


class _LogitsOnly(nn.Module):
    def __init__(self, graph: BundleGraph) -> None:
        super().__init__()
        self.graph = graph

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.graph(x)[0]


def build_graph(
    *, encoder: nn.Module | None, base_model: nn.Module, norm_stats: Mapping[str, Sequence[float]] | None
) -> BundleGraph:
    """Assemble normalisation, encoder and base model into one eval-mode module.

    Args:
        encoder: A bare encoder (then ``norm_stats`` are required), a
            :class:`~training.models.encoder.NormalizedEncoder` (its own statistics are
            used; ``norm_stats`` must be ``None``), or ``None`` (raw bands into the base
            model; ``norm_stats`` required).
        base_model: The base model over per-stamp features.
        norm_stats: ``{"mean": [...], "std": [...]}`` of the raw bands.

    Raises:
        ExportError: If normalisation is missing or given twice.
    """
    if isinstance(encoder, NormalizedEncoder):
        if norm_stats is not None:
            raise ExportError("encoder already normalises its input (NormalizedEncoder); pass norm_stats=None")
        normalize, inner = encoder.normalize, encoder.encoder
    else:
        if norm_stats is None:
            raise ExportError("norm_stats are required: the bundle graph takes raw digital numbers")
        stats = validate_norm_stats(norm_stats)
        normalize, inner = Normalize(stats["mean"], stats["std"]), encoder
    graph = BundleGraph(normalize, inner, base_model)
    graph.eval()
    return graph


def _check_against_metadata(graph: BundleGraph, meta: BundleMetadata, example: torch.Tensor) -> None:
    meta.validate()
    want = (meta.n_timesteps, meta.n_bands)
    if example.ndim != 3 or tuple(example.shape[1:]) != want:
        raise ExportError(f"example input has shape {tuple(example.shape)}; metadata expects (B, {want[0]}, {want[1]})")
    if graph.normalize.n_features != meta.n_bands:
        raise ExportError(f"normalisation has {graph.normalize.n_features} features; metadata lists {meta.n_bands} bands")
    with torch.no_grad():
        logits, features = graph(example)
        direct = graph.base_model(graph.encoder(graph.normalize(example)) if graph.encoder else graph.normalize(example))
    if logits.shape[-1] != len(meta.classes):
        raise ExportError(f"model has {logits.shape[-1]} outputs; metadata lists {len(meta.classes)} classes")
    if not torch.allclose(direct, logits, atol=1e-5, rtol=1e-5):
        raise ExportError("base_model(x) differs from base_model.head(base_model.features(x)) in eval mode")
    if meta.embedding is not None and features.shape[-1] != meta.embedding.dim:
        raise ExportError(f"embedding has {features.shape[-1]} features; metadata says {meta.embedding.dim}")
    if not torch.isfinite(logits).all():
        raise ExportError("the model produces non-finite logits on the example input")


def export_bundle(
    *,
    encoder: nn.Module | None,
    base_model: nn.Module,
    norm_stats: Mapping[str, Sequence[float]] | None,
    metadata: BundleMetadata,
    out: str | Path,
    example: np.ndarray | torch.Tensor,
    opset: int = DEFAULT_OPSET,
    atol: float = 1e-4,
    overwrite: bool = True,
) -> ParityReport:
    """Export a classifier as a single-file cropmap bundle and check it.

    Args:
        encoder: See :func:`build_graph`.
        base_model: See :func:`build_graph`.
        norm_stats: See :func:`build_graph`.
        metadata: The bundle metadata; its input/output names name the graph's I/O.
        out: Destination ``.onnx`` file.
        example: float32 ``(N, T, C)`` real, gap-free raw inputs; used to trace the graph
            and for the parity check (all ``N`` rows are compared).
        opset: ONNX opset.
        atol: Parity tolerance on the logits.
        overwrite: If false, an existing ``out`` is an error.

    Returns:
        The parity report on ``example``.

    Raises:
        ExportError: If the model does not match the metadata or the checker rejects the graph.
        exporters.parity.ParityError: If ONNX Runtime does not reproduce torch.
        FileExistsError: If ``out`` exists and ``overwrite`` is false.
    """
    import onnx

    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; pass overwrite=True to replace it")
    x = torch.as_tensor(np.asarray(example, dtype=np.float32))
    if not torch.isfinite(x).all():
        raise ExportError("example input contains NaN/inf; pass gap-filled series as inference does")
    graph = build_graph(encoder=encoder, base_model=base_model, norm_stats=norm_stats)
    _check_against_metadata(graph, metadata, x)

    module: nn.Module = graph if metadata.embedding is not None else _LogitsOnly(graph)
    outputs = [metadata.output_name] + ([metadata.embedding.output_name] if metadata.embedding else [])
    dynamic = {name: {0: "batch"} for name in [metadata.input_name, *outputs]}
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".onnx", dir=out.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            # Tracing turns the modules' input-shape checks into constants; T and C are fixed by
            # the metadata, so that is intended. The LSTM warning concerns variable-length batches
            # without initial states; the batch axis is verified by the parity check and tests.
            warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
            warnings.filterwarnings("ignore", message="Exporting a model to ONNX with a batch_size other than 1")
            # The TorchScript exporter is chosen on purpose (module docstring); torch flags it as legacy.
            warnings.filterwarnings("ignore", message="You are using the legacy TorchScript-based ONNX export")
            torch.onnx.export(
                module,
                (x[: min(len(x), 8)],),
                str(tmp),
                input_names=[metadata.input_name],
                output_names=outputs,
                dynamic_axes=dynamic,
                opset_version=opset,
                do_constant_folding=True,
                dynamo=False,
            )
        model = onnx.load(str(tmp))
        onnx.helper.set_model_props(model, {METADATA_KEY: metadata.to_json()})
        model.producer_name = "cropmap.exporters"
        try:
            onnx.checker.check_model(model, full_check=True)
        except onnx.checker.ValidationError as err:
            raise ExportError(f"onnx.checker rejects the exported graph: {err}") from err
        onnx.save(model, str(tmp))
        load_bundle(tmp)  # the contract as cropmap reads it
        report = check_parity(
            module,
            tmp,
            x.numpy(),
            atol=atol,
            input_name=metadata.input_name,
            output_name=metadata.output_name,
            embedding_name=metadata.embedding.output_name if metadata.embedding else None,
        )
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    logger.info("wrote bundle %s (%.2f MB): %s", out, out.stat().st_size / 1e6, report.summary())
    return report


@dataclass(frozen=True)
class Classifier:
    """A trained classifier rebuilt from a ``classifier`` checkpoint."""

    encoder: nn.Module | None
    """Bare per-stamp encoder in eval mode (``None``: raw bands)."""
    base_model: nn.Module
    norm_stats: dict[str, list[float]]
    metadata: BundleMetadata
    parity_inputs: np.ndarray
    """float32 ``(N, T, C)`` real inputs stored for the parity check."""


def save_classifier(
    path: str | Path,
    *,
    encoder: nn.Module | None,
    encoder_name: str | None,
    base_model: nn.Module,
    base_model_name: str,
    base_model_config: Mapping[str, Any],
    norm_stats: Mapping[str, Sequence[float]],
    metadata: BundleMetadata,
    parity_inputs: np.ndarray,
    **extra: Any,
) -> Path:
    """Write a ``classifier`` checkpoint that ``python -m exporters`` turns into a bundle.

    Args:
        path: Destination file.
        encoder: The bare encoder (not a NormalizedEncoder) or ``None``.
        encoder_name: Its builder name in :data:`training.models.encoder.ENCODERS` (``"resmlp"``).
        base_model: The trained base model.
        base_model_name: Its registry name (``"lstm"``); rebuilt with
            ``build_model(name, in_dim, n_classes, **base_model_config)``.
        base_model_config: The base model's hyper-parameters.
        norm_stats: Raw-band statistics.
        metadata: The bundle metadata to export with.
        parity_inputs: float32 ``(N, T, C)`` real gap-free inputs for the parity check.
        **extra: More payload keys (``config``, metrics, ...).
    """
    if isinstance(encoder, NormalizedEncoder):
        raise ValueError("save the bare encoder (NormalizedEncoder.encoder) and its norm_stats")
    metadata.validate()
    in_dim = int(encoder.out_dim) if encoder is not None else metadata.n_bands
    payload: dict[str, Any] = {
        "kind": CLASSIFIER_KIND,
        "model_name": base_model_name,
        "model_config": dict(base_model_config),
        "state_dict": {k: v.detach().cpu() for k, v in base_model.state_dict().items()},
        "in_dim": in_dim,
        "n_classes": len(metadata.classes),
        "norm_stats": validate_norm_stats(norm_stats, n_features=metadata.n_bands),
        "encoder": None
        if encoder is None
        else {
            "model_name": encoder_name,
            "model_config": dict(encoder.config),
            "state_dict": {k: v.detach().cpu() for k, v in encoder.state_dict().items()},
        },
        "bundle_metadata": metadata.to_json(),
        "parity_inputs": torch.as_tensor(np.asarray(parity_inputs, dtype=np.float32)),
    }
    payload.update(extra)
    return save_checkpoint(path, payload)


def load_classifier(path: str | Path) -> Classifier:
    """Rebuild a classifier from a ``classifier`` checkpoint (eval mode).

    Raises:
        training.checkpoint.CheckpointError: If the file is not a classifier checkpoint.
        ExportError: If the stored weights do not fit the stored architecture.
    """
    ckpt = load_checkpoint(path, kind=CLASSIFIER_KIND)
    missing = [
        k for k in ("model_config", "in_dim", "n_classes", "norm_stats", "encoder", "bundle_metadata", "parity_inputs")
        if k not in ckpt
    ]
    if missing:
        raise ExportError(f"{path}: classifier checkpoint lacks {missing}")
    encoder = None
    if ckpt["encoder"] is not None:
        enc = ckpt["encoder"]
        encoder = build_encoder(enc["model_name"], **enc["model_config"])
        try:
            encoder.load_state_dict(enc["state_dict"])
        except RuntimeError as err:
            raise ExportError(f"{path}: encoder weights do not fit {enc['model_name']!r}: {err}") from err
        encoder.eval()
    base = build_model(ckpt["model_name"], int(ckpt["in_dim"]), int(ckpt["n_classes"]), **ckpt["model_config"])
    try:
        base.load_state_dict(ckpt["state_dict"])
    except RuntimeError as err:
        raise ExportError(f"{path}: base-model weights do not fit {ckpt['model_name']!r}: {err}") from err
    base.eval()
    meta = BundleMetadata.from_json(ckpt["bundle_metadata"])
    return Classifier(
        encoder=encoder,
        base_model=base,
        norm_stats=validate_norm_stats(ckpt["norm_stats"], n_features=meta.n_bands),
        metadata=meta,
        parity_inputs=ckpt["parity_inputs"].numpy(),
    )


def export_checkpoint(
    checkpoint: str | Path,
    out: str | Path,
    *,
    opset: int = DEFAULT_OPSET,
    atol: float = 1e-4,
    created: str | None = None,
    overwrite: bool = False,
) -> ParityReport:
    """Export a ``classifier`` checkpoint as a bundle (``python -m exporters``).

    Args:
        checkpoint: File written by :func:`save_classifier`.
        out: Destination ``.onnx`` file.
        opset: ONNX opset.
        atol: Parity tolerance.
        created: Timestamp recorded in the provenance (default: kept from the checkpoint).
        overwrite: Replace an existing ``out``.
    """
    clf = load_classifier(checkpoint)
    meta = clf.metadata
    if created is not None:
        meta = dataclasses.replace(meta, provenance=dataclasses.replace(meta.provenance, created=created))
    return export_bundle(
        encoder=clf.encoder,
        base_model=clf.base_model,
        norm_stats=clf.norm_stats,
        metadata=meta,
        out=out,
        example=clf.parity_inputs,
        opset=opset,
        atol=atol,
        overwrite=overwrite,
    )
