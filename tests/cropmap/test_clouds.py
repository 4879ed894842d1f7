"""Cloud and shadow masking: cloud bands found by name, masked observations become gaps, the summary counts them."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import rasterio
from click.testing import CliRunner
from stackkit import (
    DATES,
    HEIGHT,
    STACK_BANDS,
    WIDTH,
    inside_mask,
    make_values,
    profile,
    write_stack_descriptions,
)

import cropmap
from cropmap.cli import main
from cropmap.contract.clouds import DEFAULT_CLOUD_THRESHOLD, DEFAULT_SCL_INVALID, resolve_cloud_mask
from cropmap.errors import InputRasterError

CLOUD_DN = 9000
"""Bright, flat reflectance of a cloudy observation (the tiny linear bundle then votes differently)."""


def _cloudy(seed: int = 3) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Clear values, the same values with clouds burnt in, and the per-observation cloud flags (S, rows, cols)."""
    clear = make_values()
    rng = np.random.default_rng(seed)
    cloud = rng.random((len(DATES), HEIGHT, WIDTH)) < 0.3
    valid = (clear != 0).all(axis=1)
    cloud &= valid  # clouds only where the clear stack has data: the counts stay exact
    cloudy = clear.copy()
    cloudy[np.broadcast_to(cloud[:, None], cloudy.shape)] = CLOUD_DN
    return clear, cloudy, cloud


def _with_band(values: np.ndarray, band: np.ndarray) -> np.ndarray:
    return np.concatenate([values, band[:, None].astype(values.dtype)], axis=1)


