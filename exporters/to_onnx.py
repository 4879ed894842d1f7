"""Torch -> ONNX: encoder, base model and normalisation exported as one cropmap bundle.

The bundle graph takes raw digital numbers and does everything else itself::

    input (B, T, C) raw DN -> Normalize -> encoder per stamp -> base model features (B, D)
                                                               -> base model head -> logits (B, K)

Outputs: the logits and, when the metadata declares one, the ``embedding`` (the base
model's features before its linear head). The batch axis is dynamic; T and C are
fixed by the metadata. Modules are exported in eval mode (BatchNorm uses its running
statistics, Dropout is off).

Exporter choice: the TorchScript-based exporter (``torch.onnx.export(..., dynamo=False)``).
It keeps the batch axis symbolic through ``nn.LSTM`` and writes one self-contained
file; the dynamo exporter may freeze dimensions and writes weights to an external
``.onnx.data`` file unless told otherwise.

The file is written atomically (temporary name, then rename) after
``onnx.checker.check_model`` and a parity check against torch on real inputs
(:func:`exporters.parity.check_parity`); a bundle that fails either never reaches
the final path.

Checkpoints (``kind="classifier"``) hold everything needed to rebuild and export a
trained classifier; :mod:`training.downstream.classifier` writes and reads them (training never
imports this package). :mod:`exporters.best` picks the best run of a downstream run
directory.

Multi-head attention: in eval mode without gradients, ``nn.TransformerEncoderLayer`` takes
torch's fused "fast path" (``aten::_transformer_encoder_layer_fwd``), which has no ONNX
form; the export traces with that path switched off, so the graph holds the same
computation spelt out in standard operators (the parity check compares it against the
fast path).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import warnings
import zipfile
import zlib
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from cropmap.contract.metadata import METADATA_KEY, PRECISIONS, BundleMetadata, Calibration
from cropmap.errors import CropmapError
from cropmap.runtime import load_bundle
from cropmap.safeio.commit import journal_path, recover_commit, replace_all
from cropmap.safeio.folders import output_folder
from cropmap.safeio.oserrors import io_step
from cropmap.safeio.temporaries import owned_path, remove_stale
from exporters.parity import ParityReport, check_parity
from training.checkpoint import validate_norm_stats
from training.downstream.classifier import CLASSIFIER_KIND, Classifier, load_classifier, save_classifier
from training.models import BaseModel
from training.models.encoder import Encoder, Normalize, NormalizedEncoder

logger = logging.getLogger(__name__)

__all__ = [
    "CLASSIFIER_KIND",
    "BundleGraph",
    "Classifier",
    "ExportError",
    "build_graph",
    "export_bundle",
    "export_checkpoint",
    "load_classifier",
    "refuse_inputs_as_outputs",
    "save_classifier",
    "verify_checkpoint",
]

DEFAULT_OPSET = 17


class ExportError(CropmapError, RuntimeError):
    """The model cannot be exported as a bundle matching its metadata."""


CLASSIFIER_KEYS = (
    "kind",
    "format",
    "model_name",
    "model_config",
    "state_dict",
    "in_dim",
    "n_classes",
    "norm_stats",
    "encoder",
    "bundle_metadata",
    "parity_inputs",
)
"""Keys every ``classifier`` checkpoint holds (:func:`training.downstream.classifier.save_classifier`)."""
ENCODER_KEYS = ("model_name", "model_config", "state_dict")
"""Keys of a classifier checkpoint's ``encoder`` entry when it is not ``None``."""


def refuse_inputs_as_outputs(out: str | Path, inputs: Mapping[Path, str]) -> None:
    """Refuse an export whose bundle (or reliability diagram) would replace one of its inputs.

    The rule of every cropmap writer (:func:`cropmap.safeio.overlap.refuse_overlap`): with or without
    ``overwrite``, an output that is an input (however the path is spelt: links, ``..``) is refused.

    Raises:
        cropmap.errors.InputOverwriteError: Naming the output and the input.
    """
    from cropmap.safeio.overlap import refuse_overlap

    out = Path(out)
    refuse_overlap([out, out.with_suffix(".reliability.png")], inputs, hint="choose another -o")


