"""The shipped sample data: the mask outlines the fields, and the README's first command maps them.

The checks are chosen so that a wrong mask fails them: the mask that once shipped outlined the village, roads and
gardens instead of the fields (median seasonal NDVI swing 0.23 inside against 0.70 outside; 10 % of it mapped as arable
crops), and passed a test that only checked its area.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
from click.testing import CliRunner

from cropmap.cli import main
from cropmap.models import DEFAULT_BUNDLE, SAMPLE_NOTE

REPO = Path(__file__).resolve().parents[2]
STACK = REPO / "sample_data" / "belgium_2021" / "s2_stack.tif"
MASK = REPO / "sample_data" / "belgium_2021" / "cropland.gpkg"
ARABLE = ("maize", "other arable crops")
"""Classes of the sample bundle that are arable crops (its legend: grassland, maize, other arable, non-cropland)."""


def _require(path: Path, what: str) -> None:
    if not path.is_file():
        pytest.fail(
            f"{what} {path} is missing from the repository; it is committed with the sample model "
            "(python -m training.sample_model) and sample_data/make_sample_data.py"
        )


def _readme_classify_args() -> list[str]:
    """The arguments of the ``cropmap classify`` call in README.md's first set-up command."""
    import shlex

    readme = (REPO / "README.md").read_text()
    first_block = readme.split("```bash", 1)[1].split("```", 1)[0]
    command = next(line for line in first_block.splitlines() if "cropmap classify" in line)
    words = shlex.split(command.split("&&")[-1])
    assert words[:2] == ["cropmap", "classify"], command
    return words[1:]


def test_readme_first_command(runner: CliRunner, outdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for path, what in (
        (STACK, "sample stack"),
        (MASK, "sample cropland polygons"),
        (DEFAULT_BUNDLE, "sample bundle"),
    ):
        _require(path, what)
    monkeypatch.chdir(REPO)
    args = _readme_classify_args()
    out = outdir / "belgium_2021.tif"
    args[args.index("-o") + 1] = str(out)
    res = runner.invoke(main, args)
    assert res.exit_code == 0, res.output
    assert f"map:        {out}" in res.output
    assert f"quick-look: {outdir / 'belgium_2021_quicklook.png'}" in res.output
    # The command passes no --model: the console says which bundle ran and that it is the Flanders sample.
    model_lines = [line for line in res.output.splitlines() if line.startswith("model:")]
    note = f"(no --model given: {SAMPLE_NOTE}; pass --model BUNDLE for your own)"
    want = f"model:      {DEFAULT_BUNDLE.resolve()}  {note}"
    assert model_lines == [want], res.output
    assert "Flanders sample bundle" in model_lines[0]
    import json

    summary = json.loads((outdir / "belgium_2021_summary.json").read_text())
    with rasterio.open(STACK) as src, rasterio.open(out) as dst:
        assert (dst.crs, dst.transform, dst.shape) == (src.crs, src.transform, src.shape)
        classes = dst.read(1)
    px = summary["pixels"]
    assert px["total"] == classes.size
    assert px["classified"] == int((classes > 0).sum()) > 0
    assert px["in_mask"] == px["classified"] + px["insufficient_data"]
    # The four sample polygons cover 39.1 ha of the 100 ha grid (sample_data README): 3,912 pixel centres.
    assert px["in_mask"] == 3912
    assert 38 < sum(c["area_ha"] for c in summary["classes"]) < 40
    # Fields are fields: most of the mask is mapped as arable crops by the shipped bundle (78 % when this
    # was written; the village-outline mask gave 10 %).
    arable = sum(c["pixels"] for c in summary["classes"] if c["name"] in ARABLE)
    assert arable / px["classified"] >= 0.6, summary["classes"]
    assert summary["inputs"]["model"] == str(DEFAULT_BUNDLE.resolve())
    assert summary["inputs"]["model_note"] == SAMPLE_NOTE
    assert len(np.unique(classes[classes > 0])) >= 1


def _seasonal_ndvi_amplitude() -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel NDVI amplitude (max - min over the valid months) of the sample stack, and the mask's pixels."""
    from cropmap.mask import load_polygons, rasterize_block
    from cropmap.stack import open_stack

    st = open_stack(STACK)
    left, top = st.transform @ (0, 0)
    right, bottom = st.transform @ (st.width, st.height)
    polys = load_polygons(MASK, st.crs, (left, bottom, right, top))
    inside = rasterize_block(polys.geometries, st.shape, st.transform)
    from rasterio.windows import Window

    v = st.read(Window(0, 0, st.width, st.height), range(len(st.dates)), ["B04", "B08"])
    ndvi = (v[:, 1] - v[:, 0]) / (v[:, 1] + v[:, 0])
    return np.nanmax(ndvi, axis=0) - np.nanmin(ndvi, axis=0), inside


def test_sample_mask_outlines_the_fields() -> None:
    """Arable fields green up and are harvested; a village or a road does not: compare the NDVI swing."""
    _require(STACK, "sample stack")
    _require(MASK, "sample cropland polygons")
    amp, inside = _seasonal_ndvi_amplitude()
    assert int(inside.sum()) == 3912
    a_in, a_out = float(np.median(amp[inside])), float(np.median(amp[~inside]))
    # 0.70 inside against 0.23 outside when this was written; the wrong mask had 0.23 inside, 0.70 outside.
    assert a_in > 0.5, a_in
    assert a_in > a_out + 0.25, (a_in, a_out)
