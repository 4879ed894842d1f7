"""fp16 and int8 bundles from an fp32 bundle, with their agreement with fp32 measured and recorded.

:func:`reduce_precision` turns an exported fp32 bundle into

* ``fp16`` (for GPUs): weights and arithmetic in float16, inputs and outputs kept float32
  (``onnxruntime.transformers.float16.convert_float_to_float16(keep_io_types=True)``); the
  normalisation of the raw digital numbers (values up to ~10,000, where float16 steps are 8)
  and the Transposes (:data:`FP16_KEEP_OPS`) stay in float32;
* ``int8`` (for CPUs): ``quant_pre_process`` (shape inference and graph optimisation), then
  either **static** QDQ quantisation (int8 per-channel weights, uint8 activations whose ranges
  are calibrated by running the graph on training series) or **dynamic** quantisation
  (int8 weights, activation ranges computed per batch at run time). ``int8_method="auto"``
  builds both, measures both and keeps the faster one that meets the agreement threshold.
  Dynamic quantisation takes each activation's range from the whole batch, so a pixel's
  logits depend slightly on the other pixels of its ONNX Runtime call (batch size, block
  layout); static ranges are fixed, so static int8 gives a pixel the same logits in any
  batch. The agreement is measured in batches of 4096 (cropmap's default classify batch is 256).

Every reduced graph is compared with the fp32 graph on held-out series (not used for the
calibration): argmax agreement, largest |logit difference| and, with labels, the accuracy
of both. Below ``min_agreement`` (default :data:`DEFAULT_MIN_AGREEMENT`) the export is
refused with :class:`PrecisionError`; otherwise the numbers go into the bundle metadata
(:class:`cropmap.contract.metadata.Precision`) and the bundle is written atomically as one file (no
external ``.onnx.data``).

Known pitfalls handled here: the quantiser needs ``quant_pre_process`` first (shape
information for every tensor); freshly initialised models have identical weight tensors
(e.g. every LayerNorm's ones and zeros) that the torch exporter stores once and shares
between nodes, which the quantiser cannot give separate scales, so shared initialisers are
duplicated per consumer before quantising (:func:`unshare_initializers`). Every reduced graph is
first opened in a child process (:func:`_opens_in_a_child`), so that a crash of ONNX Runtime's
graph optimiser becomes a one-line error instead of ending the export.
"""

from __future__ import annotations

import dataclasses
import logging
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cropmap.contract.metadata import METADATA_KEY, PRECISIONS, BundleMetadata, Precision
from cropmap.errors import CropmapError
from cropmap.runtime import load_bundle
from cropmap.safeio.atomic import atomic_path

logger = logging.getLogger(__name__)

DEFAULT_MIN_AGREEMENT = 0.99
"""Smallest share of held-out series whose fp16/int8 class must equal the fp32 graph's (the export refuses below)."""
INT8_METHODS = ("auto", "static", "dynamic")
CALIBRATION_LIMIT = 2048
"""Series used to calibrate the static int8 activation ranges."""
_BATCH = 4096
"""Series per ONNX Runtime call when measuring: cropmap's default batch size (dynamic int8 depends on the batch)."""


class PrecisionError(CropmapError, RuntimeError):
    """A reduced-precision graph could not be built, or disagrees with fp32 beyond the threshold."""


@dataclass(frozen=True)
class Candidate:
    """One reduced graph and how it measured."""

    method: str
    path: Path
    logits: np.ndarray
    px_per_s: float


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0]}" if text else type(err).__name__


def unshare_initializers(model: Any) -> int:
    """Give every node input that reads an initialiser shared with another node its own copy.

    Returns:
        How many copies were made.
    """
    from onnx import numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    seen: dict[str, int] = {}
    copies = 0
    for node in model.graph.node:
        for k, name in enumerate(node.input):
            if name not in inits:
                continue
            seen[name] = seen.get(name, 0) + 1
            if seen[name] == 1:
                continue
            new = f"{name}__copy{seen[name] - 1}"
            arr = numpy_helper.to_array(inits[name])
            model.graph.initializer.append(numpy_helper.from_array(arr.copy(), new))
            node.input[k] = new
            copies += 1
    return copies


