"""``python -m training.downstream``: an alias of ``cropmap train downstream``."""

import sys

from training.downstream.cli import downstream_main

if __name__ == "__main__":
    sys.exit(downstream_main(None, prog_name="python -m training.downstream"))
