"""Tests for training.config: TOML + overrides into frozen dataclasses."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest

from training.config import ConfigError, config_from_dict, config_to_dict, load_config


@dataclass(frozen=True)
class _Optim:
    lr: float = 1e-3
    betas: tuple[float, ...] = (0.9, 0.999)


@dataclass(frozen=True)
class _Run:
    epochs: int = 100
    name: str = "run"
    mode: Literal["unimodal", "bimodal"] = "bimodal"
    amp: bool = False
    resume: Path | None = None
    limit: int | None = None
    optim: _Optim = field(default_factory=_Optim)


def test_load_config_defaults_without_file() -> None:
    cfg = load_config(_Run, None, [])
    assert cfg == _Run()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.epochs = 3  # type: ignore[misc]


def test_load_config_file_then_overrides(tmp_path: Path) -> None:
    path = tmp_path / "run.toml"
    path.write_text('epochs = 5\nname = "a"\n[optim]\nlr = 1\nbetas = [0.5, 0.6]\n')
    cfg = load_config(
        _Run, path, ["epochs=7", "optim.lr=5e-4", "amp=true", "resume=ckpt.pt", "mode=unimodal"]
    )
    assert cfg.epochs == 7
    assert cfg.name == "a"
    assert cfg.optim.lr == 5e-4
    assert isinstance(cfg.optim.lr, float)
    assert cfg.optim.betas == (0.5, 0.6)
    assert cfg.amp is True
    assert cfg.resume == Path("ckpt.pt")
    assert cfg.mode == "unimodal"


def test_load_config_int_in_toml_becomes_float(tmp_path: Path) -> None:
    path = tmp_path / "run.toml"
    path.write_text("[optim]\nlr = 1\n")
    assert load_config(_Run, path).optim.lr == 1.0


def test_load_config_optional_and_tuple_overrides() -> None:
    cfg = load_config(_Run, None, ["limit=3", "optim.betas=0.1,0.2"])
    assert cfg.limit == 3 and cfg.optim.betas == (0.1, 0.2)
    assert load_config(_Run, None, ["limit=none"]).limit is None
    assert load_config(_Run, None, ["optim.betas=[0.3, 0.4]"]).optim.betas == (0.3, 0.4)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("epoch=3", "unknown config key 'epoch'"),
        ("optim.lrr=3", "unknown config key 'lrr' in [optim]"),
        ("epochs=three", "expected an integer"),
        ("amp=maybe", "expected a boolean"),
        ("mode=trimodal", "expected one of"),
        ("epochs", "key=value"),
        ("optim=3", "is a section"),
        ("epochs.x=3", "is not a section"),
    ],
)
def test_load_config_bad_override(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_config(_Run, None, [override])


def test_load_config_unknown_toml_key(tmp_path: Path) -> None:
    path = tmp_path / "run.toml"
    path.write_text("[optim]\nmomentum = 0.9\n")
    with pytest.raises(ConfigError, match=r"unknown config key\(s\) \['momentum'\] in \[optim\]"):
        load_config(_Run, path)


def test_load_config_wrong_type_in_toml(tmp_path: Path) -> None:
    path = tmp_path / "run.toml"
    path.write_text('epochs = "10"\n')
    with pytest.raises(ConfigError, match="epochs: expected an integer"):
        load_config(_Run, path)


def test_load_config_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_config(_Run, tmp_path / "nope.toml")


def test_config_to_dict_round_trip() -> None:
    cfg = load_config(_Run, None, ["resume=a/b.pt", "optim.lr=0.5"])
    plain = config_to_dict(cfg)
    assert plain["resume"] == "a/b.pt" and plain["optim"] == {"lr": 0.5, "betas": [0.9, 0.999]}
    assert config_from_dict(_Run, plain) == cfg
