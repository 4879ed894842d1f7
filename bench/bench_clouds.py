"""Cloud masking on the simulated scene: map accuracy without masking, with masking, and on a cloud-free twin.

Usage::

    python bench/bench_clouds.py [--preset default] [--seed 0] [--epochs 60] [--markdown FILE]

What it does (everything on scene A of ``python -m training.simulate``):

1. Simulates the scene pair, and a *cloud-free twin* of scene A: the same surface, fields and dates
   (``SceneSpec.cloud_clear_fraction = 1``; only sensor noise and swath gaps are drawn anew).
2. Trains a small BiLSTM (``training.models`` ``lstm``) on the pre-training + training fields of the cloudy
   scene, with clouds masked and filled in training exactly as at inference
   (``training.data.datasets.balanced_pixels(..., fill="linear")``: cloud probability > 0.4 or no data -> gap,
   :func:`cropmap.contract.timegrid.fill_gaps`), and exports it as a cropmap bundle (:func:`exporters.to_onnx.export_bundle`)
   whose time grid is the scene's own dates.
3. Writes the cloudy scene as a GeoTIFF stack with one ``YYYY-MM-DD_CLP`` band per date (the simulator's
   s2cloudless-like cloud probability, 0..255), the twin as a stack without it, and the validation fields
   (never trained on) as the cropland GeoPackage.
4. Maps the validation fields three times with ``cropmap.classify``: the cloudy stack with ``--cloud-band none``
   (clouds left in), the cloudy stack with its CLP band found by name (clouds masked), the cloud-free twin.
   Accuracy = share of classified validation pixels whose class is the field's crop.

``tests/training/test_training_clouds.py`` runs the same steps on the ``tiny`` preset.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import rasterio

from cropmap.contract.metadata import BundleMetadata, ClassInfo, Provenance, TimeGrid

PALETTE = ("#e6ab02", "#a6761d", "#d95f02", "#fdbf6f", "#66a61e", "#ffff33", "#984ea3", "#1b9e77", "#7fc97f")


def simulate_with_twin(root: Path, preset: str, seed: int) -> tuple[Path, Path]:
    """Simulate the scene pair under ``root/sim`` and the cloud-free twin of scene A under ``root/clear``."""
    from training.simulate import run as sim

    cfg = dataclasses.replace(sim.PRESETS[preset], seed=seed)
    paths = sim.simulate(root / "sim", cfg)
    twin = root / "clear" / "scene_a"
    spec = dataclasses.replace(sim.SCENE_A, cloud_clear_fraction=1.0)
    sim._simulate_scene(twin, cfg, spec, np.random.default_rng([cfg.seed, 0]))  # same rng stream as scene_a
    return paths["scene_a"], twin


def write_stack(scene: Any, out: Path, *, cloud_band: bool) -> Path:
    """The scene's S2 cube as a time-major GeoTIFF (``YYYY-MM-DD_Bxx``, nodata 0), optionally with ``_CLP``."""
    t, h, w, _c = scene.s2.shape
    names = list(scene.band_names) + (["CLP"] if cloud_band else [])
    count = t * len(names)
    profile = {
        "driver": "GTiff",
        "width": w,
        "height": h,
        "count": count,
        "dtype": "uint16",
        "crs": scene.crs,
        "transform": scene.transform,
        "nodata": 0,
        "tiled": False,
        "compress": "deflate",
    }
    with rasterio.open(out, "w", **profile) as ds:
        for i, d in enumerate(scene.dates):
            cube = np.moveaxis(np.asarray(scene.s2[i], dtype=np.uint16), -1, 0)
            if cloud_band:
                cube = np.concatenate([cube, np.asarray(scene.clp[i], dtype=np.uint16)[None]])
            for b, name in enumerate(names):
                k = i * len(names) + b + 1
                ds.write(cube[b], k)
                ds.set_band_description(k, f"{d.isoformat()}_{name}")
        ds.update_tags(reflectance_scale="10000")
    return out


