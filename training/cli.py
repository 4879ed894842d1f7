"""The ``cropmap data``, ``cropmap train`` and ``cropmap evaluate`` command groups (the ``train`` extra).

Registered through the ``cropmap.commands`` entry points (pyproject.toml). Each group is lazy: its commands live in a
torch-free ``cli.py`` of their subpackage and are imported only when one is run or its help printed; the modules
they need (torch, optuna...) are imported inside the command bodies. Without the ``train`` extra the groups are
still listed by ``cropmap --help`` and running one prints a one-line hint naming the extra (docs/cli.md).
"""

from __future__ import annotations

from cropmap.cli_common import LazyGroup

__all__ = [
    "DATA_COMMANDS",
    "EVALUATE_COMMANDS",
    "TRAIN_COMMANDS",
    "TRAIN_REQUIRES",
    "data",
    "evaluate",
    "train",
]

TRAIN_REQUIRES = ("torch", "optuna", "pyarrow", "sklearn")
"""Top-level modules the ``train`` extra installs; one missing: the groups print the extra's hint."""

DATA_COMMANDS = {
    "extract": "training.data.cli:extract",
    "pairs": "training.data.cli:pairs",
    "s1-pairs": "training.data.cli:s1_pairs",
    "stack-pixels": "training.data.cli:stack_pixels",
    "simulate": "training.simulate.cli:simulate",
    "ps-scenes": "training.simulate.cli:ps_scenes",
    "scene-export": "training.simulate.cli:scene_export",
}
"""``cropmap data`` subcommand -> ``module:attribute`` of its click command."""

TRAIN_COMMANDS = {
    "pretrain": "training.pretrain.cli:pretrain",
    "downstream": "training.downstream.cli:downstream",
    "tune": "training.downstream.cli:tune",
    "sample-model": "training.downstream.cli:sample_model",
}
"""``cropmap train`` subcommand -> ``module:attribute`` of its click command."""

EVALUATE_COMMANDS = {
    "protocol": "training.evaluate.cli:protocol",
    "probe": "training.evaluate.cli:probe",
    "mapscore": "training.evaluate.cli:mapscore",
    "seedtable": "training.evaluate.cli:seedtable",
    "season-transfer": "training.evaluate.cli:season_transfer",
    "s1-bimodal": "training.evaluate.cli:s1_bimodal",
}
"""``cropmap evaluate`` subcommand -> ``module:attribute`` of its click command."""

data = LazyGroup(
    "data",
    DATA_COMMANDS,
    extra="train",
    requires=TRAIN_REQUIRES,
    help="Training data: labelled series from a stack, pre-training pairs, simulated scenes.",
)
train = LazyGroup(
    "train",
    TRAIN_COMMANDS,
    extra="train",
    requires=TRAIN_REQUIRES,
    help="Pre-train the encoder, train and tune downstream models, train the sample model.",
)
evaluate = LazyGroup(
    "evaluate",
    EVALUATE_COMMANDS,
    extra="train",
    requires=TRAIN_REQUIRES,
    help="The papers' protocol, probes, map scores, seed tables, season transfer, S1 bi-modal check.",
)
