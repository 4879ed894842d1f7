"""``python -m training.sample_model``: an alias of ``cropmap train sample-model``."""

import sys

from cropmap.cli_common import run_command
from training.downstream.cli import sample_model

if __name__ == "__main__":
    sys.exit(run_command(sample_model, None, prog_name="python -m training.sample_model"))
