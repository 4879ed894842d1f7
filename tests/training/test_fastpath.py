"""Tests for the fast pre-training path (training.pretrain.fastpath), the pair cache and the --device rule.

Tolerance of the fast step against the reference step, fp32 on the CPU: every step's loss within
``rtol = 1e-5`` (plus ``atol = 1e-5`` for losses near zero) over 10 steps, and the trained model's projections of a fixed
batch within ``1e-4``. Both steps draw the same batches and views from the same generator; what differs is fused vs
for-each Adam and, with ``compile``, the kernels, i.e. float32 rounding only (measured: < 2e-7 relative).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from training.config import PretrainConfig, load_config
from training.models.encoder import compute_norm_stats
from training.pretrain.fastpath import FastOptions, FastStep, make_optimizer, run_epoch
from training.pretrain.loop import ContrastiveModel, batch_indices, contrastive_step, precision_context
from training.pretrain.paircache import cache_key, cached_scene_pairs
from training.pretrain.run import load_pretrain_arrays, main

REPO = Path(__file__).resolve().parents[2]
RTOL, ATOL = 1e-5, 1e-5
_TINY_POINT = [
    "encoder.hidden=32",
    "encoder.n_layers=2",
    "encoder.out_dim=16",
    "projector.hidden=16",
    "projector.out=16",
    "batch_size=32",
]
_TINY_TIME = [
    "timewise.d_model=16",
    "timewise.n_heads=2",
    "timewise.n_layers=1",
    "timewise.out_dim=8",
    "projector.hidden=8",
    "projector.out=8",
    "batch_size=8",
    "alignment=time",
]


def _data(alignment: str, n: int = 320, t: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng(0)
    lead = (n,) if alignment == "point" else (n, t)
    s2 = torch.from_numpy((rng.random((*lead, 12)) * 3000).astype(np.float32))
    ps = torch.from_numpy((rng.random((*lead, 36)) * 3000).astype(np.float32))
    return s2, ps


def _model(cfg: PretrainConfig, s2: torch.Tensor, ps: torch.Tensor) -> ContrastiveModel:
    torch.manual_seed(0)
    return ContrastiveModel(
        cfg, compute_norm_stats(s2), compute_norm_stats(ps) if cfg.mode == "bimodal" else None
    )


def _reference(
    cfg: PretrainConfig, s2: torch.Tensor, ps: torch.Tensor, epochs: int
) -> tuple[list[float], torch.Tensor]:
    model = _model(cfg, s2, ps)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    gen = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(epochs):
        for idx in batch_indices(len(s2), cfg.batch_size, gen, s2.device):
            losses.append(
                contrastive_step(
                    model, opt, s2[idx], ps[idx] if cfg.mode == "bimodal" else None, cfg, generator=gen
                )
            )
    return losses, _embeddings(model, s2)


def _embeddings(model: ContrastiveModel, s2: torch.Tensor) -> torch.Tensor:
    """What the trained weights compute (a bias before BatchNorm gets only rounding-noise gradients, which
    Adam scales up differently per implementation, so weights are compared by their function)."""
    with torch.no_grad():
        return model.train().project_s2(s2[:64])


def _fast(
    cfg: PretrainConfig, s2: torch.Tensor, ps: torch.Tensor, epochs: int, options: FastOptions | None = None
) -> tuple[list[float], torch.Tensor]:
    options = options or FastOptions()
    model = _model(cfg, s2, ps)
    opt = make_optimizer(model, cfg, s2.device, fused=options.fused)
    step = FastStep(model, opt, cfg, options=options)
    gen = torch.Generator().manual_seed(0)
    losses: list[float] = []
    for _ in range(epochs):
        out = run_epoch(
            step, s2, ps if cfg.mode == "bimodal" else None, batch_size=cfg.batch_size, generator=gen
        )
        assert out.dtype == torch.float32 and out.device == s2.device
        losses += out.tolist()
    return losses, _embeddings(model, s2)


def _assert_same_run(ref: tuple[list[float], torch.Tensor], fast: tuple[list[float], torch.Tensor]) -> None:
    np.testing.assert_allclose(fast[0], ref[0], rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(fast[1], ref[1], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    "overrides",
    [
        [*_TINY_POINT],
        [*_TINY_POINT, "mode=unimodal"],
        [*_TINY_POINT, "corruption_per_batch=true", "symmetric=true", "include_positive=true"],
        [*_TINY_TIME],
        [*_TINY_TIME, "mode=unimodal"],
    ],
    ids=["bimodal-point", "unimodal-point", "bimodal-point-options", "bimodal-time", "unimodal-time"],
)
def test_fast_step_gives_the_reference_losses_fp32(overrides: list[str]) -> None:
    cfg = load_config(PretrainConfig, None, overrides)
    s2, ps = _data(cfg.alignment, n=160 if cfg.alignment == "point" else 40)
    epochs = 2
    ref = _reference(cfg, s2, ps, epochs)
    assert len(ref[0]) == 10
    fast = _fast(cfg, s2, ps, epochs)
    _assert_same_run(ref, fast)
    # Not vacuous: another seed of the views changes the losses far beyond the tolerance.
    assert (
        abs(
            ref[0][4]
            - _fast(load_config(PretrainConfig, None, [*overrides, "corruption=0.6"]), s2, ps, 1)[0][-1]
        )
        > 1e-3
    )


def test_fast_step_unfused_adam_is_the_same_too() -> None:
    cfg = load_config(PretrainConfig, None, _TINY_POINT)
    s2, ps = _data("point")
    _assert_same_run(_reference(cfg, s2, ps, 1), _fast(cfg, s2, ps, 1, FastOptions(fused=False)))


def test_fast_step_bf16_keeps_the_loss_in_float32_and_close() -> None:
    cfg = load_config(PretrainConfig, None, _TINY_POINT)
    s2, ps = _data("point")
    losses = {}
    for precision in ("fp32", "bf16"):
        model = _model(cfg, s2, ps)
        step = FastStep(model, make_optimizer(model, cfg, s2.device), cfg, precision=precision)
        losses[precision] = step(s2[:32], ps[:32], torch.Generator().manual_seed(0))
    assert losses["bf16"].dtype == torch.float32 and losses["bf16"].ndim == 0
    assert float(losses["bf16"]) == pytest.approx(float(losses["fp32"]), rel=0.02)
    assert float(losses["bf16"]) != float(losses["fp32"])  # autocast did run in bf16


def test_run_epoch_never_reads_the_device(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every way a tensor's value reaches Python is blocked during the epoch; the loss comes back once."""
    cfg = load_config(PretrainConfig, None, _TINY_POINT)
    s2, ps = _data("point")
    model = _model(cfg, s2, ps)
    step = FastStep(model, make_optimizer(model, cfg, s2.device), cfg)
    gen = torch.Generator().manual_seed(0)

    def forbidden(*_: object, **__: object) -> None:
        raise AssertionError("a tensor value was read on the host inside the epoch")

    with monkeypatch.context() as mp:
        for name in ("item", "tolist", "__float__", "__int__", "__bool__", "numpy"):
            mp.setattr(torch.Tensor, name, forbidden)
        losses = run_epoch(step, s2, ps, batch_size=32, generator=gen)
    assert len(losses.tolist()) == 10
    with monkeypatch.context() as mp:  # the check itself bites: the reference step reads the loss every step
        mp.setattr(torch.Tensor, "__float__", forbidden)
        with pytest.raises(AssertionError, match="read on the host"):
            contrastive_step(
                model, torch.optim.Adam(model.parameters()), s2[:32], ps[:32], cfg, generator=gen
            )


