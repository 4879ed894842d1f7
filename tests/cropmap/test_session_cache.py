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
    with bundle_session(bundle, 1) as first:
        with bundle_session(bundle, 1) as second:  # the first is in use: another session
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
