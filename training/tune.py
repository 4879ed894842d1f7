"""``python -m training.tune``: an alias of ``cropmap train tune``."""

import sys

from training.downstream.cli import tune_main

if __name__ == "__main__":
    sys.exit(tune_main(None, prog_name="python -m training.tune"))
