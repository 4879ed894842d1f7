"""Accuracy and area from a stratified reference sample (Olofsson et al. 2013, 2014).

Pure numpy: an error matrix of sample counts (rows: map class = stratum, columns:
reference class) and the mapped area of each stratum in, estimates out. The strata
are the map classes, as in Olofsson et al. (2014, Remote Sensing of Environment 148,
42-57, eq. 2-11); the same estimator serves a simple random or systematic sample
(post-stratified by map class).

Every estimate is a ratio ``R = Y / X`` of two stratified totals of per-unit values
(``y_u``, ``x_u``: overall accuracy ``y = 1[map = ref]``, ``x = 1``; user's accuracy
of class j ``y = 1[map = ref = j]``, ``x = 1[map = j]``; producer's ``x = 1[ref = j]``;
F1 ``y = 2 * 1[map = ref = j]``, ``x = 1[map = j] + 1[ref = j]``; area proportion
``y = 1[ref = j]``, ``x = 1``). Its variance is the stratified linearisation
``V(R) = 1 / X^2 * sum_h W_h^2 s^2_dh / n_h`` with ``d_u = y_u - R x_u`` (Stehman 2014,
Int. J. Remote Sens. 35, eq. 27-28), which equals the closed forms of Olofsson et al.
(2014) eq. 5 (overall), eq. 6 (user's), eq. 7 (producer's) and eq. 10 (area).
docs/accuracy.md writes them out.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

Z95 = 1.959963984540054
"""Standard normal quantile of a two-sided 95 % interval."""


@dataclass(frozen=True)
class Estimate:
    """A point estimate with its standard error (NaN where it is undefined)."""

    value: float
    se: float

    @property
    def ci95(self) -> tuple[float, float]:
        """The 95 % confidence interval ``value -/+ 1.96 SE``."""
        return (self.value - Z95 * self.se, self.value + Z95 * self.se)

    def as_dict(self, scale: float = 1.0, digits: int = 6) -> dict[str, float | list[float | None] | None]:
        """``{"estimate", "se", "ci95"}``, times ``scale``; NaN becomes ``None`` (JSON null)."""
        lo, hi = self.ci95
        return {
            "estimate": _num(self.value * scale, digits),
            "se": _num(self.se * scale, digits),
            "ci95": None
            if not math.isfinite(lo * hi)
            else [_num(lo * scale, digits), _num(hi * scale, digits)],
        }


def _num(v: float, digits: int) -> float | None:
    return round(float(v), digits) if math.isfinite(v) else None


@dataclass(frozen=True)
class StratifiedResult:
    """Estimates of a stratified accuracy assessment, classes in the order of the error matrix."""

    counts: np.ndarray
    """int ``(k, k)``: sample units, rows map class (stratum), columns reference class."""
    weights: np.ndarray
    """float ``(k,)``: W_i, the share of the mapped area in stratum i."""
    proportions: np.ndarray
    """float ``(k, k)``: estimated area proportions p_ij = W_i n_ij / n_i. (eq. 4)."""
    overall: Estimate
    users: tuple[Estimate, ...]
    producers: tuple[Estimate, ...]
    f1: tuple[Estimate, ...]
    area_proportion: tuple[Estimate, ...]
    """Estimated share of the mapped area whose reference class is j (eq. 9-10)."""
    kappa: float
    """Cohen's kappa of the estimated area-proportion matrix (no standard error; see docs/accuracy.md)."""
    kappa_sample: float
    """Cohen's kappa of the raw sample counts, for comparison with tools that report it."""


