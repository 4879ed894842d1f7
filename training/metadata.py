"""The one place training builds a bundle's metadata (:class:`~cropmap.contract.metadata.BundleMetadata`).

Every model training saves (a base model with or without an encoder, a tree model, the shipped sample model) gets
its metadata here, so the fields every bundle shares (schema version, output name, gap fill, revision, the
clamped ``min_valid_steps``) are written one way. The exporters then add what export decides (creation time,
precision, calibration).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from cropmap.contract.metadata import (
    SCHEMA_VERSION,
    BundleMetadata,
    ClassInfo,
    EmbeddingInfo,
    Provenance,
    TimeGrid,
)

__all__ = ["bundle_metadata"]


def bundle_metadata(
    *,
    model_name: str,
    input_name: str,
    bands: Sequence[str],
    time_grid: TimeGrid,
    classes: Sequence[ClassInfo],
    min_valid_steps: int,
    nodata: float | None,
    embedding: EmbeddingInfo | None,
    encoder: str,
    base_model: str,
    pretraining: str,
    training_data: str,
    metrics: Mapping[str, float],
    reflectance_scale: float = 10000.0,
    created: str = "",
) -> BundleMetadata:
    """The metadata of a model trained on ``bands`` over ``time_grid``.

    Args:
        model_name: The graph's name (``resmlp_lstm``, ``bands_transformer``, ``features_forest`` ...).
        input_name: The graph input's name.
        bands: Band order of the input.
        time_grid: The grid the series were resampled onto.
        classes: Output classes, in logit order.
        min_valid_steps: Fewest valid observations inference requires of a pixel (clamped to 1..len(grid)).
        nodata: Nodata value of the training data (informative).
        embedding: The embedding output, or ``None`` (tree models have none).
        encoder: Provenance: the encoder (``"none"`` for raw bands or features).
        base_model: Provenance: the base model's family.
        pretraining: Provenance: ``"none"``, ``"unimodal-0.2"`` ...
        training_data: One line saying where labels and series came from.
        metrics: Validation metrics.
        reflectance_scale: Raw value = reflectance x this.
        created: ISO timestamp (the exporters set it again when they write the bundle).
    """
    from training.checkpoint import git_revision

    return BundleMetadata(
        schema_version=SCHEMA_VERSION,
        model_name=model_name,
        input_name=input_name,
        output_name="logits",
        bands=tuple(bands),
        reflectance_scale=float(reflectance_scale),
        nodata=nodata,
        time_grid=time_grid,
        min_valid_steps=max(1, min(int(min_valid_steps), len(time_grid.day_of_season))),
        gap_fill="linear",
        classes=tuple(classes),
        embedding=embedding,
        provenance=Provenance(
            encoder=encoder,
            base_model=base_model,
            pretraining=pretraining,
            training_data=training_data,
            revision=git_revision(),
            created=created,
            metrics={k: float(v) for k, v in metrics.items()},
        ),
    )
