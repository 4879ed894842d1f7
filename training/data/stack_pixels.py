"""Unlabelled (date, pixel) observations of a Sentinel-2 GeoTIFF stack, for uni-modal pre-training.

``cropmap data stack-pixels STACK.tif -o OUT.npz [--n 100000] [--seed 0]`` (or ``python -m
training.data.stack_pixels STACK.tif OUT.npz``) writes ``s2`` (float32 ``(N, C)`` raw digital numbers, every band
valid) and ``bands``: the input ``cropmap train pretrain --mode unimodal --data OUT.npz`` reads. Labels are never
read.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from cropmap.safeio.atomic import atomic_path


def stack_observations(stack: Path, n: int, seed: int) -> tuple[np.ndarray, tuple[str, ...], int]:
    """Up to ``n`` valid observations drawn without replacement (sorted), their bands, and how many were valid."""
    from training.downstream.sample_model import read_stack_pixels

    values, _, bands = read_stack_pixels(stack)  # (T, C, N), NaN = nodata
    obs = values.transpose(0, 2, 1).reshape(-1, values.shape[1])
    obs = obs[np.isfinite(obs).all(axis=1)]
    pick = np.random.default_rng(seed).choice(len(obs), size=min(n, len(obs)), replace=False)
    return obs[np.sort(pick)].astype(np.float32), tuple(bands), len(obs)


def write_stack_pixels(stack: Path, out: Path, n: int, seed: int) -> tuple[int, int, tuple[str, ...]]:
    """Write up to ``n`` valid observations of ``stack`` to the ``.npz`` ``out`` (complete or absent).

    Returns:
        How many observations were written, how many were valid, and their bands.
    """
    s2, bands, valid = stack_observations(stack, n, seed)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out, suffix=".npz") as tmp:  # np.savez adds .npz to any other name
        np.savez(tmp, s2=s2, bands=np.array(bands))
    return len(s2), valid, bands


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m training.data.stack_pixels``: an alias of ``cropmap data stack-pixels``; returns the exit
    status."""
    from cropmap.cli_common import run_command
    from training.data.cli import stack_pixels as command

    return run_command(command, argv, prog_name="python -m training.data.stack_pixels")


if __name__ == "__main__":
    raise SystemExit(main())