def verify_checkpoint(path: str | Path) -> None:
    """Check a classifier checkpoint's bytes and keys before anything is exported from it.

    ``torch.save`` writes a zip archive whose members carry CRC-32 checksums, which ``torch.load``
    does not check: a changed byte in the weights loads silently as other weights. Every member is
    read and its checksum compared (``zipfile.ZipFile.testzip``); then the payload must hold
    :data:`CLASSIFIER_KEYS` (and :data:`ENCODER_KEYS` in its ``encoder``).

    Raises:
        ExportError: For a file that is not a zip archive, a checksum mismatch, an unreadable archive
            or missing keys (one line; nothing is written).
        FileNotFoundError: If the file does not exist.
    """
    from training.checkpoint import load_checkpoint

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    try:
        if not zipfile.is_zipfile(path):
            raise ExportError(
                f"checkpoint {path} is not a zip archive (the format torch.save writes), so its integrity "
                "cannot be checked; expected a checkpoint written by training (save_classifier), intact"
            )
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, zlib.error, EOFError) as err:
        raise ExportError(
            f"checkpoint {path} is a damaged zip archive ({_first_line(err)}); expected an "
            "intact checkpoint (copy it again from its source); nothing was written"
        ) from err
    if bad is not None:
        raise ExportError(
            f"checkpoint {path} is corrupted: its member {bad} fails the zip CRC-32 check (the file changed "
            "after it was written); expected an intact checkpoint (copy it again from its source); nothing "
            "was written"
        )
    payload = load_checkpoint(path, kind=CLASSIFIER_KIND)
    missing = [k for k in CLASSIFIER_KEYS if k not in payload]
    enc = payload.get("encoder")
    if isinstance(enc, Mapping):
        missing += [f"encoder.{k}" for k in ENCODER_KEYS if k not in enc]
    elif enc is not None:
        missing.append(f"encoder (a {type(enc).__name__}, expected a mapping or None)")
    if missing:
        raise ExportError(
            f"checkpoint {path} lacks {', '.join(missing)} (found {', '.join(sorted(map(str, payload)))}); "
            "expected a complete classifier checkpoint (save_classifier); nothing was written"
        )


@dataclasses.dataclass(frozen=True)
class PrecisionData:
    """The series a reduced-precision export is calibrated on and checked against fp32 with."""

    calib_x: np.ndarray
    """float32 ``(N, T, C)``: the static int8 activation ranges are measured on these."""
    eval_x: np.ndarray
    """float32 ``(M, T, C)``, disjoint from ``calib_x``: the agreement with fp32 is measured on these."""
    eval_y: np.ndarray | None
    """Labels of ``eval_x`` (column indices), for the accuracy change; or ``None``."""
    note: str
    """What the series are (stored in the bundle's precision record)."""


