"""Shared fixtures of the training tests: one tiny simulated DENETHOR-layout scene pair per test session."""

from __future__ import annotations

from pathlib import Path

import pytest

from training.simulate.run import PRESETS, simulate


@pytest.fixture(scope="session")
def sim_scene_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Root folder of a tiny simulated scene pair (``scene_a/``, ``scene_b/``), written once per session.

    Preset ``tiny``: 32 x 32 S2 px (107 x 107 PS px), 27 fields (at least 3 of each of the 9 classes),
    12 S2 stamps.
    Treat it as read-only: other tests share it.
    """
    root = tmp_path_factory.mktemp("sim")
    simulate(root, PRESETS["tiny"])
    return root
