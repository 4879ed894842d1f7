"""A real dask.distributed LocalCluster gives the same bytes as the local threaded run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio

import cropmap


def test_distributed_local_cluster_matches_threads(
    stack_desc: Path, polygons: Path, bundle: Path, outdir: Path
) -> None:
    distributed = pytest.importorskip("distributed")
    threads = cropmap.classify(
        stack_desc,
        polygons,
        model=bundle,
        out=outdir / "threads.tif",
        block_size=16,
        confidence=True,
        quicklook=False,
    ).to_dict()
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, host="127.0.0.1", processes=True, dashboard_address=None
    ) as cluster:
        dist = cropmap.classify(
            stack_desc,
            polygons,
            model=bundle,
            out=outdir / "dist.tif",
            block_size=16,
            confidence=True,
            quicklook=False,
            scheduler=cluster.scheduler_address,
        ).to_dict()
    assert dist["executor"].startswith("dask.distributed at tcp://127.0.0.1")
    assert dist["pixels"] == threads["pixels"] and dist["classes"] == threads["classes"]
    for name in ("{}.tif", "{}_confidence.tif"):
        with (
            rasterio.open(outdir / name.format("threads")) as a,
            rasterio.open(outdir / name.format("dist")) as b,
        ):
            np.testing.assert_array_equal(a.read(), b.read())
    assert (outdir / "threads.tif").read_bytes() == (outdir / "dist.tif").read_bytes()


def test_distributed_unreachable_scheduler(
    stack_desc: Path, polygons: Path, bundle: Path, outdir: Path
) -> None:
    with pytest.raises(cropmap.CropmapError, match="could not connect to the dask scheduler"):
        cropmap.classify(
            stack_desc, polygons, model=bundle, out=outdir / "m.tif", scheduler="tcp://127.0.0.1:9"
        )
    assert list(outdir.iterdir()) == []
