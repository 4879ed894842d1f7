"""The ``cropmap export`` command group (the ``export`` extra): ``bundle``, ``best`` and ``score``.

Registered through the ``cropmap.commands`` entry point ``export`` (pyproject.toml). The group is lazy and the
commands import torch, onnx and the exporters' modules inside their bodies, so ``--help`` stays fast. Without the
``export`` extra the group is still listed by ``cropmap --help`` and running it prints a one-line hint.
"""

from __future__ import annotations

from cropmap.cli_common import LazyGroup

__all__ = ["EXPORT_COMMANDS", "EXPORT_REQUIRES", "export"]

EXPORT_REQUIRES = ("torch", "onnx")
"""Top-level modules the ``export`` extra installs; one missing: the group prints the extra's hint."""

EXPORT_COMMANDS = {
    "bundle": "exporters.cli:bundle",
    "best": "exporters.cli:best",
    "score": "exporters.cli:score",
}
"""``cropmap export`` subcommand -> ``module:attribute`` of its click command."""

export = LazyGroup(
    "export",
    EXPORT_COMMANDS,
    extra="export",
    requires=EXPORT_REQUIRES,
    help="Export a checkpoint or the best run of a run directory as a bundle; score a bundle.",
)
