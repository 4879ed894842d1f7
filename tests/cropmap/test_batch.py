"""`cropmap batch` / `cropmap.classify_many`: regions in parallel on dask.distributed, resumable, failure-isolated."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import rasterio
import shapely
from click.testing import CliRunner
from stackkit import (
    CRS,
    make_values,
    polygon_a,
    polygon_b,
    read_json,
    write_bundle,
    write_polygons,
    write_stack_descriptions,
)
from test_imports import _BLOCKER

import cropmap
from cropmap._batch_state import sha256
from cropmap.cli import main
from cropmap.regions import ManifestError, Region, read_manifest, regions_from_pairs

distributed = pytest.importorskip("distributed")

REPO = Path(__file__).resolve().parents[2]
NAMES = ("alpha", "beta", "gamma")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three small regions (different pixel values, shared polygons), a bundle and a CSV manifest."""
    d = tmp_path_factory.mktemp("regions")
    (d / "stacks").mkdir()
    for seed, name in enumerate(NAMES):
        write_stack_descriptions(d / "stacks" / f"{name}.tif", make_values(seed))
    write_polygons(d / "cropland.gpkg", [polygon_a(), polygon_b()], CRS)
    write_polygons(d / "far.gpkg", [shapely.box(700000, 5500000, 700100, 5500100)], CRS)
    (d / "garbage.tif").write_bytes(b"not a tiff" * 100)
    write_bundle(d / "tiny.onnx")
    rows = [f"{n},stacks/{n}.tif,cropland.gpkg" for n in NAMES]
    (d / "regions.csv").write_text("name,stack,mask\n" + "\n".join(rows) + "\n")
    (d / "two.csv").write_text("name,stack,mask\n" + "\n".join(rows[:2]) + "\n")
    return d


@pytest.fixture(scope="module")
def cluster() -> Iterator[Any]:  # distributed.LocalCluster
    """An existing scheduler with two single-threaded worker processes, shared by the tests of this module."""
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None
    ) as c:
        yield c


def _outputs(folder: Path) -> dict[str, str]:
    """Checksums of a region's deterministic outputs (the summary JSON holds timings and a creation time)."""
    timed = ("_summary.json", "_stac.json")  # both record the run time
    return {p.name: sha256(p) for p in sorted(folder.iterdir()) if not p.name.endswith(timed)}


def _batch(runner: CliRunner, *args: object) -> Any:  # click.testing.Result
    return runner.invoke(main, ["batch", *map(str, args)])


