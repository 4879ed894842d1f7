"""Run configuration: frozen dataclasses filled from a TOML file, then ``key=value`` overrides.

A configuration class is any frozen stdlib dataclass whose fields have defaults; nested dataclasses
become TOML tables and dotted override keys::

    @dataclass(frozen=True)
    class OptimConfig:
        lr: float = 1e-3

    @dataclass(frozen=True)
    class RunConfig:
        epochs: int = 100
        optim: OptimConfig = field(default_factory=OptimConfig)

    cfg = load_config(RunConfig, "run.toml", ["epochs=3", "optim.lr=5e-4"])

Values are checked against the field annotations (``int``, ``float``, ``str``, ``bool``, ``Path``,
``Literal[...]``, ``X | None``, ``tuple[X, ...]``, ``list[X]`` and nested dataclasses). Unknown keys,
in the file or in an override, are errors that list the valid keys; nothing is silently ignored.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from cropmap.errors import CropmapError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 needs the tomli backport
    try:
        import tomli as tomllib
    except ModuleNotFoundError as err:
        raise ImportError("reading TOML configs on Python 3.10 needs the 'tomli' package") from err

logger = logging.getLogger(__name__)

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

T = TypeVar("T", bound="DataclassInstance")

_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}
_NONE = {"none", "null"}


class ConfigError(CropmapError, ValueError):
    """A configuration file or override that does not match the configuration class."""


def load_config(cls: type[T], path: str | Path | None = None, overrides: Sequence[str] = ()) -> T:
    """Build a frozen configuration dataclass from defaults, a TOML file and overrides.

    Args:
        cls: A dataclass type (frozen, nested dataclasses allowed) whose fields all have defaults.
        path: Optional TOML file; its tables mirror the nested dataclasses.
        overrides: ``key=value`` or ``section.key=value`` strings applied after the file, in order.
            Values are parsed to the field's annotated type (``none``/``null`` for optional fields,
            ``[1, 2]`` or ``1,2`` for tuples and lists).

    Returns:
        An instance of ``cls``.

    Raises:
        ConfigError: For unknown keys, values of the wrong type or malformed overrides.
        FileNotFoundError: If ``path`` does not exist.
    """
    _require_dataclass(cls)
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"config file {str(path)!r} does not exist")
        with path.open("rb") as fh:
            try:
                data = tomllib.load(fh)
            except tomllib.TOMLDecodeError as err:
                raise ConfigError(f"config file {str(path)!r} is not valid TOML: {err}") from err
        logger.debug("loaded config file %s", path)
    for item in overrides:
        key, sep, raw = item.partition("=")
        key = key.strip().lstrip("-")
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not of the form key=value (e.g. 'optim.lr=1e-4')")
        _set_override(cls, data, key.split("."), raw.strip(), item)
    return config_from_dict(cls, data)


def config_from_dict(cls: type[T], data: Mapping[str, Any], *, _where: str = "") -> T:
    """Build a configuration dataclass from a (possibly nested) mapping, checking every key and type.

    Args:
        cls: The dataclass type.
        data: Mapping of field name to value; nested dataclasses take nested mappings.

    Returns:
        An instance of ``cls``; missing keys take the field defaults.

    Raises:
        ConfigError: For unknown keys or values of the wrong type.
    """
    _require_dataclass(cls)
    if not isinstance(data, Mapping):
        raise ConfigError(f"{_where or cls.__name__}: expected a table, found {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    hints = typing.get_type_hints(cls)
    unknown = sorted(set(data) - set(fields))
    if unknown:
        where = f" in [{_where}]" if _where else ""
        raise ConfigError(f"unknown config key(s) {unknown}{where}; valid keys are {sorted(fields)}")
    kwargs = {}
    for name, value in data.items():
        full = f"{_where}.{name}" if _where else name
        kwargs[name] = _coerce(hints[name], value, full)
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"invalid configuration for {cls.__name__}: {err}") from err


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """Convert a configuration dataclass to plain TOML/JSON-friendly values.

    ``Path`` becomes ``str`` and tuples become lists; the result round-trips through
    :func:`config_from_dict`.

    Args:
        cfg: A dataclass instance.

    Returns:
        A nested ``dict``.
    """
    if not dataclasses.is_dataclass(cfg) or isinstance(cfg, type):
        raise TypeError(f"config_to_dict expects a dataclass instance, got {type(cfg).__name__}")
    return {f.name: _plain(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return config_to_dict(value)
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


def _require_dataclass(cls: Any) -> None:
    if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
        raise TypeError(f"expected a dataclass type, got {cls!r}")


def _set_override(cls: type, data: dict[str, Any], parts: list[str], raw: str, item: str) -> None:
    """Walk ``parts`` through the nested dataclasses of ``cls`` and store the parsed value in ``data``."""
    current_cls: type = cls
    node = data
    for depth, part in enumerate(parts):
        fields = {f.name for f in dataclasses.fields(current_cls) if f.init}
        prefix = ".".join(parts[:depth])
        if part not in fields:
            where = f" in [{prefix}]" if prefix else ""
            raise ConfigError(
                f"override {item!r}: unknown config key {part!r}{where}; valid keys are {sorted(fields)}"
            )
        hint = typing.get_type_hints(current_cls)[part]
        if depth == len(parts) - 1:
            if _is_dataclass_type(hint):
                raise ConfigError(f"override {item!r}: {'.'.join(parts)!r} is a section; set one of its keys")
            node[part] = _parse_text(hint, raw, ".".join(parts))
            return
        if not _is_dataclass_type(hint):
            raise ConfigError(f"override {item!r}: {'.'.join(parts[: depth + 1])!r} is not a section")
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {item!r}: {'.'.join(parts[: depth + 1])!r} is not a table")
        node = child
        current_cls = hint


def _is_dataclass_type(hint: Any) -> bool:
    return isinstance(hint, type) and dataclasses.is_dataclass(hint)


def _union_args(hint: Any) -> tuple[Any, ...] | None:
    origin = typing.get_origin(hint)
    if origin is typing.Union or origin is types.UnionType:
        return typing.get_args(hint)
    return None


def _parse_text(hint: Any, raw: str, key: str) -> Any:
    """Parse an override's text into a value that :func:`_coerce` accepts for ``hint``."""
    args = _union_args(hint)
    if args is not None:
        if type(None) in args and raw.lower() in _NONE:
            return None
        rest = [a for a in args if a is not type(None)]
        if len(rest) == 1:
            return _parse_text(rest[0], raw, key)
        raise ConfigError(f"{key}: union type {hint} cannot be set from an override")
    origin = typing.get_origin(hint)
    if hint is bool:
        low = raw.lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
        raise ConfigError(f"{key}: expected a boolean (true/false), found {raw!r}")
    if hint is int:
        try:
            return int(raw)
        except ValueError:
            raise ConfigError(f"{key}: expected an integer, found {raw!r}") from None
    if hint is float:
        try:
            return float(raw)
        except ValueError:
            raise ConfigError(f"{key}: expected a number, found {raw!r}") from None
    if hint is str or hint is Path or origin is typing.Literal:
        if origin is typing.Literal and not all(isinstance(a, str) for a in typing.get_args(hint)):
            return _parse_toml_value(raw, key)
        return raw
    if origin in (tuple, list):
        if raw.startswith("["):
            return _parse_toml_value(raw, key)
        (item_hint, *_) = typing.get_args(hint) or (str,)
        return [_parse_text(item_hint, part.strip(), key) for part in raw.split(",") if part.strip()]
    return _parse_toml_value(raw, key)


