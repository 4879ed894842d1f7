"""Property-based fault layer: random small stacks, masks and options through ``cropmap classify``.

Hypothesis draws the stack (dtype, nodata, CRS: projected, geographic or engineering; band order, which
dates, tiny and odd shapes, value scale), the mask (in the stack's CRS or in lon/lat, a random box,
sometimes outside the stack) and the options (confidence, probabilities, uncertainty, embedding, whole
stack). Whatever is drawn, the invariants of docs/faults.md hold:

* exit 0 with a complete output set on the stack's grid (CRS, transform, shape; uint8 map), nothing
  else in the output folder; or exit 1 with exactly one ``Error:`` line and no output folder;
* never a traceback or another exit status, never a changed input.

The default run keeps to 15 examples; ``-m slow`` runs a larger profile.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
import shapely
from click.testing import CliRunner
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from rasterio.crs import CRS as RioCRS
from rasterio.transform import from_origin
from stackkit import DATES, STACK_BANDS, write_bundle, write_polygons

from cropmap.cli import main

LOCAL_CS = 'LOCAL_CS["Engineering",UNIT["metre",1],AXIS["X",EAST],AXIS["Y",NORTH]]'
CRSS = {
    "EPSG:32631": ((600000.0, 5600000.0), 10.0),
    "EPSG:3035": ((3900000.0, 3100000.0), 20.0),
    "EPSG:4326": ((3.5, 51.0), 0.0001),
    "LOCAL_CS": ((1000.0, 2000.0), 10.0),
}
_BUNDLE: dict[str, Path] = {}


def _bundle() -> Path:
    if "b" not in _BUNDLE:
        _BUNDLE["b"] = write_bundle(Path(tempfile.mkdtemp(prefix="cropmap-prop-bundle-")) / "tiny.onnx")
    return _BUNDLE["b"]


@st.composite
def cases(draw: Any) -> dict[str, Any]:
    height = draw(st.integers(1, 19))
    width = draw(st.integers(1, 19))
    dtype = draw(st.sampled_from(["uint16", "int16", "float32"]))
    crs = draw(st.sampled_from(sorted(CRSS)))
    bands = draw(st.permutations(STACK_BANDS))
    dates = sorted(
        draw(st.one_of(st.just(set(DATES)), st.sets(st.sampled_from(DATES), min_size=1, max_size=len(DATES))))
    )
    season: list[str] = []
    if draw(st.booleans()):
        dates = [dt.date(2020, 12, 20), *dates]  # a date of the season before: --season chooses
        season = ["--season", "2021"]
    nodata = draw(st.sampled_from([None, 0, -9999 if dtype != "uint16" else 65535]))
    scale = draw(st.sampled_from(["dn", "reflectance"])) if dtype == "float32" else "dn"
    cloudy = draw(st.one_of(st.floats(0.0, 0.3), st.floats(0.0, 1.0)))
    seed = draw(st.integers(0, 2**16))
    mask = draw(st.sampled_from(["box", "lonlat", "outside", "whole"]))
    box = (
        sorted(draw(st.tuples(st.floats(0, 1), st.floats(0, 1)))),
        sorted(draw(st.tuples(st.floats(0, 1), st.floats(0, 1)))),
    )
    options = draw(
        st.sets(
            st.sampled_from(["--confidence", "--probabilities", "--embedding", "--uncertainty=entropy"]),
            max_size=4,
        )
    )
    return {
        "height": height,
        "width": width,
        "dtype": dtype,
        "crs": crs,
        "bands": bands,
        "dates": dates,
        "nodata": nodata,
        "scale": scale,
        "cloudy": cloudy,
        "seed": seed,
        "mask": mask,
        "box": box,
        "options": [*sorted(options), *season],
    }


def _write_case(d: Path, c: dict[str, Any]) -> tuple[Path, Path | None]:
    rng = np.random.default_rng(c["seed"])
    s, b, h, w = len(c["dates"]), len(c["bands"]), c["height"], c["width"]
    values = rng.integers(300, 5000, (s, b, h, w)).astype(np.float64)
    if c["scale"] == "reflectance":
        values = values / 10000.0
    cloudy = rng.random((s, h, w)) < c["cloudy"]
    fill = c["nodata"] if c["nodata"] is not None else 0
    values[np.broadcast_to(cloudy[:, None], values.shape)] = fill
    (x0, y0), res = CRSS[c["crs"]]
    crs = RioCRS.from_wkt(LOCAL_CS) if c["crs"] == "LOCAL_CS" else RioCRS.from_string(c["crs"])
    transform = from_origin(x0, y0, res, res)
    stack = d / "stack.tif"
    prof = {
        "driver": "GTiff",
        "width": w,
        "height": h,
        "count": s * b,
        "dtype": c["dtype"],
        "crs": crs,
        "transform": transform,
        "nodata": c["nodata"],
    }
    with rasterio.open(stack, "w", **prof) as ds:
        ds.write(values.reshape(s * b, h, w).astype(c["dtype"]))
        for t, date in enumerate(c["dates"]):
            for i, name in enumerate(c["bands"]):
                ds.set_band_description(t * b + i + 1, f"{date.isoformat()}_{name}")
        ds.update_tags(reflectance_scale="10000" if c["scale"] == "dn" else "1")
    if c["mask"] == "whole":
        return stack, None
    (fx0, fx1), (fy0, fy1) = c["box"]
    left, top = x0, y0
    right, bottom = x0 + w * res, y0 - h * res
    if c["mask"] == "outside":
        poly = shapely.box(right + 10 * res, top + 10 * res, right + 20 * res, top + 20 * res)
    else:
        poly = shapely.box(
            left + fx0 * (right - left),
            bottom + fy0 * (top - bottom),
            left + max(fx1, fx0 + 1e-3) * (right - left),
            bottom + max(fy1, fy0 + 1e-3) * (top - bottom),
        )
    mask_crs: Any = LOCAL_CS if c["crs"] == "LOCAL_CS" else c["crs"]
    if c["mask"] == "lonlat" and c["crs"] != "LOCAL_CS":
        import geopandas as gpd

        poly = gpd.GeoSeries([poly.segmentize(res)], crs=c["crs"]).to_crs(4326).iloc[0]
        mask_crs = "EPSG:4326"
    if c["crs"] == "LOCAL_CS":
        import geopandas as gpd

        gpd.GeoDataFrame(geometry=[poly], crs=LOCAL_CS).to_file(d / "mask.gpkg")
        return stack, d / "mask.gpkg"
    return stack, write_polygons(d / "mask.gpkg", [poly], mask_crs)


_KINDS = (
    ("engineering (LOCAL_CS) CRS", "stack in an engineering CRS"),
    ("no pixel was classified", "no pixel classified"),
    ("no polygon of", "mask outside the stack"),
    ("cover", "too little of the season"),
    ("reflectance", "values not reflectance in the declared scale"),
    ("valid observations", "too few dates"),
)


def _kind(text: str) -> str:
    """The class of a refusal, for the outcome statistics (``--hypothesis-show-statistics``)."""
    return next((k for words, k in _KINDS if words in text), " ".join(text.split()[1:6]))


def _hash(paths: list[Path]) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in paths}


def _check(c: dict[str, Any]) -> None:
    d = Path(tempfile.mkdtemp(prefix="cropmap-prop-"))
    try:
        stack, mask = _write_case(d, c)
        inputs = [stack, _bundle(), *([mask] if mask is not None else [])]
        before = _hash(inputs)
        out = d / "out" / "map.tif"
        args = [
            "classify",
            str(stack),
            *(["--mask", str(mask)] if mask is not None else ["--whole-stack"]),
            "--model",
            str(_bundle()),
            "-o",
            str(out),
            "-q",
            "--cloud-band",
            "none",
            *c["options"],
        ]
        res = CliRunner().invoke(main, args)
        text = res.output
        event(f"exit {res.exit_code}" + (f": {_kind(text)}" if res.exit_code else ""))
        assert "Traceback" not in text, (c, text)
        assert res.exit_code in (0, 1), (c, res.exit_code, text, res.exception)
        assert res.exception is None or isinstance(res.exception, SystemExit), (c, repr(res.exception))
        assert _hash(inputs) == before, c
        if res.exit_code == 1:
            lines = [line for line in text.strip().splitlines() if line.strip()]
            assert len(lines) == 1 and lines[0].startswith("Error: "), (c, text)
            assert not (d / "out").exists(), (c, text, sorted(p.name for p in (d / "out").iterdir()))
            return
        names = sorted(p.name for p in out.parent.iterdir())
        expected = {
            "map.tif",
            "map.tif.aux.xml",
            "map.qml",
            "map_summary.json",
            "map_stac.json",
            "map_quicklook.png",
        }
        expected |= {
            f"map_{o.lstrip('-').split('=')[0]}.tif"
            for o in c["options"]
            if o.startswith("--") and o != "--season"
        }
        assert set(names) == expected, (c, names)
        with rasterio.open(stack) as src, rasterio.open(out) as m:
            assert (m.crs, m.transform, m.shape) == (src.crs, src.transform, src.shape), c
            assert m.dtypes[0] == "uint8"
            m.read()  # complete: every tile decodes
    finally:
        shutil.rmtree(d, ignore_errors=True)


_TYPICAL = {
    "height": 13,
    "width": 7,
    "dtype": "uint16",
    "crs": "EPSG:32631",
    "bands": ("B03", "B02", "B04"),
    "dates": list(DATES),
    "nodata": 0,
    "scale": "dn",
    "cloudy": 0.1,
    "seed": 1,
    "mask": "box",
    "box": ((0.1, 0.9), (0.2, 0.8)),
    "options": [],
}


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)
@given(cases())
@example(_TYPICAL)
@example(
    _TYPICAL
    | {
        "crs": "EPSG:4326",
        "dtype": "float32",
        "scale": "reflectance",
        "mask": "lonlat",
        "options": ["--embedding", "--probabilities"],
    }
)
@example(
    _TYPICAL
    | {
        "height": 1,
        "width": 1,
        "dtype": "int16",
        "nodata": -9999,
        "mask": "whole",
        "options": ["--confidence", "--uncertainty=entropy"],
    }
)
def test_classify_invariants(case: dict[str, Any]) -> None:
    _check(case)


@pytest.mark.slow
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)
@given(cases())
def test_classify_invariants_many(case: dict[str, Any]) -> None:
    _check(case)
