"""The downstream protocol: plan the runs of a comparison and execute each one on its own.

A comparison is a list of :class:`RunSpec`: per method (supervised, then each encoder), the baselines, the tree
families (supervised only), one run per (family, variant), then the ensembles of each family. :class:`Protocol`
holds what every run of one comparison shares (the configuration, the task's series after the selection split, the
set-up that every record repeats, the variants) and executes one spec at a time: it encodes the method's features
(kept for the next spec of the same method), trains, writes the model file (a temporary name, then a rename) and
appends the record to the :class:`~training.downstream.store.ResultsStore` unless that run is already recorded.

Every run seeds itself from its key (:func:`~training.downstream.loop.run_seed`), so executing the specs in order in
one process (:func:`run_comparison`) or as tasks on cluster workers (:mod:`training.downstream.cluster`) gives the
same records, for the same torch thread count, apart from the timings.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from cropmap.safeio.atomic import atomic_file, atomic_write
from training.config import config_to_dict
from training.downstream.baselines import bundle_metrics, score
from training.downstream.classifier import classifier_metadata, describe_encoder, save_classifier
from training.downstream.config import DownstreamConfig, EncoderSpec
from training.downstream.loop import encode, predict, predict_logits, run_seed, train_run
from training.downstream.recipe import selection_split
from training.downstream.store import ResultsStore, RunKey
from training.downstream.tasks import TaskData, task_classes
from training.downstream.tune import sample_variants, split_lr
from training.models import BaseModel, SeriesClassifier, build_model

__all__ = [
    "DEFAULT_LR",
    "PARITY_ROWS",
    "SETUP_KEYS",
    "VAL_INPUTS",
    "Protocol",
    "RunSpec",
    "check_setup",
    "run_comparison",
    "run_name",
]

logger = logging.getLogger(__name__)

SETUP_KEYS = (
    "task",
    "epochs_asked",
    "batch_size_asked",
    "n_train",
    "n_val",
    "seed",
    "lr_schedule",
    "fill",
    "recipe",
    "prior_correction",
    "selection_folds",
    "selection_fold",
)
"""Record fields that must agree between runs stored in one results file. A record's ``epochs`` and ``batch_size``
are the values the recipe used for the base models; ``epochs_asked`` and ``batch_size_asked`` the configured ones
(records written before they existed hold the configured values in ``epochs`` and ``batch_size``)."""

UNFOLDED = {"selection_folds": 0, "selection_fold": None}
"""The fold fields of records written before cross-validated selection existed (and of a set-up without them)."""

DEFAULT_LR = 1e-3
"""Learning rate of the default-hyper-parameter variant (``default_variant``)."""

VAL_INPUTS = "validation-task{task}.npz"
"""Validation series of a task inside a run directory (exports check parity and accuracy on them)."""

PARITY_ROWS = 512
"""Validation series stored inside each model checkpoint for a stand-alone parity check."""


def run_name(task: str, family: str, variant: int, method: str, corruption: float | None) -> str:
    """File stem of a run's model: ``1-lstm-v3-bimodal-0.2``, ``real-transformer-default-supervised``."""
    v = "default" if variant == -1 else f"default{-variant}" if variant < 0 else f"v{variant}"
    return f"{task}-{family}-{v}-{method}" + ("" if corruption is None else f"-{corruption:g}")


def check_setup(done: dict[Any, dict[str, Any]], setup: dict[str, Any], path: Path) -> None:
    """Refuse a results file whose runs of this task were made with another set-up (``SETUP_KEYS``)."""
    for rec in done.values():
        if str(rec["task"]) != setup["task"]:
            continue
        # Files written before recipes existed used the papers' protocol; before the prior correction, none.
        rec = {"recipe": "papers", "prior_correction": 0.0, **UNFOLDED, **_with_asked(rec)}
        now = {**UNFOLDED, **_with_asked(setup)}
        diff = {k: (rec.get(k), now[k]) for k in SETUP_KEYS if rec.get(k) != now[k]}
        if diff:
            pretty = ", ".join(f"{k}: stored {a!r}, now {b!r}" for k, (a, b) in diff.items())
            raise ValueError(
                f"{path} holds task {setup['task']} runs made with another set-up ({pretty}); use another --out"
            )


