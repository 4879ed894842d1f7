"""Classifier checkpoints: a trained base model with everything needed to export it as a bundle.

A ``classifier`` checkpoint is the seam between training and export. ``training`` writes it (the
downstream runs, the sample model) and never imports ``exporters``; ``exporters`` reads it and turns
it into a cropmap bundle. Payload keys besides the common ones of :mod:`training.checkpoint`:

* ``in_dim`` / ``n_classes``: the base model's input features per stamp and outputs;
* ``encoder``: ``None`` (the base model reads normalised bands) or ``{"model_name", "model_config",
  "state_dict"}`` of the frozen per-stamp encoder (``resmlp``) or series encoder (``timewise``), with
  ``encoder_path`` naming the file it came from;
* ``norm_stats``: statistics of the raw bands the graph standardises with;
* ``bundle_metadata``: the JSON document of :class:`cropmap.contract.metadata.BundleMetadata` the bundle gets
  (classes, time grid, bands, gap filling, provenance);
* ``parity_inputs``: float32 ``(N, T, C)`` real, gap-filled raw series for the parity check;
* ``parity_labels``: optional int64 ``(N,)`` labels of those series (0-based class indices), so an
  export can report the accuracy it reproduces.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cropmap.contract.metadata import (
    BundleMetadata,
    ClassInfo,
    EmbeddingInfo,
    TimeGrid,
)
from training.checkpoint import (
    CheckpointError,
    load_checkpoint,
    save_checkpoint,
    validate_norm_stats,
)
from training.metadata import bundle_metadata
from training.models import BaseModel, build_model
from training.models.encoder import ENCODERS, Encoder, NormalizedEncoder, build_encoder

CLASSIFIER_KIND = "classifier"
"""``kind`` of the checkpoints :func:`load_classifier` reads."""

_REQUIRED = (
    "model_config",
    "in_dim",
    "n_classes",
    "norm_stats",
    "encoder",
    "bundle_metadata",
    "parity_inputs",
)


@dataclass(frozen=True)
class Classifier:
    """A trained classifier rebuilt from a ``classifier`` checkpoint (modules in eval mode)."""

    encoder: Encoder | None
    """Bare encoder (``None``: raw bands)."""
    base_model: BaseModel
    base_model_name: str
    norm_stats: dict[str, list[float]]
    metadata: BundleMetadata
    parity_inputs: np.ndarray
    """float32 ``(N, T, C)`` real inputs stored for the parity check."""
    parity_labels: np.ndarray | None
    """int64 ``(N,)`` 0-based class indices of ``parity_inputs`` when known."""
    payload: dict[str, Any]
    """The whole checkpoint payload (``config``, metrics, ``fill`` ...)."""


def describe_encoder(encoder: Encoder | None) -> tuple[str, str]:
    """``(registry name, short description)`` of a bare encoder: ``("resmlp", "resmlp-8x256")``, ``(None, "none")``."""
    if encoder is None:
        return "none", "none"
    name = next((n for n, builder in ENCODERS.items() if type(encoder) is builder), None)
    if name is None:
        raise TypeError(
            f"{type(encoder).__name__} is not a known encoder; expected one of {sorted(ENCODERS)}"
        )
    cfg: dict[str, Any] = dict(encoder.config)  # the registry's encoders keep a dict
    size = f"{cfg['n_layers']}x{cfg.get('hidden', cfg.get('d_model'))}"
    return name, f"{name}-{size}"


def classifier_metadata(
    *,
    encoder: Encoder | None,
    base_model: BaseModel,
    family: str,
    pretraining: str,
    bands: Sequence[str],
    time_grid: TimeGrid,
    classes: Sequence[ClassInfo],
    min_valid_steps: int,
    training_data: str,
    metrics: dict[str, float],
    nodata: float | None,
    reflectance_scale: float = 10000.0,
    created: str = "",
) -> BundleMetadata:
    """The bundle metadata of a trained classifier (encoder + base model over a time grid).

    Args:
        encoder: The bare encoder or ``None`` (raw bands).
        base_model: The trained base model (its ``feature_dim`` is the embedding output's size).
        family: Its registry key.
        pretraining: ``"none"``, ``"unimodal-0.2"``, ``"bimodal-0.6"`` ...
        bands: Band order of the input.
        time_grid: The grid the series were resampled onto.
        classes: Output classes, in logit order.
        min_valid_steps: Fewest valid observations inference requires of a pixel.
        training_data: One line saying where labels and series came from.
        metrics: Validation metrics.
        nodata: Nodata value of the training data (informative).
        reflectance_scale: Raw value = reflectance x this.
        created: ISO timestamp (set again at export).
    """
    kind, enc_desc = describe_encoder(encoder)
    dim = int(base_model.feature_dim)  # every base model declares an int
    return bundle_metadata(
        model_name=f"{'bands' if encoder is None else kind}_{family}",
        input_name="s2",
        bands=bands,
        time_grid=time_grid,
        classes=classes,
        min_valid_steps=min_valid_steps,
        nodata=nodata,
        embedding=EmbeddingInfo("embedding", dim, f"{family} features before the linear head ({dim} values)"),
        encoder=enc_desc,
        base_model=family,
        pretraining=pretraining,
        training_data=training_data,
        metrics=metrics,
        reflectance_scale=reflectance_scale,
        created=created,
    )


def save_classifier(
    path: str | Path,
    *,
    encoder: Encoder | NormalizedEncoder | None,
    encoder_name: str | None,
    base_model: BaseModel,
    base_model_name: str,
    base_model_config: Mapping[str, Any],
    norm_stats: Mapping[str, Sequence[float]],
    metadata: BundleMetadata,
    parity_inputs: np.ndarray,
    parity_labels: np.ndarray | None = None,
    **extra: Any,
) -> Path:
    """Write a ``classifier`` checkpoint (atomically) that ``python -m exporters`` turns into a bundle.

    Args:
        path: Destination file.
        encoder: The bare encoder (not a NormalizedEncoder) or ``None``.
        encoder_name: Its builder name in :data:`training.models.encoder.ENCODERS`.
        base_model: The trained base model.
        base_model_name: Its registry key; rebuilt with
            ``build_model(name, in_dim, n_classes, **base_model_config)``.
        base_model_config: The base model's hyper-parameters.
        norm_stats: Raw-band statistics.
        metadata: The bundle metadata to export with.
        parity_inputs: float32 ``(N, T, C)`` real gap-free inputs for the parity check.
        parity_labels: Optional ``(N,)`` 0-based class indices of ``parity_inputs``.
        **extra: More payload keys (``config``, metrics, ``encoder_path`` ...).

    Raises:
        ValueError: If the encoder is a NormalizedEncoder or the inputs do not fit the metadata.
    """
    if isinstance(encoder, NormalizedEncoder):
        raise ValueError(  # noqa: TRY004 - a wrong value of the right type, documented as ValueError
            "save the bare encoder (NormalizedEncoder.encoder) and its norm_stats"
        )
    metadata.validate()
    x = np.asarray(parity_inputs, dtype=np.float32)
    if x.ndim != 3 or x.shape[1:] != (metadata.n_timesteps, metadata.n_bands) or not len(x):
        raise ValueError(
            f"parity inputs have shape {x.shape}; the metadata expects (N, {metadata.n_timesteps}, {metadata.n_bands})"
        )
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
        "parity_inputs": torch.from_numpy(np.ascontiguousarray(x)),
        "parity_labels": None
        if parity_labels is None
        else torch.as_tensor(np.asarray(parity_labels, dtype=np.int64)),
    }
    payload.update(extra)
    return save_checkpoint(path, payload)


def load_classifier(path: str | Path) -> Classifier:
    """Rebuild a classifier from a ``classifier`` checkpoint (eval mode).

    Raises:
        FileNotFoundError: If the file does not exist.
        training.checkpoint.CheckpointError: If the file is not a classifier checkpoint, lacks keys or
            its weights do not fit the stored architecture.
    """
    ckpt = load_checkpoint(path, kind=CLASSIFIER_KIND)
    missing = [k for k in _REQUIRED if k not in ckpt]
    if missing:
        raise CheckpointError(f"{path}: classifier checkpoint lacks {missing}")
    encoder = None
    if ckpt["encoder"] is not None:
        enc = ckpt["encoder"]
        encoder = build_encoder(enc["model_name"], **enc["model_config"])
        try:
            encoder.load_state_dict(enc["state_dict"])
        except RuntimeError as err:
            raise CheckpointError(
                f"{path}: encoder weights do not fit {enc['model_name']!r}: {_first_line(err)}"
            ) from err
        encoder.eval()
    base = build_model(
        ckpt["model_name"], int(ckpt["in_dim"]), int(ckpt["n_classes"]), **ckpt["model_config"]
    )
    try:
        base.load_state_dict(ckpt["state_dict"])
    except RuntimeError as err:
        raise CheckpointError(
            f"{path}: base-model weights do not fit {ckpt['model_name']!r}: {_first_line(err)}"
        ) from err
    base.eval()
    meta = BundleMetadata.from_json(ckpt["bundle_metadata"])
    labels = ckpt.get("parity_labels")
    return Classifier(
        encoder=encoder,
        base_model=base,
        base_model_name=str(ckpt["model_name"]),
        norm_stats=validate_norm_stats(ckpt["norm_stats"], n_features=meta.n_bands),
        metadata=meta,
        parity_inputs=ckpt["parity_inputs"].numpy(),
        parity_labels=None if labels is None else labels.numpy(),
        payload=ckpt,
    )


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
