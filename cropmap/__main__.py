"""``python -m cropmap`` runs the command-line interface."""

from __future__ import annotations

from cropmap.cli import main

if __name__ == "__main__":
    main()