def check_ensembles(
    done: dict[Any, dict[str, Any]], task: str, families: Sequence[str], indices: Sequence[int], path: Path
) -> None:
    """Refuse a comparison that adds runs of ``families`` to one whose ensemble is already recorded without them.

    Records are appended, never rewritten, so the ensemble would stay the average of the earlier runs
    (e.g. ``--set repeats=5`` into a folder whose ensemble averages 3 seeds).
    """
    for (rec_task, family, _v, method, corruption), rec in done.items():
        base = family.removesuffix("_ensemble")
        if str(rec_task) != str(task) or base == family or base not in families:
            continue
        members = {int(m["variant"]) for m in (rec.get("hp") or {}).get("members", [])}
        added = [
            v for v in indices if v not in members and (rec_task, base, v, method, corruption) not in done
        ]
        if added:
            where = method + ("" if corruption is None else f" {corruption:g}")
            raise ValueError(
                f"{path} records the {base} ensemble ({where}) of runs {_variants(members)}; this comparison "
                f"adds runs {_variants(added)}, which that ensemble would not include (records are never "
                "rewritten); expected the same --set repeats / --variants as before, or another --out"
            )


def _variants(vs: Iterable[int]) -> str:
    """Run indices for a message, in order: ``default seed K`` for -K (the defaults' seeds), then ``vK``."""
    return ", ".join(
        f"default seed {-v}" if v < 0 else f"v{v}" for v in sorted(vs, key=lambda v: (v >= 0, abs(v)))
    )


def _with_asked(rec: dict[str, Any]) -> dict[str, Any]:
    """``rec`` with ``epochs_asked`` / ``batch_size_asked`` (records without them: ``epochs`` / ``batch_size``)."""
    return {"epochs_asked": rec.get("epochs"), "batch_size_asked": rec.get("batch_size"), **rec}


@dataclass(frozen=True)
class RunSpec:
    """One task of a comparison."""

    kind: Literal["base", "baselines", "trees", "ensemble"]
    """``base``: one (family, variant) trained on the method's features; ``baselines``: the RandomForest (and, for
    ``supervised``, the majority class) on them; ``trees``: every tree family on the raw series; ``ensemble``: the
    average of a family's recorded runs with this method."""
    method: str
    corruption: float | None
    family: str = ""
    variant: int = 0

    def label(self) -> str:
        """A short name for logs and errors."""
        where = self.method + ("" if self.corruption is None else f" {self.corruption:g}")
        if self.kind == "base":
            return f"{self.family} v{self.variant} {where}"
        if self.kind == "ensemble":
            return f"{self.family} ensemble {where}"
        return f"{self.kind} {where}"


@dataclass
class MethodInputs:
    """A method's features and splits, computed once and shared by its runs."""

    method: str
    corruption: float | None
    front: nn.Module
    extra: dict[str, Any]
    feats_train: torch.Tensor
    feats_val: torch.Tensor
    run_front: nn.Module | None
    mode: str
    encode_s: float
    d: int
    sel_in: torch.Tensor | None
    fit: tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]


