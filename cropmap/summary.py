"""The run summary of ``classify``: a typed, versioned record, written as ``<out stem>_summary.json``.

:class:`RunSummary` is what :func:`cropmap.classify` returns and what the command line, ``cropmap batch`` and the
STAC item read; :meth:`RunSummary.to_dict` gives the JSON document (keys in the order docs/outputs.md lists them)
and :meth:`RunSummary.read` / :meth:`RunSummary.from_dict` read one back, refusing a document of another
:data:`SCHEMA_VERSION`, a missing key or an unknown one. Sections whose content another module owns (the bundle's
provenance, the season coverage, the parcels, the embedding storage, the options) stay JSON objects.

Schema versions: 1 is the first versioned summary (the keys of earlier summaries, plus ``schema_version``).
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Union

from typing_extensions import Self

from cropmap.errors import SummaryError

if TYPE_CHECKING:
    from cropmap.writer import OutputPaths

SCHEMA_VERSION = 1
"""Version of the summary's JSON keys; raised whenever a key is renamed, removed or changes meaning."""

_OMIT_NONE = {"omit_none": True}
"""Field metadata: the key is left out of the JSON when the value is ``None`` (a section only some runs have)."""


class _Record:
    """JSON round-trip of a dataclass section: fields in order, nested sections, ``omit_none`` keys."""

    def to_dict(self) -> dict[str, Any]:
        """The section as a JSON-able dict (keys in field order)."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if value is None and f.metadata.get("omit_none"):
                continue
            out[f.name] = _dump(value)
        return out

    @classmethod
    def from_dict(cls, doc: Any, where: str = "summary") -> Self:
        """Read the section back from ``doc`` (as :meth:`to_dict` wrote it).

        Raises:
            SummaryError: ``doc`` is not an object, lacks a key, or has a key the section does not know.
        """
        if not isinstance(doc, dict):
            raise SummaryError(f"{where} is {type(doc).__name__}; expected a JSON object")
        hints = typing.get_type_hints(cls)
        fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(doc) - set(fields))
        if unknown:
            raise SummaryError(f"{where} has unknown keys {unknown}; expected only {sorted(fields)}")
        values: dict[str, Any] = {}
        for name, f in fields.items():
            if name in doc:
                values[name] = _load(hints[name], doc[name], f"{where}.{name}")
            elif not (
                f.metadata.get("omit_none")
                or f.default is not dataclasses.MISSING
                or f.default_factory is not dataclasses.MISSING
            ):
                raise SummaryError(f"{where} has no key {name!r}; expected the keys {sorted(fields)}")
        return cls(**values)


def _dump(value: Any) -> Any:
    if isinstance(value, _Record):
        return value.to_dict()
    if isinstance(value, (list, tuple)):
        return [_dump(v) for v in value]
    return value


def _load(tp: Any, value: Any, where: str) -> Any:
    """``value`` read as type ``tp``: sections recursively, lists of sections, anything else as it is in JSON."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _load(args[0], value, where) if len(args) == 1 else value
    if origin is list:
        if not isinstance(value, list):
            raise SummaryError(f"{where} is {type(value).__name__}; expected a JSON array")
        (item,) = typing.get_args(tp)
        return [_load(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(tp, type) and issubclass(tp, _Record):
        return tp.from_dict(value, where)
    return value


@dataclass(frozen=True, kw_only=True)
class Inputs(_Record):
    """Absolute paths of what the run read, and how the mask was read."""

    stack: str
    stack_layout: str
    mask: str | None
    """``None`` for a whole-stack run (no cropland mask)."""
    mask_crs: str | None
    mask_layer: str | None
    mask_max_segment_m: float | None
    mask_dropped_parts: int
    whole_stack: str | None = field(default=None, metadata=_OMIT_NONE)
    """Only for a whole-stack run: what that means, in words."""
    model: str
    model_note: str | None = field(default=None, metadata=_OMIT_NONE)
    """Only when the model is the Flanders sample bundle shipped with cropmap."""


@dataclass(frozen=True, kw_only=True)
class Outputs(_Record):
    """The paths written (``None``: not requested); the fields of :class:`cropmap.writer.OutputPaths`."""

    map: str
    aux: str
    qml: str
    summary: str
    confidence: str | None = None
    embedding: str | None = None
    quicklook: str | None = None
    stac: str | None = None
    probabilities: str | None = None
    uncertainty: str | None = None
    parcels: str | None = field(default=None, metadata=_OMIT_NONE)
    parcels_qml: str | None = field(default=None, metadata=_OMIT_NONE)

    @classmethod
    def of(cls, paths: OutputPaths) -> Outputs:
        """The paths of a run's :class:`~cropmap.writer.OutputPaths`, as strings."""

        def text(p: Path | None) -> str | None:
            return str(p) if p is not None else None

        return cls(
            map=str(paths.map),
            aux=str(paths.aux),
            qml=str(paths.qml),
            summary=str(paths.summary),
            confidence=text(paths.confidence),
            embedding=text(paths.embedding),
            quicklook=text(paths.quicklook),
            stac=text(paths.stac),
            probabilities=text(paths.probabilities),
            uncertainty=text(paths.uncertainty),
            parcels=text(paths.parcels),
            parcels_qml=text(paths.parcels_qml),
        )

    def written(self) -> list[str]:
        """Every path written, in field order."""
        return [v for v in dataclasses.asdict(self).values() if v is not None]


@dataclass(frozen=True, kw_only=True)
class BundleInfo(_Record):
    model_name: str
    schema_version: int
    bands: list[str]
    classes: int
    provenance: dict[str, Any]
    calibration: dict[str, Any] | None
    probabilities: str
    """What the probabilities of this run are, in one line (calibrated or not, smoothed or not)."""
    precision: dict[str, Any]


@dataclass(frozen=True, kw_only=True)
class PostProcessing(_Record):
    majority_filter: int | None
    smooth_probabilities_sigma_px: float | None
    halo_px: int
    note: str = (
        "filters act within the mask: pixels outside it or with too little data neither vote nor get a "
        "class; blocks overlap by halo_px so the result does not depend on the block size"
    )


@dataclass(frozen=True, kw_only=True)
class Grid(_Record):
    crs: str
    transform: list[float]
    height: int
    width: int
    pixel_area_m2: float


@dataclass(frozen=True, kw_only=True)
class StackInfo(_Record):
    dtype: str
    nodata: list[Any]
    nodata_note: str
    reflectance_scale: float
    reflectance_offset: float
    reflectance_scale_source: str
    model_reflectance_scale: float
    l1c_evidence: list[str]


@dataclass(frozen=True, kw_only=True)
class Season(_Record):
    year: int
    season_start: str
    dates_used: list[str]
    positions_days: list[int]
    dates_ignored: list[str]
    coverage: dict[str, Any] | None
    grid_days: list[int]
    gap_fill: str
    min_valid_steps: int


@dataclass(frozen=True, kw_only=True)
class Clouds(_Record):
    """How clouds were masked. With ``masking`` ``"on"`` every field is written; else only ``masking``,
    ``band``, ``masked_observations`` and ``note``."""

    masking: str
    """``"on"``, ``"off"`` (``--cloud-band none``) or ``"no cloud information"``."""
    band: str | None
    kind: str | None = None
    source: str | None = None
    invalid_classes: list[int] | None = None
    threshold: float | None = None
    probability_scale: float | None = None
    rule: str | None = None
    observations_in_mask: int | None = None
    masked_observations: int
    masked_share: float | None = None
    note: str

    _WHEN_OFF: ClassVar[tuple[str, ...]] = ("masking", "band", "masked_observations", "note")

    def to_dict(self) -> dict[str, Any]:
        doc = super().to_dict()
        return doc if self.masking == "on" else {k: doc[k] for k in self._WHEN_OFF}


@dataclass(frozen=True, kw_only=True)
class Pixels(_Record):
    total: int
    in_mask: int
    classified: int
    skipped_outside_mask: int
    insufficient_data: int


@dataclass(frozen=True, kw_only=True)
class Blocks(_Record):
    block_shape: list[int]
    total: int
    processed: int
    skipped: int


@dataclass(frozen=True, kw_only=True)
class ClassArea(_Record):
    code: int
    name: str
    color: str
    pixels: int
    area_ha: float


@dataclass(frozen=True, kw_only=True)
class Timings(_Record):
    read: float
    fill: float
    model: float
    write: float
    total: float
    note: str = "read, fill and model are summed over blocks (parallel workers overlap); total is wall time"


@dataclass(frozen=True, kw_only=True)
class Runtime(_Record):
    provider_requested: str
    providers_used: list[str]
    bundle_precision: str
    batch_size: int
    note: str = (
        "providers_used: the ONNX Runtime execution provider(s) that ran the model, as reported by "
        "the workers' sessions"
    )


@dataclass(frozen=True, kw_only=True)
class RunSummary(_Record):
    """The run summary: inputs, outputs, model, season, pixel counts, areas, timings and options of a run."""

    schema_version: int = SCHEMA_VERSION
    cropmap_version: str
    created: str
    """UTC time, ISO 8601 to the second."""
    inputs: Inputs
    outputs: Outputs
    bundle: BundleInfo
    postprocessing: PostProcessing
    grid: Grid
    stack: StackInfo
    season: Season
    clouds: Clouds
    pixels: Pixels
    blocks: Blocks
    classes: list[ClassArea]
    timings_s: Timings
    throughput_cropland_px_per_s: float | None
    executor: str
    runtime: Runtime
    options: dict[str, Any]
    parcels: dict[str, Any] | None = field(default=None, metadata=_OMIT_NONE)
    """Only with parcels: the per-parcel section (:func:`cropmap.parcels.parcel_table`)."""
    embedding: dict[str, Any] | None = field(default=None, metadata=_OMIT_NONE)
    """Only with an embedding output: its storage (:meth:`cropmap.embedding.EmbeddingRaster.describe`)."""
    removed_outputs: list[str] = field(default_factory=list)

    def to_json(self) -> str:
        """The JSON text written to ``<out stem>_summary.json`` (two-space indent, a final newline)."""
        return json.dumps(self.to_dict(), indent=2) + "\n"

    def area_ha(self) -> dict[int, float]:
        """Mapped area per class code, in hectares."""
        return {c.code: c.area_ha for c in self.classes}

    @classmethod
    def from_dict(cls, doc: Any, where: str = "summary") -> RunSummary:
        """Read a summary document, refusing one of another schema version.

        Raises:
            SummaryError: Another (or no) ``schema_version``, a missing key or an unknown one.
        """
        version = doc.get("schema_version") if isinstance(doc, dict) else None
        if version != SCHEMA_VERSION:
            found = "no schema_version" if version is None else f"schema_version {version!r}"
            raise SummaryError(
                f"{where} has {found}; expected schema_version {SCHEMA_VERSION} (a run summary of this cropmap "
                "version; rerun the classification to write one)"
            )
        return super().from_dict(doc, where)

    @classmethod
    def read(cls, path: str | Path) -> RunSummary:
        """Read ``<out stem>_summary.json``.

        Raises:
            SummaryError: Not JSON, or not a summary of :data:`SCHEMA_VERSION` (the message names ``path``).
            FileSystemError: The file cannot be read.
        """
        from cropmap.safeio.oserrors import io_step

        with io_step("read the run summary", path):
            raw = Path(path).read_bytes()
        try:
            doc = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise SummaryError(
                f"run summary {path} is not JSON ({err}); expected the file classify writes"
            ) from err
        return cls.from_dict(doc, f"run summary {path}")
