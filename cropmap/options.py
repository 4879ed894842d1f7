"""Runtime knobs of a classification run.

:class:`ClassifyOptions` holds every setting that is not a fact about the model
(those live in the bundle) and not an input or output path. CLI flags map 1:1 to
its fields (``--block-size`` -> ``block_size``, ``--no-quicklook`` -> ``quicklook``).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, fields
from typing import Any, TypedDict

from cropmap.errors import OptionValueError

_SCHEDULER_RE = re.compile(r"^(tcp|tls|inproc|ucx|ws|wss)://\S+$")

DEFAULT_BATCH_SIZE = 256
"""Pixels per ONNX Runtime call on a GPU provider, and the most :func:`auto_batch_size` gives."""
BATCH_TIME_STEPS = 2048
"""Time steps (pixels x stamps) per ONNX Runtime call that :func:`auto_batch_size` aims at on the CPU."""
DEFAULT_BLOCK_SIZE_PX = 512
BLOCK_MEMORY_BUDGET_BYTES = 256 * 2**20
"""Default blocks are shrunk (down to one file tile) until one block's working arrays fit this budget."""
PROVIDER_CHOICES = ("auto", "cpu", "cuda", "tensorrt")
"""``--provider`` values (:data:`cropmap.runtime.PROVIDERS` plus ``auto``)."""
EMBEDDING_DTYPE_CHOICES = ("int8", "float16", "float32")
"""``--embedding-dtype`` values (:data:`cropmap.embedding.EMBEDDING_DTYPES`); the first is the default."""


