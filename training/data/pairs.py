"""Bi-modal pre-training pairs from a Sentinel-2 stack and real second-modality scenes: ``cropmap data pairs``.

``cropmap data pairs S2_STACK PS_SCENES... -o OUT`` (alias ``python -m training.pairs``) pairs every S2 pixel
with the ``k x k`` window of the
second modality covering it (PlanetScope: 3 x 3 pixels of 3 m, as the papers), on the S2 dates that have a
second-modality acquisition within ``--max-day-offset`` days (default 0: same day). S2_STACK is anything
``cropmap classify`` reads; PS_SCENES is a folder, GeoTIFF files or a STAC item collection (see
:mod:`training.data.scenes` for how bands, dates and UDM2 masks are found).

The pairing grid has the S2 stack's CRS and origin and the second modality's pixel size (``--second-res-m``);
S2 pixel (row, col) is paired with the window whose first pixel is the one holding the S2 pixel's upper-left
corner (``floor(row * s2_res / res)``), as :func:`training.data.denethor.ps_patches` reads the DENETHOR layout.
Scenes on that grid shifted by whole pixels are read as they are; others (another CRS, origin or pixel size)
are warped onto it (``--resampling``, nearest by default), never assumed aligned. Scenes of one day are
mosaicked, the first usable value winning.

Masks on both sides: an S2 observation is left out where a band is nodata or the stack's cloud band marks it
(:mod:`cropmap.contract.clouds`, the rule inference applies); a second-modality window is left out where any of its pixels
is outside every scene or not usable in the scene it comes from (UDM2 ``clear`` band, ``--mask-band``).

Output, written into a temporary folder beside OUT and renamed into place when complete::

    OUT/pairs.json       manifest: format, bands of both sides, k, resolution, dates, provenance, counts
    OUT/point/s2.npy     (N, C) float32 S2 reflectance x 10000          (--alignment point or both)
    OUT/point/ps.npy     (N, k*k*C2) float32 second-modality values as stored, (row, col, band) order
    OUT/point/index.npy  (N, 3) int64 (stamp, row, col): stamp indexes pairs.json "dates"
    OUT/time/s2.npy      (N, T, C) float32 S2 series at the T matched stamps  (--alignment time or both)
    OUT/time/ps.npy      (N, T, k*k*C2) float32
    OUT/time/index.npy   (N, 2) int64 (row, col)
    OUT/time/s2_valid.npy, ps_valid.npy   (N, T) bool: False where the observation was masked and gap-filled

Time-wise series are gap-filled where an observation is masked (each side with its own mask) by
:func:`cropmap.contract.timegrid.fill_gaps`, the gap fill inference applies; pixels with fewer than ``--min-valid`` valid
observations on either side are left out. Arrays are streamed to disk block by block (:class:`NpyAppender`), so
memory is bounded by the block size, never by the number of pairs. ``python -m training.pretrain --data OUT``
reads them memory-mapped.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from affine import Affine
from rasterio.warp import Resampling
from rasterio.windows import Window

from cropmap.contract.bands import S2_BANDS
from cropmap.contract.clouds import CloudMask, no_cloud_message, resolve_cloud_mask
from cropmap.contract.timegrid import fill_gaps
from cropmap.errors import OutputExistsError
from cropmap.mask import Polygons, load_polygons, rasterize_block
from cropmap.safeio.atomic import atomic_path
from cropmap.stack import Stack, bounded_gdal_cache, open_stack
from training.data.scenes import (
    DEFAULT_MASK_BAND,
    PS_BANDS,
    PairsError,
    SecondScene,
    find_scenes,
    footprint_in,
    mosaic,
)

logger = logging.getLogger(__name__)

__all__ = [
    "MANIFEST",
    "PAIRS_FORMAT",
    "NpyAppender",
    "PairConfig",
    "PairsError",
    "build_pairs",
    "main",
    "read_pairs",
]

S2_BAND_NAMES: tuple[str, ...] = tuple(b for b in S2_BANDS if b != "B10")
"""Default S2 bands: the 12 L2A bands of DENETHOR's ``bands.npy`` (B10 is not in L2A products)."""
PAIRS_FORMAT = 1
MANIFEST = "pairs.json"
TARGET_SCALE = 10000.0
"""S2 values are written as reflectance x this (the DENETHOR / model units)."""
DROP_REASONS = (
    "s2 nodata",
    "s2 cloud",
    "no second-modality date",
    "outside second-modality footprint",
    "second-modality mask",
)
_EPS = 1e-6
_HEADER_BYTES = 128


