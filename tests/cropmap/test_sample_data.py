"""The README's first command on the shipped sample data with the shipped sample bundle."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
from click.testing import CliRunner

from cropmap.cli import main
from cropmap.models import DEFAULT_BUNDLE

REPO = Path(__file__).resolve().parents[2]
STACK = REPO / "sample_data" / "belgium_2021" / "s2_stack.tif"
MASK = REPO / "sample_data" / "belgium_2021" / "cropland.gpkg"


def _require(path: Path, what: str) -> None:
    if not path.is_file():
        pytest.fail(f"{what} {path} is missing from the repository; it is committed with the sample model "
                    "(python -m training.sample_model) and sample_data/make_sample_data.py")  # fmt: skip


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
    for path, what in ((STACK, "sample stack"), (MASK, "sample cropland polygons"), (DEFAULT_BUNDLE, "sample bundle")):
        _require(path, what)
    monkeypatch.chdir(REPO)
    args = _readme_classify_args()
    out = outdir / "belgium_2021.tif"
    args[args.index("-o") + 1] = str(out)
    res = runner.invoke(main, args)
    assert res.exit_code == 0, res.output
    assert f"map:        {out}" in res.output
    assert f"quick-look: {outdir / 'belgium_2021_quicklook.png'}" in res.output
    import json

    summary = json.loads((outdir / "belgium_2021_summary.json").read_text())
    with rasterio.open(STACK) as src, rasterio.open(out) as dst:
        assert (dst.crs, dst.transform, dst.shape) == (src.crs, src.transform, src.shape)
        classes = dst.read(1)
    px = summary["pixels"]
    assert px["total"] == classes.size
    assert px["classified"] == int((classes > 0).sum()) > 0
    assert px["in_mask"] == px["classified"] + px["insufficient_data"]
    # The two sample polygons cover about 60 ha of the 100 ha grid (sample_data README).
    assert 50 < sum(c["area_ha"] for c in summary["classes"]) <= 61
    assert summary["inputs"]["model"] == str(DEFAULT_BUNDLE.resolve())
    assert len(np.unique(classes[classes > 0])) >= 1