def test_batch_cli_local_cluster(runner: CliRunner, inputs: Path, tmp_path: Path) -> None:
    """Default run: the command starts (and closes) its own LocalCluster on 127.0.0.1."""
    out = tmp_path / "batch"
    res = _batch(
        runner,
        inputs / "two.csv",
        "--out-dir",
        out,
        "--model",
        inputs / "tiny.onnx",
        "--workers",
        "2",
        "--confidence",
    )
    assert res.exit_code == 0, res.output
    summary = read_json(out / "batch_summary.json")
    assert summary["executor"].startswith("dask LocalCluster at tcp://127.0.0.1:")
    assert "2 worker processes" in summary["executor"]
    assert [r["status"] for r in summary["regions"]] == ["done", "done"]
    totals = summary["totals"]
    assert (totals["regions"], totals["done"], totals["skipped"], totals["failed"]) == (2, 2, 0, 0)
    assert totals["pixels_classified"] == sum(r["pixels_classified"] for r in summary["regions"])
    for cls in ("winter wheat", "maize", "grassland"):
        assert totals["area_ha"][cls] == pytest.approx(sum(r["area_ha"][cls] for r in summary["regions"]))
    assert summary["throughput"]["cropland_px_per_s"] > 0
    state = read_json(out / "batch_state.json")
    for name in NAMES[:2]:
        folder = out / name
        assert sorted(p.name for p in folder.iterdir()) == sorted(
            [
                f"{name}.tif",
                f"{name}.tif.aux.xml",
                f"{name}.qml",
                f"{name}_confidence.tif",
                f"{name}_quicklook.png",
                f"{name}_stac.json",
                f"{name}_summary.json",
            ]
        )
        entry = state["regions"][name]
        assert entry["status"] == "done" and entry["summary"] == f"{name}/{name}_summary.json"
        assert entry["outputs"] == {p.name: sha256(p) for p in folder.iterdir()}
        region_summary = read_json(folder / f"{name}_summary.json")
        assert (
            region_summary["executor"]
            == "local threads (1 block workers; 1 single-threaded ONNX Runtime sessions)"
        )
        row = next(r for r in summary["regions"] if r["name"] == name)
        assert row["pixels_classified"] == region_summary["pixels"]["classified"] > 0
        assert row["area_ha"] == {c["name"]: c["area_ha"] for c in region_summary["classes"]}
        # The same bytes as a plain classify run in this process on the threaded scheduler.
        ref = tmp_path / f"ref_{name}"
        ref.mkdir()
        cropmap.classify(
            inputs / "stacks" / f"{name}.tif",
            inputs / "cropland.gpkg",
            model=inputs / "tiny.onnx",
            out=ref / f"{name}.tif",
            confidence=True,
        )
        assert _outputs(folder) == _outputs(ref)
    lines = res.output.splitlines()
    assert lines[0].split() == ["region", "status", "classified", "px", "cropland", "ha", "seconds"]
    assert lines[1].split()[:2] == ["alpha", "done"] and lines[2].split()[:2] == ["beta", "done"]
    assert "2 regions: 2 done, 0 skipped (done before), 0 failed" in res.output


def test_batch_cli_existing_scheduler(runner: CliRunner, inputs: Path, tmp_path: Path, cluster: Any) -> None:
    out = tmp_path / "batch"
    res = _batch(
        runner,
        "--stack",
        inputs / "stacks" / "alpha.tif",
        "--mask",
        inputs / "cropland.gpkg",
        "--stack",
        inputs / "stacks" / "beta.tif",
        "--mask",
        inputs / "cropland.gpkg",
        "--out-dir",
        out,
        "--model",
        inputs / "tiny.onnx",
        "--no-quicklook",
        "--scheduler",
        cluster.scheduler_address,
    )
    assert res.exit_code == 0, res.output
    summary = read_json(out / "batch_summary.json")
    address = cluster.scheduler_address
    assert summary["executor"] == f"dask.distributed at {address} (2 worker threads, 1 thread per region)"
    assert [(r["name"], r["status"]) for r in summary["regions"]] == [("alpha", "done"), ("beta", "done")]
    assert not (out / "alpha" / "alpha_quicklook.png").exists()
    assert "model_note" not in summary and "model:" not in res.output  # --model given: nothing to say
    with distributed.Client(cluster.scheduler_address, set_as_default=False) as client:
        loaded = client.run(
            lambda: sorted(m for m in ("torch", "onnx", "cropmap.pipeline") if m in sys.modules)
        )
    # The workers classified (cropmap.pipeline is loaded) without importing torch or onnx.
    assert ["cropmap.pipeline"] in loaded.values()
    assert set(map(tuple, loaded.values())) <= {(), ("cropmap.pipeline",)}


