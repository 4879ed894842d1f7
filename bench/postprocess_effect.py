"""Effect of ``--majority-filter`` / ``--smooth-probabilities`` on a labelled synthetic scene.

``python bench/postprocess_effect.py [OUT_DIR]`` builds a 256 x 256 px scene of rectangular
fields (8..40 px a side, one of 4 classes each, 6 dates x 4 bands), noisy per pixel, with
a cropland mask covering 85 % of the fields; a bundle that is the Bayes-optimal linear
classifier for the scene's class means and noise (so its probabilities are calibrated);
and reports map accuracy (classified pixels vs the true field class) for each setting.
Blocks of 64 px are used, so the halo is exercised.
"""

from __future__ import annotations

import datetime as dt
import json
import sys
from pathlib import Path

import numpy as np
import rasterio
import shapely
from rasterio.transform import from_origin

import cropmap
from cropmap.contract.metadata import METADATA_KEY, BundleMetadata, ClassInfo, Provenance, TimeGrid

N, K, RES = 256, 4, 10.0
DATES = [dt.date(2021, m, 5) for m in (3, 4, 5, 6, 7, 8)]
BANDS = ("B02", "B03", "B04", "B08")
SIGMA = 3000.0  # per-pixel noise (DN): single pixels are often misclassified


def fields(rng: np.random.Generator) -> list[tuple[int, int, int, int]]:
    out, r = [], 0
    while r < N:
        h = int(rng.integers(8, 41))
        c = 0
        while c < N:
            w = int(rng.integers(8, 41))
            out.append((r, min(r + h, N), c, min(c + w, N)))
            c += w
        r += h
    return out


def main(out_dir: str) -> int:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    tc = len(DATES) * len(BANDS)
    mu = rng.uniform(1000, 4000, (K, tc))
    truth = np.zeros((N, N), dtype=np.int64)
    x0, y0 = 500000.0, 5600000.0
    polys = []
    for r0, r1, c0, c1 in fields(rng):
        truth[r0:r1, c0:c1] = rng.integers(K)
        if (
            rng.random() < 0.85
        ):  # in the cropland mask; 1 px inset so neighbouring fields are separate polygons
            polys.append(
                shapely.box(
                    x0 + (c0 + 0.6) * RES, y0 - (r1 - 0.6) * RES, x0 + (c1 - 0.6) * RES, y0 - (r0 + 0.6) * RES
                )
            )
    vals = mu[truth].reshape(N, N, len(DATES), len(BANDS)) + rng.normal(
        0, SIGMA, (N, N, len(DATES), len(BANDS))
    )
    vals = np.clip(vals, 1, 10000).astype(np.uint16).transpose(2, 3, 0, 1)  # (S, C, rows, cols)
    stack = out / "scene.tif"
    prof = {
        "driver": "GTiff",
        "width": N,
        "height": N,
        "count": tc,
        "dtype": "uint16",
        "crs": "EPSG:32631",
        "transform": from_origin(x0, y0, RES, RES),
        "nodata": 0,
        "tiled": True,
        "blockxsize": 64,
        "blockysize": 64,
    }
    with rasterio.open(stack, "w", **prof) as ds:
        ds.write(vals.reshape(tc, N, N))
        for t, d in enumerate(DATES):
            for b, name in enumerate(BANDS):
                ds.set_band_description(t * len(BANDS) + b + 1, f"{d.isoformat()}_{name}")
        ds.update_tags(reflectance_scale="10000")
    import geopandas as gpd

    mask = out / "fields.gpkg"
    gpd.GeoDataFrame(geometry=polys, crs="EPSG:32631").to_file(mask, engine="pyogrio")
    # Bayes-optimal linear classifier for equal priors and isotropic noise.
    w = (mu / SIGMA**2).T.astype(np.float32)
    b = (-(mu**2).sum(1) / (2 * SIGMA**2)).astype(np.float32)
    grid = tuple((d - dt.date(2020, 11, 1)).days for d in DATES)
    meta = BundleMetadata(
        schema_version=1,
        model_name="bayes_linear",
        input_name="x",
        output_name="logits",
        bands=BANDS,
        reflectance_scale=10000.0,
        nodata=0.0,
        time_grid=TimeGrid("11-01", grid, tuple(map(str, DATES))),
        min_valid_steps=3,
        gap_fill="linear",
        classes=tuple(
            ClassInfo(i + 1, f"class {i + 1}", c)
            for i, c in enumerate(("#e6ab02", "#66a61e", "#1b9e77", "#7570b3"))
        ),
        embedding=None,
        provenance=Provenance("none", "linear", "none", "synthetic scene", "bench", "2026-01-01T00:00:00"),
    )
    nodes = [
        helper.make_node("Reshape", ["x", "shape"], ["flat"]),
        helper.make_node("MatMul", ["flat", "W"], ["mm"]),
        helper.make_node("Add", ["mm", "b"], ["logits"]),
    ]
    inits = [
        numpy_helper.from_array(np.array([-1, tc], dtype=np.int64), "shape"),
        numpy_helper.from_array(w, "W"),
        numpy_helper.from_array(b, "b"),
    ]
    g = helper.make_graph(
        nodes,
        "bayes",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", len(DATES), len(BANDS)])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["B", K])],
        inits,
    )
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    helper.set_model_props(model, {METADATA_KEY: meta.to_json()})
    bundle = out / "bayes.onnx"
    onnx.save(model, str(bundle))

    settings = {
        "none": {},
        "majority 3": {"majority_filter": 3},
        "majority 5": {"majority_filter": 5},
        "majority 9": {"majority_filter": 9},
        "smooth sigma 1": {"smooth_probabilities": 1.0},
        "smooth sigma 2": {"smooth_probabilities": 2.0},
        "smooth sigma 1 + majority 3": {"smooth_probabilities": 1.0, "majority_filter": 3},
    }
    rows = {}
    for name, kw in settings.items():
        arr = cropmap.classify_array(stack, mask, model=bundle, block_size=64, cloud_band="none", **kw).values
        ok = arr > 0
        rows[name] = {"accuracy": round(float((arr[ok] - 1 == truth[ok]).mean()), 4), "pixels": int(ok.sum())}
        print(f"{name:<30} accuracy {rows[name]['accuracy']:.4f} on {rows[name]['pixels']} px")
    (out / "postprocess_effect.json").write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "runs/postprocess_effect"))