def _ratio(counts: np.ndarray, weights: np.ndarray, y: np.ndarray, x: np.ndarray) -> Estimate:
    """``sum_h W_h mean_h(y) / sum_h W_h mean_h(x)`` and its linearised standard error.

    ``y[h, j]`` and ``x[h, j]`` are the values of a unit of stratum h whose reference
    class is j; ``counts[h, j]`` how many such units the sample holds.
    """
    n_h = counts.sum(axis=1).astype(np.float64)
    share = counts / n_h[:, None]
    big_y = float(weights @ (share * y).sum(axis=1))
    big_x = float(weights @ (share * x).sum(axis=1))
    if big_x <= 0:
        return Estimate(math.nan, math.nan)
    r = big_y / big_x
    d = y - r * x
    mean_d = (share * d).sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        # A stratum of one unit has no within-stratum variance estimate: its term is taken as 0 (the caller
        # warns; the SE is then too small), and a ratio resting on such strata alone gets no SE (NaN, below).
        s2 = np.where(
            n_h > 1, (counts * (d - mean_d[:, None]) ** 2).sum(axis=1) / np.maximum(n_h - 1, 1), 0.0
        )
        terms = np.where(weights > 0, weights**2 * s2 / n_h, 0.0)
    informative = (weights > 0) & ((share * np.abs(y)).sum(axis=1) + (share * np.abs(x)).sum(axis=1) > 0)
    if informative.any() and np.all(n_h[informative] <= 1):
        return Estimate(r, math.nan)
    var = float(terms.sum()) / big_x**2 if np.all(np.isfinite(terms)) else math.nan
    return Estimate(r, math.sqrt(var) if var >= 0 else math.nan)


def stratified_estimate(
    counts: np.ndarray | Sequence[Sequence[int]], mapped_area: Sequence[float]
) -> StratifiedResult:
    """Accuracy and area proportions from a sample error matrix and the strata's mapped areas.

    Args:
        counts: ``(k, k)`` sample counts, rows the map class (stratum), columns the
            reference class, both in the same class order.
        mapped_area: ``(k,)`` mapped area (or pixel count) of each map class; the
            weights are ``W_i = A_i / sum(A)``.

    Every stratum with a mapped area needs at least two sample units for its variance;
    a stratum of one unit adds 0 to the variance of the estimates it enters (so their
    standard errors are too small; :func:`cropmap.assess.assess` warns), and the user's
    accuracy of that class gets no standard error (NaN). A stratum with a mapped area
    and no sample unit is refused (its row of the matrix is unknown).

    Raises:
        ValueError: For shapes that do not match, negative values, no mapped area, or
            a stratum with mapped area but no sample.
    """
    n = np.asarray(counts, dtype=np.int64)
    area = np.asarray(mapped_area, dtype=np.float64)
    k = area.shape[0]
    if n.shape != (k, k):
        raise ValueError(f"counts have shape {n.shape}; expected ({k}, {k}) for {k} mapped areas")
    if (n < 0).any() or (area < 0).any() or not np.isfinite(area).all():
        raise ValueError("counts and mapped areas must be non-negative and finite")
    if area.sum() <= 0:
        raise ValueError("the mapped areas sum to 0; expected at least one stratum with area")
    n_h = n.sum(axis=1)
    empty = [i for i in range(k) if area[i] > 0 and n_h[i] == 0]
    if empty:
        raise ValueError(f"strata {empty} have a mapped area but no sample unit; expected at least one each")
    w = area / area.sum()
    safe_n = np.where(n_h > 0, n_h, 1)
    p = w[:, None] * n / safe_n[:, None]
    eye = np.eye(k)
    ones = np.ones((k, k))
    nz = n_h > 0
    n_s, w_s = n[nz], w[nz]
    rows = np.arange(k)[nz]

    def est(y: np.ndarray, x: np.ndarray) -> Estimate:
        return _ratio(n_s, w_s, y[nz], x[nz])

    overall = est(eye, ones)
    users, producers, f1, areas = [], [], [], []
    for j in range(k):
        hit = np.zeros((k, k))
        hit[j, j] = 1.0
        in_row = np.zeros((k, k))
        in_row[j, :] = 1.0
        in_col = np.zeros((k, k))
        in_col[:, j] = 1.0
        users.append(est(hit, in_row) if j in rows else Estimate(math.nan, math.nan))
        producers.append(est(hit, in_col))
        f1.append(est(2 * hit, in_row + in_col))
        areas.append(est(in_col, ones))
    return StratifiedResult(
        counts=n,
        weights=w,
        proportions=p,
        overall=overall,
        users=tuple(users),
        producers=tuple(producers),
        f1=tuple(f1),
        area_proportion=tuple(areas),
        kappa=_kappa(p.sum(axis=0), p),
        kappa_sample=_kappa(n.sum(axis=0) / max(n.sum(), 1), n / max(n.sum(), 1)),
    )