def _session(path: Path, threads: int | None = None) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads is not None:
        opts.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def _run(session: Any, meta: BundleMetadata, x: np.ndarray) -> np.ndarray:
    return np.concatenate(
        [
            session.run([meta.output_name], {meta.input_name: x[i : i + _BATCH]})[0]
            for i in range(0, len(x), _BATCH)
        ]
    )


def _throughput(session: Any, meta: BundleMetadata, x: np.ndarray, repeat: int = 3) -> float:
    """Best-of-``repeat`` series per second of ``session`` on ``x``."""
    _run(session, meta, x[:_BATCH])
    best = 0.0
    for _ in range(repeat):
        t0 = time.perf_counter()
        _run(session, meta, x)
        best = max(best, len(x) / (time.perf_counter() - t0))
    return best


FP16_KEEP_OPS = ("Transpose",)
"""Operators left in float32 by the fp16 conversion (besides ONNX Runtime's default list): ONNX Runtime 1.32's CPU
graph optimiser crashes (segfault) on the float16 Transposes of the Transformer's attention; a Transpose only moves
values, so keeping it in float32 costs two casts and no precision."""


def _to_fp16(model: Any) -> Any:
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    # The normalisation reads raw digital numbers (up to ~10,000; float16 steps of 8 there): keep it in float32.
    keep = [n.name for n in model.graph.node if n.name.startswith("/normalize/")]
    return convert_float_to_float16(
        model,
        keep_io_types=True,
        node_block_list=keep,
        disable_shape_infer=False,
        op_block_list=[*DEFAULT_OP_BLOCK_LIST, *FP16_KEEP_OPS],
    )


def _opens_in_a_child(path: Path) -> str | None:
    """Open ``path`` as cropmap does (CPU, graph optimisation ALL) in a child process; ``None`` if it opens, else why
    not. A crash of ONNX Runtime's optimiser then ends the child, not this process."""
    import subprocess
    import sys

    code = (
        "import sys, onnxruntime as ort\n"
        "o = ort.SessionOptions(); o.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL\n"
        "ort.InferenceSession(sys.argv[1], sess_options=o, providers=['CPUExecutionProvider'])\n"
    )
    res = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, check=False)
    if res.returncode == 0:
        return None
    last = (res.stderr.strip().splitlines() or [""])[-1]
    how = f"signal {-res.returncode}" if res.returncode < 0 else f"exit status {res.returncode}"
    return f"ONNX Runtime cannot open it on the CPU ({how}{': ' + last if last else ''})"


class _Reader:
    """Feeds calibration batches to ``quantize_static``."""

    def __init__(self, name: str, x: np.ndarray) -> None:
        self._batches: Iterator[dict[str, np.ndarray]] = iter(
            [{name: x[i : i + 256]} for i in range(0, len(x), 256)]
        )

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)

    def rewind(self) -> None:  # pragma: no cover - not used by MinMax calibration
        raise NotImplementedError


def _int8(pre: Path, out: Path, method: str, meta: BundleMetadata, calib_x: np.ndarray) -> str:
    """Quantise the pre-processed model ``pre`` to ``out``; returns the method description."""
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )

    if method == "static":
        x = calib_x[:CALIBRATION_LIMIT]
        quantize_static(
            str(pre),
            str(out),
            _Reader(meta.input_name, x),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
            use_external_data_format=False,
        )
        return (
            f"int8 static QDQ (per-channel int8 weights, uint8 activations, MinMax ranges on {len(x)} series)"
        )
    quantize_dynamic(
        str(pre), str(out), weight_type=QuantType.QInt8, per_channel=False, use_external_data_format=False
    )
    return "int8 dynamic (int8 weights, activation ranges per batch at run time)"


