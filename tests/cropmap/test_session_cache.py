"""Sessions are reused across runs of one process, one thread per session at a time."""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest

from cropmap import predict
from cropmap.errors import BundleError
from cropmap.predict import MAX_CACHED_BUNDLES, bundle_session


def test_idle_sessions_are_reused_and_busy_ones_are_not_shared(bundle: Path, tmp_path: Path) -> None:
    # The first is in use while the second is taken: another session.
    with bundle_session(bundle, 1) as first, bundle_session(bundle, 1) as second:
        assert second is not first
    with bundle_session(bundle, 1) as again:
        assert again in (first, second)  # an idle one is reused
    with bundle_session(bundle, 2) as other:
        assert other not in (first, second)  # another thread count: its own sessions
    # Threads running at once each hold their own session.
    held: list[object] = []
    barrier = threading.Barrier(3)

    def hold() -> None:
        with bundle_session(bundle, 1) as b:
            held.append(b)
            barrier.wait(timeout=30)

    threads = [threading.Thread(target=hold) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({id(b) for b in held}) == 3
    # A rewritten bundle (new modification time) is opened again.
    st = bundle.stat()
    os.replace(shutil.copy(bundle, tmp_path / "copy.onnx"), bundle)
    os.utime(bundle, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    with bundle_session(bundle, 1) as fresh:
        assert fresh not in held and fresh not in (first, second)
        x = np.zeros((2, fresh.metadata.n_timesteps, fresh.metadata.n_bands), dtype=np.float32)
        assert fresh.run(x).shape == (2, len(fresh.metadata.classes))


def test_the_cache_is_bounded_and_a_missing_bundle_is_a_clear_error(bundle: Path, tmp_path: Path) -> None:
    for threads in range(1, MAX_CACHED_BUNDLES + 3):
        with bundle_session(bundle, threads):
            pass
    assert len(predict._IDLE) <= MAX_CACHED_BUNDLES
    with pytest.raises(BundleError, match="does not exist"), bundle_session(tmp_path / "none.onnx", 1):
        pass


def test_batches_shared_among_sessions_give_the_same_results(bundle: Path) -> None:
    from cropmap.predict import run_batches

    rng = np.random.default_rng(0)
    with bundle_session(bundle, 1) as a, bundle_session(bundle, 1) as b, bundle_session(bundle, 1) as c:
        meta = a.metadata
        x = rng.normal(size=(1000, meta.n_timesteps, meta.n_bands)).astype(np.float32)
        one, _ = run_batches([a], x, 64)
        three, _ = run_batches([a, b, c], x, 64)
        assert one.shape == (1000, len(meta.classes)) and one.dtype == np.float32
        np.testing.assert_allclose(three, one, rtol=1e-5, atol=1e-5)  # every batch landed at its own rows
        np.testing.assert_allclose(one, a.run(x), rtol=1e-4, atol=1e-4)
        if meta.embedding is not None:
            lo, vec = run_batches([a, b], x, 300, embedding=True)
            ref_lo, ref_vec = a.run(x, embedding=True)
            np.testing.assert_allclose(lo, ref_lo, rtol=1e-4, atol=1e-4)
            np.testing.assert_allclose(vec, ref_vec, rtol=1e-4, atol=1e-4)
        # Fewer batches than sessions (and no pixel at all) are fine.
        few, _ = run_batches([a, b, c], x[:10], 64)
        np.testing.assert_allclose(few, one[:10], rtol=1e-5, atol=1e-5)
        assert run_batches([a, b], x[:0], 64)[0].shape == (0, len(meta.classes))


def test_a_session_pool_runs_batches_on_its_threads_with_the_same_results(bundle: Path) -> None:
    from cropmap.predict import SessionPool

    rng = np.random.default_rng(0)
    with SessionPool(bundle, "cpu", 2) as pool, bundle_session(bundle, 1) as ref:
        meta = pool.metadata
        assert pool.threads == 2
        x = rng.normal(size=(700, meta.n_timesteps, meta.n_bands)).astype(np.float32)
        logits, vec, provider = pool.run(x, 64)
        assert vec is None and provider == "CPUExecutionProvider" and logits.shape == (700, len(meta.classes))
        np.testing.assert_allclose(logits, ref.run(x), rtol=1e-4, atol=1e-4)  # every batch back in its place
        if meta.embedding is not None:
            lo, vec, _ = pool.run(x, 300, embedding=True)
            ref_lo, ref_vec = ref.run(x, embedding=True)
            np.testing.assert_allclose(vec, ref_vec, rtol=1e-4, atol=1e-4)
            np.testing.assert_allclose(lo, ref_lo, rtol=1e-4, atol=1e-4)
        empty = pool.run(x[:0], 64)
        assert empty[0].shape == (0, len(meta.classes)) and empty[2] is None
        with pytest.raises(
            Exception, match=r"(?i)invalid|dimension|shape"
        ):  # ONNX Runtime's own error, raised here
            pool.run(x[:, :, :1].copy(), 64)
        np.testing.assert_allclose(pool.run(x[:10], 4)[0], logits[:10], rtol=1e-5, atol=1e-5)  # still usable


def test_the_batches_of_one_block_run_on_all_the_sessions_of_the_run(
    bundle: Path, stack_desc: Path, polygons: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import time

    import rasterio

    import cropmap
    from cropmap.predict import SessionPool

    threads: set[str] = set()
    real = SessionPool._one

    def spy(self, x, embedding):  # type: ignore[no-untyped-def]
        threads.add(threading.current_thread().name)
        time.sleep(0.002)  # long enough that the other thread takes the next batch
        return real(self, x, embedding)

    monkeypatch.setattr(SessionPool, "_one", spy)
    one = cropmap.classify(
        stack_desc, polygons, model=bundle, out=tmp_path / "a.tif", threads=1, batch_size=16
    ).to_dict()
    assert len(threads) == 1
    threads.clear()
    two = cropmap.classify(
        stack_desc, polygons, model=bundle, out=tmp_path / "b.tif", threads=2, batch_size=16, block_size=4096
    ).to_dict()  # one block, two threads
    assert two["executor"] == "local threads (1 block workers; 2 single-threaded ONNX Runtime sessions)"
    assert len(threads) == 2 and all(t.startswith("cropmap-session") for t in threads)
    assert one["classes"] == two["classes"]
    with rasterio.open(tmp_path / "a.tif") as ra, rasterio.open(tmp_path / "b.tif") as rb:
        assert (ra.read(1) == rb.read(1)).all()
