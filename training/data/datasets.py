"""Pre-training and downstream datasets drawn from DENETHOR-layout scenes (real or simulated).

All values are raw digital numbers (reflectance x 10000) as float32; normalisation belongs to the models.

- :func:`pointwise_pairs`: independent (S2 12-vector, PS 36-vector) pairs, ``n_per_stamp`` random pixels per
  stamp, cloudy and no-data observations left out (paper: 100,000 per stamp from the 70 % pool).
- :func:`timewise_pairs`: S2 series (T, 12) with the aligned PS series (T, 36) at the S2 stamps.
- :func:`balanced_pixels`: class-balanced S2 series (T, 12) for the downstream base models.
- :func:`task_sets`: downstream task 1 (training tile) and task 2 (second tile) train / val sets.

Cloudy and gap observations inside series are kept as they are in the data by default (``fill="none"``), as
the paper's base models saw them; ``fill="linear"`` replaces them by linear interpolation in days between the
nearest clear observations of the same pixel (constant beyond the first / last clear one) with the function
inference uses, :func:`cropmap.contract.timegrid.fill_gaps`.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, overload

import numpy as np

from cropmap.contract.clouds import DEFAULT_CLOUD_THRESHOLD, probability_invalid
from cropmap.contract.timegrid import fill_gaps
from training.data.denethor import Scene, ps_patches, read_scene
from training.data.splits import SCENE_A_FRACTIONS, SCENE_B_FRACTIONS, split_fields

logger = logging.getLogger(__name__)

MAX_CLOUD_PROBABILITY = DEFAULT_CLOUD_THRESHOLD
"""Observations with a higher cloud probability count as cloudy: inference's default
(:data:`cropmap.contract.clouds.DEFAULT_CLOUD_THRESHOLD`, s2cloudless' 0.4), so models train on series masked as maps are."""

Fill = Literal["none", "linear"]


def class_names(scene: Scene) -> tuple[str, ...]:
    """Class names of a scene, ordered by crop id; ``y`` values index this tuple."""
    return scene.class_names


def _field_pixels(scene: Scene, field_ids: np.ndarray | list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Rows and cols of every S2 pixel whose centre lies in one of ``field_ids``."""
    ids = np.asarray(field_ids, dtype=np.int64)
    unknown = np.setdiff1d(ids, scene.field_ids)
    if unknown.size:
        raise ValueError(
            f"{unknown.size} field id(s) cover no S2 pixel of {scene.root} (e.g. {unknown[:5].tolist()}); "
            "pass ids from scene.field_ids"
        )
    rows, cols = np.nonzero(np.isin(scene.field_raster, ids))
    return rows.astype(np.int64), cols.astype(np.int64)


def _invalid(s2: np.ndarray, cloud: np.ndarray, max_cloud_probability: float) -> np.ndarray:
    """True where an observation is cloudy or holds no data (every band 0). s2 (..., 12), cloud (...)."""
    return probability_invalid(cloud, max_cloud_probability) | np.all(s2 == 0, axis=-1)


def fill_linear(
    x: np.ndarray, invalid: np.ndarray, positions: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Fill invalid observations of pixel series the way inference does (:func:`cropmap.contract.timegrid.fill_gaps`).

    Each invalid observation takes the linear interpolation, in days, between the nearest valid observations
    before and after it; before the first / after the last valid one the nearest valid value is repeated.

    Args:
        x: (N, T, C) series.
        invalid: (N, T) True where the observation must be replaced.
        positions: (T,) non-decreasing observation days (e.g. day of year); the step index when omitted.

    Returns:
        The filled (N, T, C) float32 array and an (N,) bool array that is True for series without any valid
        observation (left unchanged).
    """
    x = np.asarray(x, dtype=np.float32)
    if invalid.shape != x.shape[:2]:
        raise ValueError(f"invalid has shape {invalid.shape}; expected {x.shape[:2]} to match x")
    steps = np.arange(x.shape[1], dtype=np.float64)
    pos = steps if positions is None else np.asarray(positions, dtype=np.float64)
    masked = np.where(invalid[..., None], np.float32(np.nan), x)
    filled, _, ok = fill_gaps(masked, pos, pos, min_valid=1)
    out = np.where(ok[:, None, None], filled, x).astype(np.float32)
    return out, ~ok


@overload
def pointwise_pairs(
    scene: Scene,
    field_ids: np.ndarray | list[int],
    n_per_stamp: int = ...,
    seed: int = ...,
    *,
    max_cloud_probability: float = ...,
    return_index: Literal[False] = ...,
) -> tuple[np.ndarray, np.ndarray]: ...


@overload
def pointwise_pairs(
    scene: Scene,
    field_ids: np.ndarray | list[int],
    n_per_stamp: int = ...,
    seed: int = ...,
    *,
    max_cloud_probability: float = ...,
    return_index: Literal[True],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]: ...


def pointwise_pairs(
    scene: Scene,
    field_ids: np.ndarray | list[int],
    n_per_stamp: int = 100_000,
    seed: int = 0,
    *,
    max_cloud_probability: float = MAX_CLOUD_PROBABILITY,
    return_index: bool = False,
) -> tuple[np.ndarray, np.ndarray] | tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Independent (S2, PS) pairs: ``n_per_stamp`` random clear pixels per S2 stamp from the given fields.

    Pixels are drawn without replacement within a stamp; where a stamp has fewer clear pixels than
    ``n_per_stamp``, all of them are taken (logged). The same location appears at several stamps, which gives
    the negatives "same place, other date" of the method.

    Args:
        scene: The scene.
        field_ids: Fields to draw from (the pre-training pool).
        n_per_stamp: Pixels per stamp (paper: 100,000).
        seed: Random seed.
        max_cloud_probability: Observations above this cloud probability are left out, as are no-data ones.
        return_index: Also return the (N, 3) int64 array of (stamp, row, col) of each pair.

    Returns:
        ``s2`` (N, 12) float32 and ``ps`` (N, 36) float32, raw reflectance x 10000 (and the index if asked).
    """
    if n_per_stamp <= 0:
        raise ValueError(f"n_per_stamp must be positive, got {n_per_stamp}")
    rows, cols = _field_pixels(scene, field_ids)
    rng = np.random.default_rng(seed)
    picks: list[np.ndarray] = []
    values: list[np.ndarray] = []
    short = 0
    for t in range(len(scene.dates)):  # one stamp at a time: memory stays at one S2 image
        s2_t = np.asarray(scene.s2[t])[rows, cols]
        bad = _invalid(s2_t, scene.cloud_probability(t)[rows, cols], max_cloud_probability)
        clear = np.flatnonzero(~bad)
        if clear.size < n_per_stamp:
            short += 1
            chosen = clear
        else:
            chosen = rng.choice(clear, n_per_stamp, replace=False)
        picks.append(np.stack([np.full(chosen.size, t), rows[chosen], cols[chosen]], axis=1))
        values.append(s2_t[chosen].astype(np.float32))
    if short:
        logger.info(
            "%d of %d stamps had fewer than %d clear pixels; took all of theirs",
            short,
            len(scene.dates),
            n_per_stamp,
        )
    index = np.concatenate(picks).astype(np.int64)
    s2 = np.concatenate(values)
    ps = ps_patches(scene, index[:, 1], index[:, 2], index[:, 0])
    logger.info("point-wise pairs: %d from %d fields", len(index), len(np.atleast_1d(field_ids)))
    if return_index:
        return s2, ps, index
    return s2, ps


def _sample_pixels(n_available: int, n: int, rng: np.random.Generator, what: str) -> np.ndarray:
    if n_available == 0:
        raise ValueError(f"no pixels to sample for {what}")
    if n_available < n:
        logger.info("%s: %d pixels available, %d requested; taking all", what, n_available, n)
        return rng.permutation(n_available)
    return rng.choice(n_available, n, replace=False)


@overload
def timewise_pairs(
    scene: Scene,
    field_ids: np.ndarray | list[int],
    n_pixels: int = ...,
    seed: int = ...,
    *,
    return_index: Literal[False] = ...,
) -> tuple[np.ndarray, np.ndarray]: ...


@overload
def timewise_pairs(
    scene: Scene,
    field_ids: np.ndarray | list[int],
    n_pixels: int = ...,
    seed: int = ...,
    *,
    return_index: Literal[True],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]: ...


def timewise_pairs(
    scene: Scene,
    field_ids: np.ndarray | list[int],
    n_pixels: int = 150_000,
    seed: int = 0,
    *,
    return_index: bool = False,
) -> tuple[np.ndarray, np.ndarray] | tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pixel series pairs: the S2 series and the PS series of the same pixel at the S2 stamps.

    The short paper pairs each S2 series with the daily PS series. Here PS is taken on the S2 stamps' days, so
    both views share one time axis (T) and one positional encoding; the PS view still differs in resolution,
    bands, calibration and cloud cover (Planet Fusion is cloud-free). Observations are kept as they are.

    Args:
        scene: The scene.
        field_ids: Fields to draw from.
        n_pixels: Pixels to draw without replacement (all of them when fewer exist; logged).
        seed: Random seed.
        return_index: Also return the (N, 2) int64 array of (row, col) of each series.

    Returns:
        ``s2`` (N, T, 12) float32 and ``ps`` (N, T, 36) float32, raw reflectance x 10000 (and the index if asked).
    """
    rows, cols = _field_pixels(scene, field_ids)
    rng = np.random.default_rng(seed)
    pick = _sample_pixels(rows.size, n_pixels, rng, "time-wise pairs")
    r, c = rows[pick], cols[pick]
    t_count = len(scene.dates)
    s2 = np.moveaxis(np.asarray(scene.s2[:, r, c, :], dtype=np.float32), 0, 1)  # (N, T, 12)
    t_idx = np.repeat(np.arange(t_count)[None, :], r.size, axis=0)
    ps = ps_patches(scene, np.repeat(r, t_count), np.repeat(c, t_count), t_idx.ravel())
    if return_index:
        return s2, ps.reshape(r.size, t_count, -1), np.stack([r, c], axis=1).astype(np.int64)
    return s2, ps.reshape(r.size, t_count, -1)


def balanced_pixels(
    scene: Scene,
    field_ids: np.ndarray | list[int],
    n_per_class: int,
    seed: int = 0,
    *,
    classes: tuple[str, ...] | None = None,
    fill: Fill = "none",
    max_cloud_probability: float = MAX_CLOUD_PROBABILITY,
) -> tuple[np.ndarray, np.ndarray]:
    """A class-balanced set of S2 pixel series.

    Each class gets ``n_per_class`` pixels drawn without replacement from the given fields; a class with fewer
    pixels is drawn with replacement (logged as a warning), and a class with none is absent (warning).

    Args:
        scene: The scene.
        field_ids: Fields to draw from (a split of :func:`training.data.splits.split_fields`).
        n_per_class: Pixels per class (paper: 5,000 train, 1,000 val).
        seed: Random seed.
        classes: Class names that ``y`` indexes; the scene's :func:`class_names` when omitted. Every crop
            of the given fields must be among them.
        fill: ``"none"`` keeps cloudy / gap observations; ``"linear"`` interpolates them in time.
        max_cloud_probability: What counts as cloudy for ``fill="linear"``.

    Returns:
        ``x`` (N, T, 12) float32 raw reflectance x 10000 and ``y`` (N,) int64 class indices, shuffled.
    """
    if n_per_class <= 0:
        raise ValueError(f"n_per_class must be positive, got {n_per_class}")
    if fill not in ("none", "linear"):
        raise ValueError(f"fill must be 'none' or 'linear', got {fill!r}")
    names = classes if classes is not None else class_names(scene)
    rows, cols = _field_pixels(scene, field_ids)
    crop_of_pixel = scene.crop_raster[rows, cols]
    rng = np.random.default_rng(seed)
    picks, labels = [], []
    for crop_id in np.unique(crop_of_pixel):
        name = scene.crop_names[int(crop_id)]
        if name not in names:
            raise ValueError(f"crop {name!r} of {scene.root} is not among the classes {names}")
    for k, name in enumerate(names):
        ids = [cid for cid, n in scene.crop_names.items() if n == name]
        members = np.flatnonzero(np.isin(crop_of_pixel, ids))
        if members.size == 0:
            logger.warning("class %r has no pixel in the %d given fields; it is absent", name, len(field_ids))
            continue
        if members.size < n_per_class:
            logger.warning(
                "class %r has %d pixels, fewer than %d: sampling with replacement",
                name,
                members.size,
                n_per_class,
            )
            chosen = rng.choice(members, n_per_class, replace=True)
        else:
            chosen = rng.choice(members, n_per_class, replace=False)
        picks.append(chosen)
        labels.append(np.full(n_per_class, k, dtype=np.int64))
    if not picks:
        raise ValueError(f"none of the classes {names} has pixels in the given fields")
    pick = np.concatenate(picks)
    y = np.concatenate(labels)
    order = rng.permutation(pick.size)
    pick, y = pick[order], y[order]
    r, c = rows[pick], cols[pick]
    x = np.moveaxis(np.asarray(scene.s2[:, r, c, :], dtype=np.float32), 0, 1)  # (N, T, 12)
    if fill == "linear":
        clp = np.asarray(scene.clp[:, r, c], dtype=np.float32)  # (T, N): never the whole cube
        cloud = np.moveaxis(clp, 0, 1) / np.float32(scene.clp_scale)
        days = np.array([(d - scene.dates[0]).days for d in scene.dates], dtype=np.float64)
        x, empty = fill_linear(x, _invalid(x, cloud, max_cloud_probability), days)
        if empty.any():
            logger.warning("%d series have no clear observation; left unfilled", int(empty.sum()))
    return x, y


@dataclass(frozen=True)
class TaskSets:
    """Train / val arrays of one downstream task plus the pre-training pool of the training tile."""

    task: int
    x_train: np.ndarray
    """(N, T, 12) float32 raw reflectance x 10000."""
    y_train: np.ndarray
    """(N,) int64 indices into :attr:`class_names`."""
    x_val: np.ndarray
    y_val: np.ndarray
    class_names: tuple[str, ...]
    dates: tuple[dt.date, ...]
    """The S2 stamps of the task's scene."""
    pretrain_field_ids: np.ndarray
    """Field ids of scene A's pre-training pool (never in any downstream set of task 1)."""
    splits: dict[str, np.ndarray]
    """The field split of the task's scene."""


def scene_a_splits(scene: Scene, seed: int = 0) -> dict[str, np.ndarray]:
    """Scene A's fields split 70 / 21 / 9 into ``pretrain`` / ``train`` / ``val``, stratified by crop."""
    ids = scene.field_ids
    return split_fields(ids, SCENE_A_FRACTIONS, seed, strata=[scene.field_crops[int(i)] for i in ids])


def scene_b_splits(scene: Scene, seed: int = 0) -> dict[str, np.ndarray]:
    """Scene B's fields split 70 / 30 into ``train`` / ``val``, stratified by crop."""
    ids = scene.field_ids
    return split_fields(ids, SCENE_B_FRACTIONS, seed, strata=[scene.field_crops[int(i)] for i in ids])


def task_sets(
    sim_root: str | Path,
    task: int,
    n_train: int = 5000,
    n_val: int = 1000,
    seed: int = 0,
    *,
    split_seed: int = 0,
    fill: Fill = "none",
    scene_a: str = "scene_a",
    scene_b: str = "scene_b",
) -> TaskSets:
    """Downstream sets of task 1 (training tile, its train / val fields) or task 2 (second tile, 70 / 30).

    Args:
        sim_root: Folder holding the two scenes (what ``python -m training.simulate`` writes).
        task: 1 or 2.
        n_train: Pixels per class in the training set (paper: 5,000).
        n_val: Pixels per class in the validation set (paper: 1,000).
        seed: Seed of the pixel draws.
        split_seed: Seed of the field splits (keep it fixed across runs that must be comparable).
        fill: See :func:`balanced_pixels`.
        scene_a: Folder name of the training tile.
        scene_b: Folder name of the second tile.

    Returns:
        The :class:`TaskSets`; classes are scene A's, in crop-id order.
    """
    if task not in (1, 2):
        raise ValueError(f"task must be 1 or 2, got {task!r}")
    root = Path(sim_root)
    a = read_scene(root / scene_a)
    names = class_names(a)
    a_splits = scene_a_splits(a, split_seed)
    if task == 1:
        scene, splits = a, a_splits
    else:
        scene = read_scene(root / scene_b)
        splits = scene_b_splits(scene, split_seed)
    x_train, y_train = balanced_pixels(scene, splits["train"], n_train, seed, classes=names, fill=fill)
    x_val, y_val = balanced_pixels(scene, splits["val"], n_val, seed + 1, classes=names, fill=fill)
    return TaskSets(
        task=task,
        x_train=x_train,
        y_train=y_train,
        x_val=x_val,
        y_val=y_val,
        class_names=names,
        dates=scene.dates,
        pretrain_field_ids=a_splits["pretrain"],
        splits=splits,
    )
