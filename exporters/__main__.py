"""``python -m exporters``: export a trained classifier, or the best run of a downstream run directory, as a bundle.

    python -m exporters CHECKPOINT -o model.onnx
    python -m exporters --best RUN_DIR -o model.onnx [--metric macro_f1|accuracy] [--task real]
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import sys
from pathlib import Path

from cropmap.errors import BundleError
from exporters.best import METRICS, export_best
from exporters.parity import ParityError
from exporters.to_onnx import DEFAULT_OPSET, ExportError, export_checkpoint
from training.checkpoint import CheckpointError, describe_error


def main(argv: list[str] | None = None) -> int:
    """Export a checkpoint or the best run of a run directory; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m exporters",
        description="Export a classifier checkpoint (a downstream run's model, training.sample_model), or the best "
        "run of a downstream run directory, as one self-contained, parity-checked cropmap bundle.",
    )
    parser.add_argument("checkpoint", type=Path, nargs="?", help="classifier checkpoint (.pt)")
    parser.add_argument("--best", type=Path, metavar="RUN_DIR",
                        help="export the best run of this python -m training.downstream --out folder")  # fmt: skip
    parser.add_argument("--metric", choices=sorted(METRICS), default="macro_f1",
                        help="validation metric that picks the best run (default: macro_f1)")  # fmt: skip
    parser.add_argument("--task", help="with --best: the task to choose from when the folder holds several")
    parser.add_argument("-o", "--out", type=Path, required=True, help="destination .onnx file")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset (default {DEFAULT_OPSET})")
    parser.add_argument("--atol", type=float, default=1e-4, help="largest allowed |torch - onnx| logit difference")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress")
    args = parser.parse_args(argv)
    if (args.checkpoint is None) == (args.best is None):
        parser.error("give either a CHECKPOINT or --best RUN_DIR")
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    created = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    try:
        if args.best is not None:
            choice, report = export_best(
                args.best, args.out, metric=args.metric, task=args.task, opset=args.opset, atol=args.atol,
                created=created, overwrite=args.overwrite,
            )  # fmt: skip
            print(f"chose {choice.model}: {choice.describe()}")
        else:
            report = export_checkpoint(
                args.checkpoint, args.out, opset=args.opset, atol=args.atol, created=created, overwrite=args.overwrite
            )
    except FileExistsError as err:
        print(f"error: {err.filename or args.out} exists; pass --overwrite to replace it", file=sys.stderr)
        return 1
    except (ExportError, ParityError, CheckpointError, BundleError, ValueError, OSError) as err:
        print(f"error: {describe_error(err)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: nothing was written", file=sys.stderr)
        return 130
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.2f} MB); parity on {report.summary()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
