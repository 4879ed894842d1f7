"""One ONNX Runtime session per (bundle file, threads, provider) and process, shared by threads."""

from __future__ import annotations

import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from cropmap import predict
from cropmap.predict import MAX_CACHED_SESSIONS, worker_bundle


def test_threads_share_one_session_and_a_rewritten_bundle_is_reopened(bundle: Path, tmp_path: Path) -> None:
    with ThreadPoolExecutor(4) as pool:
        sessions = list(pool.map(lambda _: worker_bundle(bundle, 1), range(8)))
    assert len({id(s) for s in sessions}) == 1
    assert worker_bundle(bundle, 2) is not sessions[0]  # other thread count: its own session
    # Concurrent runs on the shared session give the same logits as one after the other.
    b = sessions[0]
    x = np.random.default_rng(0).uniform(0, 3000, (64, b.metadata.n_timesteps, b.metadata.n_bands)).astype(np.float32)
    one = [b.run(x[i : i + 8]) for i in range(0, 64, 8)]
    with ThreadPoolExecutor(4) as pool:
        many = list(pool.map(lambda i: b.run(x[i : i + 8]), range(0, 64, 8)))
    for a, c in zip(one, many, strict=True):
        np.testing.assert_array_equal(a, c)
    # Rewriting the file (new modification time) opens it again.
    st = bundle.stat()
    copy = shutil.copy(bundle, tmp_path / "copy.onnx")
    os.replace(copy, bundle)
    os.utime(bundle, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    assert worker_bundle(bundle, 1) is not sessions[0]


def test_the_cache_is_bounded(bundle: Path) -> None:
    for threads in range(1, MAX_CACHED_SESSIONS + 3):
        worker_bundle(bundle, threads)
    assert len(predict._SESSIONS) <= MAX_CACHED_SESSIONS