def test_batch_resume_after_crash_and_corruption(inputs: Path, tmp_path: Path, cluster: Any) -> None:
    """Kill the driver mid-batch, corrupt a finished region: the rerun recomputes exactly those, same bytes."""
    clean = tmp_path / "clean"
    calls: list[tuple[int, int]] = []
    summary = cropmap.classify_many(
        inputs / "regions.csv",
        out_dir=clean,
        model=inputs / "tiny.onnx",
        scheduler=cluster.scheduler_address,
        embedding=True,
        progress=lambda d, t: calls.append((d, t)),
    )
    assert calls == [(0, 3), (1, 3), (2, 3), (3, 3)]
    assert [r["status"] for r in summary["regions"]] == ["done"] * 3
    reference = {n: _outputs(clean / n) for n in NAMES}
    assert reference["alpha"] != reference["beta"]

    # A real crash: the driver process dies (os._exit) right after the first region is recorded.
    out = tmp_path / "crashed"
    code = _BLOCKER + textwrap.dedent(
        f"""
        import os, sys
        sys.path.insert(0, {str(REPO)!r})
        import cropmap
        def die(done, total):
            if done:
                os._exit(17)
        cropmap.classify_many({str(inputs / "regions.csv")!r}, out_dir={str(out)!r},
                              model={str(inputs / "tiny.onnx")!r}, scheduler={cluster.scheduler_address!r},
                              embedding=True, progress=die)
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, check=False
    )
    assert proc.returncode == 17, (
        proc.stderr
    )  # ImportError from the blocker would exit 1: no torch/onnx on this path
    state = read_json(out / "batch_state.json")
    statuses = {n: e["status"] for n, e in state["regions"].items()}
    assert sorted(statuses.values()) == ["done", "pending", "pending"], statuses
    first = next(n for n, s in statuses.items() if s == "done")
    assert _outputs(out / first) == reference[first]

    # Corrupt the finished region's map, and leave a temporary as a killed writer would.
    victim = out / first / f"{first}.tif"
    data = bytearray(victim.read_bytes())
    data[-100:] = bytes(100)
    victim.write_bytes(bytes(data))
    pending = [n for n, s in statuses.items() if s == "pending"]
    (out / pending[0]).mkdir(exist_ok=True)
    stale = out / pending[0] / f".{pending[0]}.tif.0123abcd.tmp.tif"
    stale.write_bytes(b"half")

    resumed = cropmap.classify_many(
        inputs / "regions.csv",
        out_dir=out,
        model=inputs / "tiny.onnx",
        scheduler=cluster.scheduler_address,
        embedding=True,
    )
    assert {r["name"]: r["status"] for r in resumed["regions"]} == dict.fromkeys(NAMES, "done")
    assert not stale.exists()
    for n in NAMES:
        assert _outputs(out / n) == reference[n], n
    state = read_json(out / "batch_state.json")
    assert all(e["status"] == "done" for e in state["regions"].values())

    # Nothing left to do: every region is skipped, files untouched, no cluster needed.
    mtimes = {p: p.stat().st_mtime_ns for p in out.rglob("*.tif")}
    again = cropmap.classify_many(
        inputs / "regions.csv", out_dir=out, model=inputs / "tiny.onnx", embedding=True
    )
    assert [r["status"] for r in again["regions"]] == ["skipped"] * 3
    assert again["executor"].startswith("none") and again["totals"]["skipped"] == 3
    assert again["totals"]["pixels_classified"] == summary["totals"]["pixels_classified"]
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.tif")} == mtimes


def test_batch_without_model_says_it_runs_the_flanders_sample(
    runner: CliRunner, tmp_path: Path, cluster: Any
) -> None:
    """No silent default: a batch given no --model names the bundle it ran and says it is the Flanders sample,
    in the console and in both summaries; with --model (the other tests) neither appears."""
    from cropmap.models import DEFAULT_BUNDLE, SAMPLE_NOTE

    sample = REPO / "sample_data" / "belgium_2021"
    out = tmp_path / "batch"
    res = _batch(
        runner,
        "--stack",
        sample / "s2_stack.tif",
        "--mask",
        sample / "cropland.gpkg",
        "--out-dir",
        out,
        "--no-quicklook",
        "--scheduler",
        cluster.scheduler_address,
        "-q",
    )
    assert res.exit_code == 0, res.output
    lines = [line for line in res.output.splitlines() if line.startswith("model:")]
    note = f"(no --model given: {SAMPLE_NOTE}; pass --model BUNDLE for your own)"
    assert lines == [f"model:      {DEFAULT_BUNDLE.resolve()}  {note}"], res.output
    summary = read_json(out / "batch_summary.json")
    assert summary["model"] == str(DEFAULT_BUNDLE.resolve()) and summary["model_note"] == SAMPLE_NOTE
    region = read_json(Path(summary["regions"][0]["summary"]))
    assert region["inputs"]["model_note"] == SAMPLE_NOTE


def test_batch_failing_regions_do_not_stop_others(
    runner: CliRunner, inputs: Path, tmp_path: Path, cluster: Any
) -> None:
    manifest = tmp_path / "regions.toml"
    manifest.write_text(
        textwrap.dedent(f"""
        [[regions]]
        name = "good"
        stack = "{inputs / "stacks" / "alpha.tif"}"
        mask = "{inputs / "cropland.gpkg"}"

        [[regions]]
        name = "broken"
        stack = "{inputs / "garbage.tif"}"
        mask = "{inputs / "cropland.gpkg"}"

        [[regions]]
        name = "elsewhere"
        stack = "{inputs / "stacks" / "beta.tif"}"
        mask = "{inputs / "far.gpkg"}"
        season = 2021
        """)
    )
    out = tmp_path / "batch"
    args = (
        manifest,
        "--out-dir",
        out,
        "--model",
        inputs / "tiny.onnx",
        "--no-quicklook",
        "--scheduler",
        cluster.scheduler_address,
    )
    res = _batch(runner, *args)
    assert res.exit_code == 3, res.output
    assert "Traceback" not in res.output
    assert "3 regions: 1 done, 0 skipped (done before), 2 failed" in res.output
    failures = res.output.split("failed regions:\n")[1].splitlines()
    assert failures[0].split()[0] == "broken" and "is not a readable GeoTIFF" in failures[0]
    assert failures[1].split()[0] == "elsewhere" and "overlaps the stack" in failures[1]
    assert "Error: 2 of 3 regions failed" in res.output
    state = read_json(out / "batch_state.json")
    assert state["regions"]["good"]["status"] == "done"
    assert {n: state["regions"][n]["error_type"] for n in ("broken", "elsewhere")} == {
        "broken": "InputRasterError",
        "elsewhere": "MaskError",
    }
    assert state["regions"]["elsewhere"]["settings"]["season"] == 2021
    assert sorted(p.name for p in out.iterdir()) == ["batch_state.json", "batch_summary.json", "good"]
    summary = read_json(out / "batch_summary.json")
    assert [r["error"] is None for r in summary["regions"]] == [True, False, False]
    good = out / "good" / "good.tif"
    mtime = good.stat().st_mtime_ns

    # The rerun retries only the failed regions.
    res = _batch(runner, *args)
    assert res.exit_code == 3, res.output
    assert "3 regions: 0 done, 1 skipped (done before), 2 failed" in res.output
    assert good.stat().st_mtime_ns == mtime


def test_batch_refuses_other_settings_and_foreign_outputs(
    runner: CliRunner, inputs: Path, tmp_path: Path, cluster: Any
) -> None:
    out = tmp_path / "batch"
    base = (
        "--stack",
        inputs / "stacks" / "alpha.tif",
        "--mask",
        inputs / "cropland.gpkg",
        "--out-dir",
        out,
        "--model",
        inputs / "tiny.onnx",
        "--no-quicklook",
        "--scheduler",
        cluster.scheduler_address,
    )
    assert _batch(runner, *base).exit_code == 0
    before = sha256(out / "batch_state.json")
    res = _batch(runner, *base, "--confidence")
    assert res.exit_code == 1 and res.output.startswith("Error: the batch in")
    assert "was run with other settings {'confidence': (False, True)}" in res.output
    assert len(res.output.splitlines()) == 1
    assert sha256(out / "batch_state.json") == before
    res = _batch(runner, *base, "--confidence", "--overwrite")
    assert res.exit_code == 0, res.output
    assert (out / "alpha" / "alpha_confidence.tif").is_file()

    foreign = tmp_path / "foreign"
    (foreign / "alpha").mkdir(parents=True)
    (foreign / "alpha" / "notes.txt").write_text("mine")
    res = _batch(runner, *base[:4], "--out-dir", foreign, *base[6:])
    assert res.exit_code == 1 and "already holds files that" in res.output and "--overwrite" in res.output
    assert sorted(p.name for p in foreign.iterdir()) == ["alpha"]


def _write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text).lstrip())
    return path


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        (
            "missing.csv",
            None,
            "missing.csv does not exist; expected a .csv, .toml or .json file listing regions",
        ),
        ("r.yaml", "x", "has suffix '.yaml'; expected .csv, .toml or .json"),
        ("r.csv", "name,stack,mask,colour\na,a.tif,m.gpkg,red\n", "header: unknown column(s) ['colour']"),
        ("r.csv", "name,mask\na,m.gpkg\n", "header: no column(s) ['stack']"),
        (
            "r.csv",
            "name,stack,mask\na,a.tif,m.gpkg\nA,b.tif,m.gpkg\n",
            "names two regions 'a' and 'A'; expected unique names",
        ),
        (
            "r.csv",
            "name,stack,mask\na,,m.gpkg\n",
            "line 2 (a): no stack; expected name, stack, mask for every region",
        ),
        ("r.csv", "name,stack,mask\na,a.tif,m.gpkg,extra\n", "line 2: more cells than the 3 header columns"),
        (
            "r.csv",
            "name,stack,mask,season\na,a.tif,m.gpkg,21\n",
            "season is '21'; expected a year such as 2021",
        ),
        ("r.csv", "name,stack,mask\n", "lists no regions; expected at least one"),
        (
            "r.toml",
            '[[regions]]\nname = "a"\nstack = "a.tif"\nmask = "m.gpkg"\ncloud = 3\n',
            "region 1 (a): unknown key(s) ['cloud']",
        ),
        ("r.toml", '[[region]]\nname = "a"\n', "holds ['region']; expected [[regions]] tables"),
        ("r.toml", '[[regions]]\nname = "a\n', "is not valid TOML"),
        ("r.json", '[{"name": "a", "mask": "m.gpkg"}]', "region 1 (a): no stack"),
        (
            "r.json",
            '{"regions": [{"name": "../up", "stack": "a.tif", "mask": "m.gpkg"}]}',
            "name '../up' cannot be a folder name",
        ),
        (
            "r.json",
            '[{"name": "a", "stack": "a.tif", "mask": "m.gpkg", "season": "2021"}]',
            "season is '2021'; expected a year such as 2021",
        ),
        ("r.json", "[1, 2", "is not valid JSON"),
    ],
)
def test_batch_manifest_errors(
    runner: CliRunner, tmp_path: Path, name: str, text: str | None, message: str
) -> None:
    manifest = tmp_path / name
    if text is not None:
        manifest.write_text(text)
    out = tmp_path / "out"
    res = _batch(runner, manifest, "--out-dir", out, "--model", tmp_path / "unused.onnx")
    assert res.exit_code == 1, res.output
    assert res.output.startswith("Error: ") and len(res.output.splitlines()) == 1, res.output
    assert message in res.output, res.output
    assert not out.exists()


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (
            ["m.csv", "--stack", "a.tif", "--mask", "m.gpkg"],
            2,
            "either a REGIONS manifest or --stack/--mask pairs",
        ),
        ([], 2, "give a REGIONS manifest or --stack S --mask M pairs"),
        (["--stack", "a.tif", "--stack", "b.tif", "--mask", "m.gpkg"], 1, "got 2 --stack and 1 --mask"),
        (
            ["--stack", "x/a.tif", "--mask", "m.gpkg", "--stack", "y/a.tif", "--mask", "m.gpkg"],
            1,
            "names two regions 'a' and 'a'; expected unique names",
        ),
        (
            ["m.csv", "--workers", "2", "--scheduler", "tcp://127.0.0.1:9"],
            2,
            "with --scheduler, size that cluster",
        ),
        (["m.csv", "--scheduler", "localhost"], 2, "expected an address such as tcp://"),
        (["m.csv", "--batch-size", "0"], 2, "batch_size is 0; expected a positive integer"),
        (["m.csv", "--workers", "0"], 2, "workers is 0; expected a positive integer"),
    ],
)
def test_batch_usage_errors(
    runner: CliRunner, tmp_path: Path, args: list[str], code: int, message: str
) -> None:
    res = _batch(runner, *args, "--out-dir", tmp_path / "out")
    assert res.exit_code == code, res.output
    assert message in res.output, res.output
    assert not (tmp_path / "out").exists()


def test_batch_bundle_and_scheduler_errors(runner: CliRunner, inputs: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    res = _batch(runner, inputs / "two.csv", "--out-dir", out, "--model", tmp_path / "x.onnx")
    assert res.exit_code == 1 and "model bundle" in res.output and "does not exist" in res.output, res.output
    noemb = write_bundle(tmp_path / "noemb.onnx", with_embedding=False)
    res = _batch(runner, inputs / "two.csv", "--out-dir", out, "--model", noemb, "--embedding")
    assert res.exit_code == 1 and "has no embedding output" in res.output, res.output
    assert not out.exists()


@pytest.mark.slow  # the client waits for its 10 s connection timeout
def test_batch_unreachable_scheduler(runner: CliRunner, inputs: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    res = _batch(
        runner,
        inputs / "two.csv",
        "--out-dir",
        out,
        "--model",
        inputs / "tiny.onnx",
        "--scheduler",
        "tcp://127.0.0.1:9",
    )
    assert res.exit_code == 1 and "could not connect to the dask scheduler at tcp://127.0.0.1:9" in res.output
    assert not out.exists()


def test_manifest_formats_agree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sub = tmp_path / "m"
    sub.mkdir()
    csv_ = _write(
        sub / "r.csv",
        """
        name,stack,mask,season
        north,stacks/n.tif,/data/crop.gpkg,2021

        south,s_folder,../crop.gpkg,
        """,
    )
    toml_ = _write(
        sub / "r.toml",
        """
        [[regions]]
        name = "north"
        stack = "stacks/n.tif"
        mask = "/data/crop.gpkg"
        season = 2021

        [[regions]]
        name = "south"
        stack = "s_folder"
        mask = "../crop.gpkg"
        """,
    )
    rows = [
        {"name": "north", "stack": "stacks/n.tif", "mask": "/data/crop.gpkg", "season": 2021},
        {"name": "south", "stack": "s_folder", "mask": "../crop.gpkg"},
    ]
    json_list = sub / "list.json"
    json_list.write_text(json.dumps(rows))
    json_obj = sub / "obj.json"
    json_obj.write_text(json.dumps({"regions": rows}))
    expected = [
        Region("north", (sub / "stacks" / "n.tif").resolve(), Path("/data/crop.gpkg"), 2021),
        Region("south", (sub / "s_folder").resolve(), (tmp_path / "crop.gpkg").resolve(), None),
    ]
    for manifest in (csv_, toml_, json_list, json_obj):
        assert read_manifest(manifest) == expected, manifest
    monkeypatch.chdir(tmp_path)
    assert regions_from_pairs(["a/north.tif", "b/south_dates"], ["m.gpkg", "m.gpkg"]) == [
        Region("north", tmp_path / "a" / "north.tif", tmp_path / "m.gpkg"),
        Region("south_dates", tmp_path / "b" / "south_dates", tmp_path / "m.gpkg"),
    ]
    with pytest.raises(ManifestError, match="region 2 is 3; expected"):
        cropmap.classify_many([rows[0], 3], out_dir=tmp_path / "o")


def test_classify_many_rejects_block_level_parallelism(inputs: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="workers is set in the region options; the batch sets it"):
        cropmap.classify_many(
            inputs / "two.csv",
            out_dir=tmp_path / "o",
            model=inputs / "tiny.onnx",
            options=cropmap.ClassifyOptions(workers=2),
        )
    with pytest.raises(ValueError, match="threads is set"):
        cropmap.classify_many(
            inputs / "two.csv", out_dir=tmp_path / "o", model=inputs / "tiny.onnx", threads=1
        )
    assert not (tmp_path / "o").exists()


def test_batch_region_season_overrides_default(inputs: Path, tmp_path: Path, cluster: Any) -> None:
    manifest = _write(
        tmp_path / "r.json",
        json.dumps(
            [
                {
                    "name": "alpha",
                    "stack": str(inputs / "stacks" / "alpha.tif"),
                    "mask": str(inputs / "cropland.gpkg"),
                    "season": 2021,
                }
            ]
        ),
    )
    summary = cropmap.classify_many(
        manifest,
        out_dir=tmp_path / "o",
        model=inputs / "tiny.onnx",
        scheduler=cluster.scheduler_address,
        quicklook=False,
        season=2020,
    )
    assert summary["regions"][0]["season"] == 2021
    with rasterio.open(tmp_path / "o" / "alpha" / "alpha.tif") as ds:
        assert ds.tags()["cropmap_season"] == "2021"


def test_region_task_never_removes_its_folder(inputs: Path, tmp_path: Path) -> None:
    """A failing region task leaves its folder alone; only the driver tidies an empty one.

    After a driver dies its running tasks may go on on the cluster, while the rerun's task for the same
    region writes into the same folder: a task that removed "its" empty folder could pull the folder from
    under the live writer (seen as a scratch file that could not be created).
    """
    from cropmap.batch import RegionJob, _remove_if_empty, run_region
    from cropmap.options import ClassifyOptions

    region = Region(name="alpha", stack=inputs / "garbage.tif", mask=inputs / "cropland.gpkg", season=None)
    job = RegionJob(region=region, out_dir=tmp_path, model=inputs / "tiny.onnx", options=ClassifyOptions())
    result = run_region(job)
    assert result["status"] == "failed" and "GeoTIFF" in result["error"]
    assert (tmp_path / "alpha").is_dir()

    # The driver's tidy-up leaves a folder another task is writing into.
    live = tmp_path / "alpha" / ".alpha.tif.0123abcd.scratch.tif"
    live.write_bytes(b"in progress")
    _remove_if_empty(tmp_path / "alpha")
    assert live.exists()
    live.unlink()
    _remove_if_empty(tmp_path / "alpha")
    assert not (tmp_path / "alpha").exists()


def test_local_cluster_binds_no_dashboard_port(inputs: Path, tmp_path: Path) -> None:
    """With port 8787 taken, the batch's local cluster neither warns about it nor needs it; a dashboard on request."""
    import socket

    holder = socket.socket()
    try:
        holder.bind(("127.0.0.1", 8787))
        holder.listen()
    except OSError:
        pass  # something else already holds it: the check below holds all the same
    try:
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "cropmap",
                "batch",
                str(inputs / "two.csv"),
                "--out-dir",
                str(tmp_path / "b"),
                "--model",
                str(inputs / "tiny.onnx"),
                "--workers",
                "1",
            ],
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )
    finally:
        holder.close()
    assert proc.returncode == 0, proc.stderr
    assert "8787" not in proc.stderr and "already in use" not in proc.stderr, proc.stderr
    summary = cropmap.classify_many(
        inputs / "two.csv",
        out_dir=tmp_path / "d",
        model=inputs / "tiny.onnx",
        workers=1,
        dashboard="127.0.0.1:0",
    )
    assert "dashboard http://127.0.0.1:" in summary["executor"]