class NpyAppender:
    """An ``.npy`` file written row block by row block, its length fixed in the header when closed.

    The header is written with a fixed size (:data:`_HEADER_BYTES`, 64-byte aligned) and rewritten on
    :meth:`close` with the final shape, so rows go straight from each block to disk: memory never holds more than
    one block, whatever the number of rows.
    """

    def __init__(self, path: Path, tail: tuple[int, ...], dtype: Any) -> None:
        self.path, self.tail, self.dtype = path, tuple(tail), np.dtype(dtype)
        self.rows = 0
        self._fh = open(path, "wb")  # noqa: SIM115 - closed in close()
        self._fh.write(self._header())

    def _header(self) -> bytes:
        d = {
            "descr": np.lib.format.dtype_to_descr(self.dtype),
            "fortran_order": False,
            "shape": (self.rows, *self.tail),
        }
        text = repr(d).encode("latin1")
        pad = _HEADER_BYTES - 10 - len(text) - 1
        if pad < 0:
            raise ValueError(f"shape {d['shape']} does not fit a {_HEADER_BYTES}-byte .npy header")
        body = text + b" " * pad + b"\n"
        return b"\x93NUMPY\x01\x00" + len(body).to_bytes(2, "little") + body

    def append(self, rows: np.ndarray) -> None:
        """Append rows of shape ``(n, *tail)``."""
        rows = np.ascontiguousarray(rows, dtype=self.dtype)
        if rows.shape[1:] != self.tail:
            raise ValueError(f"rows of shape {rows.shape[1:]}; this file holds {self.tail}")
        self._fh.write(rows.tobytes())
        self.rows += rows.shape[0]

    def close(self) -> None:
        """Write the final shape into the header and close the file."""
        self._fh.seek(0)
        self._fh.write(self._header())
        self._fh.close()


@dataclass(frozen=True)
class PairConfig:
    """How pairs are built (every field is a command-line option)."""

    s2_bands: tuple[str, ...] = S2_BAND_NAMES
    """S2 bands, by name, in output order (default: DENETHOR's 12 L2A bands, B10 left out)."""
    second_bands: tuple[str, ...] = PS_BANDS
    """Second-modality bands by name (band descriptions), in output order."""
    k: int = 3
    """Window side in second-modality pixels (PlanetScope: 3; Sentinel-1 at 10 m: 1)."""
    second_res_m: float = 3.0
    """Pixel size of the pairing grid for the second modality, in the S2 stack's CRS units."""
    mask_band: str = DEFAULT_MASK_BAND
    """Usable-data band of the second modality (UDM2 ``clear``), or ``none``."""
    mask_usable: float = 1.0
    """Value of :attr:`mask_band` marking a usable pixel."""
    max_day_offset: int = 0
    """S2 and second-modality dates match within this many days (0: same day, as the papers)."""
    alignment: tuple[str, ...] = ("point", "time")
    resampling: str = "nearest"
    """Resampling of scenes not on the pairing grid (rasterio name)."""
    min_valid: int = 1
    """Time-wise: fewest valid observations a pixel needs on each side."""
    block_px: int = 64
    """S2 pixels per block side; memory is bounded by it."""
    cloud_band: str | None = None
    cloud_threshold: float | None = None
    cloud_classes: tuple[int, ...] | None = None
    cloud_scale: float | None = None
    """As ``cropmap classify --cloud-scale``: raw value of cloud probability 1 in a probability band."""
    reflectance_scale: float | None = None
    polygons: str | None = None
    layer: str | None = None

    def __post_init__(self) -> None:
        """Validate."""
        if self.k < 1:
            raise PairsError(f"--k must be >= 1, got {self.k}")
        if not self.second_res_m > 0:
            raise PairsError(f"--second-res-m must be positive, got {self.second_res_m}")
        if self.max_day_offset < 0:
            raise PairsError(f"--max-day-offset must be >= 0, got {self.max_day_offset}")
        if not self.alignment or set(self.alignment) - {"point", "time"}:
            raise PairsError(f"--alignment must be point, time or both, got {self.alignment}")
        if self.block_px < 1 or self.min_valid < 1:
            raise PairsError("--block-px and --min-valid must be >= 1")
        if self.resampling not in Resampling.__members__:
            raise PairsError(
                f"--resampling {self.resampling!r}: expected one of {', '.join(Resampling.__members__)}"
            )
        if not self.s2_bands or not self.second_bands:
            raise PairsError("--s2-bands and --second-bands must name at least one band")


