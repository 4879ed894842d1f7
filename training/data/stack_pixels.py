"""Unlabelled (date, pixel) observations of a Sentinel-2 GeoTIFF stack, for uni-modal pre-training.

``python -m training.data.stack_pixels STACK.tif OUT.npz [--n 100000] [--seed 0]`` writes ``s2`` (float32
``(N, C)`` raw digital numbers, every band valid) and ``bands``: the input ``python -m training.pretrain
--mode unimodal --data OUT.npz`` reads. Labels are never read.
"""

from __future__ import annotations

import argparse
import sys
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


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m training.data.stack_pixels``."""
    parser = argparse.ArgumentParser(
        prog="python -m training.data.stack_pixels", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("stack", type=Path, help="Sentinel-2 GeoTIFF time stack")
    parser.add_argument("out", type=Path, help="output .npz")
    parser.add_argument("--n", type=int, default=100_000, help="observations to keep (default 100,000)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        s2, bands, valid = stack_observations(args.stack, args.n, args.seed)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(args.out, suffix=".npz") as tmp:  # np.savez adds .npz to any other name
            np.savez(tmp, s2=s2, bands=np.array(bands))
    except (OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(
        f"{len(s2):,} of {valid:,} valid (date, pixel) observations, bands {', '.join(bands)} -> {args.out}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