def _kappa(col: np.ndarray, p: np.ndarray) -> float:
    """Cohen's kappa of a proportion matrix ``p`` (rows map, columns reference)."""
    po = float(np.trace(p))
    pe = float(p.sum(axis=1) @ col)
    return (po - pe) / (1 - pe) if pe < 1 else math.nan


# ---------------------------------------------------------------------------------------------- sample design


def sample_size(weights: Sequence[float], expected_users: Sequence[float], target_se: float) -> int:
    """Total sample size for a target standard error of overall accuracy (Olofsson et al. 2014, eq. 13).

    ``n = (sum_i W_i S_i / S(O))^2`` with ``S_i = sqrt(U_i (1 - U_i))``, rounded up.

    Args:
        weights: W_i, the share of the mapped area of each stratum (summing to 1).
        expected_users: The user's accuracy expected of each stratum (0..1).
        target_se: The standard error of overall accuracy aimed at, e.g. 0.01.
    """
    w = np.asarray(weights, dtype=np.float64)
    u = np.asarray(expected_users, dtype=np.float64)
    if w.shape != u.shape:
        raise ValueError(
            f"{w.size} weights and {u.size} expected user's accuracies; expected one each per stratum"
        )
    if not 0 < target_se < 1:
        raise ValueError(f"target standard error {target_se}; expected a value between 0 and 1, e.g. 0.01")
    if ((u < 0) | (u > 1)).any():
        raise ValueError("expected user's accuracies must lie between 0 and 1")
    s = np.sqrt(u * (1 - u))
    return max(1, math.ceil(float(w @ s / target_se) ** 2 - 1e-9))


def allocate(n: int, weights: Sequence[float], min_per_stratum: int) -> list[int]:
    """Split ``n`` sample units over strata: ``min_per_stratum`` in each small stratum, the rest by area.

    Olofsson et al. (2014, section 5.1.2) recommend giving the rare classes a fixed
    number of units (their example: 75 in each change stratum) and allocating the
    rest proportionally to area. Here a stratum whose proportional share
    ``n W_i`` falls below ``min_per_stratum`` gets ``min_per_stratum`` (never more than
    it can hold is decided by the caller); the others share what remains in proportion
    to their weights (largest remainders). Strata with no area get 0. When the minima
    alone exceed ``n``, every stratum with area gets ``min_per_stratum``.
    """
    w = np.asarray(weights, dtype=np.float64)
    if n < 1 or min_per_stratum < 0:
        raise ValueError("n must be >= 1 and min_per_stratum >= 0")
    w = w / w.sum()
    out = np.zeros(w.size, dtype=np.int64)
    small = (w > 0) & (n * w < min_per_stratum)
    # Moving a stratum to the minimum shrinks what the others share: repeat until stable.
    while True:
        rest = n - int(small.sum()) * min_per_stratum
        big = (w > 0) & ~small
        if rest <= 0 or not big.any():
            out[w > 0] = min_per_stratum
            return out.tolist()
        share = rest * w[big] / w[big].sum()
        newly = share < min_per_stratum
        if not newly.any():
            break
        idx = np.flatnonzero(big)[newly]
        small[idx] = True
    base = np.floor(share).astype(np.int64)
    order = np.argsort(-(share - base), kind="stable")
    base[order[: rest - int(base.sum())]] += 1
    out[small] = min_per_stratum
    out[np.flatnonzero(big)] = base
    return out.tolist()