def _parse_toml_value(raw: str, key: str) -> Any:
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{key}: cannot parse {raw!r} as a value: {err}") from err


def _coerce(hint: Any, value: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``hint`` and convert where lossless (int -> float, list -> tuple)."""
    if hint is Any:
        return value
    args = _union_args(hint)
    if args is not None:
        if value is None:
            if type(None) in args:
                return None
            raise ConfigError(f"{key}: None is not allowed (expected {hint})")
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, key)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(f"{key}: {value!r} matches none of {hint}: {'; '.join(errors)}")
    origin = typing.get_origin(hint)
    if _is_dataclass_type(hint):
        if isinstance(value, hint):
            return value
        return config_from_dict(hint, value, _where=key)
    if origin is typing.Literal:
        choices = typing.get_args(hint)
        if value not in choices:
            raise ConfigError(f"{key}: expected one of {list(choices)}, found {value!r}")
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected a boolean, found {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, found {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, found {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, found {value!r}")
        return value
    if hint is Path:
        if not isinstance(value, (str, Path)):
            raise ConfigError(f"{key}: expected a path string, found {value!r}")
        return Path(value)
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, found {value!r}")
        targs = typing.get_args(hint)
        if origin is tuple and targs and (len(targs) != 2 or targs[1] is not Ellipsis):
            if len(targs) != len(value):
                raise ConfigError(f"{key}: expected {len(targs)} items, found {len(value)}")
            return tuple(
                _coerce(t, v, f"{key}[{i}]") for i, (t, v) in enumerate(zip(targs, value, strict=True))
            )
        item_hint = targs[0] if targs else Any
        items = [_coerce(item_hint, v, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected a table, found {value!r}")
        return dict(value)
    raise ConfigError(f"{key}: unsupported annotation {hint!r} in configuration class")


@dataclass(frozen=True)
class ResMLPConfig:
    """Point-wise encoder size (journal: 8 residual blocks, width and output 256)."""

    hidden: int = 256
    """Width ``h`` of the residual blocks."""
    n_layers: int = 8
    """Number of residual blocks."""
    out_dim: int = 256
    """Embedding size ``D``."""
    dropout: float = 0.0
    """Dropout inside the residual blocks."""


@dataclass(frozen=True)
class TimeWiseConfig:
    """Time-wise encoder size (short paper: 1-D conv with 256 kernels, 4 layers, output 128)."""

    d_model: int = 256
    """Convolution kernels / transformer width."""
    n_layers: int = 4
    """Transformer encoder layers."""
    n_heads: int = 8
    """Attention heads."""
    out_dim: int = 128
    """Per-stamp embedding size."""
    kernel_size: int = 3
    """Temporal kernel of the embedding convolution."""
    max_len: int = 366
    """Longest series covered by the position embedding."""
    ff_mult: int = 2
    """Feed-forward width as a multiple of ``d_model``."""
    dropout: float = 0.0
    """Dropout in the transformer layers."""
    pooling: Literal["mean", "cls"] = "mean"
    """Series vector for the loss: mean of per-stamp outputs, or the CLS token."""


@dataclass(frozen=True)
class ProjectorConfig:
    """Projection head (2-layer MLP, 256 -> 256 -> 256 in the paper)."""

    hidden: int = 256
    """Hidden width."""
    out: int = 256
    """Output size (the space of the contrastive loss)."""


@dataclass(frozen=True)
class PretrainDataConfig:
    """How pre-training pairs are drawn from a DENETHOR-layout scene (ignored for ``.npz`` input)."""

    pixels_per_stamp: int = 100_000
    """Point-wise: random pool pixels per time stamp (paper: 100,000 x 144 stamps = 14.4 M pairs)."""
    n_series: int = 150_000
    """Time-wise: random pool pixels whose series are paired (paper: 150,000)."""
    seed: int = 0
    """Seed of the pixel draw."""
    split_seed: int = 0
    """Seed of the field split (keep it equal to the downstream runs' split seed)."""


@dataclass(frozen=True)
class PretrainConfig:
    """Contrastive pre-training run (defaults: the journal's bi-modal point-wise setting)."""

    mode: Literal["unimodal", "bimodal"] = "bimodal"
    """``unimodal``: SCARF + NT-Xent on S2 alone; ``bimodal``: S2 vs PlanetScope, journal Eq. 1."""
    alignment: Literal["point", "time"] = "point"
    """``point``: ResMLP on single stamps; ``time``: TimeWiseEncoder on whole series."""
    corruption: float = 0.2
    """SCARF corruption rate (paper: 0.2 and 0.6)."""
    corruption_per_batch: bool = False
    """The authors' variant: same columns for the whole batch, applied with ``corruption_p_apply``."""
    corruption_p_apply: float = 0.5
    """Probability of corrupting a batch when ``corruption_per_batch`` is true."""
    epochs: int = 100
    """Passes over the pre-training set."""
    batch_size: int = 1024
    """Pairs per step (paper: 2048 uni-modal, 1024 bi-modal ResMLP, 256 time-wise)."""
    steps_per_epoch: int | None = None
    """Cap on steps per epoch (``None``: the whole set, last incomplete batch dropped)."""
    lr: float = 1e-3
    """Adam learning rate."""
    weight_decay: float = 1e-5
    """Adam weight decay."""
    tau: float = 0.07
    """Temperature of the contrastive loss."""
    symmetric: bool = False
    """Bi-modal: average Eq. 1 with its PlanetScope-anchored version."""
    include_positive: bool = False
    """Bi-modal: add the positive to the denominator (InfoNCE form; Eq. 1 leaves it out)."""
    norm_divisor: Literal["std", "var"] = "std"
    """Normalisation scale: standard deviation, or the authors' variance (see ``compute_norm_stats``)."""
    seed: int = 0
    """Seed for weights, batch order and corruption."""
    checkpoint_every: int = 1
    """Write the resumable state every this many epochs (and always after the last)."""
    log_every: int = 50
    """Write a step line to the loss log every this many steps."""
    encoder: ResMLPConfig = field(default_factory=ResMLPConfig)
    """Point-wise encoder (both modalities)."""
    timewise: TimeWiseConfig = field(default_factory=TimeWiseConfig)
    """Time-wise encoder (both modalities)."""
    projector: ProjectorConfig = field(default_factory=ProjectorConfig)
    """Projection heads."""
    data: PretrainDataConfig = field(default_factory=PretrainDataConfig)
    """Drawing pairs from a scene."""

    def __post_init__(self) -> None:
        """Validate ranges."""
        if not 0.0 <= self.corruption <= 1.0:
            raise ValueError(f"corruption must be in [0, 1], got {self.corruption}")
        if self.epochs < 1 or self.batch_size < 2:
            raise ValueError(f"need epochs >= 1 and batch_size >= 2, got {self.epochs} and {self.batch_size}")
        if self.steps_per_epoch is not None and self.steps_per_epoch < 1:
            raise ValueError(f"steps_per_epoch must be >= 1 or None, got {self.steps_per_epoch}")
        if self.tau <= 0 or self.lr <= 0:
            raise ValueError(f"tau and lr must be > 0, got tau={self.tau}, lr={self.lr}")
        if self.checkpoint_every < 1 or self.log_every < 1:
            raise ValueError("checkpoint_every and log_every must be >= 1")
