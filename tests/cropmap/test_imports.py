"""`import cropmap` stays light, and the whole classify path never imports torch (or onnx)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

_BLOCKER = textwrap.dedent(
    """
    import sys
    class _Block:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("torch", "onnx", "optuna"):
                raise ImportError(f"{name} must not be imported by cropmap")
            return None
    sys.meta_path.insert(0, _Block())
    """
)


def _python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", _BLOCKER + textwrap.dedent(code)],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=False,
    )


def test_import_cropmap_is_light() -> None:
    res = _python(
        """
        import sys
        import cropmap
        heavy = [m for m in ("torch", "onnx", "onnxruntime", "rasterio", "dask", "matplotlib", "geopandas", "xarray")
                 if m in sys.modules]
        assert not heavy, heavy
        assert sorted(cropmap.__all__) == sorted(
            ["BundleMetadata", "ClassifyOptions", "CropmapError", "RunSummary", "__version__", "classify", "classify_array",
             "classify_many", "classify_parcels", "load_bundle", "write_class_map"])
        print("ok")
        """
    )
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr


def test_import_classify_path_never_imports_torch(
    stack_desc: Path, polygons: Path, bundle: Path, outdir: Path
) -> None:
    res = _python(
        f"""
        import sys
        from click.testing import CliRunner
        from cropmap.cli import main
        r = CliRunner().invoke(main, ["classify", {str(stack_desc)!r}, "--mask", {str(polygons)!r},
                                      "--model", {str(bundle)!r}, "-o", {str(outdir / "m.tif")!r}, "--confidence"])
        assert r.exit_code == 0, r.output
        import cropmap
        cropmap.classify_array({str(stack_desc)!r}, {str(polygons)!r}, model={str(bundle)!r})
        assert "torch" not in sys.modules and "onnx" not in sys.modules
        print("ok")
        """
    )
    assert res.returncode == 0 and res.stdout.strip().endswith("ok"), res.stderr + res.stdout


def test_import_contract_loads_neither_onnxruntime_nor_torch() -> None:
    """The contract training and the exporters share runs on numpy alone: a fresh interpreter imports every module
    of ``cropmap.contract``, round-trips a metadata document, fills a gap and applies the cloud rule, and none of
    onnxruntime, torch, onnx or rasterio is loaded."""
    code = textwrap.dedent(
        """
        import sys
        import numpy as np
        from cropmap.contract import bands, clouds, metadata, timegrid
        grid = metadata.TimeGrid("11-01", (0, 30, 60), ("2020-11-01", "2020-12-01", "2020-12-31"))
        meta = metadata.BundleMetadata(
            schema_version=metadata.SCHEMA_VERSION, model_name="m", input_name="x", output_name="logits",
            bands=(bands.canonical_band("B2"), "B03"), reflectance_scale=10000.0, nodata=None, time_grid=grid,
            min_valid_steps=1, gap_fill="linear", classes=(metadata.ClassInfo(1, "wheat", "#ffcc00"),),
            embedding=None, provenance=metadata.Provenance("none", "lstm", "none", "test", "0", "2026-01-01"))
        assert metadata.BundleMetadata.from_json(meta.to_json()) == meta
        values = np.array([[[1.0, 2.0], [np.nan, np.nan], [3.0, 4.0]]], dtype=np.float32)
        filled, _, ok = timegrid.fill_gaps(values, np.array([0, 30, 60]), grid.day_of_season, min_valid=2)
        assert ok.all() and filled[0, 1].tolist() == [2.0, 3.0], filled
        rule = clouds.resolve_cloud_mask(["B02", "SCL"], "uint16")
        assert rule is not None and rule.invalid(np.array([9.0, 4.0], dtype=np.float32)).tolist() == [True, False]
        loaded = sorted(m for m in ("onnxruntime", "torch", "onnx", "rasterio") if m in sys.modules)
        print(",".join(loaded) or "none")
        """
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=False)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "none", f"import cropmap.contract loaded {res.stdout.strip()}"
