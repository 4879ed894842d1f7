"""Tests for training.checkpoint."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from training.checkpoint import CheckpointError, git_revision, load_checkpoint, save_checkpoint


def _payload() -> dict:
    return {
        "kind": "encoder",
        "model_name": "resmlp",
        "model_config": {"in_dim": 2},
        "state_dict": {"w": torch.arange(3.0)},
        "norm_stats": {"mean": [1.0, 2.0], "std": [3.0, 4.0]},
        "config": {"a": 1},
    }


def test_save_load_round_trip(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path / "sub" / "c.pt", _payload())
    data = load_checkpoint(path, kind="encoder")
    assert torch.equal(data["state_dict"]["w"], torch.arange(3.0))
    assert data["norm_stats"] == {"mean": [1.0, 2.0], "std": [3.0, 4.0]}
    assert data["git_sha"] == git_revision()
    assert [p.name for p in path.parent.iterdir()] == ["c.pt"]  # no temporary left behind


def test_save_accepts_keyword_fields(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path / "c.pt", kind="other", state_dict={}, git_sha="abc")
    assert load_checkpoint(path)["git_sha"] == "abc"


def test_git_revision_in_and_outside_repo(tmp_path: Path) -> None:
    sha = git_revision()
    assert len(sha) == 40 and all(c in "0123456789abcdef" for c in sha)
    assert git_revision(tmp_path) == "unknown"


def test_save_rejects_incomplete_payload(tmp_path: Path) -> None:
    bad = _payload()
    del bad["norm_stats"]
    with pytest.raises(CheckpointError, match=r"needs keys \['norm_stats'\]"):
        save_checkpoint(tmp_path / "c.pt", bad)
    with pytest.raises(CheckpointError, match="no 'kind'"):
        save_checkpoint(tmp_path / "c.pt", {"state_dict": {}})
    bad = _payload()
    bad["norm_stats"] = {"mean": [0.0, 0.0], "std": [1.0, 0.0]}
    with pytest.raises(CheckpointError, match="std must be > 0"):
        save_checkpoint(tmp_path / "c.pt", bad)
    assert not os.listdir(tmp_path)


def test_load_wrong_kind_and_missing(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path / "c.pt", kind="other", state_dict={})
    with pytest.raises(CheckpointError, match="is a 'other' checkpoint, expected kind 'encoder'"):
        load_checkpoint(path, kind="encoder")
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "missing.pt")


def test_load_rejects_non_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "x.pt"
    torch.save([1, 2], path)
    with pytest.raises(CheckpointError, match="expected a checkpoint dict"):
        load_checkpoint(path)
    path.write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load_checkpoint(path)


def test_load_rejects_other_format_version(tmp_path: Path) -> None:
    """A format-1 checkpoint (ResMLP n_layers counted blocks) must not silently rebuild another network."""
    path = save_checkpoint(tmp_path / "old.pt", kind="other", state_dict={}, format=1)
    with pytest.raises(CheckpointError, match="has checkpoint format 1; this version reads format 2"):
        load_checkpoint(path)
    assert load_checkpoint(save_checkpoint(tmp_path / "new.pt", kind="other", state_dict={}))["format"] == 2