def test_local_cluster_runs_without_profiler_or_work_stealing() -> None:
    """The batch's local cluster leaves the CPU to the regions: no statistical profiler, no work stealing."""
    import dask
    from distributed import Client

    from cropmap.batch import LEAN_LOCAL_CLUSTER, local_cluster

    with local_cluster(1) as cluster, Client(cluster, set_as_default=False) as client:
        seen = client.run(lambda: {k: dask.config.get(k) for k in LEAN_LOCAL_CLUSTER})
        assert list(seen.values()) == [{k: False for k in LEAN_LOCAL_CLUSTER}]
        assert "stealing" not in client.run_on_scheduler(
            lambda dask_scheduler: sorted(dask_scheduler.extensions)
        )
    assert (
        dask.config.get("distributed.worker.profile.enabled") is True
    )  # this process's settings are untouched


def test_local_cluster_workers_carry_the_quiet_close_plugin() -> None:
    from distributed import Client

    from cropmap.batch import local_cluster

    with local_cluster(1) as cluster, Client(cluster, set_as_default=False) as client:
        plugins = client.run(lambda dask_worker: sorted(dask_worker.plugins))
    assert [("cropmap-quiet-close" in names) for names in plugins.values()] == [True]


def test_a_closing_worker_drops_only_its_shutdown_races() -> None:
    """QuietClose's filter: a closed connection or a cancellation is dropped while the worker closes, and only then."""
    import asyncio
    import logging
    from types import SimpleNamespace

    from distributed.comm.core import CommClosedError
    from distributed.core import Status

    from cropmap._quiet_close import QuietClose

    class Keep(logging.Handler):
        def __init__(self) -> None:
            super().__init__()
            self.seen: list[str] = []

        def emit(self, record: logging.LogRecord) -> None:
            self.seen.append(record.getMessage())

    log = logging.getLogger("distributed.worker")
    handler = Keep()
    logging.getLogger("distributed").addHandler(handler)
    filters = {h: list(h.filters) for h in logging.getLogger("distributed").handlers}
    worker = SimpleNamespace(status=Status.running)
    try:
        QuietClose().setup(worker)  # type: ignore[arg-type]

        def emit_all(tag: str) -> None:
            for name, err in (
                ("comm", CommClosedError("pool closing")),
                ("cancel", asyncio.CancelledError()),
            ):
                try:
                    raise err
                except BaseException:
                    log.exception("%s %s", tag, name)
            log.warning("%s Async instruction for <Task> ended with CancelledError", tag)
            try:
                raise ValueError("a real fault")
            except ValueError:
                log.exception("%s fault", tag)

        emit_all("running:")
        worker.status = Status.closing
        emit_all("closing:")
    finally:
        for h, before in filters.items():  # this process's dask logging as it was
            h.filters = before
        logging.getLogger("distributed").removeHandler(handler)
    assert handler.seen == [
        "running: comm",
        "running: cancel",
        "running: Async instruction for <Task> ended with CancelledError",
        "running: fault",
        "closing: fault",
    ]