@dataclass(frozen=True)
class ClassifyOptions:
    """Settings of one ``classify`` run; validated on construction.

    Raises:
        ValueError: From ``__post_init__`` when a value is out of range; the message
            names the field, the value found and what is expected.
    """

    confidence: bool = False
    """Also write ``<out stem>_confidence.tif`` (max class probability x 100)."""
    embedding: bool = False
    """Also write ``<out stem>_embedding.tif`` from the bundle's embedding output."""
    overwrite: bool = False
    """Replace existing outputs instead of refusing to run."""
    block_size: int | None = None
    """Block edge in pixels (rounded up to a multiple of the file's internal tile);
    ``None`` picks the multiple of the tile closest to 512 px, shrunk for long stacks so that one
    block's working arrays stay within :data:`BLOCK_MEMORY_BUDGET_BYTES`."""
    batch_size: int | None = None
    """Pixels per ONNX Runtime call; ``None`` picks :func:`auto_batch_size` for the bundle and provider."""
    workers: int | None = None
    """Blocks processed in parallel on the local threaded scheduler; ``None`` uses every core."""
    scheduler: str | None = None
    """Address of an existing dask.distributed scheduler (``tcp://host:port``); ``None`` runs locally."""
    threads: int | None = None
    """CPU threads the local run may use in all (as many single-threaded ONNX Runtime sessions, shared by the blocks);
    ``None`` uses every core. ``cropmap batch`` sets it so that regions running side by side share the cores."""
    season: int | None = None
    """Calendar year in which the season to classify starts; ``None`` requires the stack to hold one season."""
    reflectance_scale: float | None = None
    """Raw value = reflectance x this, for stacks that do not declare it."""
    min_valid_steps: int | None = None
    """Fewest valid observations a pixel needs; ``None`` uses the bundle's value."""
    quicklook: bool = True
    """Write the PNG quick-look."""
    cloud_band: str | None = None
    """Band whose values mask clouds and shadows (``SCL`` or a cloud probability such as ``CLP``); ``None`` finds
    one by name, ``"none"`` turns masking off for a stack known to be cloud-free (see :mod:`cropmap.contract.clouds`)."""
    cloud_threshold: float | None = None
    """Cloud probability (0..1) above which an observation is masked; ``None``: 0.4. Probability bands only."""
    cloud_classes: tuple[int, ...] | None = None
    """Sen2Cor SCL classes that are masked; ``None``: 0, 1, 3, 8, 9, 10, 11. SCL bands only."""
    cloud_scale: float | None = None
    """Raw value of cloud probability 1 in a probability band (255 for 0..255, 100 for percent); ``None``: 1
    in float files, the band name's scale in integer files (an integer band of another name then is an error).
    Probability bands only."""
    probabilities: bool = False
    """Also write ``<out stem>_probabilities.tif``: one uint8 band per class, probability x 100."""
    uncertainty: str | None = None
    """Also write ``<out stem>_uncertainty.tif`` with this measure: ``"entropy"`` or ``"margin"``."""
    majority_filter: int | None = None
    """Odd window edge N (3..51): each classified pixel takes the majority class of the classified pixels
    in the N x N window around it (pixels outside the mask or with too little data do not vote)."""
    smooth_probabilities: float | None = None
    """Standard deviation in pixels (0 < sigma <= 10) of a Gaussian smoothing of the class probabilities
    over the classified pixels, before the argmax."""
    mask_layer: str | None = None
    """Layer of a multi-layer mask file (e.g. a GeoPackage) holding the cropland polygons."""
    provider: str = "auto"
    """ONNX Runtime execution provider: ``"auto"`` (the best that starts: CUDA, else the CPU; the summary
    records which), ``"cpu"``, ``"cuda"`` or ``"tensorrt"``. One that was asked for and cannot start is an
    error, never a run on another (:func:`cropmap.runtime.load_bundle`)."""
    embedding_dtype: str = "int8"
    """Storage of ``<out stem>_embedding.tif``: ``"int8"`` (per-band GDAL scale/offset, 1 byte per value),
    ``"float16"`` or ``"float32"`` (see :mod:`cropmap.embedding`)."""
    allow_partial_season: bool = False
    """Classify a stack whose dates cover less than :data:`cropmap.sanity.MIN_SEASON_COVERAGE` of the bundle's
    season (refused otherwise); the summary records the coverage either way."""
    allow_l1c: bool = False
    """Classify a likely L1C (top-of-atmosphere) stack with a bundle trained on L2A (refused otherwise)."""

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.type == "bool" and not isinstance(value, bool):
                raise OptionValueError(f.name, f"{f.name} is {value!r}; expected True or False")
        _positive_int("block_size", self.block_size, allow_none=True)
        _positive_int("batch_size", self.batch_size, allow_none=True)
        _positive_int("workers", self.workers, allow_none=True)
        _positive_int("threads", self.threads, allow_none=True)
        _positive_int("min_valid_steps", self.min_valid_steps, allow_none=True)
        if self.block_size is not None and self.block_size < 16:
            raise OptionValueError("block_size", f"block_size is {self.block_size} px; expected at least 16")
        if self.season is not None and (
            isinstance(self.season, bool)
            or not isinstance(self.season, int)
            or not 1900 <= self.season <= 2200
        ):
            raise OptionValueError("season", f"season is {self.season!r}; expected a year such as 2021")
        if self.reflectance_scale is not None:
            rs = self.reflectance_scale
            if isinstance(rs, bool) or not isinstance(rs, (int, float)) or not math.isfinite(rs) or rs <= 0:
                raise OptionValueError(
                    "reflectance_scale",
                    f"reflectance_scale is {rs!r}; expected a positive number such as 10000",
                )
        if self.uncertainty is not None and self.uncertainty not in ("entropy", "margin"):
            raise OptionValueError(
                "uncertainty", f"uncertainty is {self.uncertainty!r}; expected 'entropy' or 'margin'"
            )
        mf = self.majority_filter
        if mf is not None and (
            isinstance(mf, bool) or not isinstance(mf, int) or mf < 3 or mf > 51 or mf % 2 == 0
        ):
            raise OptionValueError(
                "majority_filter",
                f"majority_filter is {mf!r}; expected an odd window edge in pixels from 3 to 51",
            )
        sp = self.smooth_probabilities
        if sp is not None and (
            isinstance(sp, bool)
            or not isinstance(sp, (int, float))
            or not math.isfinite(sp)
            or not 0 < sp <= 10
        ):
            raise OptionValueError(
                "smooth_probabilities",
                f"smooth_probabilities is {sp!r}; expected a Gaussian sigma in pixels, > 0 and <= 10",
            )
        if self.provider not in PROVIDER_CHOICES:
            raise OptionValueError(
                "provider", f"provider is {self.provider!r}; expected one of {', '.join(PROVIDER_CHOICES)}"
            )
        if self.embedding_dtype not in EMBEDDING_DTYPE_CHOICES:
            raise OptionValueError(
                "embedding_dtype",
                f"embedding_dtype is {self.embedding_dtype!r}; expected one of {', '.join(EMBEDDING_DTYPE_CHOICES)}",
            )
        if self.mask_layer is not None and (not isinstance(self.mask_layer, str) or not self.mask_layer):
            raise OptionValueError("mask_layer", f"mask_layer is {self.mask_layer!r}; expected a layer name")
        if self.cloud_band is not None and (
            not isinstance(self.cloud_band, str) or not self.cloud_band.strip()
        ):
            raise OptionValueError(
                "cloud_band",
                f"cloud_band is {self.cloud_band!r}; expected a band name such as SCL or CLP, or 'none'",
            )
        if self.cloud_threshold is not None:
            ct = self.cloud_threshold
            if isinstance(ct, bool) or not isinstance(ct, (int, float)) or not 0.0 <= ct < 1.0:
                raise OptionValueError(
                    "cloud_threshold",
                    f"cloud_threshold is {ct!r}; expected a probability in [0, 1) such as 0.4",
                )
        if self.cloud_classes is not None:
            cc = self.cloud_classes
            if (
                not isinstance(cc, tuple)
                or not cc
                or any(isinstance(c, bool) or not isinstance(c, int) or not 0 <= c <= 255 for c in cc)
            ):
                raise OptionValueError(
                    "cloud_classes",
                    f"cloud_classes is {cc!r}; expected SCL class numbers such as (3, 8, 9, 10)",
                )
        if self.cloud_scale is not None:
            cs = self.cloud_scale
            if isinstance(cs, bool) or not isinstance(cs, (int, float)) or not (math.isfinite(cs) and cs > 0):
                raise OptionValueError(
                    "cloud_scale", f"cloud_scale is {cs!r}; expected the raw value of probability 1, e.g. 255"
                )
        if self.scheduler is not None and not _SCHEDULER_RE.match(str(self.scheduler)):
            raise OptionValueError(
                "scheduler",
                f"scheduler is {self.scheduler!r}; expected an address such as tcp://10.0.0.5:8786",
            )
        if self.scheduler is not None and self.workers is not None:
            raise OptionValueError(
                "workers",
                "workers applies to the local scheduler only; with a scheduler address, size the cluster",
            )
        if self.scheduler is not None and self.threads is not None:
            raise OptionValueError(
                "threads",
                "threads applies to the local scheduler only; with a scheduler address, size the cluster",
            )

    @classmethod
    def from_kwargs(cls, **kwargs: Any) -> ClassifyOptions:
        """Build options from keyword arguments, rejecting unknown names.

        Raises:
            TypeError: If a keyword is not a field of :class:`ClassifyOptions`.
        """
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(kwargs) - known)
        if unknown:
            raise TypeError(f"unknown option(s) {unknown}; expected some of {sorted(known)}")
        return cls(**kwargs)