def test_precision_and_device_options_are_checked() -> None:
    cpu = torch.device("cpu")
    with pytest.raises(ValueError, match="tf32 is a CUDA setting"):
        precision_context(cpu, "tf32")
    with pytest.raises(ValueError, match="precision must be one of fp32, tf32, bf16"):
        precision_context(cpu, "fp16")
    cfg = load_config(PretrainConfig, None, _TINY_POINT)
    s2, ps = _data("point")
    model = _model(cfg, s2, ps)
    with pytest.raises(ValueError, match="--cuda-graphs needs a CUDA device"):
        FastStep(model, make_optimizer(model, cfg, cpu), cfg, options=FastOptions(cuda_graphs=True))
    assert make_optimizer(model, cfg, cpu).defaults["fused"] is True
    assert not make_optimizer(model, cfg, cpu, fused=False).defaults["fused"]


@pytest.mark.slow
def test_compiled_fast_step_gives_the_reference_losses() -> None:
    """torch.compile on the CPU (inductor C++ kernels; about a minute of compilation on 2 cores)."""
    cfg = load_config(PretrainConfig, None, _TINY_POINT)
    s2, ps = _data("point")
    _assert_same_run(_reference(cfg, s2, ps, 2), _fast(cfg, s2, ps, 2, FastOptions(compile=True)))


