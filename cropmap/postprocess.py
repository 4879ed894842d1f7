"""Per-pixel probabilities, uncertainty, and optional spatial post-processing within the mask.

Probabilities are ``softmax(logits / T)`` with the bundle's calibration temperature
``T`` (1 for uncalibrated bundles). Two optional spatial filters act on the pixels
that were classified (inside the mask, with enough valid observations); every other
pixel neither votes nor receives a class:

* **probability smoothing** (``smooth_sigma``): each class probability becomes the
  Gaussian-weighted mean (standard deviation ``smooth_sigma`` px, kernel truncated at
  ``ceil(3 sigma)`` px) over the classified pixels around it (normalised
  convolution), before the argmax;
* **majority filter** (``majority_filter = N``, odd): each classified pixel takes the
  most frequent class among the classified pixels of the ``N x N`` window centred on
  it; a tie keeps the pixel's own class when it is among the most frequent, otherwise
  the first of them in the bundle's class order.

Smoothing runs first, then the argmax, then the majority filter. Both depend only on
the pixels within :attr:`PostProcess.halo` pixels, so blocks are processed with that
many pixels of overlap and the result does not depend on the block size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

UNCERTAINTY_METHODS = ("entropy", "margin")
"""``entropy``: Shannon entropy of the probabilities / ln K; ``margin``: 1 - (p1 - p2)."""


@dataclass(frozen=True)
class PostProcess:
    """The spatial filters of a run (both ``None``: no post-processing)."""

    majority_filter: int | None = None
    """Window edge ``N`` (odd, >= 3) of the majority filter."""
    smooth_sigma: float | None = None
    """Standard deviation in pixels of the Gaussian smoothing of the probabilities."""

    @property
    def active(self) -> bool:
        """Whether any filter is on."""
        return self.majority_filter is not None or self.smooth_sigma is not None

    @property
    def smooth_radius(self) -> int:
        """Half-width of the truncated Gaussian kernel (0 without smoothing)."""
        return 0 if self.smooth_sigma is None else max(1, math.ceil(3.0 * self.smooth_sigma))

    @property
    def halo(self) -> int:
        """Pixels of context each side of a block that the filters need."""
        return self.smooth_radius + (0 if self.majority_filter is None else self.majority_filter // 2)


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise ``softmax(logits / temperature)`` of ``(N, K)`` logits, float64."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def uncertainty(probs: np.ndarray, method: str, axis: int = 0) -> np.ndarray:
    """Uncertainty in [0, 1] (higher = less certain) of probabilities along ``axis``.

    ``entropy`` is the Shannon entropy divided by ``ln K`` (0: one class has all the
    mass; 1: uniform); ``margin`` is ``1 - (p_best - p_second)``.
    """
    p = np.asarray(probs, dtype=np.float64)
    k = p.shape[axis]
    if method == "entropy":
        if k < 2:
            return np.zeros(np.delete(p.shape, axis), dtype=np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            h = -np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0), axis=axis)
        return np.clip(h / math.log(k), 0.0, 1.0)
    if method == "margin":
        if k < 2:
            return np.zeros(np.delete(p.shape, axis), dtype=np.float64)
        top2 = -np.sort(-p, axis=axis).take([0, 1], axis=axis)
        first, second = np.moveaxis(top2, axis, 0)
        return np.clip(1.0 - (first - second), 0.0, 1.0)
    raise ValueError(f"uncertainty method is {method!r}; expected one of {UNCERTAINTY_METHODS}")


def _shift_sum_1d(a: np.ndarray, weights: np.ndarray, axis: int) -> np.ndarray:
    """``sum_j weights[j] * a shifted by (j - r)`` along ``axis``, zero outside the array."""
    r = len(weights) // 2
    out = np.zeros_like(a)
    n = a.shape[axis]
    for j, w in enumerate(weights):
        d = j - r
        if abs(d) >= n or w == 0:
            continue
        src = [slice(None)] * a.ndim
        dst = [slice(None)] * a.ndim
        src[axis] = slice(max(0, d), n + min(0, d))
        dst[axis] = slice(max(0, -d), n - max(0, d))
        out[tuple(dst)] += w * a[tuple(src)]
    return out


def gaussian_weights(sigma: float) -> np.ndarray:
    """The truncated 1-D Gaussian (radius ``ceil(3 sigma)``), unnormalised (the convolution normalises)."""
    r = max(1, math.ceil(3.0 * sigma))
    x = np.arange(-r, r + 1, dtype=np.float64)
    return np.exp(-0.5 * (x / sigma) ** 2)


def smooth_probabilities(probs: np.ndarray, valid: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian-weighted mean of ``(K, rows, cols)`` probabilities over the ``valid`` pixels.

    Pixels outside ``valid`` contribute nothing and get 0; every valid pixel gets a
    distribution again (its own weight is never 0).
    """
    w = gaussian_weights(sigma)
    m = valid.astype(np.float64)
    num = probs.astype(np.float64) * m
    den = m
    for axis in (-2, -1):
        num = _shift_sum_1d(num, w, axis)
        den = _shift_sum_1d(den, w, axis)
    out = np.zeros(probs.shape, dtype=np.float64)
    np.divide(num, den, out=out, where=valid[None] & (den[None] > 0))
    return out


def box_counts(indicator: np.ndarray, size: int) -> np.ndarray:
    """Sums of ``indicator`` ``(..., rows, cols)`` over the ``size x size`` window centred on each pixel."""
    r = size // 2
    a = indicator.astype(np.int32)
    for axis in (-2, -1):
        a = _shift_sum_1d(a, np.ones(2 * r + 1, dtype=np.int32), axis)
    return a


def majority_filter(index: np.ndarray, valid: np.ndarray, size: int, n_classes: int) -> np.ndarray:
    """Majority of ``index`` (class column per pixel) over the valid pixels of each ``size x size`` window.

    Invalid pixels neither vote nor change (their ``index`` is returned as is).
    """
    onehot = np.zeros((n_classes, *index.shape), dtype=np.int32)
    rr, cc = np.nonzero(valid)
    onehot[index[rr, cc], rr, cc] = 1
    counts = box_counts(onehot, size).astype(np.float64)
    counts[index[rr, cc], rr, cc] += 0.5  # a tie keeps the pixel's own class
    best = np.argmax(counts, axis=0)  # further ties: the first class in the bundle's order
    return np.where(valid, best, index)
