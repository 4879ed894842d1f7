"""The model-bundle metadata, written once: what the exporter writes into a bundle and cropmap reads back.

A cropmap bundle is a single ONNX file. Its ``metadata_props`` hold one JSON
document under :data:`METADATA_KEY` that says everything inference needs; nothing
is guessed. Normalisation is inside the graph, so the graph takes *raw* values in
the units described by :attr:`BundleMetadata.reflectance_scale`.

Graph interface (schema version 1):

* input ``input_name``: float32 ``(B, T, C)``, ``T = len(time_grid.day_of_season)``,
  ``C = len(bands)`` in the order of ``bands``; values are raw digital numbers,
  ``reflectance = value / reflectance_scale``. Inputs are gap-free: cropmap fills
  gaps along time before calling the graph.
* output ``output_name``: float32 ``(B, K)`` logits, ``K = len(classes)``, column
  ``k`` is ``classes[k]``.
* optional output ``embedding.output_name``: float32 ``(B, D)``.

Optional field ``precision`` (absent in fp32 bundles): the bundle's weights and arithmetic
were reduced to fp16 or int8 after export, and the record says how and how well the reduced
graph agreed with the fp32 graph on held-out series (:class:`Precision`). Inputs and outputs
stay float32 at every precision, so inference code does not change.

Optional field ``calibration`` (absent in older bundles, which load unchanged): a
temperature ``T`` fitted on validation data at export; cropmap divides the logits by
``T`` before the softmax that gives confidence and probabilities (the argmax, hence the
class map, does not change). Bundles exported without calibration omit the key, so
they stay readable by cropmap versions that predate it.

The exporter writes the document with ``BundleMetadata.to_json``; cropmap reads it
through onnxruntime alone (no ``onnx`` dependency) with :func:`cropmap.runtime.load_bundle`, which also
checks the graph against it. This module imports neither: it is the JSON document and its rules only.
Any change to the fields means bumping :data:`SCHEMA_VERSION`; cropmap rejects
versions it does not know.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import re
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from cropmap.contract.bands import S2_BANDS
from cropmap.errors import BundleError

SCHEMA_VERSION = 1
METADATA_KEY = "cropmap.bundle"
"""The ``metadata_props`` key of the JSON document: a name written into every bundle file, so it never
changes with the layout of cropmap's modules."""
SUPPORTED_SCHEMA_VERSIONS = (1,)
GAP_FILL_METHODS = ("linear",)
CALIBRATION_METHODS = ("temperature",)
PRECISIONS = ("fp32", "fp16", "int8")
"""Bundle precisions: fp32 as exported, fp16 (for GPUs) and int8 (for CPUs) reduced after export."""

_COLOR_RE = re.compile(r"^#[0-9a-fA-F]{6}$")
_MMDD_RE = re.compile(r"^(\d{2})-(\d{2})$")


@dataclass(frozen=True)
class ClassInfo:
    """One output class."""

    code: int
    """Value written to the class raster (1..254; 0 is the raster's nodata)."""
    name: str
    """Human-readable name shown as the legend entry."""
    color: str
    """Legend colour as ``#RRGGBB``."""

    def rgb(self) -> tuple[int, int, int]:
        """The colour as an ``(r, g, b)`` tuple of 0..255 ints."""
        return (int(self.color[1:3], 16), int(self.color[3:5], 16), int(self.color[5:7], 16))


@dataclass(frozen=True)
class TimeGrid:
    """The time axis the model expects, as positions within a growing season.

    Dates of any year are placed on the grid by day of year: a date's position is the
    number of days since the most recent ``season_start`` (month-day). Stacks from
    another year therefore map onto the same grid.
    """

    season_start: str
    """Start of the season as ``MM-DD`` (e.g. ``"11-01"`` for a Nov-Oct season)."""
    day_of_season: tuple[int, ...]
    """Grid positions, days since ``season_start``, strictly increasing, each in [0, 366)."""
    reference_dates: tuple[str, ...]
    """The ISO dates of the training data at these positions (provenance only)."""

    def season_start_month_day(self) -> tuple[int, int]:
        """``season_start`` as ``(month, day)``."""
        m = _MMDD_RE.match(self.season_start)
        if m is None:
            raise BundleError(f"time_grid.season_start is {self.season_start!r}; expected 'MM-DD'")
        return int(m.group(1)), int(m.group(2))

    def position_of(self, date: dt.date) -> int:
        """Days from the most recent season start up to ``date`` (0..365)."""
        month, day = self.season_start_month_day()
        start = dt.date(date.year, month, day)
        if start > date:
            start = dt.date(date.year - 1, month, day)
        return (date - start).days

    def season_of(self, date: dt.date) -> int:
        """The calendar year in which the season holding ``date`` starts."""
        month, day = self.season_start_month_day()
        return date.year if dt.date(date.year, month, day) <= date else date.year - 1


