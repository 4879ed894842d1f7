"""The embedding raster at 32, 16 or 8 bits per value.

``--embedding-dtype`` chooses how ``<out stem>_embedding.tif`` stores the bundle's
per-pixel vectors (:data:`EMBEDDING_DTYPES`):

* ``int8`` (the default): signed 8-bit integers with a per-band GDAL scale and offset,
  ``value = raw x scale + offset``, nodata ``-128``. The scale and offset of each band
  are fitted to that band's minimum and maximum over the whole map (the blocks are
  staged as float32 first, then quantised in a second pass), so ``raw`` spans -127..127
  and the round-trip error of every value is at most ``scale / 2`` (half a step of
  ``(max - min) / 254``). GDAL, QGIS and rasterio (``masked=True`` then
  ``* ds.scales[b] + ds.offsets[b]``) read physical values. 1 byte per value.
* ``float16``: IEEE half floats (GeoTIFF ``NBITS=16`` on a Float32 band; GDAL reads
  Float32), relative error at most 2**-11, NaN nodata. 2 bytes per value.
* ``float32``: the graph's output as it is, NaN nodata. 4 bytes per value.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import rasterio.shutil
from rasterio.windows import Window

from cropmap.errors import BundleError
from cropmap.safeio.oserrors import io_step
from cropmap.writer import COG_BLOCK_SIZE_PX, BlockRaster, check_cog

EMBEDDING_DTYPES = ("int8", "float16", "float32")
"""Storage types of the embedding raster; the first is the default."""
DEFAULT_EMBEDDING_DTYPE = EMBEDDING_DTYPES[0]
INT8_NODATA = -128
INT8_STEPS = 254
"""Quantisation steps between a band's minimum (raw -127) and maximum (raw 127)."""
BYTES_PER_VALUE = {"int8": 1, "float16": 2, "float32": 4}
FLOAT16_MAX = 65504.0