# ---------------------------------------------------------------------------------------------- the CLI


@pytest.fixture
def tiny_npz(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    path = tmp_path / "pairs.npz"
    np.savez(
        path,
        s2=(rng.random((100, 12)) * 3000).astype(np.float32),
        ps=(rng.random((100, 36)) * 3000).astype(np.float32),
    )
    return path


_CLI = [
    "--set",
    "encoder.hidden=16",
    "--set",
    "encoder.n_layers=2",
    "--set",
    "encoder.out_dim=8",
    "--set",
    "projector.hidden=16",
    "--set",
    "projector.out=8",
    "--set",
    "batch_size=32",
    "--no-progress",
    "--set",
    "log_every=1",
    "--device",
    "cpu",
]


def _log(run: Path) -> list[dict]:
    return [json.loads(ln) for ln in (run / "loss_log.jsonl").read_text().splitlines()]


def test_cli_fast_run_logs_the_reference_losses_and_resumes_exactly(tiny_npz: Path, tmp_path: Path) -> None:
    ref, fast, split = tmp_path / "ref", tmp_path / "fast", tmp_path / "split"
    assert main(["--data", str(tiny_npz), "--out", str(ref), "--set", "epochs=3", *_CLI]) == 0
    assert main(["--data", str(tiny_npz), "--out", str(fast), "--set", "epochs=3", "--fast", *_CLI]) == 0
    a, b = _log(ref), _log(fast)
    assert [(r["epoch"], r["step"]) for r in a] == [(r["epoch"], r["step"]) for r in b]  # 3 x (3 steps + 1)
    np.testing.assert_allclose([r["loss"] for r in b], [r["loss"] for r in a], rtol=RTOL, atol=ATOL)
    assert main(["--data", str(tiny_npz), "--out", str(split), "--set", "epochs=1", "--fast", *_CLI]) == 0
    assert (
        main(
            [
                "--data",
                str(tiny_npz),
                "--out",
                str(split),
                "--set",
                "epochs=3",
                "--fast",
                *_CLI,
                "--resume",
                str(split / "checkpoints" / "last.pt"),
            ]
        )
        == 0
    )
    assert [r["loss"] for r in _log(split)] == [r["loss"] for r in b]


def test_cli_fast_run_stops_on_a_non_finite_loss(
    tiny_npz: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc = main(
        [
            "--data",
            str(tiny_npz),
            "--out",
            str(tmp_path / "r"),
            "--set",
            "epochs=1",
            "--set",
            "lr=1e30",
            "--fast",
            *_CLI,
        ]
    )
    assert rc == 1
    err = capsys.readouterr().err
    assert "loss became nan at epoch 1 step 2" in err or "loss became inf at epoch 1 step 2" in err


# ---------------------------------------------------------------------------------------------- pair cache


def test_pair_cache_stores_once_and_memory_maps_reruns(sim_scene_dir: Path, tmp_path: Path) -> None:
    scene = tmp_path / "scene_a"
    shutil.copytree(sim_scene_dir / "scene_a", scene)
    cfg = load_config(PretrainConfig, None, ["data.pixels_per_stamp=50"])
    plain = load_pretrain_arrays(scene, cfg)
    cache = tmp_path / "cache"
    first = load_pretrain_arrays(scene, cfg, pair_cache=cache)
    np.testing.assert_array_equal(first.s2, plain.s2)
    np.testing.assert_array_equal(first.ps, plain.ps)
    assert first.bands == plain.bands
    entries = [p.name for p in cache.iterdir()]
    assert entries == [cache_key(scene, cfg)[0]]

    def never() -> tuple:
        raise AssertionError("the pairs were drawn again")

    s2, ps, info, hit = cached_scene_pairs(scene, cfg, cache, never)
    assert hit and isinstance(s2, np.memmap) and info["bands"] == list(plain.bands)
    np.testing.assert_array_equal(np.asarray(ps), plain.ps)
    # A uni-modal run shares the entry; other drawing settings or a changed scene file do not.
    uni = load_config(PretrainConfig, None, ["data.pixels_per_stamp=50", "mode=unimodal"])
    assert cache_key(scene, uni)[0] == entries[0]
    assert (
        cache_key(scene, load_config(PretrainConfig, None, ["data.pixels_per_stamp=50", "data.seed=1"]))[0]
        != entries[0]
    )
    bands = scene / "s2" / "bands.npy"
    os.utime(bands, ns=(bands.stat().st_atime_ns, bands.stat().st_mtime_ns + 10**9))
    assert cache_key(scene, cfg)[0] != entries[0]


def test_pair_cache_leaves_nothing_when_drawing_fails(tmp_path: Path) -> None:
    scene = tmp_path / "scene"
    scene.mkdir()
    (scene / "x.bin").write_bytes(b"1")
    cache = tmp_path / "cache"
    cfg = load_config(PretrainConfig, None, [])

    def interrupted() -> tuple:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        cached_scene_pairs(scene, cfg, cache, interrupted)
    assert list(cache.iterdir()) == []

    def bad_meta() -> tuple:  # fails while writing the entry: the temporary folder is removed
        return np.zeros((3, 12), np.float32), np.zeros((3, 36), np.float32), {"bands": object()}

    with pytest.raises(TypeError):
        cached_scene_pairs(scene, cfg, cache, bad_meta)
    assert list(cache.iterdir()) == []


# ---------------------------------------------------------------------------------------------- --device cuda


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without a visible GPU")
@pytest.mark.parametrize(
    "argv",
    [
        ["training.pretrain.run", "--data", "{tmp}/none.npz", "--out", "{tmp}/p", "--device", "cuda"],
        [
            "training.pretrain.run",
            "--data",
            "{tmp}/none.npz",
            "--out",
            "{tmp}/p",
            "--device",
            "cuda:1",
            "--fast",
        ],
        ["training.evaluate.probe", "--data", "{tmp}/none", "--device", "cuda"],
        ["training.downstream.sample_model", "--out", "{tmp}/s", "--device", "cuda"],
        [
            "training.downstream.run",
            "--task",
            "1",
            "--data",
            "{tmp}/none",
            "--out",
            "{tmp}/d",
            "--device",
            "cuda",
        ],
    ],
    ids=["pretrain", "pretrain-fast", "probe", "sample_model", "downstream"],
)
def test_device_cuda_without_a_gpu_is_one_line(argv: list[str], tmp_path: Path) -> None:
    args = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    res = subprocess.run(
        [sys.executable, "-m", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "CUDA_VISIBLE_DEVICES": ""},
    )
    assert res.returncode != 0
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("Error: --device cuda") and "torch sees no CUDA device" in lines[0]
    assert list(tmp_path.iterdir()) == []  # nothing written


# ---------------------------------------------------------------------------------------------- GPU-machine imports

_BLOCKED = (
    "rasterio",
    "geopandas",
    "xarray",
    "dask",
    "distributed",
    "pyogrio",
    "shapely",
    "fiona",
    "pyproj",
    "rioxarray",
)


def test_gpu_path_imports_without_the_geospatial_packages() -> None:
    """What bench/gpu_check.py imports loads with the geospatial packages absent (as on the GPU machine)."""
    code = textwrap.dedent(
        f"""
        import importlib, sys
        BLOCKED = {_BLOCKED!r}

        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in BLOCKED:
                    raise ModuleNotFoundError(f"No module named {{name!r}} (blocked)", name=name)
                return None

        sys.meta_path.insert(0, Block())
        for mod in ("training.pretrain.loop", "training.pretrain.fastpath", "training.pretrain.run", "training.downstream.run",
                    "training.models", "training.device", "training.pretrain.paircache"):
            importlib.import_module(mod)
        sys.path.insert(0, "bench")
        import gpu_check
        try:
            import rasterio
        except ModuleNotFoundError as err:
            assert "blocked" in str(err)
        else:
            raise SystemExit("the block did not work")
        loaded = sorted({{m.split(".")[0] for m in sys.modules}} & set(BLOCKED))
        print("loaded:", loaded)
        """
    )
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=False)
    assert res.returncode == 0, res.stderr
    assert "loaded: []" in res.stdout


def _cpu_runs_bf16_lstm() -> bool:
    """Whether this CPU runs an LSTM under bf16 autocast: oneDNN has no bf16 LSTM primitive on CPUs without
    AVX-512 (an AVX2-only CPU raises "could not create a primitive descriptor for the LSTM ...")."""
    lstm = torch.nn.LSTM(4, 4, batch_first=True)
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            lstm(torch.randn(2, 3, 4))
    except RuntimeError:
        return False
    return True


@pytest.mark.slow
def test_gpu_check_script_runs_at_toy_size_on_the_cpu(tmp_path: Path) -> None:
    """bench/gpu_check.py end to end at toy sizes (20-40 s on 2 cores): every section fills its rows.

    Every row runs (exit 0), except on a CPU without a bf16 LSTM: there the LSTM's bf16 downstream row, and only
    it, reports the failure and the script exits 3, as it does for any row that fails."""
    bf16_lstm = _cpu_runs_bf16_lstm()
    out = tmp_path / "gpu_check.md"
    res = subprocess.run(
        [
            sys.executable,
            "bench/gpu_check.py",
            "--device",
            "cpu",
            "--tiny",
            "--no-compile",
            "--seconds",
            "0.05",
            "--out",
            str(out),
            "--json",
            str(tmp_path / "g.json"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert res.returncode == (0 if bf16_lstm else 3), res.stderr[-2000:]
    data = json.loads((tmp_path / "g.json").read_text())["sections"]
    assert [len(data[k]["rows"]) for k in ("pretrain", "sync", "agree", "downstream")] == [4, 1, 1, 6]
    failed = [
        (r["cells"][0], r["cells"][2])
        for rows in (data[k]["rows"] for k in data)
        for r in rows
        if any(c.startswith("failed") for c in r["cells"])
    ]
    assert failed == ([] if bf16_lstm else [("lstm", "bf16")])
    assert all(r["data"]["pairs_per_s"] > 0 for r in data["pretrain"]["rows"])
    assert {r["cells"][0] for r in data["downstream"]["rows"]} == {"lstm", "inception_time", "transformer"}
    assert "| fast | bf16 | eager |" in out.read_text()


def test_gpu_check_refuses_a_missing_gpu(tmp_path: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    res = subprocess.run(
        [sys.executable, "bench/gpu_check.py", "--out", str(tmp_path / "x.md")],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert res.returncode == 2 and res.stderr.strip().startswith("error: --device cuda was asked for")
    assert not (tmp_path / "x.md").exists()
