"""Block plans: alignment with the file's tiles, full coverage, and the memory-bounded default."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from cropmap.options import BLOCK_MEMORY_BUDGET_BYTES, DEFAULT_BLOCK_SIZE_PX
from cropmap.tiling import block_shape, plan_blocks

sides = st.integers(min_value=1, max_value=1000)
tiles = st.sampled_from([16, 64, 128, 256, 512])


@settings(deadline=None, max_examples=60)
@given(rows=sides, cols=sides, tile=tiles, requested=st.none() | st.integers(min_value=1, max_value=2048))
def test_block_shape_aligned_and_plan_covers_raster_once(rows: int, cols: int, tile: int, requested: int | None) -> None:
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