class RegionOptionsKw(TypedDict, total=False):
    """The fields of :class:`ClassifyOptions` that ``classify_many`` takes as keywords: all but ``workers``,
    ``scheduler`` and ``threads``, which the batch sets (and which are its own parameters)."""

    confidence: bool
    embedding: bool
    overwrite: bool
    block_size: int | None
    batch_size: int | None
    season: int | None
    reflectance_scale: float | None
    min_valid_steps: int | None
    quicklook: bool
    cloud_band: str | None
    cloud_threshold: float | None
    cloud_classes: tuple[int, ...] | None
    cloud_scale: float | None
    probabilities: bool
    uncertainty: str | None
    majority_filter: int | None
    smooth_probabilities: float | None
    mask_layer: str | None
    provider: str
    embedding_dtype: str
    allow_partial_season: bool
    allow_l1c: bool


class ClassifyOptionsKw(RegionOptionsKw, total=False):
    """The fields of :class:`ClassifyOptions` as keyword arguments (``classify(..., confidence=True)``), typed.

    ``tests/cropmap/test_summary.py`` keeps both keyword types in step with the dataclass.
    """

    workers: int | None
    scheduler: str | None
    threads: int | None


def _positive_int(name: str, value: object, *, allow_none: bool) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise OptionValueError(name, f"{name} is {value!r}; expected a positive integer")


def auto_batch_size(n_timesteps: int, *, gpu: bool = False) -> int:
    """Pixels per ONNX Runtime call when ``--batch-size`` is not given.

    On the CPU, the power of two closest to :data:`BATCH_TIME_STEPS` / ``n_timesteps``, between 8 and
    :data:`DEFAULT_BATCH_SIZE`: 128 pixels for 12 monthly stamps, 16 for the papers' 144. A call then keeps
    its activations in the cores' caches: single-threaded sessions ran the sample model 14 % faster at 128
    than at 256 pixels, and the papers' size 16 % faster at 16 (docs/benchmarks.md). On a GPU,
    :data:`DEFAULT_BATCH_SIZE`.
    """
    if gpu:
        return DEFAULT_BATCH_SIZE
    target = BATCH_TIME_STEPS / max(1, n_timesteps)
    return int(min(DEFAULT_BATCH_SIZE, max(8, 2 ** round(math.log2(max(target, 1.0))))))
