"""`cropmap assess`: the stratified estimator against published examples and plain numpy, sample plans, the CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import shapely
from affine import Affine
from click.testing import CliRunner

from cropmap.accuracy import allocate, sample_size, stratified_estimate
from cropmap.assess import assess, plan_sample, read_class_map
from cropmap.cli import main
from cropmap.writer import class_tags, colormap

# Olofsson et al. (2014), RSE 148, section 5 (Table 8): strata deforestation, forest gain, stable forest, stable
# non-forest; mapped area in 30 m pixels; sample error matrix (rows map, columns reference).
OLOFSSON_2014_PIXELS = [200_000, 150_000, 3_200_000, 6_450_000]
OLOFSSON_2014_COUNTS = [[66, 0, 5, 4], [0, 55, 8, 12], [1, 0, 153, 11], [2, 1, 9, 313]]
PIXEL_HA = 0.09
# Olofsson et al. (2013), RSE 129, Example 1: strata forest loss (1), stable forest (2), stable non-forest (3).
OLOFSSON_2013_PIXELS = [22_353, 1_122_543, 610_228]
OLOFSSON_2013_COUNTS = [[97, 0, 3], [3, 279, 18], [2, 1, 97]]


# ---------------------------------------------------------------------------------------------- published examples


def test_stratified_estimate_reproduces_olofsson_2014() -> None:
    r = stratified_estimate(OLOFSSON_2014_COUNTS, OLOFSSON_2014_PIXELS)
    total_ha = sum(OLOFSSON_2014_PIXELS) * PIXEL_HA
    # Published: overall accuracy 0.947 (Table 10 / text p. 54).
    assert round(r.overall.value, 3) == 0.947
    # Published user's and producer's accuracies (two decimals).
    assert [round(e.value, 2) for e in r.users] == [0.88, 0.73, 0.93, 0.96]
    assert [round(e.value, 2) for e in r.producers] == [0.75, 0.85, 0.93, 0.96]
    # Published: deforestation 21,158 ha +- 6,158 ha (95 % CI), against 18,000 ha mapped.
    defo = r.area_proportion[0]
    assert round(defo.value * total_ha) == 21_158
    assert abs(1.96 * defo.se * total_ha - 6_158) <= 1
    assert OLOFSSON_2014_PIXELS[0] * PIXEL_HA == 18_000
    # Producer's accuracy of deforestation: 0.75 +- 0.21.
    assert round(1.96 * r.producers[0].se, 2) == 0.21
    # Our own values for the record (eq. 4-10 by hand): the area-proportion matrix of the paper's Table 9.
    assert np.allclose(
        r.proportions.round(4),
        [
            [0.0176, 0, 0.0013, 0.0011],
            [0, 0.011, 0.0016, 0.0024],
            [0.0019, 0, 0.2967, 0.0213],
            [0.004, 0.002, 0.0179, 0.6212],
        ],
    )
    assert np.isclose(r.overall.se, 0.009430, atol=1e-6)
    areas = [round(e.value * total_ha) for e in r.area_proportion]
    assert areas == [21_158, 11_686, 285_770, 581_386]


def test_stratified_estimate_reproduces_olofsson_2013_example_1() -> None:
    r = stratified_estimate(OLOFSSON_2013_COUNTS, OLOFSSON_2013_PIXELS)
    # Published (two decimals): user's 0.97, producer's 0.48 of forest loss, overall 0.94.
    assert round(r.users[0].value, 2) == 0.97
    assert round(r.producers[0].value, 2) == 0.48
    assert round(r.overall.value, 2) == 0.94
    # Estimated proportion of forest loss 0.0257 (eq. 9), so an area of about 45,112 pixels (1,755,124 in all).
    assert round(r.area_proportion[0].value, 4) == 0.0257
    assert round(r.area_proportion[0].value * sum(OLOFSSON_2013_PIXELS)) == 45_112


def test_sample_size_reproduces_olofsson_2014_eq13() -> None:
    w = np.array(OLOFSSON_2014_PIXELS) / sum(OLOFSSON_2014_PIXELS)
    # Their example: target SE 0.01, expected user's accuracies 0.70, 0.60, 0.90, 0.95 -> n = 641.
    assert sample_size(w, [0.7, 0.6, 0.9, 0.95], 0.01) == 641
    alloc = allocate(641, w, 75)
    assert alloc[:2] == [75, 75] and sum(alloc) == 641 and alloc[3] > alloc[2] > 75


def test_allocate_minimum_and_proportional() -> None:
    assert allocate(1000, [0.5, 0.3, 0.2], 0) == [500, 300, 200]
    assert allocate(100, [0.98, 0.01, 0.01], 20) == [60, 20, 20]
    assert allocate(30, [0.5, 0.5, 0.0], 50) == [50, 50, 0]


# ---------------------------------------------------------------------------------------------- independent numpy


def _closed_forms(n: np.ndarray, area: np.ndarray) -> dict[str, np.ndarray | float]:
    """Olofsson et al. (2014) eq. 4-10, written out independently of cropmap.accuracy."""
    n = n.astype(float)
    w = area / area.sum()
    ni = n.sum(1)
    p = w[:, None] * n / ni[:, None]
    u = np.diag(n) / ni
    nj_hat = (area[:, None] * n / ni[:, None]).sum(0)
    prod = np.diag(area[:, None] * n / ni[:, None]) / nj_hat
    v_o = np.sum(w**2 * u * (1 - u) / (ni - 1))
    v_p = []
    for j in range(len(area)):
        t1 = area[j] ** 2 * (1 - prod[j]) ** 2 * u[j] * (1 - u[j]) / (ni[j] - 1)
        t2 = prod[j] ** 2 * sum(
            area[i] ** 2 * n[i, j] / ni[i] * (1 - n[i, j] / ni[i]) / (ni[i] - 1)
            for i in range(len(area))
            if i != j
        )
        v_p.append((t1 + t2) / nj_hat[j] ** 2)
    s_area = np.sqrt([np.sum(w**2 * n[:, j] / ni * (1 - n[:, j] / ni) / (ni - 1)) for j in range(len(area))])
    return {
        "p": p,
        "o": np.trace(p),
        "se_o": math.sqrt(v_o),
        "u": u,
        "se_u": np.sqrt(u * (1 - u) / (ni - 1)),
        "prod": prod,
        "se_p": np.sqrt(v_p),
        "area": p.sum(0),
        "se_area": s_area,
    }


@pytest.mark.parametrize("seed", range(5))
def test_stratified_estimate_equals_closed_forms_on_random_matrices(seed: int) -> None:
    rng = np.random.default_rng(seed)
    k = int(rng.integers(2, 7))
    n = rng.integers(0, 30, size=(k, k)) + np.diag(rng.integers(20, 80, size=k))
    area = rng.uniform(1e3, 1e6, size=k)
    r = stratified_estimate(n, area)
    ref = _closed_forms(n, area)
    assert np.allclose(r.proportions, ref["p"])
    assert np.isclose(r.overall.value, ref["o"]) and np.isclose(r.overall.se, ref["se_o"])
    assert np.allclose([e.value for e in r.users], ref["u"]) and np.allclose(
        [e.se for e in r.users], ref["se_u"]
    )
    assert np.allclose([e.value for e in r.producers], ref["prod"])
    assert np.allclose([e.se for e in r.producers], ref["se_p"])
    assert np.allclose([e.value for e in r.area_proportion], ref["area"])
    assert np.allclose([e.se for e in r.area_proportion], ref["se_area"])
    f1 = 2 * ref["u"] * ref["prod"] / (ref["u"] + ref["prod"])
    assert np.allclose([e.value for e in r.f1], f1)


def test_standard_errors_match_repeated_sampling() -> None:
    """Over many stratified samples of one synthetic population the SEs match the spread of the estimates."""
    rng = np.random.default_rng(7)
    k = 3
    area = np.array([50_000, 30_000, 20_000])
    # Population: within map class i the reference class is j with probability q[i, j].
    q = np.array([[0.9, 0.07, 0.03], [0.1, 0.8, 0.1], [0.05, 0.15, 0.8]])
    n_h = np.array([60, 60, 60])
    est, ses = [], []
    for _ in range(1500):
        counts = np.stack([rng.multinomial(n_h[i], q[i]) for i in range(k)])
        r = stratified_estimate(counts, area)
        est.append([r.overall.value, r.producers[2].value, r.f1[1].value, r.area_proportion[2].value])
        ses.append([r.overall.se, r.producers[2].se, r.f1[1].se, r.area_proportion[2].se])
    sd, mean_se = np.std(est, axis=0), np.mean(ses, axis=0)
    assert np.allclose(mean_se, sd, rtol=0.1), (mean_se, sd)


# ---------------------------------------------------------------------------------------------- files


CRS_UTM = "EPSG:32631"
TF = Affine(10, 0, 600_000, 0, -10, 5_650_000)


def _write_map(path: Path, classes: np.ndarray, *, legend: bool = True, nodata: int | None = 0) -> Path:
    from cropmap.contract.metadata import ClassInfo

    prof = {
        "driver": "GTiff",
        "height": classes.shape[0],
        "width": classes.shape[1],
        "count": 1,
        "dtype": "uint8",
        "crs": CRS_UTM,
        "transform": TF,
        "tiled": True,
        "blockxsize": 64,
        "blockysize": 64,
    }
    if nodata is not None:
        prof["nodata"] = nodata
    with rasterio.open(path, "w", **prof) as ds:
        ds.write(classes, 1)
        if legend:
            infos = [
                ClassInfo(code=1, name="maize", color="#ffd700"),
                ClassInfo(code=2, name="wheat", color="#a0522d"),
                ClassInfo(code=3, name="grassland", color="#2e8b57"),
            ]
            tags, band = class_tags(infos)
            ds.update_tags(**tags)
            ds.update_tags(1, **band)
            ds.write_colormap(1, colormap(infos))
    return path


def _random_map(rng: np.random.Generator, shape: tuple[int, int] = (200, 300)) -> np.ndarray:
    m = rng.choice([1, 2, 3], size=shape, p=[0.2, 0.3, 0.5]).astype(np.uint8)
    m[:5, :] = 0  # a strip of nodata
    return m


def _points(rng: np.random.Generator, m: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    rows = rng.integers(0, m.shape[0], n)
    cols = rng.integers(0, m.shape[1], n)
    return rows, cols


def _write_points(
    path: Path, rows: np.ndarray, cols: np.ndarray, labels: list[object], crs: str = CRS_UTM
) -> Path:
    xs, ys = TF.a * (cols + 0.5) + TF.c, TF.e * (rows + 0.5) + TF.f
    gdf = gpd.GeoDataFrame({"label": labels}, geometry=shapely.points(xs, ys), crs=CRS_UTM)
    if crs != CRS_UTM:
        gdf = gdf.to_crs(crs)
    gdf.to_file(path, driver="GPKG")
    return path


def test_assess_random_map_equals_plain_numpy(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    m = _random_map(rng)
    map_path = _write_map(tmp_path / "map.tif", m)
    rows, cols = _points(rng, m, 400)
    truth = np.where(rng.random(rows.size) < 0.8, m[rows, cols], rng.choice([1, 2, 3], rows.size))
    names = {1: "maize", 2: "wheat", 3: "grassland"}
    labels = [names.get(t, "maize") for t in truth.tolist()]  # labels by name
    truth = np.array([{v: k for k, v in names.items()}[lab] for lab in labels])
    ref = _write_points(tmp_path / "ref.gpkg", rows, cols, labels, crs="EPSG:4326")  # reprojected back
    report = assess(map_path, ref, label_column="label")
    # Plain numpy: strata weights from the whole map, the sample from the pixels the points fall in.
    on_map = m[rows, cols] > 0
    mc, rc = m[rows, cols][on_map], truth[on_map]
    counts = np.zeros((3, 3), int)
    np.add.at(counts, (mc - 1, rc - 1), 1)
    pix = np.array([(m == c).sum() for c in (1, 2, 3)])
    ref_forms = _closed_forms(counts, pix.astype(float))
    assert report["confusion_matrix"]["counts"] == counts.tolist()
    assert report["sample"]["on_nodata"] == int((~on_map).sum())
    assert [c["map_pixels"] for c in report["per_class"]] == pix.tolist()
    assert [c["name"] for c in report["classes"]] == ["maize", "wheat", "grassland"]
    assert np.isclose(report["overall_accuracy"]["estimate"], ref_forms["o"], atol=1e-6)
    assert np.isclose(report["overall_accuracy"]["se"], ref_forms["se_o"], atol=1e-6)
    total_ha = pix.sum() * 100 / 1e4
    for j, c in enumerate(report["per_class"]):
        assert np.isclose(c["producers_accuracy"]["estimate"], ref_forms["prod"][j], atol=1e-6)
        assert np.isclose(c["area_ha"]["estimate"], ref_forms["area"][j] * total_ha, atol=0.01)
        lo, hi = c["area_ha"]["ci95"]
        assert np.isclose(hi - lo, 2 * 1.96 * ref_forms["se_area"][j] * total_ha, rtol=1e-3)


def test_read_class_map_counts_and_legend(tmp_path: Path) -> None:
    m = _random_map(np.random.default_rng(1))
    cm = read_class_map(_write_map(tmp_path / "m.tif", m))
    assert cm.codes == (1, 2, 3) and cm.names[2] == "wheat" and cm.pixel_area_m2 == 100.0
    assert list(cm.pixels) == [int((m == c).sum()) for c in (1, 2, 3)]
    plain = read_class_map(_write_map(tmp_path / "plain.tif", m, legend=False, nodata=None))
    assert plain.codes == (0, 1, 2, 3) and plain.name(3) == "3"


def test_assess_polygons_pixels_and_majority(tmp_path: Path) -> None:
    m = np.full((40, 40), 3, np.uint8)
    m[:, :20] = 1
    map_path = _write_map(tmp_path / "m.tif", m)
    # A polygon over 10 x 10 pixels: 6 columns of class 1, 4 of class 3; labelled 1. And a sliver.
    x0, y0 = TF.c + 14 * TF.a, TF.f + 10 * TF.e
    poly = shapely.box(x0, y0 - 100, x0 + 100, y0)
    sliver = shapely.box(x0 + 1, y0 - 3, x0 + 3, y0 - 1)
    gpd.GeoDataFrame({"crop": [1, 3]}, geometry=[poly, sliver], crs=CRS_UTM).to_file(tmp_path / "p.gpkg")
    r = assess(map_path, tmp_path / "p.gpkg", label_column="crop")
    assert r["confusion_matrix"]["counts"] == [[60, 0], [40, 0]]
    assert r["sample"]["polygons_without_pixel"] == 1
    assert any("not independent" in w for w in r["warnings"])
    r = assess(map_path, tmp_path / "p.gpkg", label_column="crop", polygon_samples="majority")
    assert r["confusion_matrix"]["counts"] == [[1, 0], [0, 0]]
    assert any("no reference unit" in w for w in r["warnings"])


def test_plan_sample_is_seeded_and_stratified(tmp_path: Path) -> None:
    m = _random_map(np.random.default_rng(2))
    map_path = _write_map(tmp_path / "m.tif", m)
    a = plan_sample(
        map_path, tmp_path / "a.gpkg", target_se=0.02, expected="0.8,3=0.9", min_per_class=30, seed=5
    )
    b = plan_sample(
        map_path, tmp_path / "b.gpkg", target_se=0.02, expected="0.8,3=0.9", min_per_class=30, seed=5
    )
    ga, gb = gpd.read_file(tmp_path / "a.gpkg"), gpd.read_file(tmp_path / "b.gpkg")
    assert ga.geometry.equals(gb.geometry) and len(ga) == a["n"] == b["n"]
    w = np.array([(m == c).sum() for c in (1, 2, 3)], float)
    w /= w.sum()
    assert a["n_eq13"] == sample_size(w, [0.8, 0.8, 0.9], 0.02)
    assert ga.groupby("stratum").size().tolist() == [c["n"] for c in a["classes"]]
    # Every point is a pixel centre of its stratum, no pixel twice.
    assert all(m[r, c] == s for r, c, s in zip(ga["row"], ga["col"], ga["stratum"], strict=True))
    assert len(set(zip(ga["row"], ga["col"], strict=True))) == len(ga)
    assert ga.crs.to_string() == CRS_UTM


# ---------------------------------------------------------------------------------------------- CLI


@pytest.fixture
def scene(tmp_path: Path) -> dict[str, Path]:
    rng = np.random.default_rng(11)
    m = _random_map(rng)
    map_path = _write_map(tmp_path / "map.tif", m)
    rows, cols = _points(rng, m, 300)
    truth = np.where(rng.random(rows.size) < 0.85, m[rows, cols], 3)
    truth[truth == 0] = 1
    ref = _write_points(tmp_path / "ref.gpkg", rows, cols, [int(t) for t in truth])
    return {"map": map_path, "ref": ref, "dir": tmp_path}


def _assess(*args: object) -> object:
    return CliRunner().invoke(main, ["assess", *map(str, args)])


def test_cli_assess_writes_report(scene: dict[str, Path]) -> None:
    out = scene["dir"] / "out" / "report.json"
    res = _assess(scene["map"], "--reference", scene["ref"], "--label-column", "label", "-o", out)
    assert res.exit_code == 0, res.output
    assert out.is_file() and out.with_suffix(".md").is_file() and out.with_suffix(".png").is_file()
    report = json.loads(out.read_text())
    assert set(report) >= {"confusion_matrix", "overall_accuracy", "per_class", "kappa", "warnings"}
    assert "overall accuracy" in res.output and "grassland" in res.output
    assert "| maize |" in out.with_suffix(".md").read_text()
    with open(out.with_suffix(".png"), "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    res = _assess(scene["map"], "--reference", scene["ref"], "--label-column", "label", "-o", out)
    assert res.exit_code == 1 and "already exists; pass --overwrite" in res.output
    assert len(res.output.strip().splitlines()) == 1
    res = _assess(
        scene["map"], "--reference", scene["ref"], "--label-column", "label", "-o", out, "--overwrite"
    )
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in out.parent.iterdir()) == ["report.json", "report.md", "report.png"]


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("unknown", "match none of the map's classes"),
        ("column", "has no column 'nope'"),
        ("outside", "no reference feature overlaps map"),
        ("nocrs", "has no CRS"),
        ("badmap", "holds float32 values"),
    ],
)
def test_cli_assess_one_line_errors(scene: dict[str, Path], case: str, message: str) -> None:
    d = scene["dir"]
    ref, col, map_path = scene["ref"], "label", scene["map"]
    if case == "unknown":
        ref = _write_points(d / "u.gpkg", np.array([10, 20]), np.array([10, 20]), ["maize", "barley"])
    elif case == "column":
        col = "nope"
    elif case == "outside":
        ref = d / "far.gpkg"
        gpd.GeoDataFrame({"label": [1]}, geometry=[shapely.Point(0, 0)], crs=CRS_UTM).to_file(ref)
    elif case == "nocrs":
        ref = d / "nocrs.gpkg"
        gpd.GeoDataFrame({"label": [1]}, geometry=[shapely.Point(600_100, 5_649_000)]).to_file(ref)
    elif case == "badmap":
        map_path = d / "float.tif"
        with rasterio.open(
            map_path,
            "w",
            driver="GTiff",
            height=4,
            width=4,
            count=1,
            dtype="float32",
            crs=CRS_UTM,
            transform=TF,
        ) as ds:
            ds.write(np.ones((1, 4, 4), np.float32))
    res = _assess(map_path, "--reference", ref, "--label-column", col, "-o", d / "r.json")
    assert res.exit_code == 1, res.output
    last = res.output.strip().splitlines()[-1]
    assert message in last and last.startswith("Error: ")
    assert res.output.count("Error:") == 1 and "Traceback" not in res.output
    assert not (d / "r.json").exists()


def test_cli_assess_class_map_and_usage(scene: dict[str, Path]) -> None:
    d = scene["dir"]
    ref = _write_points(
        d / "codes.gpkg", np.array([10, 50, 90]), np.array([10, 50, 90]), ["MZ", "WW", "other"]
    )
    (d / "classes.csv").write_text("declared,class\nMZ,maize\nWW,2\nother,\n")
    res = _assess(
        scene["map"],
        "--reference",
        ref,
        "--label-column",
        "label",
        "--class-map",
        d / "classes.csv",
        "-o",
        d / "r.json",
    )
    assert res.exit_code == 0, res.output
    report = json.loads((d / "r.json").read_text())
    assert report["sample"]["left_out_by_label"] == 1
    res = _assess(scene["map"], "--reference", ref, "-o", d / "x.json")
    assert res.exit_code == 2 and "--label-column" in res.output
    res = _assess(scene["map"], "--plan", "--reference", ref, "-o", d / "x.gpkg")
    assert res.exit_code == 2


def test_cli_assess_plan(scene: dict[str, Path]) -> None:
    out = scene["dir"] / "plan.gpkg"
    res = _assess(scene["map"], "--plan", "--target-se", "0.02", "--min-per-class", "20", "-o", out)
    assert res.exit_code == 0, res.output
    pts = gpd.read_file(out)
    assert "reference" in pts.columns and len(pts) > 0 and "eq. 13" in res.output
    res = _assess(scene["map"], "--plan", "-o", out)
    assert res.exit_code == 1 and "already exists" in res.output


def test_single_unit_stratum_has_no_users_se_and_zero_variance_elsewhere() -> None:
    counts = np.array([[30, 2, 1], [0, 1, 0], [3, 1, 40]])
    area = np.array([5_000.0, 100.0, 8_000.0])
    r = stratified_estimate(counts, area)
    assert math.isnan(r.users[1].se) and r.users[1].value == 1.0
    # The overall SE equals eq. 5 over the strata with two or more units (the single unit's term is 0).
    w = area / area.sum()
    u = np.diag(counts) / counts.sum(1)
    ok = counts.sum(1) > 1
    v = np.sum((w**2 * u * (1 - u) / (counts.sum(1) - 1))[ok])
    assert np.isclose(r.overall.se, math.sqrt(v)) and all(math.isfinite(e.se) for e in r.area_proportion)