def _classes(path: Path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read(1)


def test_resolve_finds_bands_by_name_and_applies_defaults() -> None:
    scl = resolve_cloud_mask(("B02", "B03", "SCL"), "uint16")
    assert scl is not None and scl.kind == "scl" and scl.invalid_classes == DEFAULT_SCL_INVALID
    assert scl.source == "found by name"
    assert scl.invalid(np.array([0, 1, 2, 3, 4, 7, 8, 9, 10, 11, np.nan], dtype=np.float32)).tolist() == [
        True,
        True,
        False,
        True,
        False,
        False,
        True,
        True,
        True,
        True,
        False,
    ]
    clp = resolve_cloud_mask(("B02", "clp"), "uint8")
    assert (
        clp is not None
        and clp.kind == "probability"
        and clp.scale == 255
        and clp.threshold == DEFAULT_CLOUD_THRESHOLD
    )
    assert clp.invalid(np.array([0, 102, 103, 255, np.nan], dtype=np.float32)).tolist() == [
        False,
        False,
        True,
        True,
        False,
    ]
    cld = resolve_cloud_mask(("B02", "MSK_CLDPRB"), "uint16", threshold=0.5)
    assert (
        cld is not None and cld.scale == 100 and cld.invalid(np.array([50.0, 51.0])).tolist() == [False, True]
    )
    assert resolve_cloud_mask(("B02", "CLP"), "float32").scale == 1.0  # type: ignore[union-attr]
    assert resolve_cloud_mask(("B02", "B03"), "uint16") is None
    assert resolve_cloud_mask(("B02", "SCL"), "uint16", cloud_band="none") is None
    custom = resolve_cloud_mask(("B02", "SCL"), "uint16", classes=(9, 3))
    assert custom is not None and custom.invalid_classes == (3, 9)
    own = resolve_cloud_mask(("B02", "cloudmask"), "uint8", cloud_band="cloudmask", threshold=0.2, scale=200)
    assert own is not None and own.kind == "probability" and own.source == "--cloud-band" and own.scale == 200
    assert own.invalid(np.array([40.0, 41.0])).tolist() == [False, True]
    # --cloud-scale alone says the band is a probability; it replaces a known name's scale too.
    pct = resolve_cloud_mask(("B02", "cloudpct"), "uint8", cloud_band="cloudpct", scale=100)
    assert pct is not None and pct.kind == "probability" and pct.threshold == DEFAULT_CLOUD_THRESHOLD
    assert resolve_cloud_mask(("B02", "CLP"), "uint8", scale=100).scale == 100  # type: ignore[union-attr]
    floaty = resolve_cloud_mask(("B02", "cloudmask"), "float32", cloud_band="cloudmask", threshold=0.2)
    assert floaty is not None and floaty.scale == 1.0


def test_resolve_never_guesses_an_integer_probability_scale() -> None:
    """An integer probability band of an unknown name was once read as 0..255 without a word: now an error that
    names --cloud-scale."""
    with pytest.raises(
        InputRasterError,
        match=r"--cloud-band cloudmask of stack s\.tif is an integer \(uint8\) "
        r"cloud probability of unknown scale; expected --cloud-scale X",
    ):
        resolve_cloud_mask(
            ("B02", "cloudmask"), "uint8", cloud_band="cloudmask", threshold=0.2, where="stack s.tif"
        )


@pytest.mark.parametrize(
    ("bands", "kw", "match"),
    [
        (
            ("B02", "SCL"),
            {"cloud_band": "CLP"},
            r"--cloud-band CLP is not a band of .* bands found: \['B02', 'SCL'\]",
        ),
        (("B02", "SCL", "CLP"), {}, r"several cloud bands \['SCL', 'CLP'\]; choose one with --cloud-band"),
        (("B02", "SCL"), {"threshold": 0.3}, "--cloud-threshold applies to cloud-probability bands"),
        (("B02", "CLP"), {"classes": (3,)}, "--cloud-classes applies to an SCL band"),
        (("B02",), {"threshold": 0.3}, "has no cloud band"),
        (("B02", "mystery"), {"cloud_band": "mystery"}, "does not know this band's meaning.*--cloud-scale X"),
        (("B02", "SCL"), {"scale": 100.0}, "--cloud-scale applies to cloud-probability bands"),
        (
            ("B02", "SCL"),
            {"cloud_band": "none", "scale": 100.0},
            "--cloud-scale were given with --cloud-band none",
        ),
        (("B02",), {"scale": 100.0}, "has no cloud band"),
        (("B02", "CLP"), {"scale": 0.0}, "--cloud-scale is 0.0; expected the raw value of probability 1"),
    ],
)
def test_resolve_rejects_bad_choices(bands: tuple[str, ...], kw: dict, match: str) -> None:
    with pytest.raises(InputRasterError, match=match):
        resolve_cloud_mask(bands, "uint16", **kw)


@pytest.mark.parametrize("kind", ["SCL", "CLP"])
def test_masked_clouds_map_like_the_clear_stack(
    kind: str, tmp_path: Path, polygons: Path, bundle: Path
) -> None:
    clear, cloudy, cloud = _cloudy()
    if kind == "SCL":
        flag = np.where(cloud, 9, 4)  # cloud high probability / vegetation
        flag[1, :5] = np.where(cloud[1, :5], 3, 7)  # cloud shadow is masked, unclassified is kept
    else:
        flag = np.where(cloud, 230, 20)  # s2cloudless 0..255
    bands = (*STACK_BANDS, kind)
    stack = write_stack_descriptions(tmp_path / "cloudy.tif", _with_band(cloudy, flag), bands=bands)
    reference = clear.copy()
    reference[np.broadcast_to(cloud[:, None], reference.shape)] = 0  # the clouds as nodata gaps
    ref_stack = write_stack_descriptions(tmp_path / "gaps.tif", reference)

    ref = cropmap.classify(
        ref_stack, polygons, model=bundle, out=tmp_path / "ref.tif", quicklook=False
    ).to_dict()
    masked = cropmap.classify(
        stack, polygons, model=bundle, out=tmp_path / "masked.tif", quicklook=False
    ).to_dict()
    raw = cropmap.classify(
        stack, polygons, model=bundle, out=tmp_path / "raw.tif", quicklook=False, cloud_band="none"
    ).to_dict()

    np.testing.assert_array_equal(_classes(tmp_path / "masked.tif"), _classes(tmp_path / "ref.tif"))
    assert masked["classes"] == ref["classes"] and masked["pixels"] == ref["pixels"]
    assert (
        _classes(tmp_path / "raw.tif") != _classes(tmp_path / "ref.tif")
    ).sum() > 20  # clouds left in do harm
    inside = inside_mask()
    valid = (cloudy != 0).all(axis=1)
    clouds = masked["clouds"]
    assert clouds["masking"] == "on" and clouds["band"] == kind and clouds["source"] == "found by name"
    assert clouds["masked_observations"] == int((cloud & valid)[:, inside].sum()) > 0
    assert clouds["observations_in_mask"] == int(valid[:, inside].sum())
    assert raw["clouds"]["masking"] == "off" and raw["clouds"]["masked_observations"] == 0


def test_folder_stack_with_a_cloud_band_in_each_file(tmp_path: Path, polygons: Path, bundle: Path) -> None:
    _clear, cloudy, cloud = _cloudy()
    folder = tmp_path / "per_date"
    folder.mkdir()
    both = _with_band(cloudy, np.where(cloud, 255, 0))
    for t, d in enumerate(DATES):
        with rasterio.open(folder / f"S2_{d.isoformat()}.tif", "w", **profile(both.shape[1])) as ds:
            ds.write(both[t])
            ds.descriptions = (*STACK_BANDS, "CLP")
            ds.update_tags(reflectance_scale="10000")
    single = write_stack_descriptions(tmp_path / "single.tif", both, bands=(*STACK_BANDS, "CLP"))
    a = cropmap.classify(folder, polygons, model=bundle, out=tmp_path / "a.tif", quicklook=False).to_dict()
    b = cropmap.classify(single, polygons, model=bundle, out=tmp_path / "b.tif", quicklook=False).to_dict()
    np.testing.assert_array_equal(_classes(tmp_path / "a.tif"), _classes(tmp_path / "b.tif"))
    assert a["clouds"]["masked_observations"] == b["clouds"]["masked_observations"] > 0


def test_stack_without_cloud_band_warns_once(
    stack_desc: Path, polygons: Path, bundle: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="cropmap"):
        summary = cropmap.classify(
            stack_desc, polygons, model=bundle, out=tmp_path / "m.tif", quicklook=False
        ).to_dict()
    warnings = [
        r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and "cloud" in r.getMessage()
    ]
    assert len(warnings) == 1 and "has no cloud information" in warnings[0], warnings
    assert summary["clouds"]["masking"] == "no cloud information" and summary["clouds"]["band"] is None
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="cropmap"):
        cropmap.classify(
            stack_desc, polygons, model=bundle, out=tmp_path / "n.tif", quicklook=False, cloud_band="none"
        )
    assert not [r for r in caplog.records if "cloud" in r.getMessage()]


