"""Block plans: alignment with the file's tiles, full coverage, and the memory-bounded default."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cropmap.options import BLOCK_MEMORY_BUDGET_BYTES, DEFAULT_BLOCK_SIZE_PX
from cropmap.tiling import block_shape, plan_blocks

sides = st.integers(min_value=1, max_value=1000)
tiles = st.sampled_from([16, 64, 128, 256, 512])


@settings(deadline=None, max_examples=60)
@given(rows=sides, cols=sides, tile=tiles, requested=st.none() | st.integers(min_value=1, max_value=2048))
def test_block_shape_aligned_and_plan_covers_raster_once(
    rows: int, cols: int, tile: int, requested: int | None
) -> None:
    bh, bw = block_shape((tile, tile), (rows, cols), requested)
    for side, size in ((bh, rows), (bw, cols)):
        assert side == size or side % min(tile, size) == 0  # whole tiles, or the whole raster side
        assert 1 <= side <= size
    covered = {}
    for b in plan_blocks((rows, cols), (bh, bw)):
        assert b.height <= bh and b.width <= bw
        covered[(b.row_off, b.col_off)] = b.height * b.width
    assert sum(covered.values()) == rows * cols


def test_block_shape_default_shrinks_for_long_stacks_but_not_below_a_tile() -> None:
    short = 4 * 9 * (12 + 2 * 12)  # 12 monthly dates, 9 bands
    long = 4 * 12 * (144 + 2 * 144)  # the papers' 144 stamps x 12 bands
    assert block_shape((64, 64), (10_000, 10_000), None, bytes_per_pixel=4 * 9 * 12) == (512, 512)
    assert block_shape((64, 64), (10_000, 10_000), None, bytes_per_pixel=short) == (448, 448)
    bh, bw = block_shape((64, 64), (10_000, 10_000), None, bytes_per_pixel=long)
    assert bh * bw * long <= BLOCK_MEMORY_BUDGET_BYTES < 4 * bh * bw * long and bh % 64 == 0
    assert block_shape((256, 256), (10_000, 10_000), None, bytes_per_pixel=long) == (256, 256)
    # An explicit request is honoured whatever the stack length.
    assert block_shape((64, 64), (10_000, 10_000), DEFAULT_BLOCK_SIZE_PX, bytes_per_pixel=long) == (512, 512)


@pytest.mark.parametrize("tile", [(64, 64), (1, 1), (512, 512), (16, 16), (256, 128)])
@pytest.mark.parametrize("shape", [(100, 100), (1000, 700), (40, 40), (3, 900)])
def test_reflectance_sample_windows_lie_in_their_block_and_in_one_tile_where_they_fit(
    tile: tuple[int, int], shape: tuple[int, int]
) -> None:
    from cropmap.sanity import SAMPLE_EDGE_PX, _windows

    blocks = plan_blocks(shape, (min(512, shape[0]), min(512, shape[1])))
    for b, w in zip(blocks, _windows(blocks, tile), strict=False):
        assert b.row_off <= w.row_off and w.row_off + w.height <= b.row_off + b.height
        assert b.col_off <= w.col_off and w.col_off + w.width <= b.col_off + b.width
        assert (w.height, w.width) == (min(SAMPLE_EDGE_PX, b.height), min(SAMPLE_EDGE_PX, b.width))
        for off, size, length, start, t in (
            (w.row_off, w.height, b.height, b.row_off, tile[0]),
            (w.col_off, w.width, b.width, b.col_off, tile[1]),
        ):
            centre_tile = (start + length // 2) // t
            fits = max(centre_tile * t, start) + size <= min((centre_tile + 1) * t, start + length)
            if fits:  # one tile of the file, the one that holds the block's centre
                assert off // t == (off + size - 1) // t == centre_tile
            else:  # centred in the block
                assert off == start + (length - size) // 2


def test_the_reflectance_check_reads_few_observations_of_a_long_series() -> None:
    from types import SimpleNamespace

    import numpy as np

    from cropmap.errors import InputRasterError
    from cropmap.sanity import SAMPLE_OBSERVATIONS, check_reflectance

    read: list[list[int]] = []

    def fake_read(window, obs, bands):  # type: ignore[no-untyped-def]
        read.append(list(obs))
        return np.full((len(obs), len(bands), int(window.height), int(window.width)), value, dtype=np.float32)

    stack = SimpleNamespace(
        scale=SimpleNamespace(gain=1e-4, offset=0.0, reflectance_scale=1e4, source="tag"),
        read=fake_read,
        path="s.tif",
        tile_shape=(64, 64),
    )
    blocks = plan_blocks((100, 100), (100, 100))
    value = 1500.0  # reflectance 0.15: passes
    check_reflectance(stack, list(range(144)), ["B02", "B04"], blocks)  # type: ignore[arg-type]
    assert len(read) == 1 and len(read[0]) <= SAMPLE_OBSERVATIONS and read[0][0] == 0 and read[0][-1] >= 132
    value = 15.0  # reflectance 0.0015 x 100 off: refused from the sampled observations alone
    with pytest.raises(InputRasterError, match="orders of magnitude"):
        check_reflectance(stack, list(range(144)), ["B02", "B04"], blocks)  # type: ignore[arg-type]
