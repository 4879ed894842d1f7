"""The model-bundle contract, written once.

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

Execution providers: :func:`load_bundle` takes ``provider="auto"|"cpu"|"cuda"|"tensorrt"``
(:data:`PROVIDERS`). A provider that was asked for and that this ONNX Runtime cannot start is
an error (:class:`~cropmap.errors.RuntimeSetupError`), never a silent run on the CPU.

Optional field ``calibration`` (absent in older bundles, which load unchanged): a
temperature ``T`` fitted on validation data at export; cropmap divides the logits by
``T`` before the softmax that gives confidence and probabilities (the argmax, hence the
class map, does not change). Bundles exported without calibration omit the key, so
they stay readable by cropmap versions that predate it.

The exporter writes the document with ``BundleMetadata.to_json``; cropmap reads it
through onnxruntime alone (no ``onnx`` dependency) with :func:`load_bundle`.
Any change to the fields means bumping :data:`SCHEMA_VERSION`; cropmap rejects
versions it does not know.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import logging
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cropmap.bands import S2_BANDS
from cropmap.errors import BundleError, RuntimeSetupError

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1
METADATA_KEY = "cropmap.bundle"
SUPPORTED_SCHEMA_VERSIONS = (1,)
GAP_FILL_METHODS = ("linear",)
CALIBRATION_METHODS = ("temperature",)
PRECISIONS = ("fp32", "fp16", "int8")
"""Bundle precisions: fp32 as exported, fp16 (for GPUs) and int8 (for CPUs) reduced after export."""

PROVIDERS = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}
"""``--provider`` names and the ONNX Runtime execution providers they ask for."""
AUTO_PROVIDERS = ("cuda", "cpu")
"""What ``provider="auto"`` tries, best first. TensorRT is only used when asked for by name: it builds an
engine for every new input shape (the last, shorter batch of each block is one), which takes minutes."""

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
    """Order of the C axis; canonical names from :data:`cropmap.bands.S2_BANDS`."""
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
    names = set(kind.__dataclass_fields__)
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


@dataclass
class Bundle:
    """An opened bundle: its path, validated metadata and an ONNX Runtime session."""

    path: Path
    metadata: BundleMetadata
    session: Any  # onnxruntime.InferenceSession; typed loosely to keep import cheap
    providers: tuple[str, ...]
    """The execution providers the session actually runs on, first = the one that takes the graph."""
    requested: str = "cpu"
    """The provider that was asked for (a :data:`PROVIDERS` name, ``"auto"``, or the explicit list given)."""

    @property
    def provider(self) -> str:
        """The execution provider that runs the graph (``session.get_providers()[0]``)."""
        return self.providers[0]

    def run(self, x: Any, *, embedding: bool = False) -> Any:
        """Run the graph on a float32 ``(B, T, C)`` array.

        Returns:
            Logits ``(B, K)``, or ``(logits, embedding (B, D))`` when ``embedding``.
        """
        meta = self.metadata
        names = [meta.output_name]
        if embedding:
            if meta.embedding is None:
                raise BundleError(f"bundle {self.path} has no embedding output")
            names.append(meta.embedding.output_name)
        out = self.session.run(names, {meta.input_name: x})
        return (out[0], out[1]) if embedding else out[0]


def read_metadata(path: str | Path) -> BundleMetadata:
    """Read and validate only the metadata of a bundle (opens a session)."""
    return load_bundle(path).metadata


def provider_chain(provider: str, available: list[str] | tuple[str, ...]) -> list[str]:
    """The ONNX Runtime provider list for one :data:`PROVIDERS` name (not ``auto``), checked against ``available``.

    ``cuda`` runs on CUDA with the CPU for the operators CUDA lacks; ``tensorrt`` adds CUDA in between.

    Raises:
        RuntimeSetupError: If the provider is unknown or not in ``available`` (one line naming what this
            ONNX Runtime offers and how to get the GPU runtime).
    """
    if provider not in PROVIDERS:
        raise RuntimeSetupError(f"provider is {provider!r}; expected one of auto, {', '.join(PROVIDERS)}")
    want = PROVIDERS[provider]
    if want not in available:
        import onnxruntime as ort

        offered = ", ".join(p for p in available if p != "AzureExecutionProvider") or "none"
        hint = (
            "install the GPU runtime instead of the CPU one (onnxruntime-gpu, see docs/install.md) on a machine "
            "with an NVIDIA GPU, or use --provider cpu"
            if provider != "cpu"
            else "reinstall onnxruntime"
        )
        raise RuntimeSetupError(
            f"provider {provider!r} ({want}) was requested but onnxruntime {ort.__version__} here offers only "
            f"{offered}; {hint}"
        )
    chain = {"cpu": ["cpu"], "cuda": ["cuda", "cpu"], "tensorrt": ["tensorrt", "cuda", "cpu"]}[provider]
    return [PROVIDERS[p] for p in chain if PROVIDERS[p] in available]


def load_bundle(
    path: str | Path,
    *,
    provider: str | None = None,
    providers: list[str] | tuple[str, ...] | None = None,
    intra_op_threads: int | None = None,
) -> Bundle:
    """Open a cropmap bundle with ONNX Runtime and validate its contract.

    Args:
        path: The ``.onnx`` file.
        provider: ``"auto"`` (the best of :data:`AUTO_PROVIDERS` that starts; the log says which),
            ``"cpu"``, ``"cuda"`` or ``"tensorrt"``; default ``"cpu"``.
        providers: Instead of ``provider``: explicit ONNX Runtime execution provider names, best first.
            Each one must be offered by this ONNX Runtime and the first must actually take the graph.
        intra_op_threads: Threads ONNX Runtime may use inside one session (default: its own).

    Raises:
        BundleError: If the file is missing, is not an ONNX model, has no cropmap
            metadata, has an unknown schema version, or its graph does not match the
            metadata.
        RuntimeSetupError: If the provider asked for is not available or does not start (a
            bundle never runs on another provider than the one asked for).
    """
    import onnxruntime as ort  # deferred: keeps `import cropmap` light

    from cropmap.runtime import check_onnxruntime_install

    check_onnxruntime_install()
    if provider is not None and providers is not None:
        raise ValueError("pass provider= or providers=, not both")
    from cropmap.safeio.overlap import special_file_kind

    path = Path(path)
    if (kind := special_file_kind(path)) is not None:
        raise BundleError(
            f"model bundle {path} is {kind}, not a file; expected an .onnx file (it is not opened: "
            "reading a pipe would wait for a writer)"
        )
    if not path.is_file():
        raise BundleError(f"model bundle {path} does not exist")
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if intra_op_threads is not None:
        opts.intra_op_num_threads = intra_op_threads
    available = list(ort.get_available_providers())
    if providers is not None:
        requested = ",".join(providers)
        missing = [p for p in providers if p not in available]
        if missing or not providers:
            offered = ", ".join(p for p in available if p != "AzureExecutionProvider")
            raise RuntimeSetupError(
                f"execution provider(s) {missing or 'none'} requested but onnxruntime {ort.__version__} here offers "
                f"only {offered}; install onnxruntime-gpu for CUDA/TensorRT (docs/install.md)"
            )
        candidates = [list(providers)]
    elif (provider or "cpu") == "auto":
        requested = "auto"
        candidates = [provider_chain(p, available) for p in AUTO_PROVIDERS if PROVIDERS[p] in available]
    else:
        requested = provider or "cpu"
        candidates = [provider_chain(requested, available)]
    session = None
    skipped = []
    for chain in candidates:
        try:
            session = ort.InferenceSession(str(path), sess_options=opts, providers=chain)
        except Exception as err:  # ORT raises several private types for unreadable models
            if requested == "auto" and chain[0] != PROVIDERS["cpu"]:
                skipped.append(f"{chain[0]}: {str(err).splitlines()[0] if str(err) else type(err).__name__}")
                continue
            raise BundleError(
                f"{path} is not a readable ONNX model on {chain[0]} ({type(err).__name__}: "
                f"{str(err).splitlines()[0] if str(err) else ''})"
            ) from err
        got = session.get_providers()
        if got and got[0] == chain[0]:
            break
        # ORT could not start the provider (missing CUDA/cuDNN/TensorRT libraries) and fell back on its own.
        if requested == "auto":
            skipped.append(f"{chain[0]}: ONNX Runtime could not start it (session fell back to {got[0]})")
            session = None
            continue
        raise RuntimeSetupError(
            f"provider {requested!r} was requested and onnxruntime offers {chain[0]}, but it could not start it "
            f"(the session fell back to {', '.join(got)}; are the CUDA/cuDNN/TensorRT libraries installed and a "
            "GPU visible?); not running on another provider than the one asked for"
        )
    assert session is not None  # the CPU is always a candidate of auto, and other paths raise
    props = session.get_modelmeta().custom_metadata_map
    if METADATA_KEY not in props:
        raise BundleError(
            f"{path} is an ONNX model but not a cropmap bundle: metadata key {METADATA_KEY!r} not found "
            f"(found keys: {sorted(props) or 'none'}); export it with `python -m exporters`"
        )
    meta = BundleMetadata.from_json(props[METADATA_KEY])
    _check_graph(session, meta, path)
    used = tuple(session.get_providers())
    if requested == "auto":
        logger.info(
            "provider auto: took %s%s", used[0], f" (skipped {'; '.join(skipped)})" if skipped else ""
        )
    logger.info(
        "loaded bundle %s (%s, %s, %d classes) on %s",
        path,
        meta.model_name,
        meta.dtype,
        len(meta.classes),
        used[0],
    )
    return Bundle(path=path, metadata=meta, session=session, providers=used, requested=requested)


def _check_graph(session: Any, meta: BundleMetadata, path: Path) -> None:
    inputs = {i.name: i for i in session.get_inputs()}
    outputs = {o.name: o for o in session.get_outputs()}
    if meta.input_name not in inputs:
        raise BundleError(
            f"{path}: metadata names input {meta.input_name!r}; graph inputs are {sorted(inputs)}"
        )
    shape = inputs[meta.input_name].shape
    if len(shape) != 3:
        raise BundleError(f"{path}: input {meta.input_name!r} has rank {len(shape)}; expected 3 (B, T, C)")
    for axis, want, label in ((1, meta.n_timesteps, "T"), (2, meta.n_bands, "C")):
        if isinstance(shape[axis], int) and shape[axis] != want:
            raise BundleError(f"{path}: input {label} dimension is {shape[axis]}; metadata says {want}")
    wanted = [meta.output_name] + ([meta.embedding.output_name] if meta.embedding else [])
    for name in wanted:
        if name not in outputs:
            raise BundleError(f"{path}: metadata names output {name!r}; graph outputs are {sorted(outputs)}")
    k = outputs[meta.output_name].shape[-1]
    if isinstance(k, int) and k != len(meta.classes):
        raise BundleError(f"{path}: output has {k} classes; metadata lists {len(meta.classes)}")