def write_fields(scene_dir: Path, field_ids: np.ndarray, out: Path) -> Path:
    """The given fields of ``labels.geojson`` as a one-layer GeoPackage."""
    import geopandas as gpd

    labels = gpd.read_file(scene_dir / "labels.geojson")
    labels[labels["field_id"].isin([int(i) for i in field_ids])].to_file(
        out, layer="fields", engine="pyogrio"
    )
    return out


def train_bundle(
    scene: Any,
    train_ids: np.ndarray,
    val_ids: np.ndarray,
    out: Path,
    *,
    epochs: int,
    n_per_class: int,
    seed: int,
) -> dict[str, float]:
    """Train a small BiLSTM on cloud-masked, gap-filled series and export it; returns its series accuracy."""
    import torch

    from exporters.to_onnx import export_bundle
    from training.data.datasets import MAX_CLOUD_PROBABILITY, balanced_pixels, class_names
    from training.models import build_model

    torch.manual_seed(seed)
    names = class_names(scene)
    x_tr, y_tr = balanced_pixels(scene, train_ids, n_per_class, seed, classes=names, fill="linear")
    x_va, y_va = balanced_pixels(
        scene, val_ids, max(n_per_class // 3, 20), seed + 1, classes=names, fill="linear"
    )
    flat = x_tr.reshape(-1, x_tr.shape[-1])
    stats = {"mean": flat.mean(0).tolist(), "std": (flat.std(0) + 1e-3).tolist()}
    mean, std = torch.tensor(stats["mean"]), torch.tensor(stats["std"])
    model = build_model("lstm", x_tr.shape[-1], len(names), hidden=32, layers=1, dropout=0.1)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    xt, yt = (torch.from_numpy(x_tr) - mean) / std, torch.from_numpy(y_tr)
    for _ in range(epochs):
        model.train()
        for idx in torch.randperm(len(xt)).split(64):
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(xt[idx]), yt[idx])
            loss.backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        pred = model((torch.from_numpy(x_va) - mean) / std).argmax(1).numpy()
    acc = float((pred == y_va).mean())
    days = tuple(d.timetuple().tm_yday - 1 for d in scene.dates)
    meta = BundleMetadata(
        schema_version=1,
        model_name="sim_lstm",
        input_name="s2",
        output_name="logits",
        bands=tuple(scene.band_names),
        reflectance_scale=10000.0,
        nodata=0.0,
        time_grid=TimeGrid("01-01", days, tuple(d.isoformat() for d in scene.dates)),
        min_valid_steps=2,
        gap_fill="linear",
        classes=tuple(ClassInfo(k + 1, n, PALETTE[k % len(PALETTE)]) for k, n in enumerate(names)),
        embedding=None,
        provenance=Provenance(
            "none",
            "lstm",
            "none",
            f"simulated scene A, clouds masked (cloud probability > {MAX_CLOUD_PROBABILITY})",
            "bench",
            dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            {"val_accuracy": acc},
        ),
    )
    # The bench's own scratch bundle in its work folder: replaced on purpose, as the classify runs below are.
    export_bundle(
        encoder=None,
        base_model=model,
        norm_stats=stats,
        metadata=meta,
        out=out,
        example=x_va[:64],
        overwrite=True,
    )
    return {"series_val_accuracy": acc, "n_train": len(y_tr), "n_val": len(y_va)}


def map_accuracy(map_path: Path, scene: Any, val_ids: np.ndarray) -> dict[str, float]:
    """Share of the classified validation-field pixels mapped as their field's crop (codes = crop order + 1)."""
    with rasterio.open(map_path) as src:
        classes = src.read(1)
    names = scene.class_names
    crop_ids = sorted(scene.crop_names)
    truth = np.zeros_like(classes)
    for k, cid in enumerate(crop_ids):
        truth[scene.crop_raster == cid] = k + 1
    assert len(names) == len(crop_ids)
    inside = np.isin(scene.field_raster, val_ids)
    done = inside & (classes > 0)
    return {
        "accuracy": float((classes[done] == truth[done]).mean()) if done.any() else 0.0,
        "classified": int(done.sum()),
        "pixels": int(inside.sum()),
    }


