"""The papers' hyper-parameter spaces and seeded, resumable sampling of model variants.

The downstream protocol (PAPER.md section 4) does not optimise: it samples ``n``
variants per base-model family with Optuna and trains every one of them with each
method (supervised, uni-modal, bi-modal) using the same hyper-parameters. The
variants are therefore sampled once per family and stored in an Optuna study
(SQLite), so an interrupted run reloads exactly the same variants.

Variant ``k`` of a family is drawn by a :class:`optuna.samplers.RandomSampler` seeded
from ``(seed, family, k)``, so the set does not depend on whether sampling was
interrupted, and families do not share their learning-rate draws.
Each variant is stored as a completed trial whose value is ``0.0``: the study is a
record of samples, not an optimisation.

Run ``python -m training.tune --family lstm --variants 10 --storage runs/variants.db``
to print the variants.
"""

from __future__ import annotations

import argparse
import json
import logging
import zlib
from pathlib import Path
from typing import Any

from typing import TYPE_CHECKING

from training.models import MODELS

if TYPE_CHECKING:  # optuna is imported where variants are sampled, so training imports without it
    import optuna

logger = logging.getLogger(__name__)

LR_RANGE = (1e-5, 1e-3)
"""Learning-rate range, sampled log-uniformly (all families)."""

SPACES: dict[str, dict[str, tuple[Any, ...]]] = {
    "lstm": {"hidden": (32, 64, 128, 256), "layers": (2, 3, 4, 5, 6)},
    "inception_time": {"layers": (2, 4, 8), "hidden": (128, 256, 512, 1024), "kernel": (40, 80, 120, 136)},
    "transformer": {"d_model": (32, 64, 128), "heads": (2, 4, 8), "layers": (2, 3, 4, 5, 6)},
}
"""The papers' search spaces per family (PAPER.md section 2); other model fields keep their defaults."""


def suggest(trial: optuna.Trial, family: str) -> dict[str, Any]:
    """Suggest one variant of a base-model family from the papers' space.

    Args:
        trial: The Optuna trial that records the choices.
        family: Registry key of the base model.

    Returns:
        ``{"lr": float, **model_hp}``; ``model_hp`` are keyword arguments of the
        family's builder.

    Raises:
        ValueError: On an unknown family.
    """
    if family not in SPACES:
        raise ValueError(f"unknown model family {family!r}; choose from {sorted(SPACES)}")
    params: dict[str, Any] = {name: trial.suggest_categorical(name, list(choices)) for name, choices in SPACES[family].items()}
    params["lr"] = trial.suggest_float("lr", *LR_RANGE, log=True)
    return params


def split_lr(variant: dict[str, Any]) -> tuple[float, dict[str, Any]]:
    """Split a variant into its learning rate and the builder's hyper-parameters."""
    hp = dict(variant)
    return float(hp.pop("lr")), hp


def variant_seed(seed: int, family: str, k: int) -> int:
    """The sampler seed of variant ``k`` of ``family`` (stable across runs and platforms)."""
    return zlib.crc32(f"{seed}/{family}/{k}".encode()) & 0x7FFFFFFF


def sample_variants(family: str, n: int = 10, *, seed: int = 0, storage: str | Path | None = None) -> list[dict[str, Any]]:
    """Sample (or reload) ``n`` variants of a family.

    Args:
        family: Registry key of the base model.
        n: Number of variants.
        seed: Base seed; variant ``k`` uses a seed derived from ``(seed, family, k)``.
        storage: SQLite file that keeps the study (created when missing); ``None``
            samples in memory.

    Returns:
        ``n`` dicts ``{"lr": float, **model_hp}``, in variant order. The same
        ``(family, seed)`` gives the same list, with or without storage, however
        often it is interrupted and resumed; asking for more variants extends the list.

    Raises:
        ValueError: On an unknown family or ``n < 1``.
    """
    if family not in SPACES or family not in MODELS:
        raise ValueError(f"unknown model family {family!r}; choose from {sorted(SPACES)}")
    if n < 1:
        raise ValueError(f"number of variants must be >= 1, got {n}")
    import optuna

    backend: optuna.storages.BaseStorage
    if storage is None:
        backend = optuna.storages.InMemoryStorage()
    else:
        path = Path(storage)
        path.parent.mkdir(parents=True, exist_ok=True)
        backend = optuna.storages.RDBStorage(f"sqlite:///{path}")
    name = f"variants-{family}-seed{seed}"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name=name, storage=backend, load_if_exists=True)
    done = {t.number: t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.COMPLETE}
    broken = [t.number for t in study.get_trials(deepcopy=False) if t.state != optuna.trial.TrialState.COMPLETE]
    if broken:
        raise ValueError(
            f"study {name!r} in {storage} holds unfinished trials {broken}; it was not written by "
            "sample_variants or was corrupted - delete the file to resample"
        )
    if sorted(done) != list(range(len(done))):
        raise ValueError(f"study {name!r} in {storage} has non-contiguous trial numbers {sorted(done)}")
    for k in range(len(done), n):
        # A fresh sampler per variant, seeded by its index, keeps variant k independent of interruptions.
        sampler = optuna.samplers.RandomSampler(seed=variant_seed(seed, family, k))
        study_k = optuna.load_study(study_name=name, storage=backend, sampler=sampler)
        trial = study_k.ask()
        if trial.number != k:
            raise RuntimeError(f"study {name!r} is being extended concurrently (expected trial {k}, got {trial.number})")
        suggest(trial, family)
        study_k.tell(trial, 0.0)
        done[k] = study_k.get_trials(deepcopy=False)[k]
        logger.info("sampled %s variant %d: %s", family, k, done[k].params)
    return [dict(done[k].params) for k in range(n)]


def main(argv: list[str] | None = None) -> int:
    """Print the sampled variants of one family as JSON lines."""
    parser = argparse.ArgumentParser(prog="python -m training.tune", description=__doc__.split("\n\n")[0])
    parser.add_argument("--family", required=True, choices=sorted(SPACES))
    parser.add_argument("--variants", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--storage", type=Path, default=None, help="SQLite file keeping the study")
    args = parser.parse_args(argv)
    for k, variant in enumerate(sample_variants(args.family, args.variants, seed=args.seed, storage=args.storage)):
        print(json.dumps({"family": args.family, "variant": k, **variant}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
