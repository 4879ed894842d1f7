"""Clouds on the simulated scene: masked at inference as in training, the map recovers its cloud-free accuracy.

Runs ``bench/bench_clouds.py`` on the ``tiny`` preset: a small BiLSTM trained on cloud-masked series of scene A,
exported as a bundle, maps the validation fields of the cloudy scene without and with masking (the CLP band found
by name) and of its cloud-free twin. Figures on the tiny preset when this was written: 0.504 / 0.607 / 0.648;
the default preset is in docs/benchmarks/clouds.md.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from cropmap.contract.clouds import DEFAULT_CLOUD_THRESHOLD
from training.data.datasets import MAX_CLOUD_PROBABILITY, _invalid

ROOT = Path(__file__).resolve().parents[2]


def _bench():
    spec = importlib.util.spec_from_file_location("bench_clouds", ROOT / "bench" / "bench_clouds.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_training_masks_clouds_with_the_inference_rule() -> None:
    assert MAX_CLOUD_PROBABILITY == DEFAULT_CLOUD_THRESHOLD
    s2 = np.array([[100.0] * 12, [100.0] * 12, [0.0] * 12, [100.0] * 12])
    cloud = np.array([0.1, 0.41, 0.0, np.nan])
    assert _invalid(s2, cloud, MAX_CLOUD_PROBABILITY).tolist() == [False, True, True, False]


def test_simulated_stack_carries_the_cloud_band(sim_scene_dir: Path, tmp_path: Path) -> None:
    from cropmap.stack import open_stack
    from training.data.denethor import read_scene

    scene = read_scene(sim_scene_dir / "scene_a")
    st = open_stack(_bench().write_stack(scene, tmp_path / "s.tif", cloud_band=True))
    assert st.bands == (*scene.band_names, "CLP") and st.dates == scene.dates


@pytest.mark.slow
def test_masking_recovers_cloud_free_map_accuracy(tmp_path: Path) -> None:
    """15-70 s on 2 cores (more when shared): simulation, training, export and three maps."""
    res = _bench().run(tmp_path, preset="tiny", seed=0, epochs=40, n_per_class=100)
    runs = res["runs"]
    raw = runs["clouds left in (--cloud-band none)"]["accuracy"]
    masked = runs["clouds masked (CLP found by name)"]["accuracy"]
    clear = runs["cloud-free twin"]["accuracy"]
    assert runs["clouds masked (CLP found by name)"]["masked_observations"] > 0
    assert masked >= clear - 0.08, runs
    assert masked >= raw + 0.05, runs
