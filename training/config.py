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
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

try:  # Python >= 3.11
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10 needs the tomli backport
    try:
        import tomli as tomllib  # type: ignore[no-redef]
    except ModuleNotFoundError as err:
        raise ImportError("reading TOML configs on Python 3.10 needs the 'tomli' package") from err

logger = logging.getLogger(__name__)

T = TypeVar("T")

_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}
_NONE = {"none", "null"}


class ConfigError(ValueError):
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
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}  # type: ignore[arg-type]
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
            return tuple(_coerce(t, v, f"{key}[{i}]") for i, (t, v) in enumerate(zip(targs, value)))
        item_hint = targs[0] if targs else Any
        items = [_coerce(item_hint, v, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected a table, found {value!r}")
        return dict(value)
    raise ConfigError(f"{key}: unsupported annotation {hint!r} in configuration class")
