"""Shared builders of the cropmap tests: tiny stacks, polygons, an onnx.helper bundle (no torch) and numpy references.

A plain module (not ``conftest``) so that test files import it by a name no other test folder uses.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import shapely
from rasterio.transform import from_origin

from cropmap.contract.metadata import (
    METADATA_KEY,
    BundleMetadata,
    ClassInfo,
    EmbeddingInfo,
    Provenance,
    TimeGrid,
)

HEIGHT, WIDTH = 23, 37
TILE = 16
ORIGIN = (600000.0, 5600000.0)
RES = 10.0
CRS = "EPSG:32631"
DATES = (dt.date(2021, 1, 5), dt.date(2021, 2, 10), dt.date(2021, 3, 1), dt.date(2021, 4, 15))
STACK_BANDS = ("B02", "B03", "B04")
MODEL_BANDS = ("B04", "B02", "B03")  # a different order than the stack: the reader must map by name
GRID_DAYS = (10, 40, 70, 100)
NODATA = 0
EMB_DIM = 4
CLASSES = (
    ClassInfo(code=1, name="winter wheat", color="#e6ab02"),
    ClassInfo(code=2, name="maize", color="#66a61e"),
    ClassInfo(code=5, name="grassland", color="#1b9e77"),
)
TRANSFORM = from_origin(ORIGIN[0], ORIGIN[1], RES, RES)


def make_values(seed: int = 0) -> np.ndarray:
    """uint16 (S, C, rows, cols) raw DN with nodata holes.

    About 20 % of pixel-dates are cloudy (all bands nodata); rows 0-2 of columns
    30-36 keep a single valid date, so they have too little data for min_valid 2.
    """
    rng = np.random.default_rng(seed)
    s, c = len(DATES), len(STACK_BANDS)
    vals = rng.integers(200, 6000, size=(s, c, HEIGHT, WIDTH), dtype=np.uint16)
    cloudy = rng.random((s, HEIGHT, WIDTH)) < 0.2
    cloudy[:, 0:3, 30:37] = True
    cloudy[1, 0:3, 30:37] = False
    vals[np.broadcast_to(cloudy[:, None], vals.shape)] = NODATA
    return vals


def profile(count: int) -> dict[str, Any]:
    return {
        "driver": "GTiff",
        "width": WIDTH,
        "height": HEIGHT,
        "count": count,
        "dtype": "uint16",
        "crs": CRS,
        "transform": TRANSFORM,
        "nodata": NODATA,
        "tiled": True,
        "blockxsize": TILE,
        "blockysize": TILE,
    }


def write_stack_descriptions(
    path: Path,
    values: np.ndarray,
    *,
    tags: dict[str, str] | None = None,
    bands: tuple[str, ...] = STACK_BANDS,
    **kw: Any,
) -> Path:
    """Time-major stack with ``YYYY-MM-DD_Bxx`` band descriptions (``bands`` names the bands of ``values``)."""
    s, c = values.shape[:2]
    prof = profile(s * c) | kw
    with rasterio.open(path, "w", **prof) as ds:
        ds.write(values.reshape(s * c, HEIGHT, WIDTH))
        for t, d in enumerate(DATES[:s]):
            for b, name in enumerate(bands[:c]):
                ds.set_band_description(t * c + b + 1, f"{d.isoformat()}_{name}")
        ds.update_tags(**({"reflectance_scale": "10000"} if tags is None else tags))
    return path


def polygon_a() -> shapely.Polygon:
    """Crosses the 16-px block edges in both x (col 16) and y (row 16)."""
    x0, y0 = ORIGIN
    return shapely.box(x0 + 52, y0 - 213, x0 + 253, y0 - 47)


def polygon_b() -> shapely.Polygon:
    """A triangle over the insufficient-data corner (rows 0-2, cols 30-36)."""
    x0, y0 = ORIGIN
    return shapely.Polygon([(x0 + 281, y0 - 2), (x0 + 368, y0 - 2), (x0 + 368, y0 - 121)])


def write_polygons(
    path: Path, geoms: list[shapely.Geometry], crs: str | None, layer: str = "cropland"
) -> Path:
    import geopandas as gpd

    gdf = gpd.GeoDataFrame({"id": list(range(len(geoms)))}, geometry=geoms, crs=crs)
    gdf.to_file(path, layer=layer, engine="pyogrio")
    return path


def base_metadata(**overrides: Any) -> BundleMetadata:
    meta = BundleMetadata(
        schema_version=1,
        model_name="tiny_linear",
        input_name="x",
        output_name="logits",
        bands=MODEL_BANDS,
        reflectance_scale=10000.0,
        nodata=65535.0,
        time_grid=TimeGrid(
            season_start="01-01",
            day_of_season=GRID_DAYS,
            reference_dates=tuple(
                (dt.date(2021, 1, 1) + dt.timedelta(days=d)).isoformat() for d in GRID_DAYS
            ),
        ),
        min_valid_steps=2,
        gap_fill="linear",
        classes=CLASSES,
        embedding=EmbeddingInfo(
            output_name="embedding", dim=EMB_DIM, description="tanh of a linear projection"
        ),
        provenance=Provenance(
            encoder="none",
            base_model="linear",
            pretraining="none",
            training_data="synthetic test",
            revision="0" * 40,
            created="2026-01-01T00:00:00",
            metrics={"val_accuracy": 0.5},
        ),
    )
    return replace(meta, **overrides)


def bundle_weights(meta: BundleMetadata, seed: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    tc = meta.n_timesteps * meta.n_bands
    w = (rng.standard_normal((tc, len(meta.classes))) * 1e-3).astype(np.float32)
    # Centre the logits on the typical DN (~3100) so that every class occurs.
    b = (-3100.0 * w.sum(axis=0) + 0.1 * rng.standard_normal(len(meta.classes))).astype(np.float32)
    w2 = (rng.standard_normal((tc, EMB_DIM)) * 1e-4).astype(np.float32)
    return w, b, w2


def write_bundle(
    path: Path,
    meta: BundleMetadata | None = None,
    *,
    with_embedding: bool = True,
    metadata_json: str | None = None,
) -> Path:
    """A linear classifier over the flattened (T*C) series, built with onnx.helper."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    meta = meta or base_metadata()
    if not with_embedding:
        meta = replace(meta, embedding=None)
    w, b, w2 = bundle_weights(meta)
    t, c = meta.n_timesteps, meta.n_bands
    nodes = [
        helper.make_node("Reshape", ["x", "shape"], ["flat"]),
        helper.make_node("MatMul", ["flat", "W"], ["mm"]),
        helper.make_node("Add", ["mm", "b"], [meta.output_name]),
    ]
    inits = [
        numpy_helper.from_array(np.array([-1, t * c], dtype=np.int64), "shape"),
        numpy_helper.from_array(w, "W"),
        numpy_helper.from_array(b, "b"),
    ]
    outputs = [helper.make_tensor_value_info(meta.output_name, TensorProto.FLOAT, ["B", len(meta.classes)])]
    if with_embedding:
        nodes += [
            helper.make_node("MatMul", ["flat", "W2"], ["e"]),
            helper.make_node("Tanh", ["e"], ["embedding"]),
        ]
        inits.append(numpy_helper.from_array(w2, "W2"))
        outputs.append(helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["B", EMB_DIM]))
    graph = helper.make_graph(
        nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", t, c])], outputs, inits
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    helper.set_model_props(
        model, {METADATA_KEY: metadata_json if metadata_json is not None else meta.to_json()}
    )
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def expected_classes(
    values: np.ndarray, inside: np.ndarray, meta: BundleMetadata | None = None, min_valid: int = 2
) -> tuple[np.ndarray, np.ndarray]:
    """Reference result computed with numpy alone: class codes (rows, cols) and the insufficient-data mask."""
    from cropmap.contract.timegrid import fill_gaps

    meta = meta or base_metadata()
    w, b, _ = bundle_weights(meta)
    order = [STACK_BANDS.index(n) for n in meta.bands]
    v = values[:, order].astype(np.float32)
    v[values[:, order] == NODATA] = np.nan
    pos = np.array([(d - dt.date(2021, 1, 1)).days for d in DATES])
    rr, cc = np.nonzero(inside)
    filled, _, ok = fill_gaps(v[:, :, rr, cc].transpose(2, 0, 1), pos, GRID_DAYS, min_valid=min_valid)
    logits = filled[ok].reshape(int(ok.sum()), -1) @ w + b
    codes = np.array([k.code for k in meta.classes], dtype=np.uint8)
    out = np.zeros(inside.shape, dtype=np.uint8)
    out[rr[ok], cc[ok]] = codes[np.argmax(logits, axis=1)]
    insufficient = np.zeros(inside.shape, dtype=bool)
    insufficient[rr[~ok], cc[~ok]] = True
    return out, insufficient


def inside_mask(geoms: list[shapely.Geometry] | None = None) -> np.ndarray:
    """Pixels whose centre lies in the test polygons."""
    geoms = geoms or [polygon_a(), polygon_b()]
    cols, rows = np.meshgrid(np.arange(WIDTH) + 0.5, np.arange(HEIGHT) + 0.5)
    xs = ORIGIN[0] + cols * RES
    ys = ORIGIN[1] - rows * RES
    pts = shapely.points(xs.ravel(), ys.ravel())
    hit = np.zeros(pts.shape, dtype=bool)
    for g in geoms:
        hit |= shapely.contains(g, pts)
    return hit.reshape(HEIGHT, WIDTH)


def read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())
