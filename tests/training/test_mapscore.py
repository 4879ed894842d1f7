"""Scoring a class map against labelled polygons (training.evaluate.mapscore) on the simulator's fields.gpkg."""

from __future__ import annotations

import json
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from rasterio.features import rasterize

from training.evaluate.mapscore import main, score_map


def _grid(scene: Path) -> dict[str, object]:
    with rasterio.open(scene / "s2_stack.tif") as src:
        return {"crs": src.crs, "transform": src.transform, "height": src.height, "width": src.width}


def _reference(scene: Path) -> np.ndarray:
    """The labels' class codes on the stack grid (pixel-centre rule), 0 outside the fields."""
    grid = _grid(scene)
    fields = gpd.read_file(scene / "fields.gpkg")
    return rasterize(
        zip(fields.geometry, fields.class_code, strict=True),
        out_shape=(grid["height"], grid["width"]),
        transform=grid["transform"],
        fill=0,
        dtype="uint8",
    )


def _write_map(path: Path, scene: Path, values: np.ndarray, **overrides: object) -> Path:
    profile = {"driver": "GTiff", "count": 1, "dtype": values.dtype.name, "nodata": 0, **_grid(scene)}
    profile.update(overrides)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(values, 1)
    return path


@pytest.fixture
def scene(sim_scene_dir: Path) -> Path:
    return sim_scene_dir / "scene_a"


def test_map_of_the_labels_scores_one(scene: Path, tmp_path: Path) -> None:
    ref = _reference(scene)
    full = ref.copy()
    full[ref == 0] = 7  # classes outside the polygons are not scored
    scores = score_map(_write_map(tmp_path / "map.tif", scene, full), scene / "fields.gpkg")
    assert scores["overall_accuracy"] == 1.0 and scores["macro_f1"] == 1.0 and scores["kappa"] == 1.0
    assert scores["n_pixels"] == scores["n_pixels_in_fields"] == int((ref > 0).sum())
    assert scores["n_unclassified"] == 0 and scores["n_fields"] == 27
    assert scores["classes"] == list(range(1, 10))
    cm = np.array(scores["confusion_matrix"])
    assert (cm == np.diag(np.diag(cm))).all()
    wheat = scores["per_class"][0]
    assert (wheat["code"], wheat["name"], wheat["recall"], wheat["precision"]) == (1, "Wheat", 1.0, 1.0)
    assert wheat["reference_pixels"] == int((ref == 1).sum())
    json.dumps(scores)  # JSON-ready


def test_known_wrong_and_unclassified_pixels(scene: Path, tmp_path: Path) -> None:
    ref = _reference(scene)
    n, n1, n2 = int((ref > 0).sum()), int((ref == 1).sum()), int((ref == 2).sum())
    wrong, blank = 20, 10
    pred = ref.copy()
    wheat = np.flatnonzero(ref.ravel() == 1)
    pred.ravel()[wheat[:wrong]] = 2  # 20 wheat pixels mapped as rye
    pred.ravel()[wheat[wrong : wrong + blank]] = 0  # 10 wheat pixels not classified
    scores = score_map(_write_map(tmp_path / "map.tif", scene, pred), scene / "fields.gpkg")
    scored = n - blank
    assert scores["n_pixels"] == scored and scores["n_unclassified"] == blank
    assert scores["overall_accuracy"] == pytest.approx((scored - wrong) / scored)
    by_code = {c["code"]: c for c in scores["per_class"]}
    tp1 = n1 - wrong - blank
    assert by_code[1]["recall"] == pytest.approx(tp1 / (n1 - blank))
    assert by_code[1]["precision"] == 1.0
    assert by_code[2]["recall"] == 1.0
    assert by_code[2]["precision"] == pytest.approx(n2 / (n2 + wrong))
    f1_wheat = 2 * tp1 / (2 * tp1 + wrong)
    f1_rye = 2 * n2 / (2 * n2 + wrong)
    assert scores["macro_f1"] == pytest.approx((f1_wheat + f1_rye + 7) / 9)
    assert scores["confusion_matrix"][0][1] == wrong


def test_nodata_other_than_zero_is_not_scored(scene: Path, tmp_path: Path) -> None:
    ref = _reference(scene)
    pred = np.where(ref == 3, 255, ref).astype(np.uint8)
    scores = score_map(_write_map(tmp_path / "map.tif", scene, pred, nodata=255), scene / "fields.gpkg")
    assert scores["n_unclassified"] == int((ref == 3).sum())
    assert scores["overall_accuracy"] == 1.0 and 3 not in scores["classes"]


def test_bad_inputs_are_one_line_value_errors(scene: Path, sim_scene_dir: Path, tmp_path: Path) -> None:
    ref = _reference(scene)
    good = _write_map(tmp_path / "map.tif", scene, ref)
    fields = scene / "fields.gpkg"
    cases = [
        (lambda: score_map(good, sim_scene_dir / "scene_b" / "fields.gpkg"), "overlaps"),
        (lambda: score_map(good, fields, code_column="crop"), "no column 'crop'"),
        (lambda: score_map(_write_map(tmp_path / "z.tif", scene, np.zeros_like(ref)), fields), "has a class"),
        (lambda: score_map(_write_map(tmp_path / "f.tif", scene, ref.astype("float32")), fields), "integer"),
        (lambda: score_map(_write_map(tmp_path / "c.tif", scene, ref, crs="EPSG:32633"), fields), "CRS"),
        (lambda: score_map(tmp_path / "missing.tif", fields), "not a readable raster"),
        (lambda: score_map(good, tmp_path / "missing.gpkg"), "not a readable vector"),
    ]
    for call, message in cases:
        with pytest.raises(ValueError, match=message) as exc:
            call()
        assert "\n" not in str(exc.value)


def test_cli_prints_scores_writes_json_and_reports_errors(
    scene: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = _write_map(tmp_path / "map.tif", scene, _reference(scene))
    out = tmp_path / "scores.json"
    assert main([str(good), str(scene / "fields.gpkg"), "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "overall accuracy 1.0000" in printed and "macro F1 1.0000" in printed
    assert json.loads(out.read_text())["overall_accuracy"] == 1.0
    assert main([str(good), str(scene / "fields.gpkg"), "--code-column", "nope"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("Error: ") and len(err.splitlines()) == 1
    assert main([str(good)]) == 2
    assert "Missing argument 'FIELDS.gpkg'" in capsys.readouterr().err
    assert main([str(good), str(scene / "fields.gpkg"), "-o", str(out)]) == 1
    assert capsys.readouterr().err == f"Error: --output {out} exists; pass --overwrite to replace it\n"
    assert main([str(good), str(scene / "fields.gpkg"), "-o", str(out), "--overwrite", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == json.loads(out.read_text())
    assert json.loads(out.read_text())["overall_accuracy"] == 1.0
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary left behind