def test_batch_regions_with_parcels_get_their_per_parcel_geopackage(
    runner: CliRunner, inputs: Path, tmp_path: Path
) -> None:
    """A manifest's optional parcels (and declared_column) column: that region also writes <name>_parcels.gpkg, as
    classify --parcels does; a region without it does not; declared_column without parcels is refused."""
    import geopandas as gpd

    manifest = tmp_path / "parcels.csv"
    manifest.write_text(
        "name,stack,mask,parcels\n"
        f"alpha,{inputs / 'stacks/alpha.tif'},{inputs / 'cropland.gpkg'},{inputs / 'cropland.gpkg'}\n"
        f"beta,{inputs / 'stacks/beta.tif'},{inputs / 'cropland.gpkg'},\n"
    )
    out = tmp_path / "batch"
    res = _batch(runner, manifest, "--out-dir", out, "--model", inputs / "tiny.onnx", "--workers", "1")
    assert res.exit_code == 0, res.output
    table = gpd.read_file(out / "alpha" / "alpha_parcels.gpkg")
    assert len(table) == len(gpd.read_file(inputs / "cropland.gpkg")) and "class_name" in table.columns
    assert not list((out / "beta").glob("*_parcels.gpkg"))
    state = read_json(out / "batch_state.json")
    assert "alpha_parcels.gpkg" in state["regions"]["alpha"]["outputs"]
    bad = tmp_path / "bad.csv"
    bad.write_text(
        f"name,stack,mask,declared_column\nalpha,{inputs / 'stacks/alpha.tif'},{inputs / 'cropland.gpkg'},crop\n"
    )
    res = _batch(runner, bad, "--out-dir", tmp_path / "b2", "--model", inputs / "tiny.onnx")
    assert res.exit_code == 1 and "declared_column 'crop' checks parcels; give parcels too" in res.output, (
        res.output
    )