def split_precision_data(
    x: np.ndarray,
    y: np.ndarray | None,
    *,
    train_x: np.ndarray | None = None,
    what: str = "validation series",
    seed: int = 0,
) -> PrecisionData:
    """Calibration and held-out series for a reduced-precision export.

    With ``train_x`` (training series): calibrate on them and measure on all of ``x``. Without:
    split ``x`` at random (``seed``) into two disjoint halves, calibrate on one and measure on the other.
    """
    x = np.asarray(x, dtype=np.float32)
    if train_x is not None:
        return PrecisionData(
            np.asarray(train_x, dtype=np.float32),
            x,
            y,
            f"calibrated on {len(train_x)} training series; agreement on {len(x)} {what}",
        )
    if len(x) < 2:
        raise ExportError(
            f"{len(x)} {what} are too few to calibrate and check a reduced precision; give training series"
        )
    idx = np.random.default_rng(seed).permutation(len(x))
    cal, ev = idx[: len(x) // 2], idx[len(x) // 2 :]
    return PrecisionData(
        x[cal],
        x[ev],
        None if y is None else np.asarray(y)[ev],
        f"{what} split at random (seed {seed}): calibrated on {len(cal)}, agreement on the other {len(ev)}",
    )


class BundleGraph(nn.Module):
    """The exported computation: raw ``(B, T, C)`` -> ``(logits (B, K), embedding (B, D))``.

    Args:
        normalize: Standardisation of the raw bands.
        encoder: Per-stamp encoder ``(..., C) -> (..., E)`` (``None``: the base model reads normalised bands).
        base_model: A base model with ``features(x) -> (B, D)`` and a linear ``head`` such that
            ``forward(x) == head(features(x))`` in eval mode (every registered model).
    """

    def __init__(self, normalize: Normalize, encoder: Encoder | None, base_model: BaseModel) -> None:
        super().__init__()
        for attr in ("features", "head"):
            if not hasattr(base_model, attr):
                raise ExportError(
                    f"base model {type(base_model).__name__} has no `{attr}`; the bundle needs features(x) and a head"
                )
        self.normalize = normalize
        self.encoder = encoder
        self.base_model = base_model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Classify raw series ``(B, T, C)``; returns logits ``(B, K)`` and features ``(B, D)``."""
        z = self.normalize(x)
        if self.encoder is not None:
            z = self.encoder(z)  # (B, T, E)
        features = self.base_model.features(z)
        return self.base_model.head(features), features


@contextlib.contextmanager
def _no_mha_fast_path() -> Iterator[None]:
    """Trace multi-head attention through standard operators (see the module docstring)."""
    before = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(before)


def _file_mode() -> int:
    """The mode a plain ``open()`` would give a new file under the current umask."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0]}" if text else type(err).__name__


class _LogitsOnly(nn.Module):
    def __init__(self, graph: BundleGraph) -> None:
        super().__init__()
        self.graph = graph

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.graph(x)[0]


def build_graph(
    *,
    encoder: Encoder | NormalizedEncoder | None,
    base_model: BaseModel,
    norm_stats: Mapping[str, Sequence[float]] | None,
) -> BundleGraph:
    """Assemble normalisation, encoder and base model into one eval-mode module.

    Args:
        encoder: A bare encoder (then ``norm_stats`` are required), a
            :class:`~training.models.encoder.NormalizedEncoder` (its own statistics are
            used; ``norm_stats`` must be ``None``), or ``None`` (raw bands into the base
            model; ``norm_stats`` required).
        base_model: The base model over per-stamp features.
        norm_stats: ``{"mean": [...], "std": [...]}`` of the raw bands.

    Raises:
        ExportError: If normalisation is missing or given twice.
    """
    inner: Encoder | None
    if isinstance(encoder, NormalizedEncoder):
        if norm_stats is not None:
            raise ExportError(
                "encoder already normalises its input (NormalizedEncoder); pass norm_stats=None"
            )
        normalize, inner = encoder.normalize, encoder.encoder
    else:
        if norm_stats is None:
            raise ExportError("norm_stats are required: the bundle graph takes raw digital numbers")
        stats = validate_norm_stats(norm_stats)
        normalize, inner = Normalize(stats["mean"], stats["std"]), encoder
    graph = BundleGraph(normalize, inner, base_model)
    graph.eval()
    return graph


def _check_against_metadata(graph: BundleGraph, meta: BundleMetadata, example: torch.Tensor) -> None:
    meta.validate()
    want = (meta.n_timesteps, meta.n_bands)
    if example.ndim != 3 or tuple(example.shape[1:]) != want:
        raise ExportError(
            f"example input has shape {tuple(example.shape)}; metadata expects (B, {want[0]}, {want[1]})"
        )
    if graph.normalize.n_features != meta.n_bands:
        raise ExportError(
            f"normalisation has {graph.normalize.n_features} features; metadata lists {meta.n_bands} bands"
        )
    with torch.no_grad():
        logits, features = graph(example)
        direct = graph.base_model(
            graph.encoder(graph.normalize(example)) if graph.encoder else graph.normalize(example)
        )
    if logits.shape[-1] != len(meta.classes):
        raise ExportError(f"model has {logits.shape[-1]} outputs; metadata lists {len(meta.classes)} classes")
    if not torch.allclose(direct, logits, atol=1e-5, rtol=1e-5):
        raise ExportError("base_model(x) differs from base_model.head(base_model.features(x)) in eval mode")
    if meta.embedding is not None and features.shape[-1] != meta.embedding.dim:
        raise ExportError(f"embedding has {features.shape[-1]} features; metadata says {meta.embedding.dim}")
    if not torch.isfinite(logits).all():
        raise ExportError("the model produces non-finite logits on the example input")


def export_bundle(
    *,
    encoder: Encoder | NormalizedEncoder | None,
    base_model: BaseModel,
    norm_stats: Mapping[str, Sequence[float]] | None,
    metadata: BundleMetadata,
    out: str | Path,
    example: np.ndarray | torch.Tensor,
    opset: int = DEFAULT_OPSET,
    atol: float = 1e-4,
    overwrite: bool = False,
    calibration_data: tuple[np.ndarray, np.ndarray] | None = None,
    calibration_note: str = "",
    precision: str = "fp32",
    precision_data: PrecisionData | None = None,
    min_agreement: float | None = None,
    int8_method: str = "auto",
    calibration_fitted: tuple[Calibration, np.ndarray, np.ndarray] | None = None,
) -> ParityReport:
    """Export a classifier as a single-file cropmap bundle and check it.

    Args:
        encoder: See :func:`build_graph`.
        base_model: See :func:`build_graph`.
        norm_stats: See :func:`build_graph`.
        metadata: The bundle metadata; its input/output names name the graph's I/O.
        out: Destination ``.onnx`` file.
        example: float32 ``(N, T, C)`` real, gap-free raw inputs; used to trace the graph
            and for the parity check (all ``N`` rows are compared).
        opset: ONNX opset.
        atol: Parity tolerance on the logits.
        overwrite: Replace an existing ``out``; if false (the default, as for every cropmap writer), an
            existing ``out`` is an error.
        calibration_data: ``(x_val, y_val)``: validation inputs, float32 ``(N, T, C)`` raw
            gap-free series as for ``example``, and their labels as **column indices**
            ``0..K-1`` of the logits (the position in ``metadata.classes``, not the class
            code). A temperature is fitted on the torch logits
            (:func:`exporters.calibration.calibrate`) and stored as ``metadata.calibration``;
            a reliability diagram is written to ``<out stem>.reliability.png`` beside the
            bundle. Without it, ``metadata.calibration`` is exported as given (``None``:
            uncalibrated). Use held-out data the model was not trained on.
        calibration_note: What the validation data are (stored in the calibration record).
        precision: ``"fp32"``, ``"fp16"`` or ``"int8"``. A reduced precision is made from the
            parity-checked fp32 graph by :func:`exporters.quantize.reduce_precision`, which measures
            its agreement with fp32 and refuses below ``min_agreement``.
        precision_data: Required unless fp32: the calibration series, the held-out series the
            agreement is measured on, and their labels (or ``None``); see :func:`split_precision_data`.
        min_agreement: Refuse a reduced graph whose argmax agrees with fp32 on fewer of the held-out
            series (default :data:`exporters.quantize.DEFAULT_MIN_AGREEMENT`).
        int8_method: ``"auto"``, ``"static"`` or ``"dynamic"`` (see :mod:`exporters.quantize`).
        calibration_fitted: Instead of ``calibration_data``: a calibration fitted elsewhere, with the logits and
            labels it was fitted on (for the reliability diagram); stored as given (``--refit``: the temperature
            of the models that never saw the selection series, carried over to their refit).

    Returns:
        The parity report on ``example``; its ``calibration`` holds the fitted
        calibration (ECE before/after) when ``calibration_data`` was given, its
        ``precision`` the reduced precision's record (``None`` for fp32).

    Raises:
        ExportError: If the model does not match the metadata or the checker rejects the graph.
        exporters.parity.ParityError: If ONNX Runtime does not reproduce torch.
        FileExistsError: If ``out`` exists and ``overwrite`` is false.
    """
    import onnx

    from exporters.graph_opt import conv1d_as_conv2d
    from exporters.quantize import DEFAULT_MIN_AGREEMENT, PrecisionError, reduce_precision

    out = Path(out)
    if precision not in PRECISIONS:
        raise ExportError(f"precision is {precision!r}; expected one of {PRECISIONS}")
    if precision != "fp32" and precision_data is None:
        raise ExportError(f"a {precision} export needs precision_data (calibration and held-out series)")
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; pass --overwrite (overwrite=True) to replace it")
    if out.exists() and not out.is_file():
        raise ExportError(f"{out} exists and is not a file; expected an .onnx file path")
    x = torch.as_tensor(np.asarray(example, dtype=np.float32))
    if not torch.isfinite(x).all():
        raise ExportError("example input contains NaN/inf; pass gap-filled series as inference does")
    graph = build_graph(encoder=encoder, base_model=base_model, norm_stats=norm_stats)
    _check_against_metadata(graph, metadata, x)
    calibration: Calibration | None = None
    fitted = None  # (calibration, validation logits (N, K), labels (N,)) when calibration_data is given
    if calibration_data is not None and calibration_fitted is not None:
        raise ExportError("pass calibration_data or calibration_fitted, not both")
    if calibration_data is not None:
        fitted = _fit_calibration(graph, metadata, calibration_data, calibration_note)
    elif calibration_fitted is not None:
        fitted = calibration_fitted
    if fitted is not None:
        calibration = fitted[0]
        metadata = dataclasses.replace(metadata, calibration=calibration)

    module: nn.Module = graph if metadata.embedding is not None else _LogitsOnly(graph)
    outputs = [metadata.output_name] + ([metadata.embedding.output_name] if metadata.embedding else [])
    dynamic = {name: {0: "batch"} for name in [metadata.input_name, *outputs]}
    png = out.with_suffix(".reliability.png")
    # The bundle and its reliability diagram commit as one set (cropmap.safeio.commit.replace_all with a journal): a
    # full disk or a signal before the commit leaves nothing at -o, a kill during it the old set or the new one.
    # A diagram of an earlier calibrated export beside an uncalibrated bundle would be stale: it goes too.
    with output_folder(out.parent):
        journal = journal_path(out)
        recover_commit(journal)
        remove_stale(
            out.parent, {out.name, png.name, journal.name}
        )  # temporaries of a killed export (dead PID)
        tmp = owned_path(out, "tmp", ".onnx")
        final_tmp = tmp
        png_tmp: Path | None = None
        try:
            with torch.no_grad(), warnings.catch_warnings(), _no_mha_fast_path():
                # Tracing turns the modules' input-shape checks into constants; T and C are fixed by
                # the metadata, so that is intended. The LSTM warning concerns variable-length batches
                # without initial states; the batch axis is verified by the parity check and tests.
                warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
                warnings.filterwarnings(
                    "ignore", message="Exporting a model to ONNX with a batch_size other than 1"
                )
                # The TorchScript exporter is chosen on purpose (module docstring); torch flags it as legacy.
                warnings.filterwarnings(
                    "ignore", message="You are using the legacy TorchScript-based ONNX export"
                )
                try:
                    torch.onnx.export(
                        module,
                        (x[: min(len(x), 8)],),
                        str(tmp),
                        input_names=[metadata.input_name],
                        output_names=outputs,
                        dynamic_axes=dynamic,
                        opset_version=opset,
                        do_constant_folding=True,
                        dynamo=False,
                    )
                except OSError:
                    raise
                except (
                    Exception
                ) as err:  # the exporter raises many types; all mean "this graph does not export"
                    raise ExportError(
                        f"torch.onnx cannot export the {metadata.provenance.base_model} base model with encoder "
                        f"{metadata.provenance.encoder} at opset {opset}: {_first_line(err)}"
                    ) from err
            model = onnx.load(str(tmp))
            n_conv = conv1d_as_conv2d(
                model
            )  # the faster form for ONNX Runtime; parity below checks the result
            if n_conv:
                logger.info("rewrote %d 1-D convolutions as 2-D ones over a height-1 image", n_conv)
            onnx.helper.set_model_props(model, {METADATA_KEY: metadata.to_json()})
            model.producer_name = "cropmap.exporters"
            try:
                onnx.checker.check_model(model, full_check=True)
            except onnx.checker.ValidationError as err:
                raise ExportError(f"onnx.checker rejects the exported graph: {err}") from err
            with io_step("write the bundle", tmp):
                onnx.save(model, str(tmp))
            # a bundle must be readable by the Dask workers that load it, which may run as another user
            os.chmod(tmp, _file_mode())
            load_bundle(tmp)  # the contract as cropmap reads it
            report = check_parity(
                module,
                tmp,
                x.numpy(),
                atol=atol,
                input_name=metadata.input_name,
                output_name=metadata.output_name,
                embedding_name=metadata.embedding.output_name if metadata.embedding else None,
            )
            if precision != "fp32":
                assert precision_data is not None
                final_tmp = owned_path(out, "tmp", ".onnx")
                try:
                    record = reduce_precision(
                        tmp,
                        final_tmp,
                        precision,
                        calib_x=precision_data.calib_x,
                        eval_x=precision_data.eval_x,
                        eval_y=precision_data.eval_y,
                        data=precision_data.note,
                        int8_method=int8_method,
                        min_agreement=DEFAULT_MIN_AGREEMENT if min_agreement is None else min_agreement,
                    )
                except PrecisionError as err:
                    raise ExportError(str(err)) from err
                report = dataclasses.replace(report, precision=record)
            if fitted is not None:
                from exporters.calibration import reliability_diagram

                fit, cal_logits, cal_labels = fitted
                png_tmp = owned_path(png, "tmp", ".png")
                with io_step("write the reliability diagram", png_tmp):
                    reliability_diagram(
                        cal_logits,
                        cal_labels,
                        fit,
                        png_tmp,
                        title=f"{out.name}: reliability on {fit.n} validation samples",
                    )
                os.chmod(png_tmp, _file_mode())
            moves = [(final_tmp, out)] + ([(png_tmp, png)] if png_tmp is not None else [])
            stale = [png] if png_tmp is None and os.path.lexists(png) else []
            replace_all(moves, remove=stale, journal=journal)
        finally:
            for t in (tmp, final_tmp, png_tmp):
                if t is not None and os.path.lexists(t):
                    try:
                        t.unlink()
                    except OSError as err:  # after the commit a warning; before it the error in flight wins
                        logger.warning("could not remove the temporary file %s: %s", t, err)
    logger.info("wrote bundle %s (%.2f MB): %s", out, out.stat().st_size / 1e6, report.summary())
    if calibration is not None:
        logger.info(
            "calibration: T = %.4g, ECE %.4f -> %.4f on %d samples; reliability diagram %s",
            calibration.temperature,
            calibration.ece_before,
            calibration.ece_after,
            calibration.n,
            png,
        )
        report = dataclasses.replace(report, calibration=calibration)
    return report


def _fit_calibration(
    graph: BundleGraph, meta: BundleMetadata, data: tuple[np.ndarray, np.ndarray], note: str
) -> tuple[Calibration, np.ndarray, np.ndarray]:
    """Fit temperature scaling on the torch logits of ``data = (x_val, y_val)``."""
    from exporters.calibration import CalibrationError, calibrate

    try:
        x_val, y_val = data
    except (TypeError, ValueError) as err:
        raise ExportError("calibration_data must be a pair (x_val, y_val)") from err
    xv = np.asarray(x_val, dtype=np.float32)
    yv = np.asarray(y_val)
    if xv.ndim != 3 or tuple(xv.shape[1:]) != (meta.n_timesteps, meta.n_bands):
        raise ExportError(
            f"calibration x_val has shape {xv.shape}; expected (N, {meta.n_timesteps}, {meta.n_bands})"
        )
    if not np.isfinite(xv).all():
        raise ExportError("calibration x_val contains NaN/inf; pass gap-filled series as inference does")
    with torch.no_grad():
        logits = (
            np.concatenate(
                [
                    graph(torch.from_numpy(xv[i : i + 4096]))[0].double().numpy()
                    for i in range(0, len(xv), 4096)
                ]
            )
            if len(xv)
            else np.zeros((0, len(meta.classes)))
        )
    try:
        cal = calibrate(logits, yv, data=note)
    except CalibrationError as err:
        raise ExportError(f"cannot calibrate: {err}") from err
    return cal, logits, yv.astype(np.int64)


def export_checkpoint(
    checkpoint: str | Path,
    out: str | Path,
    *,
    opset: int = DEFAULT_OPSET,
    atol: float = 1e-4,
    created: str | None = None,
    overwrite: bool = False,
    precision: str = "fp32",
    train_x: np.ndarray | None = None,
    min_agreement: float | None = None,
    int8_method: str = "auto",
) -> ParityReport:
    """Export a ``classifier`` checkpoint as a bundle (``python -m exporters``).

    Args:
        checkpoint: File written by :func:`save_classifier`.
        out: Destination ``.onnx`` file.
        opset: ONNX opset.
        atol: Parity tolerance.
        created: Timestamp recorded in the provenance (default: kept from the checkpoint).
        overwrite: Replace an existing ``out``.
        precision: ``"fp32"``, ``"fp16"`` or ``"int8"`` (see :func:`export_bundle`).
        train_x: Training series to calibrate a reduced precision on; default: half of the
            checkpoint's stored validation series (the agreement is measured on the other half).
        min_agreement: See :func:`export_bundle`.
        int8_method: See :func:`export_bundle`.
    """
    from exporters.best import warn_unfilled

    refuse_inputs_as_outputs(out, {Path(checkpoint): "checkpoint"})
    verify_checkpoint(checkpoint)
    clf = load_classifier(checkpoint)
    meta = clf.metadata
    if created is not None:
        meta = dataclasses.replace(meta, provenance=dataclasses.replace(meta.provenance, created=created))
    warn_unfilled(clf.payload)
    labels = clf.parity_labels
    cal_data: tuple[np.ndarray, np.ndarray] | None = None
    cal_note = ""
    if clf.payload.get("calibration_inputs") is not None:
        # Series held out of training and of the reported validation for this purpose (the sample model's).
        cal_data = (
            np.asarray(clf.payload["calibration_inputs"], dtype=np.float32),
            np.asarray(clf.payload["calibration_labels"], dtype=np.int64),
        )
        cal_note = str(
            clf.payload.get("calibration_note") or f"calibration series stored in {Path(checkpoint).name}"
        )
    elif labels is not None:
        # Checkpoints of downstream runs store labelled validation series: calibrate on them.
        cal_data = (clf.parity_inputs, labels)
        cal_note = f"{len(clf.parity_inputs)} validation series stored in {Path(checkpoint).name}"
    return export_bundle(
        encoder=clf.encoder,
        base_model=clf.base_model,
        norm_stats=clf.norm_stats,
        metadata=meta,
        out=out,
        example=clf.parity_inputs,
        opset=opset,
        atol=atol,
        overwrite=overwrite,
        calibration_data=cal_data,
        calibration_note=cal_note,
        precision=precision,
        precision_data=None
        if precision == "fp32"
        else split_precision_data(
            clf.parity_inputs,
            clf.parity_labels,
            train_x=train_x,
            what=f"validation series stored in {Path(checkpoint).name}",
        ),
        min_agreement=min_agreement,
        int8_method=int8_method,
    )