class Protocol:
    """The shared state of one comparison and the execution of its runs.

    Args:
        cfg: The run settings.
        data: The task's series (before the model-selection split, which is carved here).
        encoders: Pre-trained encoders, one per (method, corruption rate).
        out_dir: The run directory.
        device: The torch device runs use (default: ``cfg.device`` resolved on this machine).
        variants: The sampled hyper-parameters per family (default: sampled by :meth:`prepare`).

    Raises:
        ValueError: On duplicated encoders.
    """

    def __init__(
        self,
        cfg: DownstreamConfig,
        data: TaskData,
        encoders: Sequence[EncoderSpec],
        out_dir: str | Path,
        *,
        device: str | None = None,
        variants: dict[str, list[dict[str, Any]]] | None = None,
    ) -> None:
        from training.device import resolve_device
        from training.downstream.selection import carve_for, holdout_fraction

        keys = [(e.method, e.corruption) for e in encoders]
        if len(set(keys)) != len(keys):
            raise ValueError(f"encoders repeat a (method, corruption) pair: {keys}")
        self.cfg = cfg
        self.encoders = tuple(encoders)
        self.out = Path(out_dir)
        self.store = ResultsStore.in_dir(self.out)
        self.device = device if device is not None else str(resolve_device(cfg.device))
        self.recipe = cfg.training_recipe()
        self.holdout = holdout_fraction(cfg)
        self.data, self.x_sel, self.y_sel = carve_for(data, cfg)
        n_fit = len(self.data.y_train)
        if self.recipe.selection_fraction > 0:
            n_fit = len(
                selection_split(
                    self.data.y_train, self.recipe.selection_fraction, cfg.seed, groups=self.data.groups_train
                )[0]
            )
        # What the recipe changes of the configured epochs and batch size (said by recipe_note, recorded in setup).
        batch_size, epochs, self.changes = self.recipe.settings(cfg.epochs, cfg.batch_size, n_fit)
        self.setup: dict[str, Any] = {
            "task": cfg.task,
            "epochs": epochs,
            "batch_size": batch_size,
            "epochs_asked": cfg.epochs,
            "batch_size_asked": cfg.batch_size,
            "n_train": len(self.data.y_train),
            "n_val": len(self.data.y_val),
            "seed": cfg.seed,
            "lr_schedule": "linear-to-zero" if self.recipe.schedule == "linear" else "warmup-cosine",
            "fill": cfg.fill,
            "recipe": self.recipe.name,
            "prior_correction": self.recipe.prior_correction,
            "selection_holdout": self.holdout,
            "n_select": 0 if self.y_sel is None else len(self.y_sel),
            "selection_folds": cfg.selection_folds,
            "selection_fold": cfg.selection_fold,
        }
        self.save = cfg.save_models and self.data.time_grid is not None
        self.indices = (list(range(-1, -cfg.repeats - 1, -1)) if cfg.default_variant else []) + list(
            range(cfg.variants)
        )
        self.variants = variants
        self.x_train = torch.from_numpy(np.ascontiguousarray(self.data.x_train, dtype=np.float32))
        self.x_val = torch.from_numpy(np.ascontiguousarray(self.data.x_val, dtype=np.float32))
        self.y_train = torch.from_numpy(self.data.y_train.astype(np.int64))
        self.y_val = torch.from_numpy(self.data.y_val.astype(np.int64))
        self._inputs: MethodInputs | None = None

    # ------------------------------------------------------------------------------------------
    # the run directory and the plan
    # ------------------------------------------------------------------------------------------
    def methods(self) -> list[tuple[str, float | None]]:
        """``(method, corruption)`` in protocol order: supervised, then each encoder."""
        return [("supervised", None), *((e.method, e.corruption) for e in self.encoders)]

    def prepare(self) -> dict[RunKey, dict[str, Any]]:
        """Set the run directory up (config, stored series, variants) and return the runs already recorded.

        Raises:
            ValueError: If an encoder does not fit the task's bands, or the results file holds runs of this task
                made with another set-up.
        """
        cfg = self.cfg
        for method, corruption in self.methods()[1:]:
            self._front(method, corruption)  # an encoder that does not fit the task fails before any run
        self.out.mkdir(parents=True, exist_ok=True)
        atomic_write(
            self.out / f"config_task{cfg.task}.json",
            json.dumps(
                {"config": config_to_dict(cfg), "encoders": [dataclasses.asdict(e) for e in self.encoders]},
                default=str,
                indent=1,
            ).encode(),
        )
        done = self.store.finished()
        check_setup(done, self.setup, self.store.path)
        check_ensembles(done, cfg.task, cfg.families, self.indices, self.store.path)
        if cfg.save_models and not self.save:
            logger.warning("task data has no time grid: trained models are not saved (nothing to export)")
        if self.save:
            from training.downstream.selection import SELECT_INPUTS

            (self.out / "models").mkdir(exist_ok=True)
            val_file = self.out / VAL_INPUTS.format(task=cfg.task)
            if not val_file.is_file():
                _write_npz(
                    val_file,
                    x=np.asarray(self.data.x_val, np.float32),
                    y=np.asarray(self.data.y_val, np.int64),
                )
            sel_file = self.out / SELECT_INPUTS.format(task=cfg.task)
            if self.x_sel is not None and self.y_sel is not None and not sel_file.is_file():
                _write_npz(sel_file, x=np.asarray(self.x_sel, np.float32), y=np.asarray(self.y_sel, np.int64))
        if self.variants is None:
            self.variants = {
                f: sample_variants(f, cfg.variants, seed=cfg.seed, storage=self.out / "variants.db")
                if cfg.variants
                else []
                for f in cfg.families
            }
        note = self.recipe_note()
        if note is not None:
            logger.warning("%s", note)
        return done

    def recipe_note(self) -> str | None:
        """One line on what the recipe changes of the configuration for the base models (``None``: nothing)."""
        parts = [str(c) for c in self.changes]
        n_stamps = int(self.x_train.shape[1])
        if "inception_time" in self.cfg.families and self.recipe.fit_kernel:
            kernels = [int(hp.get("kernel", 0)) for hp in (self.variants or {}).get("inception_time", [])] + (
                [_default_kernel()] if self.cfg.default_variant else []
            )
            capped = sorted({k for k in kernels if k > n_stamps})
            if capped:
                parts.append(
                    f"InceptionTime kernel {', '.join(map(str, capped))} -> {max(4, n_stamps)} (at most the series "
                    f"length, {n_stamps} stamps)"
                )
        if not parts:
            return None
        return (
            f"recipe {self.recipe.name} changes what the base models were asked for: {'; '.join(parts)}; "
            "results.jsonl records the values used"
        )

    def plan(self, done: dict[RunKey, dict[str, Any]]) -> list[RunSpec]:
        """Every spec not recorded in ``done``, in protocol order (a method's ensembles after its runs)."""
        from training.downstream.trees import tree_families

        cfg, task = self.cfg, self.cfg.task
        specs: list[RunSpec] = []
        for method, corruption in self.methods():
            if cfg.baselines:
                families = ["random_forest"] + (["majority"] if method == "supervised" else [])
                if any((task, f, 0, method, corruption) not in done for f in families):
                    specs.append(RunSpec("baselines", method, corruption))
            trees = tree_families(cfg)
            if any((task, f, 0, method, corruption) not in done for f in trees):
                specs.append(RunSpec("trees", method, corruption))
            specs.extend(
                RunSpec("base", method, corruption, f, v)
                for f in cfg.families
                for v in self.indices
                if (task, f, v, method, corruption) not in done
            )
            if self.recipe.ensemble:
                specs.extend(
                    RunSpec("ensemble", method, corruption, f)
                    for f in cfg.families
                    if (task, f"{f}_ensemble", 0, method, corruption) not in done
                )
        return specs

    def n_runs(self) -> int:
        """Base-model runs of the whole comparison (what the progress bar counts)."""
        return len(self.methods()) * len(self.cfg.families) * len(self.indices)

    # ------------------------------------------------------------------------------------------
    # executing one spec
    # ------------------------------------------------------------------------------------------
    def execute(
        self,
        spec: RunSpec,
        done: dict[RunKey, dict[str, Any]],
        *,
        trained: dict[tuple[str, int], nn.Module] | None = None,
        progress: Callable[[int], Any] | None = None,
    ) -> list[dict[str, Any]]:
        """Execute ``spec``, record what it produces in the store and in ``done``, and return the new records.

        ``trained`` (base models of this method kept in memory, by ``(family, variant)``) spares an ensemble from
        reading its members' files; base runs add themselves to it. ``progress`` is called with the epochs run.
        """
        if self.variants is None:
            raise RuntimeError("Protocol.prepare() (or variants=) must come before execute()")
        inputs = self.method_inputs(spec.method, spec.corruption)
        if spec.kind == "baselines":
            return self._baselines(inputs, done)
        if spec.kind == "trees":
            from training.downstream.trees import run_trees

            before = set(done)
            run_trees(
                self.cfg,
                self.data,
                setup=self.setup,
                results=self.store,
                done=done,
                out=self.out,
                save=self.save,
                x_sel=self.x_sel,
                y_sel=self.y_sel,
                method=spec.method,
                corruption=spec.corruption,
                front=None if spec.method == "supervised" else inputs.front,
                encoder=inputs.extra.get("encoder"),
            )
            return [done[k] for k in done if k not in before]
        if spec.kind == "ensemble":
            rec = self._ensemble(spec.family, inputs, done, trained or {})
            return [] if rec is None else [rec]
        return self._base(spec, inputs, done, trained, progress)

    def method_inputs(self, method: str, corruption: float | None) -> MethodInputs:
        """The features of ``method`` (computed on the first call, kept until another method is asked for)."""
        if self._inputs is not None and (self._inputs.method, self._inputs.corruption) == (
            method,
            corruption,
        ):
            return self._inputs
        self._inputs = None  # free the previous method's features first
        front, extra = self._front(method, corruption)
        cfg, x_train, x_val = self.cfg, self.x_train, self.x_val
        d = int(getattr(front, "out_dim", x_train.shape[2]))
        cache_gb = (len(x_train) + len(x_val)) * x_train.shape[1] * d * 4 / 1e9
        t0 = time.perf_counter()
        if cache_gb <= cfg.embed_cache_gb:
            feats_train = encode(front, x_train, device=self.device)
            feats_val = encode(front, x_val, device=self.device)
            run_front, mode = None, "precomputed"
            logger.info(
                "%s %s: features precomputed (%.2f GB) in %.1f s",
                method,
                corruption,
                cache_gb,
                time.perf_counter() - t0,
            )
        else:
            feats_train, feats_val, run_front, mode = x_train, x_val, front, "per_batch"
            logger.info(
                "%s %s: features need %.2f GB > embed_cache_gb=%.2f, encoding per batch",
                method,
                corruption,
                cache_gb,
                cfg.embed_cache_gb,
            )
        encode_s = time.perf_counter() - t0
        sel_in = (
            None  # selection series as model inputs (like feats_val: encoded, or raw for a per-batch front)
        )
        if self.x_sel is not None:
            sel_t = torch.from_numpy(self.x_sel)
            sel_in = sel_t if run_front is not None else encode(front, sel_t, device=self.device)
        # The selection split (best epoch) is carved out of the training samples, never the validation ones.
        fit: tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]
        if self.recipe.selection_fraction > 0:
            fit_idx, sel_idx = (
                torch.from_numpy(i)
                for i in selection_split(
                    self.data.y_train, self.recipe.selection_fraction, cfg.seed, groups=self.data.groups_train
                )
            )
            fit = (feats_train[fit_idx], self.y_train[fit_idx], feats_train[sel_idx], self.y_train[sel_idx])
        else:
            fit = (feats_train, self.y_train, None, None)
        self._inputs = MethodInputs(
            method,
            corruption,
            front,
            extra,
            feats_train,
            feats_val,
            run_front,
            mode,
            encode_s,
            d,
            sel_in,
            fit,
        )
        return self._inputs

    def _front(self, method: str, corruption: float | None) -> tuple[nn.Module, dict[str, Any]]:
        """The per-stamp front of a method: training-set standardisation (supervised) or a frozen encoder."""
        from training.models.encoder import Normalize, compute_norm_stats, load_frozen_encoder

        if method == "supervised":
            stats = compute_norm_stats(self.data.x_train)
            return Normalize(stats["mean"], stats["std"]), {"norm_stats": stats}
        spec = next(e for e in self.encoders if (e.method, e.corruption) == (method, corruption))
        enc = load_frozen_encoder(spec.path, map_location=self.device)
        if enc.in_dim != len(self.data.bands):
            raise ValueError(
                f"encoder {spec.path} expects {enc.in_dim} input bands but task data has {len(self.data.bands)} "
                f"({', '.join(self.data.bands)}); pre-train it on the same bands"
            )
        return enc, {"encoder": str(spec.path)}

    def _record(self, rec: dict[str, Any], done: dict[RunKey, dict[str, Any]]) -> bool:
        """Append ``rec`` unless its run is recorded already (by another worker, or before a restart)."""
        from training.downstream.store import run_key

        new = self.store.append_new(rec)
        if new:
            done[run_key(rec)] = rec
        else:
            logger.warning(
                "%s: recorded already by another worker; this result is not appended", run_key(rec)
            )
            done.update(self.store.finished())
        return new

    def _base(
        self,
        spec: RunSpec,
        inputs: MethodInputs,
        done: dict[RunKey, dict[str, Any]],
        trained: dict[tuple[str, int], nn.Module] | None,
        progress: Callable[[int], Any] | None,
    ) -> list[dict[str, Any]]:
        cfg, recipe, data = self.cfg, self.recipe, self.data
        assert self.variants is not None
        family, v, method, corruption = spec.family, spec.variant, spec.method, spec.corruption
        lr, hp = (DEFAULT_LR, {}) if v < 0 else split_lr(self.variants[family][v])
        hp = recipe.adapt_hp(family, hp, int(self.x_train.shape[1]))
        seed = run_seed(cfg.seed, cfg.task, family, v, method, corruption)
        torch.manual_seed(seed)
        model = build_model(family, inputs.d, len(data.class_names), **hp)
        fit_x, fit_y, sel_x, sel_y = inputs.fit
        t_run = time.perf_counter()
        res = train_run(
            model,
            fit_x,
            fit_y,
            inputs.feats_val,
            self.y_val,
            lr=lr,
            epochs=cfg.epochs,
            batch_size=cfg.batch_size,
            seed=seed,
            device=self.device,
            front=inputs.run_front,
            eval_every=cfg.eval_every,
            progress=_Progress(progress) if progress is not None else None,
            recipe=recipe,
            x_sel=sel_x,
            y_sel=sel_y,
            precision=cfg.precision,
        )
        seconds = time.perf_counter() - t_run
        _check_front_frozen(inputs.front, method)
        if inputs.sel_in is not None:
            from training.downstream.selection import select_scores

            pred_sel = predict(
                model, inputs.sel_in, batch_size=512, device=self.device, front=inputs.run_front
            ).numpy()
            assert self.y_sel is not None  # sel_in exists only with a selection split
            res.update(select_scores(self.y_sel, pred_sel, len(data.class_names)))
        model_file = None
        if self.save:
            model_file = Path("models") / f"{run_name(cfg.task, family, v, method, corruption)}.pt"
            self._save_model(self.out / model_file, family, hp, model, inputs, res)
        rec = {
            **self.setup,
            "family": family,
            "variant": v,
            "method": method,
            "corruption": corruption,
            "hp": hp,
            "hp_source": "defaults" if v < 0 else "sampled",
            "lr": lr,
            **res,
            "seconds": seconds,
            "encode_seconds": inputs.encode_s,
            "embedding_mode": inputs.mode,
            "in_dim": inputs.d,
            "class_names": list(data.class_names),
            "device": self.device,
            "model": None if model_file is None else model_file.as_posix(),
            **inputs.extra,
        }
        if trained is not None:
            trained[(family, v)] = model
        if not self._record(rec, done):
            return []
        logger.info(
            "task %s %s v%d %s %s: val acc %.4f (%.1f s)",
            cfg.task,
            family,
            v,
            method,
            corruption,
            res["val_accuracy"],
            seconds,
        )
        return [rec]

    def _save_model(
        self,
        path: Path,
        family: str,
        hp: dict[str, Any],
        model: BaseModel,
        inputs: MethodInputs,
        res: dict[str, Any],
    ) -> Path:
        """Write one run's trained model as a ``classifier`` checkpoint (atomically)."""
        cfg, data, method, corruption = self.cfg, self.data, inputs.method, inputs.corruption
        front: Any = inputs.front  # Normalize (supervised) or NormalizedEncoder
        assert data.time_grid is not None
        encoder = None if method == "supervised" else front.encoder  # NormalizedEncoder -> bare encoder
        norm_stats = front.norm_stats() if method == "supervised" else front.normalize.norm_stats()
        pretraining = "none" if method == "supervised" else f"{method}-{corruption:g}"
        metrics = bundle_metrics(res, len(data.y_train), len(data.y_val))
        meta = classifier_metadata(
            encoder=encoder,
            base_model=model,
            family=family,
            pretraining=pretraining,
            bands=data.bands,
            time_grid=data.time_grid,
            classes=task_classes(data),
            min_valid_steps=cfg.min_valid,
            training_data=data.description or f"task {cfg.task}",
            metrics=metrics,
            nodata=data.nodata,
        )
        n = min(PARITY_ROWS, len(data.y_val))
        return save_classifier(
            path,
            encoder=encoder,
            encoder_name=describe_encoder(encoder)[0] if encoder is not None else None,
            base_model=model.cpu(),
            base_model_name=family,
            base_model_config=hp,
            norm_stats=norm_stats,
            metadata=meta,
            parity_inputs=data.x_val[:n],
            parity_labels=data.y_val[:n],
            encoder_path=inputs.extra.get("encoder"),
            fill=cfg.fill if cfg.task != "real" else "linear",
            config=config_to_dict(cfg),
        )

    def _ensemble(
        self,
        family: str,
        inputs: MethodInputs,
        done: dict[RunKey, dict[str, Any]],
        trained: dict[tuple[str, int], nn.Module],
    ) -> dict[str, Any] | None:
        """Average the probabilities of every recorded run of ``family`` with this method; score, save, record."""
        from training.downstream.classifier import load_classifier
        from training.models.ensemble import EnsembleClassifier

        cfg, data, method, corruption = self.cfg, self.data, inputs.method, inputs.corruption
        name = f"{family}_ensemble"
        if (cfg.task, name, 0, method, corruption) in done:
            return None
        members: list[SeriesClassifier] = []
        spec: list[dict[str, Any]] = []
        recs: list[dict[str, Any]] = []
        for v in self.indices:
            rec = done.get((cfg.task, family, v, method, corruption))
            if rec is None:
                continue
            model = trained.get((family, v))
            if model is None and rec.get("model") and (self.out / rec["model"]).is_file():
                model = load_classifier(self.out / rec["model"]).base_model
            if model is None:
                continue
            if not isinstance(model, SeriesClassifier):
                raise TypeError(
                    f"run {family} v{v} holds a {type(model).__name__}; an ensemble takes base models"
                )
            members.append(model.cpu().eval())
            spec.append({"family": family, "hp": rec["hp"], "variant": v})
            recs.append(rec)
        if len(members) < 2:
            logger.info("%s %s %s: fewer than 2 trained runs, no ensemble", family, method, corruption)
            return None
        t0 = time.perf_counter()
        ens = EnsembleClassifier(members, spec).to(self.device)
        logits = predict_logits(
            ens, inputs.feats_val, batch_size=512, device=self.device, front=inputs.run_front
        )
        res = score(self.y_val.numpy(), logits.argmax(-1).numpy(), len(data.class_names))
        sel = [r.get("selection_f1") for r in recs]
        res["selection_f1"] = (
            float(np.mean([float(v) for v in sel if v is not None])) if None not in sel else None
        )
        if inputs.sel_in is not None:
            from training.downstream.selection import select_scores

            pred_sel = predict(
                ens, inputs.sel_in, batch_size=512, device=self.device, front=inputs.run_front
            ).numpy()
            assert self.y_sel is not None  # sel_in exists only with a selection split
            res.update(select_scores(self.y_sel, pred_sel, len(data.class_names)))
        hp = {"members": spec}
        model_file = None
        if self.save:
            model_file = (
                Path("models")
                / f"{run_name(cfg.task, family, 0, method, corruption).replace('-v0-', '-ensemble-')}.pt"
            )
            self._save_model(self.out / model_file, "ensemble", hp, ens, inputs, res)
        rec = {
            **self.setup,
            "family": name,
            "variant": 0,
            "method": method,
            "corruption": corruption,
            "hp": hp,
            "hp_source": "ensemble",
            "lr": None,
            **res,
            "seconds": float(sum(r["seconds"] for r in recs)) + time.perf_counter() - t0,
            "encode_seconds": recs[0].get("encode_seconds"),
            "embedding_mode": recs[0].get("embedding_mode"),
            "in_dim": recs[0].get("in_dim"),
            "class_names": list(data.class_names),
            "device": self.device,
            "model": None if model_file is None else model_file.as_posix(),
            **inputs.extra,
        }
        if not self._record(rec, done):
            return None
        logger.info(
            "task %s %s of %d runs, %s %s: val acc %.4f, macro F1 %.4f",
            cfg.task,
            name,
            len(members),
            method,
            corruption,
            res["val_accuracy"],
            res["macro_f1"],
        )
        return rec

    def _baselines(self, inputs: MethodInputs, done: dict[RunKey, dict[str, Any]]) -> list[dict[str, Any]]:
        """Score the RandomForest on this method's inputs (and, for supervised, the majority class); record them."""
        from training.downstream.baselines import majority, random_forest

        cfg, data, method, corruption = self.cfg, self.data, inputs.method, inputs.corruption
        k = len(data.class_names)
        todo = [("random_forest", method, corruption)]
        if method == "supervised":
            todo.append(("majority", method, corruption))
        new = []
        for family, m, c in todo:
            if (cfg.task, family, 0, m, c) in done:
                continue
            if family == "random_forest" and inputs.mode != "precomputed":
                logger.warning(
                    "%s %s: features are encoded per batch (larger than embed_cache_gb); the RandomForest "
                    "baseline needs them in memory and is not run for this method",
                    method,
                    corruption,
                )
                continue
            if family == "random_forest":
                res = random_forest(
                    inputs.feats_train.numpy(),
                    data.y_train,
                    inputs.feats_val.numpy(),
                    data.y_val,
                    k,
                    seed=cfg.seed,
                    n_jobs=cfg.threads or -1,
                )
            else:
                res = majority(data.y_train, data.y_val, k)
            rec = {
                **self.setup,
                "family": family,
                "variant": 0,
                "method": m,
                "corruption": c,
                "hp": {"n_estimators": 500} if family == "random_forest" else {},
                "hp_source": "baseline",
                "lr": None,
                **res,
                "encode_seconds": inputs.encode_s,
                "embedding_mode": inputs.mode,
                "in_dim": int(inputs.feats_train.shape[-1]),
                "class_names": list(data.class_names),
                "device": "cpu",
                "model": None,
                **inputs.extra,
            }
            if not self._record(rec, done):
                continue
            new.append(rec)
            logger.info(
                "task %s baseline %s on %s %s: val acc %.4f, macro F1 %.4f (%.1f s)",
                cfg.task,
                family,
                m,
                c,
                res["val_accuracy"],
                res["macro_f1"],
                res["seconds"],
            )
        return new