@dataclass
class PairSummary:
    """What was kept and dropped, and why (counts of pixel observations)."""

    point_pairs: int = 0
    time_series: int = 0
    matched_stamps: int = 0
    stamps: int = 0
    dropped: Counter[str] = field(default_factory=Counter)
    time_dropped: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0

    def lines(self, cfg: PairConfig) -> list[str]:
        """Human-readable summary."""
        out = [f"S2 stamps with a second-modality date: {self.matched_stamps} of {self.stamps}"]
        if "point" in cfg.alignment:
            why = ", ".join(f"{k} {v}" for k, v in self.dropped.items() if v) or "none"
            out.append(f"point-wise pairs kept: {self.point_pairs}; dropped: {why}")
        if "time" in cfg.alignment:
            why = ", ".join(f"{k} {v}" for k, v in self.time_dropped.items() if v) or "none"
            out.append(
                f"time-wise series kept: {self.time_series} ({self.matched_stamps} stamps each); "
                f"dropped pixels: {why}"
            )
        out.append(
            f"{self.point_pairs / max(self.seconds, 1e-9):,.0f} point-wise pairs/s ({self.seconds:.1f} s)"
        )
        return out


def match_dates(
    s2_dates: Sequence[dt.date], second_dates: Sequence[dt.date], max_day_offset: int
) -> dict[int, dt.date]:
    """S2 stamp index -> the nearest second-modality date within ``max_day_offset`` days (earlier on ties)."""
    days = sorted(set(second_dates))
    out: dict[int, dt.date] = {}
    for i, d in enumerate(s2_dates):
        best = min(days, key=lambda p: (abs((p - d).days), p))
        if abs((best - d).days) <= max_day_offset:
            out[i] = best
    return out


def _check_grid(stack: Stack) -> None:
    t = stack.transform
    if t.b != 0 or t.d != 0 or t.e >= 0 or t.a <= 0 or not math.isclose(t.a, -t.e, rel_tol=1e-9):
        raise PairsError(f"S2 stack {stack.path} is not on a north-up grid of square pixels ({tuple(t)[:6]})")


def _check_overlap(stack: Stack, scenes: Sequence[SecondScene], polys: Polygons | None) -> None:
    left, top = stack.transform.c, stack.transform.f
    right, bottom = left + stack.transform.a * stack.width, top + stack.transform.e * stack.height
    hits = []
    for s in scenes:
        b = footprint_in(s, stack.crs)
        if b[0] < right and b[2] > left and b[1] < top and b[3] > bottom:
            hits.append(b)
    if not hits:
        span = footprint_in(scenes[0], stack.crs)
        raise PairsError(
            f"no overlap: none of the {len(scenes)} scenes overlaps the S2 stack {stack.path} "
            f"({[round(v, 1) for v in (left, bottom, right, top)]} in {stack.crs.to_string()}; "
            f"the first scene spans {[round(v, 1) for v in span]})"
        )
    if polys is not None:
        import shapely

        boxes = shapely.union_all([shapely.box(*b) for b in hits])
        if not any(g.intersects(boxes) for g in polys.geometries):
            raise PairsError(f"no overlap: no polygon of {polys.path} overlaps a second-modality scene")


