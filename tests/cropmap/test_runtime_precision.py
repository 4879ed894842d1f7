"""Execution providers (never a silent fallback), the embedding raster at 8/16/32 bits, and reduced-precision
bundles through classify."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import rasterio
from click.testing import CliRunner

import cropmap
from cropmap.cli import main
from cropmap.contract.metadata import METADATA_KEY, Precision
from cropmap.embedding import INT8_NODATA, dequantize_int8, int8_scale_offset, quantize_int8
from cropmap.errors import BundleError, RuntimeSetupError
from cropmap.options import ClassifyOptions
from cropmap.runtime import load_bundle

GPU = "CUDAExecutionProvider" in ort.get_available_providers()
no_gpu = pytest.mark.skipif(GPU, reason="checks the refusal on a machine without the CUDA provider")


@no_gpu
@pytest.mark.parametrize("provider", ["cuda", "tensorrt"])
def test_unavailable_provider_is_an_error_not_a_cpu_run(bundle: Path, provider: str) -> None:
    with pytest.raises(
        RuntimeSetupError,
        match=rf"provider '{provider}' \(\w+ExecutionProvider\) was requested but "
        r"onnxruntime [\d.]+ here offers only CPUExecutionProvider; install the GPU runtime",
    ):
        load_bundle(bundle, provider=provider)
    with pytest.raises(RuntimeSetupError, match=r"\['CUDAExecutionProvider'\] requested"):
        load_bundle(bundle, providers=["CUDAExecutionProvider"])  # the explicit list: no silent CPU either


def test_auto_takes_the_best_available_and_says_so(bundle: Path, caplog) -> None:
    with caplog.at_level(logging.INFO, logger="cropmap.runtime"):
        b = load_bundle(bundle, provider="auto")
    assert b.requested == "auto" and b.provider == b.session.get_providers()[0]
    assert b.provider == ("CUDAExecutionProvider" if GPU else "CPUExecutionProvider")
    assert f"provider auto: took {b.provider}" in caplog.text
    assert load_bundle(bundle).provider == "CPUExecutionProvider"  # the API default stays the CPU
    with pytest.raises(RuntimeSetupError, match="expected one of auto, cpu, cuda, tensorrt"):
        load_bundle(bundle, provider="gpu")


@no_gpu
def test_cli_provider_cuda_is_one_line_and_writes_nothing(
    runner: CliRunner, stack_desc: Path, polygons: Path, bundle: Path, outdir: Path
) -> None:
    res = runner.invoke(
        main,
        [
            "classify",
            str(stack_desc),
            "--mask",
            str(polygons),
            "--model",
            str(bundle),
            "-o",
            str(outdir / "m.tif"),
            "--provider",
            "cuda",
        ],
    )
    assert res.exit_code == 1
    assert res.output.startswith(
        "Error: provider 'cuda' (CUDAExecutionProvider) was requested but onnxruntime"
    )
    assert res.output.count("\n") == 1 and "Traceback" not in res.output
    assert list(outdir.iterdir()) == []
    res = runner.invoke(
        main,
        [
            "batch",
            "--stack",
            str(stack_desc),
            "--mask",
            str(polygons),
            "--model",
            str(bundle),
            "--out-dir",
            str(outdir / "b"),
            "--provider",
            "cuda",
        ],
    )
    assert (
        res.exit_code == 1 and res.output.startswith("Error: provider 'cuda'") and res.output.count("\n") == 1
    )
    assert not (outdir / "b").exists()
    res = runner.invoke(main, ["classify", str(stack_desc), "--mask", str(polygons), "--provider", "npu"])
    assert res.exit_code == 2 and "--provider" in res.output


def test_summary_records_the_provider_used(
    stack_desc: Path, polygons: Path, bundle: Path, outdir: Path
) -> None:
    s = cropmap.classify(
        stack_desc, polygons, model=bundle, out=outdir / "m.tif", quicklook=False, provider="cpu"
    ).to_dict()
    assert s["runtime"]["provider_requested"] == "cpu"
    assert s["runtime"]["providers_used"] == ["CPUExecutionProvider"]
    assert s["runtime"]["bundle_precision"] == "fp32" and s["bundle"]["precision"] == {"dtype": "fp32"}
    on_disk = json.loads((outdir / "m_summary.json").read_text())
    assert on_disk["runtime"] == s["runtime"] and on_disk["options"]["provider"] == "cpu"


def test_int8_codec_round_trip_error_is_half_a_step() -> None:
    rng = np.random.default_rng(0)
    v = (
        rng.normal(0, 1, (3, 40, 50)).astype(np.float32)
        * np.array([0.1, 5.0, 1.0], np.float32)[:, None, None]
    )
    v[2] = 0.25  # a constant band is exact
    v[:, :3, :4] = np.nan
    scale, offset = int8_scale_offset(np.nanmin(v.reshape(3, -1), 1), np.nanmax(v.reshape(3, -1), 1))
    raw = quantize_int8(v, scale, offset)
    assert raw.dtype == np.int8 and (raw[:, :3, :4] == INT8_NODATA).all()
    ok = raw != INT8_NODATA
    assert raw[ok].min() >= -127 and raw[ok].max() <= 127
    back = dequantize_int8(raw, scale, offset)
    assert np.isnan(back[:, :3, :4]).all()
    err = np.abs(back - v)
    for b in range(3):
        assert np.nanmax(err[b]) <= scale[b] / 2 * (1 + 1e-5) + 1e-7
    assert np.nanmax(err[2]) == 0.0


@pytest.mark.parametrize("dtype", ["int8", "float16", "float32"])
def test_embedding_raster_reads_back_physical_values(
    dtype: str, stack_desc: Path, polygons: Path, bundle: Path, outdir: Path
) -> None:
    ref = outdir / "ref.tif"
    cropmap.classify(
        stack_desc,
        polygons,
        model=bundle,
        out=ref,
        embedding=True,
        quicklook=False,
        embedding_dtype="float32",
    )
    with rasterio.open(outdir / "ref_embedding.tif") as ds:
        want = ds.read()
    s = cropmap.classify(
        stack_desc,
        polygons,
        model=bundle,
        out=outdir / "m.tif",
        embedding=True,
        quicklook=False,
        embedding_dtype=dtype,
    ).to_dict()
    assert s["options"]["embedding_dtype"] == dtype
    assert s["embedding"]["dtype"] == dtype
    with rasterio.open(outdir / "m_embedding.tif") as ds:
        assert ds.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
        masked = ds.read(masked=True)
        if dtype == "int8":
            assert ds.dtypes[0] == "int8" and ds.nodata == INT8_NODATA
            scales, offsets = np.array(ds.scales), np.array(ds.offsets)
            got = masked.astype(np.float64) * scales[:, None, None] + offsets[:, None, None]
            got = got.filled(np.nan)
            bound = scales / 2
            assert s["embedding"]["max_abs_roundtrip_error"] == pytest.approx(bound.tolist(), rel=1e-5)
            stac = json.loads((outdir / "m_stac.json").read_text())["assets"]["embedding"]["raster:bands"]
            assert [b["scale"] for b in stac] == pytest.approx(scales.tolist())
            assert [b["offset"] for b in stac] == pytest.approx(offsets.tolist())
            assert {b["data_type"] for b in stac} == {"int8"} and {b["nodata"] for b in stac} == {INT8_NODATA}
        else:
            got = masked.filled(np.nan).astype(np.float64)
            bound = np.abs(np.nan_to_num(want)).max(axis=(1, 2)) * (2.0**-11 if dtype == "float16" else 0.0)
    assert np.array_equal(np.isnan(got), np.isnan(want))  # nodata stays nodata, classified pixels stay valued
    err = np.nanmax(np.abs(got - want).reshape(len(want), -1), axis=1)
    assert (err <= bound * (1 + 1e-4) + 1e-7).all(), (err, bound)
    if dtype == "int8":
        assert (err > 0).any()  # it is really quantised


def test_embedding_default_is_int8() -> None:
    assert ClassifyOptions().embedding_dtype == "int8" and ClassifyOptions().provider == "auto"
    with pytest.raises(ValueError, match="embedding_dtype is 'uint4'"):
        ClassifyOptions(embedding_dtype="uint4")


def test_precision_metadata_roundtrip_and_validation(bundle: Path, tmp_path: Path) -> None:
    meta = load_bundle(bundle).metadata
    assert meta.precision is None and meta.dtype == "fp32" and "precision" not in json.loads(meta.to_json())
    rec = Precision("int8", "int8 dynamic", 100, 0.995, 0.3, 0.99, 0.8, 0.79, "test")
    m8 = dataclasses.replace(meta, precision=rec)
    assert type(meta).from_json(m8.to_json()) == m8 and m8.dtype == "int8"
    model = onnx.load(str(bundle))
    onnx.helper.set_model_props(model, {METADATA_KEY: m8.to_json()})
    onnx.save(model, str(tmp_path / "m8.onnx"))
    assert load_bundle(tmp_path / "m8.onnx").metadata.precision == rec
    with pytest.raises(BundleError, match=r"precision\.argmax_agreement is 1\.5"):
        dataclasses.replace(meta, precision=dataclasses.replace(rec, argmax_agreement=1.5)).to_json()
    with pytest.raises(BundleError, match=r"precision\.dtype is 'fp32'"):
        dataclasses.replace(meta, precision=dataclasses.replace(rec, dtype="fp32")).to_json()


def test_batch_records_provider_per_region_and_int8_embedding_setting(
    stack_desc: Path, polygons: Path, bundle: Path, tmp_path: Path
) -> None:
    from cropmap.regions import Region

    out = tmp_path / "batch"
    s = cropmap.classify_many(
        [Region("a", stack_desc, polygons)],
        out_dir=out,
        model=bundle,
        workers=1,
        embedding=True,
        provider="cpu",
        quicklook=False,
    )
    row = s["regions"][0]
    assert row["status"] == "done" and row["providers_used"] == ["CPUExecutionProvider"]
    assert s["options"]["provider"] == "cpu" and s["options"]["embedding_dtype"] == "int8"
    with rasterio.open(out / "a" / "a_embedding.tif") as ds:
        assert ds.dtypes[0] == "int8"
    state = json.loads((out / "batch_state.json").read_text())
    assert state["settings"]["embedding_dtype"] == "int8"  # a resumed batch must keep the same storage