def _default_kernel() -> int:
    """InceptionTime's default kernel (what the default-hyper-parameter variant asks for)."""
    from training.models.inception_time import InceptionTimeConfig

    return int(InceptionTimeConfig.kernel)


class _Progress:
    """The object :func:`~training.downstream.loop.train_run` updates once per epoch, as a callback."""

    def __init__(self, callback: Callable[[int], Any]) -> None:
        self._callback = callback

    def set_postfix(self, **_: Any) -> None:
        """Ignored (a tqdm bar shows it)."""

    def update(self, n: int) -> None:
        """One more epoch."""
        self._callback(n)


def _check_front_frozen(front: nn.Module, method: str) -> None:
    """Internal invariant: a frozen front never trains and never accumulates gradients."""
    if front.training or any(p.requires_grad or p.grad is not None for p in front.parameters()):
        raise RuntimeError(
            f"the {method} encoder left eval mode or received gradients during downstream training"
        )


def _write_npz(path: Path, **arrays: np.ndarray) -> None:
    """Write ``arrays`` to ``path`` atomically (:func:`cropmap.safeio.atomic.atomic_file`)."""
    with atomic_file(path, "wb") as fh:
        np.savez(fh, **arrays)  # type: ignore[arg-type]  # numpy's stub takes the keywords for allow_pickle


