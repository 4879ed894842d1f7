"""Temperature scaling of a classifier's probabilities, its expected calibration error and a reliability diagram.

:func:`calibrate` fits one temperature ``T > 0`` on validation logits by minimising
the negative log-likelihood of ``softmax(logits / T)`` (Guo et al. 2017, "On
calibration of modern neural networks"). The NLL is convex in ``1 / T``, so a
safeguarded Newton iteration on ``1 / T`` finds the optimum exactly. Dividing by ``T``
never changes the argmax, so the class map and accuracy stay the same; only the
probabilities (confidence, per-class probabilities, uncertainty) change.

ECE is the usual max-probability expected calibration error: the samples are binned
by their highest probability into ``n_bins`` equal-width bins on [0, 1], and ECE is
the sample-weighted mean of ``|accuracy - mean confidence|`` over the bins.

The result is a :class:`cropmap.contract.metadata.Calibration`, stored in the bundle metadata by
:func:`exporters.to_onnx.export_bundle` (``calibration_data=``) and applied by cropmap.
numpy only (matplotlib for the diagram); no torch needed.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from cropmap.contract.metadata import Calibration
from cropmap.errors import CropmapError
from cropmap.postprocess import softmax

logger = logging.getLogger(__name__)

DEFAULT_BINS = 15
_BETA_RANGE = (1e-3, 1e3)


class CalibrationError(CropmapError, ValueError):
    """The validation data cannot calibrate the model."""


def _check(logits: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(labels)
    if z.ndim != 2 or z.shape[1] < 2:
        raise CalibrationError(f"logits have shape {z.shape}; expected (N, K) with K >= 2")
    if y.shape != (z.shape[0],):
        raise CalibrationError(
            f"labels have shape {y.shape}; expected ({z.shape[0]},), one per row of logits"
        )
    if len(y) == 0:
        raise CalibrationError("no validation samples; expected at least one")
    if not np.issubdtype(y.dtype, np.integer) or y.min() < 0 or y.max() >= z.shape[1]:
        raise CalibrationError(
            f"labels must be integer column indices 0..{z.shape[1] - 1} of the logits; found "
            f"{y.dtype} values {y.min()}..{y.max()}"
        )
    if not np.isfinite(z).all():
        raise CalibrationError("logits contain NaN/inf")
    return z, y.astype(np.int64)


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, n_bins: int = DEFAULT_BINS) -> float:
    """Max-probability ECE of ``(N, K)`` probabilities against labels ``0..K-1``."""
    conf = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    idx = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, n_bins - 1)
    ece = 0.0
    for b in range(n_bins):
        sel = idx == b
        if sel.any():
            ece += sel.mean() * abs(correct[sel].mean() - conf[sel].mean())
    return float(ece)


def reliability_bins(
    probs: np.ndarray, labels: np.ndarray, n_bins: int = DEFAULT_BINS
) -> dict[str, np.ndarray]:
    """Per bin: ``count``, ``confidence`` (mean max probability) and ``accuracy`` (NaN for empty bins)."""
    conf = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    idx = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, n_bins - 1)
    count = np.bincount(idx, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(idx, weights=conf, minlength=n_bins) / count
        acc = np.bincount(idx, weights=correct.astype(float), minlength=n_bins) / count
    return {"edges": edges, "count": count, "confidence": mean_conf, "accuracy": acc}


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    """Mean negative log-likelihood of ``softmax(logits / temperature)``."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    m = z.max(axis=1, keepdims=True)
    lse = m[:, 0] + np.log(np.exp(z - m).sum(axis=1))
    return float(np.mean(lse - z[np.arange(len(labels)), labels]))


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The temperature minimising the validation NLL (Newton on ``beta = 1 / T``, bounded to [1e-3, 1e3])."""
    z, y = _check(logits, labels)
    zy = z[np.arange(len(y)), y]
    lo, hi = _BETA_RANGE
    beta = 1.0
    for _ in range(100):
        p = softmax(z * beta)
        ez = (p * z).sum(axis=1)
        grad = float(np.mean(ez - zy))  # d NLL / d beta
        hess = float(np.mean((p * z * z).sum(axis=1) - ez * ez))  # >= 0: NLL is convex in beta
        if abs(grad) < 1e-10:
            break
        if hess <= 1e-12:  # flat: the NLL keeps falling as beta grows (all correct) or shrinks
            beta = hi if grad < 0 else lo
            break
        step = grad / hess
        new = min(max(beta - step, lo), hi)
        # Newton on a convex 1-D function can overshoot far from the optimum: halve the step until the NLL falls.
        f0 = nll(z, y, 1.0 / beta)
        while nll(z, y, 1.0 / new) > f0 + 1e-12 and abs(new - beta) > 1e-12:
            new = beta + (new - beta) / 2
        if abs(new - beta) < 1e-10 * max(1.0, beta):
            beta = new
            break
        beta = new
    return 1.0 / beta


def calibrate(
    logits: np.ndarray, labels: np.ndarray, *, n_bins: int = DEFAULT_BINS, data: str = ""
) -> Calibration:
    """Fit temperature scaling on validation ``logits`` ``(N, K)`` and ``labels`` (column indices ``0..K-1``).

    Returns:
        The bundle's :class:`~cropmap.contract.metadata.Calibration` with ECE before and after.

    Raises:
        CalibrationError: On malformed inputs.
    """
    z, y = _check(logits, labels)
    t = fit_temperature(z, y)
    before = expected_calibration_error(softmax(z), y, n_bins)
    after = expected_calibration_error(softmax(z, t), y, n_bins)
    cal = Calibration(
        method="temperature",
        temperature=round(float(t), 6),
        ece_before=round(before, 6),
        ece_after=round(after, 6),
        n=len(y),
        n_bins=n_bins,
        data=data,
    )
    logger.info(
        "temperature scaling on %d samples: T = %.4g, ECE %.4f -> %.4f, NLL %.4f -> %.4f",
        len(y),
        t,
        before,
        after,
        nll(z, y, 1.0),
        nll(z, y, t),
    )
    return cal


def reliability_diagram(
    logits: np.ndarray, labels: np.ndarray, calibration: Calibration, out: str | Path, *, title: str = ""
) -> Path:
    """Write a reliability diagram (PNG): accuracy vs confidence per bin, before and after scaling.

    Bars are the accuracy of each confidence bin; the diagonal is perfect calibration;
    the bottom panel shows how many samples fall into each bin.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    z, y = _check(logits, labels)
    n_bins = calibration.n_bins
    fig = Figure(figsize=(9, 5.2), dpi=110)
    FigureCanvasAgg(fig)
    panels = (
        ("uncalibrated softmax", softmax(z), calibration.ece_before),
        (
            f"temperature scaled (T = {calibration.temperature:.3g})",
            softmax(z, calibration.temperature),
            calibration.ece_after,
        ),
    )
    for i, (name, p, ece) in enumerate(panels):
        rb = reliability_bins(p, y, n_bins)
        centres = (rb["edges"][:-1] + rb["edges"][1:]) / 2
        width = 1.0 / n_bins
        ax = fig.add_axes((0.07 + i * 0.48, 0.36, 0.4, 0.52))
        has = rb["count"] > 0
        ax.bar(
            centres[has],
            rb["accuracy"][has],
            width=width * 0.95,
            color="#4477aa",
            edgecolor="white",
            label="accuracy",
        )
        ax.bar(
            centres[has],
            rb["confidence"][has] - rb["accuracy"][has],
            bottom=rb["accuracy"][has],
            width=width * 0.95,
            color="#ee6677",
            alpha=0.35,
            label="gap to confidence",
        )
        ax.plot([0, 1], [0, 1], "k--", linewidth=1, label="perfect calibration")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_title(f"{name}\nECE {ece:.3f} (n = {len(y)}, {n_bins} bins)", fontsize=9)
        ax.set_ylabel("accuracy", fontsize=8)
        ax.tick_params(labelsize=7, labelbottom=False)
        if i == 0:
            ax.legend(fontsize=7, loc="upper left")
        hx = fig.add_axes((0.07 + i * 0.48, 0.1, 0.4, 0.2))
        hx.bar(centres, rb["count"], width=width * 0.95, color="0.5")
        hx.set_xlim(0, 1)
        hx.set_xlabel("confidence (max probability)", fontsize=8)
        hx.set_ylabel("samples", fontsize=8)
        hx.tick_params(labelsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    out = Path(out)
    fig.savefig(out, format="png")
    return out
