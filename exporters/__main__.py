"""``python -m exporters CKPT -o model.onnx``: export a trained classifier as a cropmap bundle."""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import sys
from pathlib import Path

from exporters.parity import ParityError
from exporters.to_onnx import DEFAULT_OPSET, ExportError, export_checkpoint
from training.checkpoint import CheckpointError


def main(argv: list[str] | None = None) -> int:
    """Export ``CKPT`` (a ``classifier`` checkpoint) to an ONNX bundle; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m exporters",
        description="Export a classifier checkpoint (training.sample_model or a downstream run) as one "
        "self-contained, parity-checked cropmap bundle.",
    )
    parser.add_argument("checkpoint", type=Path, help="classifier checkpoint (.pt)")
    parser.add_argument("-o", "--out", type=Path, required=True, help="destination .onnx file")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset (default {DEFAULT_OPSET})")
    parser.add_argument("--atol", type=float, default=1e-4, help="largest allowed |torch - onnx| logit difference")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    created = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    try:
        report = export_checkpoint(
            args.checkpoint, args.out, opset=args.opset, atol=args.atol, created=created, overwrite=args.overwrite
        )
    except (ExportError, ParityError, CheckpointError, FileExistsError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.2f} MB); parity on {report.summary()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