def test_cli_cloud_flags(tmp_path: Path, polygons: Path, bundle: Path, runner: CliRunner) -> None:
    _clear, cloudy, cloud = _cloudy()
    stack = write_stack_descriptions(
        tmp_path / "s.tif", _with_band(cloudy, np.where(cloud, 9, 4)), bands=(*STACK_BANDS, "SCL")
    )
    base = ["classify", str(stack), "--mask", str(polygons), "--model", str(bundle), "--no-quicklook"]
    res = runner.invoke(main, [*base, "-o", str(tmp_path / "a.tif"), "--cloud-band", "CLP"])
    assert res.exit_code == 1
    assert res.output.strip().splitlines()[-1].startswith("Error: --cloud-band CLP is not a band of stack")
    res = runner.invoke(main, [*base, "-o", str(tmp_path / "b.tif"), "--cloud-threshold", "0.3"])
    assert res.exit_code == 1 and "--cloud-threshold applies to cloud-probability bands" in res.output
    res = runner.invoke(main, [*base, "-o", str(tmp_path / "c.tif"), "--cloud-threshold", "1.5"])
    assert res.exit_code == 2 and "cloud_threshold is 1.5" in res.output
    res = runner.invoke(main, [*base, "-o", str(tmp_path / "d.tif"), "--cloud-classes", "3,x"])
    assert res.exit_code == 2 and "expected comma-separated SCL class numbers" in res.output
    res = runner.invoke(main, [*base, "-o", str(tmp_path / "e.tif"), "--cloud-classes", "3"])  # 9 is kept now
    assert res.exit_code == 0, res.output
    assert "clouds: 0 of" in res.output
    res = runner.invoke(main, [*base, "-o", str(tmp_path / "f.tif")])
    assert res.exit_code == 0, res.output
    assert "observations masked (band SCL (Sen2Cor SCL): classes 0 no data" in res.output


def test_cli_cloud_scale_for_a_probability_band_of_unknown_name(
    tmp_path: Path, polygons: Path, bundle: Path, runner: CliRunner
) -> None:
    """An integer probability band cropmap does not know by name needs --cloud-scale (exit 1 naming it without);
    with it the run masks exactly what the same values under the name CLP (0..255) mask."""
    _clear, cloudy, cloud = _cloudy()
    flag = np.where(cloud, 230, 20)  # s2cloudless 0..255
    own = write_stack_descriptions(
        tmp_path / "own.tif", _with_band(cloudy, flag), bands=(*STACK_BANDS, "cloudprob")
    )
    clp = write_stack_descriptions(
        tmp_path / "clp.tif", _with_band(cloudy, flag), bands=(*STACK_BANDS, "CLP")
    )
    base = [
        "classify",
        str(own),
        "--mask",
        str(polygons),
        "--model",
        str(bundle),
        "--no-quicklook",
        "-q",
        "--cloud-band",
        "cloudprob",
    ]
    res = runner.invoke(main, [*base, "-o", str(tmp_path / "a.tif"), "--cloud-threshold", "0.4"])
    assert res.exit_code == 1 and not (tmp_path / "a.tif").exists()
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: --cloud-band cloudprob of stack "), res.output
    assert "cloud probability of unknown scale; expected --cloud-scale X" in lines[0]
    res = runner.invoke(main, [*base, "-o", str(tmp_path / "b.tif"), "--cloud-scale", "0"])
    assert res.exit_code == 2 and "--cloud-scale" in res.output and "cloud_scale is 0.0" in res.output
    res = runner.invoke(main, [*base, "-o", str(tmp_path / "c.tif"), "--cloud-scale", "255"])
    assert res.exit_code == 0, res.output
    ref = cropmap.classify(clp, polygons, model=bundle, out=tmp_path / "ref.tif", quicklook=False).to_dict()
    np.testing.assert_array_equal(_classes(tmp_path / "c.tif"), _classes(tmp_path / "ref.tif"))
    import json

    summary = json.loads((tmp_path / "c_summary.json").read_text())
    assert summary["clouds"]["masked_observations"] == ref["clouds"]["masked_observations"] > 0
    assert summary["clouds"]["probability_scale"] == 255.0