def run(
    work: Path, *, preset: str = "default", seed: int = 0, epochs: int = 60, n_per_class: int = 150
) -> dict:
    """All steps; returns the figures."""
    import cropmap
    from training.data.datasets import scene_a_splits
    from training.data.denethor import read_scene

    t0 = time.perf_counter()
    cloudy_dir, clear_dir = simulate_with_twin(work, preset, seed)
    scene, clear = read_scene(cloudy_dir), read_scene(clear_dir)
    assert np.array_equal(scene.field_raster, clear.field_raster) and scene.dates == clear.dates
    splits = scene_a_splits(scene, seed)
    train_ids = np.concatenate([splits["pretrain"], splits["train"]])
    bundle = work / "sim_lstm.onnx"
    fit = train_bundle(
        scene, train_ids, splits["val"], bundle, epochs=epochs, n_per_class=n_per_class, seed=seed
    )
    fields = write_fields(cloudy_dir, splits["val"], work / "val_fields.gpkg")
    cloudy = write_stack(scene, work / "cloudy_clp.tif", cloud_band=True)
    twin = write_stack(clear, work / "cloud_free.tif", cloud_band=False)
    runs = {
        "clouds left in (--cloud-band none)": (cloudy, {"cloud_band": "none"}),
        "clouds masked (CLP found by name)": (cloudy, {}),
        "cloud-free twin": (twin, {"cloud_band": "none"}),
    }
    out: dict[str, Any] = {"preset": preset, "seed": seed, "epochs": epochs, **fit, "runs": {}}
    for i, (label, (stack, kw)) in enumerate(runs.items()):
        m = work / f"map_{i}.tif"
        summary = cropmap.classify(
            stack, fields, model=bundle, out=m, quicklook=False, overwrite=True, **kw
        ).to_dict()
        res = map_accuracy(m, scene, splits["val"])
        res["masked_observations"] = summary["clouds"]["masked_observations"]
        res["observations_in_mask"] = summary["clouds"].get("observations_in_mask")
        out["runs"][label] = res
    cover = scene.cloud_probability() > 0.4
    out["cloudy_share_of_observations"] = float(cover.mean())
    out["seconds"] = round(time.perf_counter() - t0, 1)
    return out


def markdown(res: dict) -> str:
    lines = [
        "# Cloud masking on the simulated scene",
        "",
        (
            f"Produced by `python bench/bench_clouds.py --preset {res['preset']} --seed {res['seed']} "
            f"--epochs {res['epochs']}`."
        ),
        "",
        "| stack mapped | map accuracy (validation fields) | classified px | observations masked |",
        "|---|---:|---:|---:|",
    ]
    for label, r in res["runs"].items():
        masked = (
            f"{r['masked_observations']:,} of {r['observations_in_mask']:,}"
            if r["observations_in_mask"]
            else "-"
        )
        lines.append(f"| {label} | {r['accuracy']:.3f} | {r['classified']:,} of {r['pixels']:,} | {masked} |")
    lines += [
        "",
        (
            f"Model: BiLSTM (hidden 32), {res['epochs']} epochs on {res['n_train']:,} cloud-masked, gap-filled series of "
            f"scene A's pre-training + training fields; series accuracy on the validation fields "
            f"{res['series_val_accuracy']:.3f}. {res['cloudy_share_of_observations']:.0%} of scene A's observations have "
            f"a cloud probability above 0.4. Run time {res['seconds']:.0f} s on "
            f"{dt.date.today().isoformat()} (2 shared cores)."
        ),
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Command line."""
    import tempfile

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="default")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=60)
    p.add_argument("--n-per-class", type=int, default=150)
    p.add_argument("--markdown", type=Path, default=None, help="write the table to this file")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        res = run(
            Path(tmp), preset=args.preset, seed=args.seed, epochs=args.epochs, n_per_class=args.n_per_class
        )
    print(json.dumps(res, indent=2))
    text = markdown(res)
    print(text)
    if args.markdown is not None:
        args.markdown.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
