"""The labelled series of a downstream task: simulated scenes (tasks 1 and 2) or a user's labelled parcels (real).

Task ``1`` / ``2`` read the simulated (DENETHOR-layout) scenes, task ``real`` a user's labelled parcels (a
WorldCereal extraction), with the legend, time grid and split of :mod:`training.data.parcels`. Task ``real`` also
takes any stack ``cropmap classify`` reads with ``--labels POLYGONS --label-column COL``: the labelled series are
extracted once (:mod:`training.data.extract`) into ``OUT/extractions/`` under a key of the inputs' contents and the
extraction options, so a rerun reads them from there.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from cropmap.contract.metadata import ClassInfo, TimeGrid
from training.downstream.config import DownstreamConfig

__all__ = ["TaskData", "load_real_task", "load_sim_task", "load_task", "task_classes"]


@dataclass(frozen=True)
class TaskData:
    """Labelled series of one downstream task, raw digital numbers."""

    x_train: np.ndarray
    """float32 ``(N, T, C)``."""
    y_train: np.ndarray
    """int64 ``(N,)`` in ``[0, K)``."""
    x_val: np.ndarray
    """float32 ``(M, T, C)``."""
    y_val: np.ndarray
    """int64 ``(M,)``."""
    class_names: tuple[str, ...]
    bands: tuple[str, ...]
    classes: tuple[ClassInfo, ...] | None = None
    """Codes and colours of the classes (``None``: codes 1..K, a generated palette)."""
    time_grid: TimeGrid | None = None
    """The grid the series lie on (needed to save deployable models)."""
    groups_train: np.ndarray | None = None
    """Parcel of each training sample where parcels have several samples (pixels): splits carved out of the
    training samples (model selection, best epoch, tuning folds) keep each parcel on one side. ``None``: one
    sample per parcel."""
    nodata: float | None = None
    """Nodata value of the source (informative, recorded in bundles)."""
    description: str = ""
    """Where the data came from, one line (recorded in bundles)."""
    notes: tuple[str, ...] = ()
    """Choices made for the user while reading the data (the grid, the season window), one line each: the command
    says them on the console."""

    def __post_init__(self) -> None:
        if self.classes is not None and tuple(c.name for c in self.classes) != tuple(self.class_names):
            raise ValueError("classes and class_names disagree")
        for name in ("x_train", "x_val"):
            arr = getattr(self, name)
            if arr.ndim != 3 or arr.shape[-1] != len(self.bands):
                raise ValueError(
                    f"{name} must be (N, T, {len(self.bands)}) for bands {self.bands}, got {arr.shape}"
                )
            if not np.isfinite(arr).all():
                raise ValueError(f"{name} holds non-finite values; fill gaps before the downstream task")
        if self.groups_train is not None and len(self.groups_train) != len(self.x_train):
            raise ValueError(
                f"groups_train has {len(self.groups_train)} entries for {len(self.x_train)} training series"
            )
        if self.x_train.shape[1] != self.x_val.shape[1]:
            raise ValueError(f"train has {self.x_train.shape[1]} stamps but val has {self.x_val.shape[1]}")
        k = len(self.class_names)
        for name, y, x in (("y_train", self.y_train, self.x_train), ("y_val", self.y_val, self.x_val)):
            if y.shape != (len(x),):
                raise ValueError(f"{name} has shape {y.shape}, expected ({len(x)},)")
            if len(y) and (y.min() < 0 or y.max() >= k):
                raise ValueError(f"{name} holds labels outside [0, {k}) for classes {self.class_names}")


def load_real_task(path: str | Path, cfg: DownstreamConfig, cache_dir: str | Path | None = None) -> TaskData:
    """A user's labelled parcels as configured (:func:`training.data.parcels.load_parcels`).

    ``path`` is a WorldCereal extraction, or with ``cfg.labels`` a stack whose labelled series are extracted
    first (:func:`training.data.extract.extract_cached`, cached in ``cache_dir``; ``None``: a temporary folder).
    The split is by parcel: a parcel's samples (its pixels, with ``labels``) are never on both sides.
    """
    import tempfile

    from training.data.parcels import load_parcels
    from training.data.worldcereal import NODATA

    if cfg.labels is not None:
        from training.data.extract import ExtractOptions, code_column, extract_cached

        opts = ExtractOptions(
            label_column=cfg.label_column,
            id_column=cfg.id_column,
            layer=cfg.layer,
            class_map=cfg.class_map,
            pixels=cfg.pixels,
            seed=cfg.seed,
            buffer_m=cfg.buffer_m,
            min_valid=cfg.min_valid,
            reflectance_scale=cfg.reflectance_scale,
        )
        with tempfile.TemporaryDirectory(prefix="cropmap-extract-") as tmp:
            table = extract_cached(path, cfg.labels, opts, cache_dir if cache_dir is not None else tmp)
            cfg = dataclasses.replace(
                cfg, class_map=None, top_classes=254 if cfg.class_map is not None else cfg.top_classes
            )
            return load_real_task(
                table, dataclasses.replace(cfg, labels=None, label_column=code_column(cfg.label_column))
            )
    task = load_parcels(
        path,
        label_column=cfg.label_column,
        top_classes=cfg.top_classes,
        class_map=cfg.class_map,
        grid=cfg.grid,
        season_start=cfg.season_start,
        season=cfg.season,
        min_valid=cfg.min_valid,
        val_fraction=cfg.val_fraction,
        split_seed=cfg.split_seed,
        split_file=cfg.split_file,
        min_class_parcels=cfg.min_class_parcels,
    )
    return TaskData(
        x_train=task.x_train,
        y_train=task.y_train,
        x_val=task.x_val,
        y_val=task.y_val,
        class_names=tuple(c.name for c in task.classes),
        bands=task.bands,
        classes=task.classes,
        time_grid=task.time_grid,
        nodata=float(NODATA),
        description=task.description,
        groups_train=task.groups_train,
        notes=(task.grid_note,),
    )


def load_sim_task(
    root: str | Path,
    task: str,
    *,
    n_train: int,
    n_val: int,
    seed: int,
    fill: Literal["none", "linear"] = "none",
) -> TaskData:
    """Balanced pixel sets of a simulated scene pair (task 1: ``scene_a``, task 2: ``scene_b``).

    Args:
        root: Folder written by ``python -m training.simulate``.
        task: ``"1"`` or ``"2"``.
        n_train: Training pixels per class.
        n_val: Validation pixels per class.
        seed: Sampling seed (the field splits use the data layer's fixed split seed).
        fill: ``"none"`` keeps cloudy / no-data observations as the papers' base models saw them;
            ``"linear"`` interpolates them in time as inference does.
    """
    from training.data.datasets import task_sets
    from training.data.denethor import S2_BAND_NAMES
    from training.simulate.run import CROP_NAMES

    sets = task_sets(root, int(task), n_train, n_val, seed, fill=fill)
    probe = TimeGrid("01-01", (0,), ())
    dates = [d if isinstance(d, dt.date) and not isinstance(d, dt.datetime) else d.date() for d in sets.dates]
    grid = TimeGrid("01-01", tuple(probe.position_of(d) for d in dates), tuple(d.isoformat() for d in dates))
    colors = _palette(len(CROP_NAMES))
    # Map values are the simulator's crop ids (position in CROP_NAMES + 1), as in its label polygons.
    classes = tuple(
        ClassInfo(CROP_NAMES.index(n) + 1, n, colors[CROP_NAMES.index(n)]) for n in sets.class_names
    )
    scene = "scene_a" if task == "1" else "scene_b"
    return TaskData(
        x_train=np.asarray(sets.x_train, dtype=np.float32),
        y_train=np.asarray(sets.y_train, dtype=np.int64),
        x_val=np.asarray(sets.x_val, dtype=np.float32),
        y_val=np.asarray(sets.y_val, dtype=np.int64),
        class_names=tuple(sets.class_names),
        bands=tuple(S2_BAND_NAMES),
        classes=classes,
        time_grid=grid,
        nodata=0.0,
        description=(
            f"simulated {scene} of {Path(root).name}: {n_train} train / {n_val} val pixels per class from "
            f"disjoint fields, fill {fill}"
        ),
    )


def load_task(cfg: DownstreamConfig, cache_dir: str | Path | None = None) -> TaskData:
    """The task's data as configured (``cfg.data`` must be set; ``cache_dir``: see :func:`load_real_task`)."""
    if cfg.data is None:
        raise ValueError(
            f"task {cfg.task} needs data: a simulated scene folder (tasks 1/2) or a WorldCereal parquet (real); "
            "pass --data"
        )
    if not cfg.data.exists():
        raise FileNotFoundError(f"data path {str(cfg.data)!r} does not exist")
    if cfg.labels is not None and cfg.task != "real":
        raise ValueError(
            f"--labels is for task real (a stack and labelled polygons); task {cfg.task} reads {cfg.data}"
        )
    if cfg.task == "real":
        return load_real_task(cfg.data, cfg, cache_dir)
    return load_sim_task(
        cfg.data,
        cfg.task,
        n_train=cfg.n_train_per_class,
        n_val=cfg.n_val_per_class,
        seed=cfg.seed,
        fill=cfg.fill,
    )


def _palette(n: int) -> list[str]:
    from training.data.parcels import _palette as palette

    return palette(n)


def task_classes(data: TaskData) -> tuple[ClassInfo, ...]:
    """The classes of a task with their codes and colours (codes 1..K and a generated palette when unset)."""
    if data.classes is not None:
        return data.classes
    colors = _palette(len(data.class_names))
    return tuple(ClassInfo(k + 1, n, colors[k]) for k, n in enumerate(data.class_names))
