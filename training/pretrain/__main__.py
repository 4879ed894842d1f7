"""``python -m training.pretrain``: an alias of ``cropmap train pretrain`` (torch is imported only to run it)."""

import sys

from cropmap.cli_common import run_command
from training.pretrain.cli import pretrain

if __name__ == "__main__":
    sys.exit(run_command(pretrain, None, prog_name="python -m training.pretrain"))