def int8_scale_offset(lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-band ``(scale, offset)`` mapping ``[lo, hi]`` onto raw -127..127 (``value = raw x scale + offset``).

    A constant band (``lo == hi``) gets scale 1 and offset ``lo`` (raw 0 is then exact); a band without
    any value (``lo`` NaN) gets scale 1 and offset 0.
    """
    lo = np.asarray(lo, dtype=np.float64)
    hi = np.asarray(hi, dtype=np.float64)
    empty = ~np.isfinite(lo) | ~np.isfinite(hi)
    span = np.where(empty, 0.0, hi - lo)
    scale = np.where(span > 0, span / INT8_STEPS, 1.0)
    offset = np.where(empty, 0.0, np.where(span > 0, (hi + lo) / 2.0, lo))
    return scale, offset


def quantize_int8(values: np.ndarray, scale: np.ndarray, offset: np.ndarray) -> np.ndarray:
    """float ``(D, rows, cols)`` -> int8 raw values, :data:`INT8_NODATA` where NaN."""
    s = scale.reshape(-1, 1, 1)
    o = offset.reshape(-1, 1, 1)
    raw = np.rint((values - o) / s)
    raw = np.clip(np.nan_to_num(raw, nan=INT8_NODATA), -127, 127)
    raw[np.isnan(values)] = INT8_NODATA
    return raw.astype(np.int8)


def dequantize_int8(raw: np.ndarray, scale: np.ndarray, offset: np.ndarray) -> np.ndarray:
    """int8 raw ``(D, rows, cols)`` -> float32 physical values, NaN where :data:`INT8_NODATA`."""
    out = raw.astype(np.float32) * scale.reshape(-1, 1, 1).astype(np.float32) + offset.reshape(
        -1, 1, 1
    ).astype(np.float32)
    out[raw == INT8_NODATA] = np.nan
    return out


class EmbeddingRaster(BlockRaster):
    """The embedding written block by block as float32, converted to ``dtype`` when it becomes a COG.

    Args:
        path: The float32 scratch file.
        dtype: One of :data:`EMBEDDING_DTYPES`.
        **kwargs: As for :class:`~cropmap.writer.BlockRaster` (``count`` = the embedding size).
    """

    def __init__(self, path: Path, *, dtype: str, **kwargs: Any) -> None:
        if dtype not in EMBEDDING_DTYPES:
            raise ValueError(f"embedding dtype is {dtype!r}; expected one of {EMBEDDING_DTYPES}")
        super().__init__(path, dtype="float32", nodata=float("nan"), **kwargs)
        self.storage = dtype
        self.lo = np.full(self.count, np.inf)
        self.hi = np.full(self.count, -np.inf)
        self.scale: np.ndarray | None = None
        self.offset: np.ndarray | None = None

    def write(self, window: Window, data: np.ndarray) -> None:
        """Write a float32 ``(D, rows, cols)`` block (NaN = not classified) and track each band's range."""
        if np.isfinite(data).any():
            with np.errstate(all="ignore"):
                self.lo = np.fmin(self.lo, np.nanmin(data.reshape(self.count, -1), axis=1))
                self.hi = np.fmax(self.hi, np.nanmax(data.reshape(self.count, -1), axis=1))
        if self.storage == "float16":
            big = float(np.nanmax(np.abs(data))) if np.isfinite(data).any() else 0.0
            if big > FLOAT16_MAX:
                raise BundleError(
                    f"the embedding holds {big:.6g}, beyond the float16 range (+-{FLOAT16_MAX:g}); "
                    "expected --embedding-dtype int8 or float32 for this bundle"
                )
            # Round to nearest half float here: GDAL's own float32 -> NBITS=16 conversion truncates.
            data = data.astype(np.float16).astype(np.float32)
        super().write(window, data)

    def to_cog(self, dest: Path) -> None:
        """Write the COG at ``dest`` in the storage type (int8: a second pass over the float32 scratch)."""
        if self.storage == "float32":
            super().to_cog(dest)
            return
        with io_step("finish the temporary raster", self.path):
            self._ds.close()
        if self.storage == "float16":
            with io_step("write the Cloud-Optimised GeoTIFF", dest):
                rasterio.shutil.copy(
                    self.path,
                    dest,
                    driver="COG",
                    COMPRESS="DEFLATE",
                    BLOCKSIZE=COG_BLOCK_SIZE_PX,
                    NBITS=16,
                    OVERVIEW_RESAMPLING="NEAREST",
                    RESAMPLING="NEAREST",
                    OVERVIEWS="IGNORE_EXISTING",
                    BIGTIFF="IF_SAFER",
                    NUM_THREADS="1",
                )
                dest.with_name(dest.name + ".aux.xml").unlink(missing_ok=True)
                check_cog(dest)
            return
        lo = np.where(np.isfinite(self.lo), self.lo, np.nan)
        hi = np.where(np.isfinite(self.hi), self.hi, np.nan)
        self.scale, self.offset = int8_scale_offset(lo, hi)
        q_path = self.path.with_name(self.path.stem + ".int8.tif")
        try:
            with io_step("read the temporary raster", self.path), rasterio.open(self.path) as src:
                profile = src.profile | {"dtype": "int8", "nodata": INT8_NODATA}
                with (
                    io_step("create the temporary raster", q_path),
                    rasterio.open(q_path, "w", **profile) as dst,
                ):
                    dst.scales = tuple(float(v) for v in self.scale)
                    dst.offsets = tuple(float(v) for v in self.offset)
                    for i in range(1, self.count + 1):
                        dst.set_band_description(i, src.descriptions[i - 1] or "")
                    dst.update_tags(
                        **src.tags(),
                        embedding_encoding="int8: value = raw x scale + offset per band "
                        "(GDAL scale/offset), raw -128 = nodata; step (max - min) / 254 of each band",
                    )
                    rows = max(COG_BLOCK_SIZE_PX, 1)
                    for r0 in range(0, src.height, rows):
                        w = Window(0, r0, src.width, min(rows, src.height - r0))
                        dst.write(quantize_int8(src.read(window=w), self.scale, self.offset), window=w)
            with io_step("write the Cloud-Optimised GeoTIFF", dest):
                rasterio.shutil.copy(
                    q_path,
                    dest,
                    driver="COG",
                    COMPRESS="DEFLATE",
                    BLOCKSIZE=COG_BLOCK_SIZE_PX,
                    OVERVIEW_RESAMPLING="NEAREST",
                    RESAMPLING="NEAREST",
                    OVERVIEWS="IGNORE_EXISTING",
                    BIGTIFF="IF_SAFER",
                    NUM_THREADS="1",
                )
                dest.with_name(dest.name + ".aux.xml").unlink(missing_ok=True)
                check_cog(dest)
        finally:
            for p in (q_path, q_path.with_name(q_path.name + ".aux.xml")):
                p.unlink(missing_ok=True)

    def stac_bands(self) -> list[dict[str, Any]]:
        """STAC raster-extension band objects of the written raster (scale/offset for int8)."""
        if self.storage == "int8" and self.scale is not None and self.offset is not None:
            return [
                {"data_type": "int8", "nodata": INT8_NODATA, "scale": float(s), "offset": float(o)}
                for s, o in zip(self.scale, self.offset, strict=True)
            ]
        return [
            {"data_type": "float32", "nodata": "nan"}
            | ({"bits_per_sample": 16} if self.storage == "float16" else {})
            for _ in range(self.count)
        ]

    def describe(self) -> dict[str, Any]:
        """The storage of the written raster, for the run summary."""
        out: dict[str, Any] = {"dtype": self.storage, "bytes_per_value": BYTES_PER_VALUE[self.storage]}
        if self.storage == "int8" and self.scale is not None and self.offset is not None:
            out["max_abs_roundtrip_error"] = [round(float(s) / 2, 8) for s in self.scale]
            out["note"] = (
                "per-band GDAL scale/offset: value = raw x scale + offset; the round-trip error of each "
                "value is at most scale / 2 (listed per band)"
            )
        elif self.storage == "float16":
            out["note"] = "IEEE half floats (NBITS=16): relative round-trip error at most 2**-11"
        return out
