"""``cropmap train pretrain``: contrastive pre-training of the Sentinel-2 encoder (``python -m training.pretrain``).

Torch-free: the options are declared here and the body imports :mod:`training.pretrain.run` (torch) only when the
command runs, so ``--help`` is fast. See docs/pretraining.md and docs/cli.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from cropmap.cli_common import (
    device_option,
    output_option,
    overwrite_option,
    precision_option,
    verbosity_options,
)

__all__ = ["PRECISIONS", "pretrain"]

PRECISIONS = ("fp32", "tf32", "bf16")
"""``--precision`` of pre-training (``training.pretrain.loop.PRECISIONS``; tests/test_cli_family.py checks it)."""


@click.command("pretrain")
@click.option(
    "--data",
    type=click.Path(path_type=Path),
    required=True,
    help="An .npz with s2 (and ps) arrays, a folder of 'cropmap data pairs', or a DENETHOR-layout scene folder.",
)
@output_option(
    "Output folder: encoder.pt, checkpoints/last.pt, loss_log.jsonl, config.json.", metavar="FOLDER"
)
@click.option(
    "--config",
    type=click.Path(path_type=Path),
    default=None,
    help="TOML configuration (training/configs/pretrain_*.toml).",
)
@click.option(
    "--mode", type=click.Choice(["unimodal", "bimodal"]), default=None, help="Overrides config 'mode'."
)
@click.option(
    "--alignment", type=click.Choice(["point", "time"]), default=None, help="Overrides config 'alignment'."
)
@click.option(
    "--corruption", type=float, default=None, help="SCARF corruption rate; overrides config 'corruption'."
)
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="Configuration override, repeatable (--set epochs=5 --set encoder.n_layers=4).",
)
@click.option(
    "--resume",
    type=click.Path(path_type=Path),
    default=None,
    help="A pretrain_state checkpoint (checkpoints/last.pt) to continue from.",
)
@device_option()
@precision_option(choices=PRECISIONS)
@click.option(
    "--fast",
    is_flag=True,
    help="Fast path (same losses): device-resident step without host synchronisation inside an epoch, fused Adam.",
)
@click.option("--compile", is_flag=True, help="torch.compile the projections and loss (implies --fast).")
@click.option(
    "--cuda-graphs",
    is_flag=True,
    help="Compile with CUDA graphs (mode reduce-overhead; CUDA only; implies --fast).",
)
@click.option(
    "--pair-cache",
    type=click.Path(path_type=Path),
    default=None,
    metavar="DIR",
    help="Keep the pairs drawn from a scene in DIR and memory-map them on reruns.",
)
@overwrite_option(
    help="Write into a folder with earlier outputs; without it (or --resume) they are an error."
)
@click.option("--no-progress", is_flag=True, help="Hide the progress bar.")
@verbosity_options
def pretrain(**options: Any) -> int:
    """Contrastive pre-training of the Sentinel-2 encoder: uni-modal (SCARF) or bi-modal (S2 + PlanetScope),
    point-wise or time-wise."""
    from training.pretrain.run import run_command_line

    return run_command_line(**options)