@dataclass(frozen=True)
class EmbeddingInfo:
    """An optional per-pixel embedding output."""

    output_name: str
    dim: int
    description: str
    """What the vector is (e.g. "base-model features before the classifier")."""


@dataclass(frozen=True)
class Provenance:
    """What produced the bundle."""

    encoder: str
    """Per-stamp encoder, e.g. ``"resmlp-8x256"`` or ``"none"`` (raw bands)."""
    base_model: str
    """Base model over time, e.g. ``"lstm"``."""
    pretraining: str
    """Pre-training mode, e.g. ``"unimodal-scarf-0.2"``, ``"bimodal-0.2"``, ``"none"``."""
    training_data: str
    """Where the labels and pixels came from."""
    revision: str
    """Source revision (git sha) of the code that trained and exported the model."""
    created: str
    """ISO timestamp of the export."""
    metrics: dict[str, float] = field(default_factory=dict)
    """Validation metrics measured at export time (e.g. ``val_accuracy``)."""


@dataclass(frozen=True)
class Calibration:
    """How the bundle's probabilities were calibrated (temperature scaling)."""

    method: str
    """One of :data:`CALIBRATION_METHODS`."""
    temperature: float
    """``T > 0``: probabilities are ``softmax(logits / T)``."""
    ece_before: float
    """Expected calibration error (max-probability, equal-width bins) on the fitting data, before."""
    ece_after: float
    """The same after dividing the logits by ``temperature``."""
    n: int
    """Number of validation samples the temperature was fitted on."""
    n_bins: int = 15
    """Bins of the ECE."""
    data: str = ""
    """What the validation samples were (free text)."""

    def validate(self) -> None:
        """Check the values.

        Raises:
            BundleError: Describing the first problem found.
        """
        if self.method not in CALIBRATION_METHODS:
            raise BundleError(f"calibration.method is {self.method!r}; expected one of {CALIBRATION_METHODS}")
        t = self.temperature
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not (t > 0 and t < float("inf")):
            raise BundleError(f"calibration.temperature is {t!r}; expected a finite number > 0")
        for name in ("ece_before", "ece_after"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= 1:
                raise BundleError(f"calibration.{name} is {v!r}; expected a number in [0, 1]")
        if isinstance(self.n, bool) or not isinstance(self.n, int) or self.n < 1:
            raise BundleError(f"calibration.n is {self.n!r}; expected a positive integer")
        if isinstance(self.n_bins, bool) or not isinstance(self.n_bins, int) or self.n_bins < 1:
            raise BundleError(f"calibration.n_bins is {self.n_bins!r}; expected a positive integer")


@dataclass(frozen=True)
class Precision:
    """How a bundle's precision was reduced after export, and how well it agrees with the fp32 graph."""

    dtype: str
    """``"fp16"`` or ``"int8"`` (fp32 bundles carry no precision record)."""
    method: str
    """How, e.g. ``"int8 static QDQ, per-channel weights, MinMax calibration on 2048 series"``."""
    n: int
    """Held-out series the agreement was measured on."""
    argmax_agreement: float
    """Share (0..1) of those series whose predicted class equals the fp32 graph's."""
    max_abs_logit_diff: float
    """Largest ``|logit - fp32 logit|`` on them."""
    min_agreement: float
    """The threshold the export was checked against (it refuses below)."""
    accuracy_fp32: float | None = None
    """Accuracy of the fp32 graph on those series, when they are labelled."""
    accuracy: float | None = None
    """Accuracy of this graph on them."""
    data: str = ""
    """What the calibration and agreement series were (free text)."""

    def validate(self) -> None:
        """Check the values.

        Raises:
            BundleError: Describing the first problem found.
        """
        if self.dtype not in PRECISIONS[1:]:
            raise BundleError(f"precision.dtype is {self.dtype!r}; expected one of {PRECISIONS[1:]}")
        for name in ("argmax_agreement", "min_agreement", "accuracy_fp32", "accuracy"):
            v = getattr(self, name)
            if v is None and name.startswith("accuracy"):
                continue
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= 1:
                raise BundleError(f"precision.{name} is {v!r}; expected a number in [0, 1]")
        d = self.max_abs_logit_diff
        if isinstance(d, bool) or not isinstance(d, (int, float)) or not (d >= 0 and d < float("inf")):
            raise BundleError(f"precision.max_abs_logit_diff is {d!r}; expected a finite number >= 0")
        if isinstance(self.n, bool) or not isinstance(self.n, int) or self.n < 1:
            raise BundleError(f"precision.n is {self.n!r}; expected a positive integer")


@dataclass(frozen=True)
class BundleMetadata:
    """Everything inference needs to know about a bundle (schema version 1)."""

    schema_version: int
    model_name: str
    """Name of the architecture, e.g. ``"resmlp_lstm"``."""
    input_name: str
    output_name: str
    bands: tuple[str, ...]
    """Order of the C axis; canonical names from :data:`cropmap.contract.bands.S2_BANDS`."""
    reflectance_scale: float
    """Raw input value = reflectance x ``reflectance_scale`` (10000 for L2A digital numbers)."""
    nodata: float | None
    """Value that marked missing observations in the training data (informative)."""
    time_grid: TimeGrid
    min_valid_steps: int
    """Fewest valid (cloud-free, non-nodata) observations a pixel needs to be classified."""
    gap_fill: str
    """How gaps along time are filled before the graph runs; one of :data:`GAP_FILL_METHODS`."""
    classes: tuple[ClassInfo, ...]
    embedding: EmbeddingInfo | None
    provenance: Provenance
    calibration: Calibration | None = None
    """Temperature scaling fitted at export; ``None``: the probabilities are the raw softmax (uncalibrated)."""
    precision: Precision | None = None
    """The reduced precision and its measured agreement with fp32; ``None``: an fp32 bundle."""

    @property
    def dtype(self) -> str:
        """``"fp32"``, ``"fp16"`` or ``"int8"``."""
        return self.precision.dtype if self.precision is not None else "fp32"

    @property
    def temperature(self) -> float:
        """The temperature the logits are divided by before the softmax (1.0 when uncalibrated)."""
        return float(self.calibration.temperature) if self.calibration is not None else 1.0

    @property
    def n_timesteps(self) -> int:
        """Length of the time grid, T."""
        return len(self.time_grid.day_of_season)

    @property
    def n_bands(self) -> int:
        """Number of bands, C."""
        return len(self.bands)

    def to_json(self) -> str:
        """Serialise to the JSON document stored in the ONNX metadata."""
        self.validate()
        doc = asdict(self)
        if doc["calibration"] is None:
            del doc["calibration"]  # bundles without calibration stay readable by cropmap versions before it
        if doc["precision"] is None:
            del doc["precision"]  # fp32 bundles stay readable by cropmap versions before reduced precisions
        return json.dumps(doc, indent=None, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> BundleMetadata:
        """Parse and validate the JSON document.

        Raises:
            BundleError: If the document is not JSON, has an unknown schema version,
                misses keys or has keys this version does not define.
        """
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as err:
            raise BundleError(f"bundle metadata is not valid JSON ({err})") from err
        if not isinstance(doc, dict):
            raise BundleError(f"bundle metadata is a JSON {type(doc).__name__}; expected an object")
        version = doc.get("schema_version")
        if version not in SUPPORTED_SCHEMA_VERSIONS:
            raise BundleError(
                f"bundle schema version is {version!r}; this cropmap reads versions "
                f"{', '.join(map(str, SUPPORTED_SCHEMA_VERSIONS))} (upgrade cropmap or re-export the model)"
            )
        try:
            meta = cls(
                schema_version=int(doc["schema_version"]),
                model_name=str(doc["model_name"]),
                input_name=str(doc["input_name"]),
                output_name=str(doc["output_name"]),
                bands=tuple(doc["bands"]),
                reflectance_scale=float(doc["reflectance_scale"]),
                nodata=None if doc["nodata"] is None else float(doc["nodata"]),
                time_grid=_build(TimeGrid, doc["time_grid"], "time_grid"),
                min_valid_steps=int(doc["min_valid_steps"]),
                gap_fill=str(doc["gap_fill"]),
                classes=tuple(_build(ClassInfo, c, "classes[]") for c in doc["classes"]),
                embedding=None
                if doc["embedding"] is None
                else _build(EmbeddingInfo, doc["embedding"], "embedding"),
                provenance=_build(Provenance, doc["provenance"], "provenance"),
                calibration=None
                if doc.get("calibration") is None
                else _build(Calibration, doc["calibration"], "calibration"),
                precision=None
                if doc.get("precision") is None
                else _build(Precision, doc["precision"], "precision"),
            )
        except KeyError as err:
            raise BundleError(
                f"bundle metadata misses the key {err.args[0]!r} (schema version {version})"
            ) from err
        except (TypeError, ValueError) as err:
            raise BundleError(f"bundle metadata is malformed: {err}") from err
        unknown = set(doc) - {f for f in cls.__dataclass_fields__}
        if unknown:
            raise BundleError(
                f"bundle metadata has unknown keys {sorted(unknown)} for schema version {version}"
            )
        meta.validate()
        return meta

    def validate(self) -> None:
        """Check internal consistency.

        Raises:
            BundleError: Describing the first inconsistency found.
        """
        bad = [b for b in self.bands if b not in S2_BANDS]
        if bad:
            raise BundleError(f"bundle bands {bad} are not Sentinel-2 band names {S2_BANDS}")
        if len(set(self.bands)) != len(self.bands):
            raise BundleError(f"bundle bands {self.bands} contain duplicates")
        if self.reflectance_scale <= 0:
            raise BundleError(f"reflectance_scale is {self.reflectance_scale}; expected > 0")
        pos = self.time_grid.day_of_season
        if not pos or any(b <= a for a, b in itertools.pairwise(pos)) or pos[0] < 0 or pos[-1] >= 366:
            raise BundleError(f"time_grid.day_of_season {pos} must be strictly increasing within [0, 366)")
        self.time_grid.season_start_month_day()
        if not 1 <= self.min_valid_steps <= len(pos):
            raise BundleError(f"min_valid_steps is {self.min_valid_steps}; expected 1..{len(pos)}")
        if self.gap_fill not in GAP_FILL_METHODS:
            raise BundleError(f"gap_fill is {self.gap_fill!r}; expected one of {GAP_FILL_METHODS}")
        if not self.classes:
            raise BundleError("bundle defines no classes")
        codes = [c.code for c in self.classes]
        if len(set(codes)) != len(codes) or not all(1 <= c <= 254 for c in codes):
            raise BundleError(f"class codes {codes} must be unique and within 1..254 (0 is nodata)")
        for c in self.classes:
            if not _COLOR_RE.match(c.color):
                raise BundleError(f"class {c.name!r} colour is {c.color!r}; expected '#RRGGBB'")
        if self.calibration is not None:
            self.calibration.validate()
        if self.precision is not None:
            self.precision.validate()


def _build(kind: type, value: Any, where: str) -> Any:  # returns an instance of `kind`
    if not isinstance(value, dict):
        raise BundleError(f"bundle metadata {where} is {type(value).__name__}; expected an object")
    names = {f.name for f in fields(kind)}
    unknown = set(value) - names
    if unknown:
        raise BundleError(f"bundle metadata {where} has unknown keys {sorted(unknown)}")
    kwargs = {}
    for k, v in value.items():
        kwargs[k] = tuple(v) if isinstance(v, list) else v
    try:
        return kind(**kwargs)
    except TypeError as err:
        raise BundleError(f"bundle metadata {where} is malformed: {err}") from err
