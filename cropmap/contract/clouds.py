"""Cloud and shadow masking: which observations of a pixel count as invalid before the gap fill.

This module is part of the contract: training masks its series with the same rules
(:func:`probability_invalid`, :data:`DEFAULT_CLOUD_THRESHOLD`) that inference applies.

A stack carries cloud information as one extra band per date, found by name
(band description ``YYYY-MM-DD_SCL`` in a single-file stack, ``SCL`` in each file of a
per-date folder, or the ``bands`` tag):

* ``SCL``: the Sen2Cor scene classification of L2A products. An observation is invalid
  when its class is in :data:`DEFAULT_SCL_INVALID` (or ``--cloud-classes``).
* a cloud-probability band: ``CLP`` (s2cloudless as Sentinel Hub and DENETHOR ship it,
  0..255 in integer files), ``CLD`` or ``MSK_CLDPRB`` (Sen2Cor's cloud probability,
  0..100 %); in float files any of them is read as a probability 0..1. An observation is
  invalid when its probability is above :data:`DEFAULT_CLOUD_THRESHOLD` (or
  ``--cloud-threshold``). ``--cloud-scale X`` (the raw value of probability 1) replaces
  these scales; a probability band of another name in an integer file needs it: its scale
  is never guessed.

Invalid observations become NaN, so :func:`cropmap.contract.timegrid.fill_gaps` treats them as
gaps exactly like nodata. A cloud value that is itself nodata (NaN after reading) says
nothing and masks nothing; the reflectance's own nodata still applies.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from cropmap.errors import InputRasterError

SCL_CLASSES: dict[int, str] = {
    0: "no data",
    1: "saturated or defective",
    2: "dark area pixels / topographic shadow",
    3: "cloud shadows",
    4: "vegetation",
    5: "not vegetated",
    6: "water",
    7: "unclassified",
    8: "cloud medium probability",
    9: "cloud high probability",
    10: "thin cirrus",
    11: "snow or ice",
}
"""Sen2Cor scene classification (SCL) values of Sentinel-2 L2A products."""

DEFAULT_SCL_INVALID: tuple[int, ...] = (0, 1, 3, 8, 9, 10, 11)
"""SCL classes masked by default: no data, saturated, cloud shadow, cloud medium / high probability, thin cirrus,
snow. Kept: dark areas (2; often terrain shadow or dark soil, masking it would erase wet ploughed fields),
vegetation, bare soil, water, unclassified (7; Sen2Cor puts low-probability cloud there, but also much clear land)."""

DEFAULT_CLOUD_THRESHOLD = 0.4
"""An observation whose cloud probability is above this is invalid (s2cloudless' default threshold)."""

SCL_NAMES: tuple[str, ...] = ("SCL",)
PROBABILITY_NAMES: dict[str, float] = {"CLP": 255.0, "CLD": 100.0, "MSK_CLDPRB": 100.0}
"""Cloud-probability band names and the raw value of probability 1 in integer files."""

DISABLED = "none"
"""``--cloud-band none``: the stack is known to be cloud-free (e.g. cloud-masked composites); no warning."""


def probability_invalid(probability: np.ndarray, threshold: float = DEFAULT_CLOUD_THRESHOLD) -> np.ndarray:
    """True where a cloud probability (0..1) marks the observation invalid; NaN is never invalid."""
    with np.errstate(invalid="ignore"):
        return np.asarray(probability) > threshold


@dataclass(frozen=True)
class CloudMask:
    """How a stack's cloud band turns into invalid observations."""

    band: str
    """The band's name in the stack."""
    kind: str
    """``"scl"`` or ``"probability"``."""
    invalid_classes: tuple[int, ...] | None
    """SCL classes that are invalid (``kind == "scl"``)."""
    threshold: float | None
    """Probability above which an observation is invalid (``kind == "probability"``)."""
    scale: float | None
    """Raw value of probability 1 (``kind == "probability"``)."""
    source: str
    """How the band was chosen: ``"found by name"`` or ``"--cloud-band"``."""

    def invalid(self, raw: np.ndarray) -> np.ndarray:
        """bool array of ``raw``'s shape: True where the observation is cloud, shadow, etc.

        Args:
            raw: Cloud band values as read (float32, NaN where the band is nodata).
        """
        if self.kind == "scl":
            assert self.invalid_classes is not None
            codes = np.where(np.isfinite(raw), raw, -1).astype(np.int64)
            return np.isin(codes, self.invalid_classes)
        assert self.threshold is not None and self.scale is not None
        return probability_invalid(raw / np.float32(self.scale), self.threshold)

    def apply(self, values: np.ndarray, raw: np.ndarray, count_in: np.ndarray) -> tuple[int, int]:
        """Turn the invalid observations of ``values`` into NaN (in place) and count them.

        Args:
            values: float32 ``(S, C, rows, cols)`` reflectance, NaN where missing.
            raw: float32 ``(S, rows, cols)`` cloud band values as read.
            count_in: bool ``(rows, cols)``: the pixels to count (the cropland mask).

        Returns:
            ``(observations, masked)``: observations of counted pixels with valid reflectance before
            masking, and how many of them were masked.
        """
        bad = self.invalid(raw)  # (S, rows, cols)
        valid = np.isfinite(values).all(axis=1)
        masked = bad & valid
        n_obs = int(valid[:, count_in].sum())
        n_masked = int(masked[:, count_in].sum())
        values[np.broadcast_to(bad[:, None], values.shape)] = np.nan
        return n_obs, n_masked

    def describe(self) -> str:
        """One line for logs and the summary."""
        if self.kind == "scl":
            names = ", ".join(f"{c} {SCL_CLASSES.get(c, '?')}" for c in self.invalid_classes or ())
            return f"band {self.band} (Sen2Cor SCL): classes {names} are masked"
        return f"band {self.band} (cloud probability, {self.scale:g} = 1): probability > {self.threshold:g} is masked"

    def as_dict(self) -> dict[str, object]:
        """The rule, for the run summary."""
        return {
            "band": self.band,
            "kind": self.kind,
            "source": self.source,
            "invalid_classes": list(self.invalid_classes) if self.invalid_classes is not None else None,
            "threshold": self.threshold,
            "probability_scale": self.scale,
        }


def _kind(name: str) -> str | None:
    key = name.strip().upper()
    if key in SCL_NAMES:
        return "scl"
    if key in PROBABILITY_NAMES:
        return "probability"
    return None


def resolve_cloud_mask(
    bands: Sequence[str],
    dtype: str,
    *,
    cloud_band: str | None = None,
    threshold: float | None = None,
    classes: Sequence[int] | None = None,
    scale: float | None = None,
    where: str = "the stack",
) -> CloudMask | None:
    """Choose the cloud band of a stack and the rule that masks it.

    Args:
        bands: Band names present at every date of the stack.
        dtype: The stack's data type (integer probability bands are scaled, float ones are 0..1).
        cloud_band: A band name to use (``--cloud-band``), :data:`DISABLED` for no masking,
            ``None`` to find one by name.
        threshold: Probability threshold for a probability band; ``None``: :data:`DEFAULT_CLOUD_THRESHOLD`.
        classes: Invalid SCL classes; ``None``: :data:`DEFAULT_SCL_INVALID`.
        scale: Raw value of cloud probability 1 in a probability band (``--cloud-scale``: 255 for 0..255,
            100 for percent, 1 for 0..1); ``None``: 1 in float files, the name's scale
            (:data:`PROBABILITY_NAMES`) in integer files.
        where: The stack, for messages.

    Returns:
        The :class:`CloudMask`, or ``None`` when the stack has no cloud band or masking is disabled.

    Raises:
        InputRasterError: If ``cloud_band`` is not in the stack or its kind is unknown, if the stack holds
            several cloud bands and none was chosen, if ``threshold`` / ``classes`` / ``scale`` do not fit the
            band's kind, or if an integer probability band of an unknown name comes without ``scale``.
    """
    if scale is not None and not (np.isfinite(scale) and scale > 0):
        raise InputRasterError(
            f"--cloud-scale is {scale!r}; expected the raw value of probability 1, e.g. 255 or 100"
        )
    if cloud_band is not None and cloud_band.strip().lower() == DISABLED:
        if threshold is not None or classes is not None or scale is not None:
            raise InputRasterError(
                "--cloud-threshold / --cloud-classes / --cloud-scale were given with --cloud-band none"
            )
        return None
    if cloud_band is not None:
        matches = [b for b in bands if b.strip().upper() == cloud_band.strip().upper()]
        if not matches:
            raise InputRasterError(
                f"--cloud-band {cloud_band} is not a band of {where} at every date; bands found: {list(bands)}"
            )
        band, source = matches[0], "--cloud-band"
        kind = _kind(band)
        if kind is None:
            if (threshold is not None or scale is not None) and classes is None:
                kind = "probability"
            elif classes is not None and threshold is None:
                kind = "scl"
            else:
                raise InputRasterError(
                    f"--cloud-band {band}: cropmap does not know this band's meaning (known: SCL, "
                    f"{', '.join(PROBABILITY_NAMES)}); give --cloud-threshold P (0..1) and, in an integer "
                    "file, --cloud-scale X (raw value of probability 1) for a cloud probability, or "
                    "--cloud-classes for a scene classification"
                )
    else:
        found = [b for b in bands if _kind(b) is not None]
        if not found:
            if threshold is not None or classes is not None or scale is not None:
                raise InputRasterError(
                    "--cloud-threshold / --cloud-classes / --cloud-scale were given but "
                    f"{where} has no cloud band "
                    f"(SCL, {', '.join(PROBABILITY_NAMES)}); bands found: {list(bands)}"
                )
            return None
        if len(found) > 1:
            raise InputRasterError(
                f"{where} holds several cloud bands {found}; choose one with --cloud-band NAME"
            )
        band, source = found[0], "found by name"
        kind = _kind(band)
    if kind == "scl":
        if threshold is not None:
            raise InputRasterError(
                f"--cloud-threshold applies to cloud-probability bands; {band} is a scene classification "
                "(use --cloud-classes)"
            )
        if scale is not None:
            raise InputRasterError(
                f"--cloud-scale applies to cloud-probability bands; {band} is a scene classification "
                "(use --cloud-classes)"
            )
        chosen = tuple(sorted({int(c) for c in classes})) if classes is not None else DEFAULT_SCL_INVALID
        return CloudMask(band, "scl", chosen, None, None, source)
    if classes is not None:
        raise InputRasterError(
            f"--cloud-classes applies to an SCL band; {band} is a cloud probability (use --cloud-threshold)"
        )
    if scale is None:
        if np.issubdtype(np.dtype(dtype), np.floating):
            scale = 1.0
        elif band.strip().upper() in PROBABILITY_NAMES:
            scale = PROBABILITY_NAMES[band.strip().upper()]
        else:
            raise InputRasterError(
                f"--cloud-band {band} of {where} is an integer ({dtype}) cloud probability of unknown scale; "
                "expected --cloud-scale X, the raw value of probability 1 (255 for 0..255, 100 for percent)"
            )
    t = DEFAULT_CLOUD_THRESHOLD if threshold is None else float(threshold)
    return CloudMask(band, "probability", None, t, float(scale), source)


def no_cloud_message(where: str, bands: Sequence[str]) -> str:
    """The warning for a stack without cloud information."""
    return (
        f"{where} has no cloud information (no SCL or cloud-probability band {', '.join(PROBABILITY_NAMES)} "
        f"among its bands {list(bands)}): clouds and shadows are classified as if they were clear observations. "
        "Add such a band, name one with --cloud-band, or pass --cloud-band none for a stack already cloud-free"
    )