def run_comparison(
    cfg: DownstreamConfig,
    data: TaskData,
    encoders: Sequence[EncoderSpec],
    out_dir: str | Path,
    *,
    show_progress: bool = True,
) -> Path:
    """Train every (family, variant, method) on one task in this process and append the results.

    Args:
        cfg: The run settings.
        data: The task's train / validation series (raw digital numbers).
        encoders: Pre-trained encoders, one per (method, corruption rate).
        out_dir: Folder for ``results.jsonl``, ``variants.db`` and ``config.json``.
        show_progress: Show tqdm bars.

    Returns:
        The results file.

    Raises:
        ValueError: On duplicated encoders, a results file made with another set-up, a CUDA device torch does not
            see, or an encoder that does not fit the task's bands. (A bi-modal encoder's S2 branch serves any task
            on its bands: the real task takes one pre-trained on pairs from ``python -m training.pairs`` or
            ``training.data.s1pairs``.)
    """
    from tqdm.auto import tqdm

    from training.downstream.threads import apply_threads, decide_threads

    choice = decide_threads(cfg.threads, deterministic=cfg.deterministic)
    apply_threads(choice)
    logger.info("threads: %s", choice)
    cfg = dataclasses.replace(cfg, threads=choice.threads)
    protocol = Protocol(cfg, data, encoders, out_dir)
    done = protocol.prepare()
    specs = protocol.plan(done)
    d = protocol.data
    logger.info(
        "task %s: %d train / %d val series of %d stamps x %d bands, %d classes; %d runs",
        cfg.task,
        len(d.y_train),
        len(d.y_val),
        d.x_train.shape[1],
        d.x_train.shape[2],
        len(d.class_names),
        protocol.n_runs(),
    )
    n_base = sum(s.kind == "base" for s in specs)
    bar = tqdm(
        total=protocol.n_runs(),
        initial=protocol.n_runs() - n_base,
        desc=f"task {cfg.task}",
        unit="run",
        disable=not show_progress,
    )
    trained: dict[tuple[str, int], nn.Module] = {}
    method: tuple[str, float | None] | None = None
    for spec in specs:
        if (spec.method, spec.corruption) != method:
            method = (spec.method, spec.corruption)
            trained.clear()  # members of the previous method's ensembles
        if spec.kind != "base":
            protocol.execute(spec, done, trained=trained)
            continue
        bar.set_description(f"task {cfg.task} {spec.label()}")
        with tqdm(desc="epochs", unit="ep", leave=False, disable=not show_progress) as epochs:
            protocol.execute(spec, done, trained=trained, progress=epochs.update)
        bar.update(1)
    bar.close()
    return protocol.store.path
