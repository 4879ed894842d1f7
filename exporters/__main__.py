"""``python -m exporters``: export a trained classifier, or the best run of a downstream run directory, as a bundle.

python -m exporters CHECKPOINT -o model.onnx
python -m exporters --best RUN_DIR -o model.onnx [--metric macro_f1|accuracy] [--task real]
... [--select-on auto|selection|validation]
... [--precision fp32|fp16|int8] [--calibration-data TRAIN.npz] [--min-agreement 0.99]
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import sys
from pathlib import Path

import numpy as np

from cropmap.contract.metadata import PRECISIONS
from cropmap.errors import BundleError
from cropmap.safeio.signals import interrupt_exit_code, signals_as_interrupts
from exporters.best import METRICS, SPLITS, export_best
from exporters.parity import ParityError
from exporters.quantize import DEFAULT_MIN_AGREEMENT, INT8_METHODS
from exporters.to_onnx import DEFAULT_OPSET, ExportError, export_checkpoint, refuse_inputs_as_outputs
from exporters.trees import export_tree_checkpoint, parity_summary
from training.checkpoint import CheckpointError, describe_error
from training.downstream.trees import TREE_FAMILIES, is_tree_checkpoint


def _training_series(path: Path) -> np.ndarray:
    """The array ``x`` of an ``.npz`` file: training series to calibrate a reduced precision on."""
    if not path.is_file():
        raise ExportError(
            f"--calibration-data {path} does not exist; expected an .npz file with an array 'x'"
        )
    try:
        with np.load(path) as data:
            if "x" not in data:
                raise ExportError(
                    f"--calibration-data {path} holds {sorted(data)}; expected an array 'x' (N, T, C)"
                )
            return np.asarray(data["x"], dtype=np.float32)
    except (ValueError, OSError) as err:
        raise ExportError(f"--calibration-data {path} is not a readable .npz file ({err})") from err


def main(argv: list[str] | None = None) -> int:
    """Export a checkpoint or the best run of a run directory; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m exporters",
        description="Export a classifier checkpoint (a downstream run's model, training.downstream.sample_model), or the best "
        "run of a downstream run directory, as one self-contained, parity-checked cropmap bundle.",
    )
    parser.add_argument("checkpoint", type=Path, nargs="?", help="classifier checkpoint (.pt)")
    parser.add_argument(
        "--best",
        type=Path,
        metavar="RUN_DIR",
        help="export the best run of this python -m training.downstream --out folder",
    )
    parser.add_argument(
        "--metric",
        choices=sorted(METRICS),
        default="macro_f1",
        help="validation metric that picks the best run (default: macro_f1)",
    )
    parser.add_argument("--task", help="with --best: the task to choose from when the folder holds several")
    parser.add_argument(
        "--select-on",
        choices=SPLITS,
        default="auto",
        help="with --best: rank on the model-selection split carved from the training samples "
        "(selection; the validation split stays an untouched test split), on the validation "
        "split, or auto (selection when every run was scored on one; default)",
    )
    parser.add_argument("-o", "--out", type=Path, required=True, help="destination .onnx file")
    parser.add_argument(
        "--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset (default {DEFAULT_OPSET})"
    )
    parser.add_argument(
        "--atol", type=float, default=1e-4, help="largest allowed |torch - onnx| logit difference"
    )
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="fp32",
        help="fp32 (default); fp16 for GPUs; int8 for CPUs (static QDQ or dynamic, whichever is "
        "faster of those that agree with fp32)",
    )
    parser.add_argument(
        "--calibration-data",
        type=Path,
        metavar="NPZ",
        help="training series (array 'x', float32 (N, T, C), raw gap-free) to calibrate fp16/int8 on; "
        "default: half of the stored validation series, the agreement measured on the other half",
    )
    parser.add_argument(
        "--min-agreement",
        type=float,
        default=DEFAULT_MIN_AGREEMENT,
        help=f"refuse an fp16/int8 graph whose class agrees with fp32 on fewer held-out series "
        f"(default {DEFAULT_MIN_AGREEMENT})",
    )
    parser.add_argument(
        "--int8-method",
        choices=INT8_METHODS,
        default="auto",
        help="int8: static QDQ, dynamic, or auto (both measured, the faster passing one kept)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress")
    args = parser.parse_args(argv)
    if (args.checkpoint is None) == (args.best is None):
        parser.error("give either a CHECKPOINT or --best RUN_DIR")
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    created = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    reduce: dict[str, object] = {
        "precision": args.precision,
        "min_agreement": args.min_agreement,
        "int8_method": args.int8_method,
    }
    try:
        if args.calibration_data is not None:
            refuse_inputs_as_outputs(args.out, {args.calibration_data: "calibration data"})
            reduce["train_x"] = _training_series(args.calibration_data)
        if args.best is not None:
            choice, report = export_best(
                args.best,
                args.out,
                metric=args.metric,
                task=args.task,
                opset=args.opset,
                atol=args.atol,
                created=created,
                overwrite=args.overwrite,
                split=args.select_on,
                **reduce,
            )
            print(f"chose {choice.model}: {choice.describe()}")
            trees = choice.record["family"] in TREE_FAMILIES
        elif trees := is_tree_checkpoint(args.checkpoint):
            report = export_tree_checkpoint(
                args.checkpoint, args.out, created=created, overwrite=args.overwrite, precision=args.precision
            )
        else:
            report = export_checkpoint(
                args.checkpoint,
                args.out,
                opset=args.opset,
                atol=args.atol,
                created=created,
                overwrite=args.overwrite,
                **reduce,
            )
    except FileExistsError as err:
        print(f"error: {err.filename or args.out} exists; pass --overwrite to replace it", file=sys.stderr)
        return 1
    except (ExportError, ParityError, CheckpointError, BundleError, ValueError, OSError) as err:
        print(f"error: {describe_error(err)}", file=sys.stderr)
        return 1
    except (
        KeyboardInterrupt
    ) as err:  # Ctrl-C, or SIGTERM (signals_as_interrupts): the temporaries are removed
        code, name = interrupt_exit_code(err)
        print(f"interrupted by {name}: nothing was written", file=sys.stderr)
        return code
    summary = parity_summary(report) if trees else report.summary()
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.2f} MB); parity on {summary}")
    return 0


if __name__ == "__main__":
    with signals_as_interrupts():  # SIGTERM cleans up as Ctrl-C does, exit 143
        status = main()
    sys.exit(status)