def _windows(ratio: float, k: int, r0: int, r1: int, c0: int, c1: int) -> tuple[np.ndarray, ...]:
    """First pairing-grid row / col of each S2 row / col of the block, and the block's pairing-grid window."""
    rows = np.floor(np.arange(r0, r1) * ratio + _EPS).astype(np.int64)
    cols = np.floor(np.arange(c0, c1) * ratio + _EPS).astype(np.int64)
    return rows, cols, np.array([rows[0], cols[0], rows[-1] + k - rows[0], cols[-1] + k - cols[0]])


def _gather(
    values: np.ndarray, ok: np.ndarray, covered: np.ndarray, rows: np.ndarray, cols: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """k x k windows of (C, h, w) ``values`` at block-relative first rows / cols -> (n_r, n_c, k*k*C), ok, covered."""
    off = np.arange(k)
    rr = (rows - rows[0])[:, None, None, None] + off[None, None, :, None]  # (n_r, 1, k, 1)
    cc = (cols - cols[0])[None, :, None, None] + off[None, None, None, :]  # (1, n_c, 1, k)
    win = values[:, rr, cc]  # (C, n_r, n_c, k, k)
    win = np.moveaxis(win, 0, -1).reshape(rows.size, cols.size, -1)  # (row, col, band) order per window
    return win, ok[rr, cc].all(axis=(2, 3)), covered[rr, cc].all(axis=(2, 3))


def build_pairs(
    s2_stack: str | Path,
    scenes_in: Sequence[str | Path],
    out: str | Path,
    cfg: PairConfig | None = None,
    *,
    overwrite: bool = False,
    progress: bool = True,
) -> PairSummary:
    """Build the pairs and write OUT (layout in the module docstring).

    Raises:
        PairsError: For no overlap, no matching dates, a scene without CRS, missing bands and other bad inputs.
        cropmap.errors.CropmapError: For a stack or polygon file cropmap's readers reject.
        cropmap.errors.OutputExistsError: If OUT exists and ``overwrite`` is False (a ``FileExistsError``).
    """
    from tqdm.auto import tqdm

    cfg = cfg or PairConfig()
    out = Path(out)
    if out.exists() and not overwrite:
        raise OutputExistsError(f"{out} exists already; pass --overwrite to replace it")
    t_start = time.perf_counter()
    stack = open_stack(s2_stack, reflectance_scale=cfg.reflectance_scale)
    _check_grid(stack)
    missing = [b for b in cfg.s2_bands if b not in stack.bands]
    if missing:
        raise PairsError(
            f"bands missing: S2 stack {stack.path} has bands {list(stack.bands)}, lacks {missing} (--s2-bands)"
        )
    cloud = resolve_cloud_mask(
        stack.bands,
        stack.dtype,
        cloud_band=cfg.cloud_band,
        threshold=cfg.cloud_threshold,
        classes=cfg.cloud_classes,
        scale=cfg.cloud_scale,
        where=f"stack {stack.path}",
    )
    if cloud is None and (cfg.cloud_band or "").lower() != "none":
        logger.warning(no_cloud_message(f"stack {stack.path}", stack.bands))
    scenes = find_scenes(scenes_in, cfg.second_bands, cfg.mask_band)
    polys = None
    if cfg.polygons is not None:
        bounds = (
            stack.transform.c,
            stack.transform.f + stack.transform.e * stack.height,
            stack.transform.c + stack.transform.a * stack.width,
            stack.transform.f,
        )
        polys = load_polygons(cfg.polygons, stack.crs, bounds, layer=cfg.layer)
    _check_overlap(stack, scenes, polys)
    by_day: dict[dt.date, list[SecondScene]] = {}
    for s in scenes:
        by_day.setdefault(s.date, []).append(s)
    matched = match_dates(stack.dates, list(by_day), cfg.max_day_offset)
    if not matched:
        raise PairsError(
            f"no matching dates: none of the {len(stack.dates)} S2 dates ({stack.dates[0]} .. {stack.dates[-1]}) has "
            f"a second-modality scene within {cfg.max_day_offset} day(s); scene dates {min(by_day)} .. {max(by_day)} "
            "(--max-day-offset)"
        )
    stamps = sorted(matched)
    summary = PairSummary(matched_stamps=len(stamps), stamps=len(stack.dates))
    summary.dropped.update(dict.fromkeys(DROP_REASONS, 0))

    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(
        out
    ) as tmp:  # a folder: an existing one at out is replaced only once this one is complete
        tmp.mkdir()
        with bounded_gdal_cache():  # GDAL's default cache (5 % of RAM) would grow with the tiles read
            _write(stack, scenes, by_day, matched, stamps, cloud, polys, cfg, tmp, summary, progress, tqdm)
        summary.seconds = time.perf_counter() - t_start
        manifest = _manifest(stack, scenes, matched, stamps, cloud, cfg, summary, s2_stack, scenes_in)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return summary


def _write(
    stack: Stack,
    scenes: Sequence[SecondScene],
    by_day: dict[dt.date, list[SecondScene]],
    matched: dict[int, dt.date],
    stamps: list[int],
    cloud: CloudMask | None,
    polys: Polygons | None,
    cfg: PairConfig,
    tmp: Path,
    summary: PairSummary,
    progress: bool,
    tqdm: Any,
) -> None:
    k, c2 = cfg.k, len(cfg.second_bands)
    ratio = stack.transform.a / cfg.second_res_m
    width2 = k * k * c2
    n_t = len(stamps)
    unmatched = len(stack.dates) - n_t
    writers: dict[str, NpyAppender] = {}
    if "point" in cfg.alignment:
        (tmp / "point").mkdir()
        writers.update(
            p_s2=NpyAppender(tmp / "point" / "s2.npy", (len(cfg.s2_bands),), np.float32),
            p_ps=NpyAppender(tmp / "point" / "ps.npy", (width2,), np.float32),
            p_ix=NpyAppender(tmp / "point" / "index.npy", (3,), np.int64),
        )
    if "time" in cfg.alignment:
        (tmp / "time").mkdir()
        writers.update(
            t_s2=NpyAppender(tmp / "time" / "s2.npy", (n_t, len(cfg.s2_bands)), np.float32),
            t_ps=NpyAppender(tmp / "time" / "ps.npy", (n_t, width2), np.float32),
            t_ix=NpyAppender(tmp / "time" / "index.npy", (2,), np.int64),
            t_s2v=NpyAppender(tmp / "time" / "s2_valid.npy", (n_t,), np.bool_),
            t_psv=NpyAppender(tmp / "time" / "ps_valid.npy", (n_t,), np.bool_),
        )
    days = np.array([(stack.dates[t] - stack.dates[stamps[0]]).days for t in stamps], dtype=np.float64)
    resampling = Resampling[cfg.resampling]
    # Scene files are opened per block and stamp and closed after it: each open GDAL dataset keeps native memory
    # that grows with the file (about 0.4 MB for a 1790-row striped scene), so keeping a run's files open made
    # memory grow with the scenes' size (bench/bench_pairs.py); opening costs ~4 ms per file.
    blocks = [
        (r0, min(r0 + cfg.block_px, stack.height), c0, min(c0 + cfg.block_px, stack.width))
        for r0 in range(0, stack.height, cfg.block_px)
        for c0 in range(0, stack.width, cfg.block_px)
    ]
    try:
        for r0, r1, c0, c1 in tqdm(blocks, desc="pairs", unit="block", disable=not progress):
            h, w = r1 - r0, c1 - c0
            window = Window(c0, r0, w, h)
            wt = stack.transform @ Affine.translation(c0, r0)
            if polys is not None:
                region = rasterize_block(
                    polys.select((wt.c, wt.f - h * stack.transform.a, wt.c + w * stack.transform.a, wt.f)),
                    (h, w),
                    wt,
                )
            else:
                region = np.ones((h, w), dtype=bool)
            n_region = int(region.sum())
            if n_region == 0:
                continue
            summary.dropped["no second-modality date"] += n_region * unmatched
            s2 = stack.read(window, stamps, list(cfg.s2_bands))  # (T, C, h, w), NaN = nodata
            stack.to_model_units(s2, TARGET_SCALE)
            s2_nodata = ~np.isfinite(s2).all(axis=1)  # (T, h, w)
            if cloud is not None:
                s2_cloud = cloud.invalid(stack.read(window, stamps, [cloud.band])[:, 0]) & ~s2_nodata
            else:
                s2_cloud = np.zeros_like(s2_nodata)
            prow, pcol, (pr0, pc0, ph, pw) = _windows(ratio, k, r0, r1, c0, c1)
            ptrans = Affine(
                cfg.second_res_m,
                0.0,
                stack.transform.c + pc0 * cfg.second_res_m,
                0.0,
                -cfg.second_res_m,
                stack.transform.f - pr0 * cfg.second_res_m,
            )
            timewise = "time" in cfg.alignment
            s2_valid = ~(s2_nodata | s2_cloud)
            if timewise:  # the block's series at every stamp; point-wise needs one stamp at a time
                ps = np.empty((n_t, h, w, width2), dtype=np.float32)
                ps_ok = np.empty((n_t, h, w), dtype=bool)
            for i, t in enumerate(stamps):
                vals, cov, ok = mosaic(
                    by_day[matched[t]],
                    stack.crs,
                    ptrans,
                    (int(ph), int(pw)),
                    mask_usable=cfg.mask_usable,
                    resampling=resampling,
                )
                ps_i, ok_i, cov_i = _gather(vals, ok, cov, prow, pcol, k)
                if "point" in cfg.alignment:
                    _point(
                        s2[i],
                        ps_i,
                        s2_valid[i],
                        s2_nodata[i],
                        s2_cloud[i],
                        ok_i,
                        cov_i,
                        region,
                        t,
                        r0,
                        c0,
                        writers,
                        summary,
                    )
                if timewise:
                    ps[i], ps_ok[i] = ps_i, ok_i
            if timewise:
                _time(s2, ps, s2_valid, ps_ok, region, days, r0, c0, cfg, writers, summary)
    finally:
        for wr in writers.values():
            wr.close()


def _point(
    s2: np.ndarray,
    ps: np.ndarray,
    s2_valid: np.ndarray,
    s2_nodata: np.ndarray,
    s2_cloud: np.ndarray,
    ps_ok: np.ndarray,
    ps_cov: np.ndarray,
    region: np.ndarray,
    stamp: int,
    r0: int,
    c0: int,
    writers: dict[str, NpyAppender],
    summary: PairSummary,
) -> None:
    """Write one stamp's pairs of a block: s2 (C, h, w), ps (h, w, k*k*C2), masks (h, w)."""
    summary.dropped["s2 nodata"] += int((s2_nodata & region).sum())
    summary.dropped["s2 cloud"] += int((s2_cloud & region).sum())
    left = s2_valid & region
    summary.dropped["outside second-modality footprint"] += int((left & ~ps_cov).sum())
    summary.dropped["second-modality mask"] += int((left & ps_cov & ~ps_ok).sum())
    ri, ci = np.nonzero(left & ps_ok)
    if ri.size == 0:
        return
    writers["p_s2"].append(s2[:, ri, ci].T)
    writers["p_ps"].append(ps[ri, ci])
    writers["p_ix"].append(np.stack([np.full(ri.size, stamp), ri + r0, ci + c0], axis=1))
    summary.point_pairs += int(ri.size)


def _time(
    s2: np.ndarray,
    ps: np.ndarray,
    s2_valid: np.ndarray,
    ps_ok: np.ndarray,
    region: np.ndarray,
    days: np.ndarray,
    r0: int,
    c0: int,
    cfg: PairConfig,
    writers: dict[str, NpyAppender],
    summary: PairSummary,
) -> None:
    ri, ci = np.nonzero(region)
    x2 = np.moveaxis(s2[:, :, ri, ci], (2, 0, 1), (0, 1, 2))  # (N, T, C)
    xp = np.moveaxis(ps[:, ri, ci], 1, 0)  # (N, T, kkC2)
    v2 = s2_valid[:, ri, ci].T  # (N, T)
    vp = ps_ok[:, ri, ci].T
    few2 = v2.sum(axis=1) < cfg.min_valid
    fewp = vp.sum(axis=1) < cfg.min_valid
    summary.time_dropped["too few valid S2 observations"] += int(few2.sum())
    summary.time_dropped["too few valid second-modality observations"] += int((fewp & ~few2).sum())
    keep = ~(few2 | fewp)
    if not keep.any():
        return
    x2, xp, v2, vp = x2[keep], xp[keep], v2[keep], vp[keep]
    f2, _, _ = fill_gaps(np.where(v2[..., None], x2, np.float32(np.nan)), days, days, min_valid=1)
    fp, _, _ = fill_gaps(np.where(vp[..., None], xp, np.float32(np.nan)), days, days, min_valid=1)
    writers["t_s2"].append(f2)
    writers["t_ps"].append(fp)
    writers["t_ix"].append(np.stack([ri[keep] + r0, ci[keep] + c0], axis=1))
    writers["t_s2v"].append(v2)
    writers["t_psv"].append(vp)
    summary.time_series += int(keep.sum())


def _manifest(
    stack: Stack,
    scenes: Sequence[SecondScene],
    matched: dict[int, dt.date],
    stamps: list[int],
    cloud: CloudMask | None,
    cfg: PairConfig,
    summary: PairSummary,
    s2_stack: str | Path,
    scenes_in: Sequence[str | Path],
) -> dict[str, Any]:
    return {
        "format": PAIRS_FORMAT,
        "alignment": list(cfg.alignment),
        "s2_bands": list(cfg.s2_bands),
        "s2_units": f"reflectance x {TARGET_SCALE:g}",
        "second_bands": list(cfg.second_bands),
        "second_units": "as stored in the scenes",
        "k": cfg.k,
        "second_res_m": cfg.second_res_m,
        "ps_layout": "k x k window flattened in (row, col, band) order",
        "dates": [d.isoformat() for d in stack.dates],
        "stamps": stamps,
        "second_dates": {stack.dates[t].isoformat(): matched[t].isoformat() for t in stamps},
        "cloud_rule": None if cloud is None else cloud.as_dict(),
        "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()},
        "provenance": {
            "s2_stack": str(Path(s2_stack).resolve()),
            "crs": stack.crs.to_string(),
            "transform": list(stack.transform)[:6],
            "shape": list(stack.shape),
            "scenes": [
                {
                    "path": str(s.path.resolve()),
                    "date": s.date.isoformat(),
                    "crs": s.crs.to_string(),
                    "mask": None if s.mask_path is None else str(s.mask_path.resolve()),
                }
                for s in scenes
            ],
            "inputs": [str(p) for p in scenes_in],
        },
        "counts": {
            "point_pairs": summary.point_pairs,
            "time_series": summary.time_series,
            "point_dropped": dict(summary.dropped),
            "time_dropped": dict(summary.time_dropped),
            "matched_stamps": summary.matched_stamps,
            "stamps": summary.stamps,
            "seconds": round(summary.seconds, 3),
        },
    }


def read_pairs(path: str | Path, alignment: str) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """The ``s2`` and ``ps`` arrays of one alignment of a pairs folder, memory-mapped copy-on-write.

    Raises:
        ValueError: If the folder was written without that alignment or its manifest is of another format.
    """
    root = Path(path)
    manifest = json.loads((root / MANIFEST).read_text())
    if manifest.get("format") != PAIRS_FORMAT:
        raise ValueError(
            f"{root / MANIFEST} has format {manifest.get('format')}; this reader reads {PAIRS_FORMAT}"
        )
    if alignment not in manifest["alignment"]:
        raise ValueError(
            f"{root} holds {'/'.join(manifest['alignment'])}-wise pairs only; rerun python -m training.pairs "
            f"with --alignment {alignment} (or both)"
        )
    sub = root / alignment
    return np.load(sub / "s2.npy", mmap_mode="c"), np.load(sub / "ps.npy", mmap_mode="c"), manifest


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m training.pairs``: an alias of ``cropmap data pairs``; returns the exit status."""
    from cropmap.cli_common import run_command
    from training.data.cli import pairs as command

    return run_command(command, argv, prog_name="python -m training.pairs")


if __name__ == "__main__":
    sys.exit(main())
