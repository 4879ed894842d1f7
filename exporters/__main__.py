"""``python -m exporters``: an alias of ``cropmap export bundle`` and ``cropmap export best``.

    python -m exporters CHECKPOINT -o model.onnx [...]      is  cropmap export bundle CHECKPOINT -o model.onnx [...]
    python -m exporters --best RUN_DIR -o model.onnx [...]  is  cropmap export best RUN_DIR -o model.onnx [...]

The options are those of the two commands (docs/cli.md); the old spellings ``--out`` and ``--precision`` (now
``--weights``) are accepted.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import click

from cropmap.cli_common import run_command

PROG = "python -m exporters"


def _split_best(argv: Sequence[str]) -> tuple[str | None, list[str]]:
    """``(RUN_DIR, the other arguments)`` when ``--best RUN_DIR`` (or ``--best=RUN_DIR``) is given, else
    ``(None, argv)``."""
    args = list(argv)
    for i, arg in enumerate(args):
        if arg == "--":
            break
        if arg.startswith("--best="):
            return arg.split("=", 1)[1], args[:i] + args[i + 1 :]
        if arg == "--best" and i + 1 < len(args):
            return args[i + 1], args[:i] + args[i + 2 :]
    return None, args


def main(argv: Sequence[str] | None = None) -> int:
    """Export a checkpoint, or the best run of a run directory (``--best RUN_DIR``); returns the exit status."""
    from exporters.cli import best, bundle

    args = list(sys.argv[1:] if argv is None else argv)
    if args in (["--help"], ["-h"]):
        click.echo(
            f"Usage: {PROG} CHECKPOINT -o BUNDLE [OPTIONS]\n"
            f"       {PROG} --best RUN_DIR -o BUNDLE [OPTIONS]\n\n"
            "  Aliases of 'cropmap export bundle' and 'cropmap export best'; their options:\n"
        )
        bundle_status = run_command(bundle, ["--help"], prog_name=PROG)
        click.echo("")
        return bundle_status or run_command(best, ["--help"], prog_name=f"{PROG} --best RUN_DIR")
    run_dir, rest = _split_best(args)
    if run_dir is not None:
        return run_command(best, [run_dir, *rest], prog_name=f"{PROG} --best")
    if "--best" in args:  # --best without its RUN_DIR
        click.echo(
            f"Usage: {PROG} --best RUN_DIR -o BUNDLE [OPTIONS]\n\nError: --best needs a RUN_DIR", err=True
        )
        return 2
    return run_command(bundle, args, prog_name=PROG)


if __name__ == "__main__":
    sys.exit(main())
