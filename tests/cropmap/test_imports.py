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