def _pre_process(src: Path, out: Path) -> str:
    """``quant_pre_process`` with ONNX Runtime's symbolic shape inference, or with ONNX's own shape inference
    where the symbolic one cannot follow the graph (the Transformer's attention reshapes); returns which."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    try:
        quant_pre_process(str(src), str(out), skip_symbolic_shape=False)
        return "symbolic shape inference"
    except Exception as err:  # noqa: BLE001 - the symbolic inference raises bare AssertionErrors
        logger.info(
            "symbolic shape inference fails (%s); pre-processing with ONNX shape inference", _first_line(err)
        )
        quant_pre_process(str(src), str(out), skip_symbolic_shape=True)
        return "ONNX shape inference"


def reduce_precision(
    src: str | Path,
    out: str | Path,
    precision: str,
    *,
    calib_x: np.ndarray,
    eval_x: np.ndarray,
    eval_y: np.ndarray | None = None,
    min_agreement: float = DEFAULT_MIN_AGREEMENT,
    int8_method: str = "auto",
    data: str = "",
    overwrite: bool = False,
) -> Precision:
    """Write an fp16 or int8 bundle at ``out`` from the fp32 bundle ``src``.

    Args:
        src: An fp32 bundle (``python -m exporters`` output).
        out: Destination ``.onnx`` file.
        precision: ``"fp16"`` or ``"int8"``.
        calib_x: float32 ``(N, T, C)`` raw gap-free training series: the static int8 activation ranges.
        eval_x: float32 ``(M, T, C)`` held-out series, disjoint from ``calib_x``: the agreement with fp32.
        eval_y: Their labels as column indices ``0..K-1`` (for the accuracy change), or ``None``.
        min_agreement: Refuse below this argmax agreement with fp32 (0..1).
        int8_method: ``"static"``, ``"dynamic"`` or ``"auto"`` (both measured; the faster one that passes).
        data: What ``calib_x`` / ``eval_x`` are (stored in the record).
        overwrite: Replace an existing ``out``; if false (the default), an existing ``out`` is an error.

    Returns:
        The precision record written into the bundle metadata.

    Raises:
        PrecisionError: If the graph cannot be reduced or agrees with fp32 on fewer than ``min_agreement``
            of ``eval_x`` (the numbers are in the message; nothing is written).
        FileExistsError: If ``out`` exists and ``overwrite`` is false.
    """
    import onnx

    if precision not in PRECISIONS[1:]:
        raise PrecisionError(
            f"precision is {precision!r}; expected one of {PRECISIONS[1:]} (fp32 is the export itself)"
        )
    if int8_method not in INT8_METHODS:
        raise PrecisionError(f"int8 method is {int8_method!r}; expected one of {INT8_METHODS}")
    if not 0 < min_agreement <= 1:
        raise PrecisionError(f"min_agreement is {min_agreement!r}; expected a share in (0, 1]")
    src, out = Path(src), Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; pass --overwrite (overwrite=True) to replace it")
    if out.exists() and not out.is_file():
        raise PrecisionError(f"{out} exists and is not a file; expected an .onnx file path")
    fp32 = load_bundle(src)
    meta = fp32.metadata
    if meta.precision is not None:
        raise PrecisionError(f"{src} is already a {meta.dtype} bundle; reduce the fp32 bundle it came from")
    shape = (meta.n_timesteps, meta.n_bands)
    xs = []
    for name, x in (("calibration", calib_x), ("evaluation", eval_x)):
        x = np.ascontiguousarray(x, dtype=np.float32)
        if x.ndim != 3 or tuple(x.shape[1:]) != shape or not len(x) or not np.isfinite(x).all():
            raise PrecisionError(
                f"{name} series have shape {x.shape}; expected finite gap-free (N, {shape[0]}, {shape[1]})"
            )
        xs.append(x)
    calib_x, eval_x = xs
    want = _run(fp32.session, meta, eval_x)
    labels = None if eval_y is None else np.asarray(eval_y, dtype=np.int64)
    if labels is not None and labels.shape != (len(eval_x),):
        raise PrecisionError(f"evaluation labels have shape {labels.shape}; expected ({len(eval_x)},)")

    with tempfile.TemporaryDirectory(
        prefix=".cropmap-precision-", dir=out.parent if out.parent.is_dir() else None
    ) as tmp:
        work = Path(tmp)
        candidates: list[Candidate] = []
        failures: list[str] = []
        if precision == "fp16":
            plans = ["fp16"]
        else:
            plans = ["static", "dynamic"] if int8_method == "auto" else [int8_method]
            pre = work / "pre.onnx"
            try:
                model = onnx.load(str(src))
                n = unshare_initializers(model)
                if n:
                    logger.info(
                        "duplicated %d shared initialisers so that each gets its own quantisation scale", n
                    )
                onnx.save(model, str(work / "unshared.onnx"))
                shapes = _pre_process(work / "unshared.onnx", pre)
            except Exception as err:  # the pre-processor raises many types
                raise PrecisionError(f"quant_pre_process fails on {src}: {_first_line(err)}") from err
        for plan in plans:
            path = work / f"{plan}.onnx"
            try:
                if plan == "fp16":
                    onnx.save(_to_fp16(onnx.load(str(src))), str(path))
                    method = "fp16 (float16 weights and arithmetic; float32 inputs, outputs, normalisation, transposes)"
                else:
                    method = _int8(pre, path, plan, meta, calib_x)
                    method = method[:-1] + f"; pre-processed with {shapes})"
                why = _opens_in_a_child(path)
                if why is not None:
                    failures.append(f"{plan}: {why}")
                    continue
                session = _session(path)
                got = _run(session, meta, eval_x)
                speed = _throughput(session, meta, eval_x[:_BATCH], repeat=2)
            except Exception as err:  # noqa: BLE001 - ORT / onnx raise many types: "this graph does not reduce"
                failures.append(f"{plan}: {_first_line(err)}")
                continue
            candidates.append(Candidate(method, path, got, speed))
        if not candidates:
            raise PrecisionError(f"cannot build a {precision} graph from {src}: {'; '.join(failures)}")

        def agreement(c: Candidate) -> float:
            return float((c.logits.argmax(1) == want.argmax(1)).mean())

        passing = [c for c in candidates if agreement(c) >= min_agreement]
        measured = "; ".join(
            f"{c.method.split(' (')[0]}: agreement {100 * agreement(c):.2f} %, max |logit diff| "
            f"{float(np.abs(c.logits - want).max()):.3g}, {c.px_per_s:,.0f} series/s"
            for c in candidates
        )
        if not passing:
            raise PrecisionError(
                f"the {precision} graph agrees with fp32 on fewer than {100 * min_agreement:g} % of {len(eval_x)} "
                f"held-out series ({measured}); not written (keep fp32, or lower --min-agreement knowingly)"
            )
        best = max(passing, key=lambda c: c.px_per_s)
        fp32_speed = (
            _throughput(fp32.session, meta, eval_x[:_BATCH], repeat=2) if len(candidates) > 1 else None
        )
        if len(candidates) > 1:
            logger.info(
                "int8 candidates (%s); fp32 %.0f series/s; kept %s", measured, fp32_speed, best.method
            )
        acc32 = acc = None
        if labels is not None:
            acc32 = float((want.argmax(1) == labels).mean())
            acc = float((best.logits.argmax(1) == labels).mean())
        record = Precision(
            dtype=precision,
            method=best.method,
            n=len(eval_x),
            argmax_agreement=agreement(best),
            max_abs_logit_diff=float(np.abs(best.logits - want).max()),
            min_agreement=float(min_agreement),
            accuracy_fp32=acc32,
            accuracy=acc,
            data=data,
        )
        meta = dataclasses.replace(meta, precision=record)
        model = onnx.load(str(best.path))
        onnx.helper.set_model_props(model, {METADATA_KEY: meta.to_json()})
        model.producer_name = "cropmap.exporters"
        external = [i.name for i in model.graph.initializer if i.data_location == onnx.TensorProto.EXTERNAL]
        if external:
            raise PrecisionError(
                f"the {precision} graph stores {len(external)} initialisers externally; expected one file"
            )
        out.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(out) as final_tmp:  # made by onnx.save: the default file mode (0o666 less the umask)
            onnx.save(model, str(final_tmp), save_as_external_data=False)
            check = load_bundle(final_tmp)
            if check.metadata.precision != record:
                raise PrecisionError(f"the precision record of {out} did not survive the write")
    logger.info(
        "wrote %s bundle %s (%.2f MB): %s; agreement with fp32 %.2f %% on %d series, max |logit diff| %.3g",
        precision,
        out,
        out.stat().st_size / 1e6,
        record.method,
        100 * record.argmax_agreement,
        record.n,
        record.max_abs_logit_diff,
    )
    return record


def summary(record: Precision) -> str:
    """One line with the measured agreement."""
    acc = (
        f", validation accuracy {record.accuracy_fp32:.4f} -> {record.accuracy:.4f}"
        if record.accuracy is not None and record.accuracy_fp32 is not None
        else ""
    )
    return (
        f"{record.dtype} ({record.method}): agreement with fp32 {100 * record.argmax_agreement:.2f} % on {record.n} "
        f"held-out series (threshold {100 * record.min_agreement:g} %), max |logit diff| {record.max_abs_logit_diff:.3g}"
        f"{acc}"
    )
