"""Export a tree model (:mod:`training.downstream.trees`) as a cropmap bundle.

The bundle is one ONNX graph, built from three parts:

1. the feature graph (:func:`feature_graph`, ``onnx.helper``): raw gap-filled series ``x`` float32
   ``(B, T, C)`` -> ``features`` ``(B, F)``, the same features as :func:`training.downstream.trees.tree_features`
   (flattened series, spectral indices, temporal statistics, date of each index's peak); for a tree model on a
   frozen encoder's embeddings, the feature stage its checkpoint holds instead
   (:mod:`training.downstream.embedding_trees`: standardisation, encoder, flattened embeddings and their
   statistics, exported to ONNX when the model was trained and the features it was fitted on);
2. the tree ensemble converted at training time (skl2onnx / onnxmltools): ``features`` -> ``probabilities``;
3. the head: ``logits = log(max(probabilities, 1e-7))``,

merged with ``onnx.compose.merge_models``. The bundle contract asks for logits whose softmax gives the
probabilities; ``softmax(log p) = p`` for probabilities that sum to one, so cropmap's probabilities and
confidence are the tree ensemble's own, and its argmax is the trees' class. A temperature ``T`` fitted at
export turns them into ``p^(1/T) / sum(p^(1/T))``. Trees need no standardisation (a split threshold on a
feature is unaffected by scaling it), so the graph holds none.

Parity: the bundle's probabilities (softmax of its logits) are compared with what the training library's
``predict_proba`` gave for the checkpoint's parity inputs: at most :data:`PROB_ATOL` apart, and the same class
on every input. The features are float32 on both sides; a feature that lies within float32 rounding of a
split threshold could take the other branch, which is what the check would catch.

Reduced precision: refused. A tree ensemble has no weight matrices for fp16 / int8 to shrink or speed up
(ONNX Runtime's tree operator runs in float32 whatever the input type), and rounding the features to fp16
moves samples across split thresholds.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import numpy as np

from cropmap.contract.metadata import METADATA_KEY, BundleMetadata, Calibration
from cropmap.safeio.atomic import atomic_path
from exporters.parity import ParityReport, probability_parity, softmax
from exporters.to_onnx import ExportError
from training.downstream.trees import INDEX_EPS, TREE_OPSET, TreeClassifier, index_pairs

logger = logging.getLogger(__name__)

PROB_ATOL = 1e-5
"""Largest allowed ``|predict_proba - bundle probability|`` in the parity check."""

LOG_FLOOR = 1e-7
"""Probabilities are floored here before the log, so a class no tree votes for has a finite logit."""

REDUCED_PRECISION_REFUSAL = (
    "a tree bundle is fp32 only: a tree ensemble has no weight matrices for {precision} to shrink or speed up, "
    "and rounding features moves samples across split thresholds; export it with --precision fp32"
)


def feature_graph(bands: tuple[str, ...], n_steps: int, *, opset: int, input_name: str = "x") -> Any:
    """The ONNX model ``input_name (B, T, C)`` -> ``features (B, F)`` of :func:`training.downstream.trees.tree_features`."""
    from onnx import TensorProto, helper

    c = len(bands)
    nodes: list[Any] = []
    inits: list[Any] = []

    def const(name: str, values: Any, dtype: int = TensorProto.INT64) -> str:
        arr = np.asarray(values)
        inits.append(helper.make_tensor(name, dtype, arr.shape, arr.flatten().tolist()))
        return name

    eps = const("f_eps", [INDEX_EPS], TensorProto.FLOAT)
    flat_shape = const("f_flat_shape", [0, n_steps * c])
    parts = ["f_flat"]
    nodes.append(helper.make_node("Reshape", [input_name, flat_shape], ["f_flat"]))
    idx_names = []
    for name, a, b in index_pairs(bands):
        ia, ib = const(f"f_{name}_a", a), const(f"f_{name}_b", b)
        nodes += [
            helper.make_node("Gather", [input_name, ia], [f"f_{name}_ba"], axis=2),
            helper.make_node("Gather", [input_name, ib], [f"f_{name}_bb"], axis=2),
            helper.make_node("Sub", [f"f_{name}_ba", f"f_{name}_bb"], [f"f_{name}_num"]),
            helper.make_node("Add", [f"f_{name}_ba", f"f_{name}_bb"], [f"f_{name}_sum"]),
            helper.make_node("Add", [f"f_{name}_sum", eps], [f"f_{name}_den"]),
            helper.make_node("Div", [f"f_{name}_num", f"f_{name}_den"], [f"f_{name}"]),
            helper.make_node("Unsqueeze", [f"f_{name}", const(f"f_{name}_ax", [2])], [f"f_{name}_3d"]),
        ]
        idx_names.append(name)
        parts.append(f"f_{name}")
    series = input_name
    if idx_names:
        nodes.append(
            helper.make_node("Concat", [input_name, *(f"f_{n}_3d" for n in idx_names)], ["f_series"], axis=2)
        )
        series = "f_series"
    nodes += [
        helper.make_node("ReduceMean", [series], ["f_mean"], axes=[1], keepdims=0),
        helper.make_node("ReduceMean", [series], ["f_mean_k"], axes=[1], keepdims=1),
        helper.make_node("Sub", [series, "f_mean_k"], ["f_dev"]),
        helper.make_node("Mul", ["f_dev", "f_dev"], ["f_dev2"]),
        helper.make_node("ReduceMean", ["f_dev2"], ["f_var"], axes=[1], keepdims=0),
        helper.make_node("Sqrt", ["f_var"], ["f_std"]),
        helper.make_node("ReduceMin", [series], ["f_min"], axes=[1], keepdims=0),
        helper.make_node("ReduceMax", [series], ["f_max"], axes=[1], keepdims=0),
    ]
    parts += ["f_mean", "f_std", "f_min", "f_max"]
    for name in idx_names:
        nodes += [
            helper.make_node("ArgMax", [f"f_{name}"], [f"f_{name}_am"], axis=1, keepdims=1),
            helper.make_node("Cast", [f"f_{name}_am"], [f"f_{name}_amf"], to=TensorProto.FLOAT),
        ]
        parts.append(f"f_{name}_amf")
    nodes.append(helper.make_node("Concat", parts, ["features"], axis=1))
    graph = helper.make_graph(
        nodes,
        "cropmap_tree_features",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, ["batch", n_steps, c])],
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", None])],
        initializer=inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def build_tree_graph(clf: TreeClassifier, *, input_name: str = "x", output_name: str = "logits") -> Any:
    """The merged bundle graph (features: the derived ones, or a tree model on embeddings' own feature stage; trees;
    log head) without metadata."""
    import onnx
    from onnx import TensorProto, compose, helper

    trees = onnx.load_from_string(clf.onnx_model)
    opset = next((o.version for o in trees.opset_import if o.domain in ("", "ai.onnx")), TREE_OPSET)
    if opset < TREE_OPSET:  # converters declare the lowest opset their few standard ops need
        for o in trees.opset_import:
            if o.domain in ("", "ai.onnx"):
                o.version = TREE_OPSET
        opset = TREE_OPSET
    if clf.feature_onnx is None:
        feats = feature_graph(clf.bands, clf.n_steps, opset=opset, input_name=input_name)
    else:  # a tree model on embeddings: the feature stage exported when it was trained
        feats = onnx.load_from_string(clf.feature_onnx)
        if input_name != "x":
            raise ExportError(f"a tree model on embeddings reads its series as 'x', not {input_name!r}")
        stage = next((o.version for o in feats.opset_import if o.domain in ("", "ai.onnx")), opset)
        if stage != opset:
            raise ExportError(f"the feature stage has opset {stage}; the trees need {opset}")
    feats.ir_version = trees.ir_version
    tree_in = trees.graph.input[0].name
    merged = compose.merge_models(
        feats, trees, io_map=[("features", tree_in)], prefix2="trees_", outputs=["trees_probabilities"]
    )
    k = int(clf.metadata and len(clf.metadata.classes))
    g = merged.graph
    g.initializer.append(helper.make_tensor("head_floor", TensorProto.FLOAT, [], [LOG_FLOOR]))
    g.node.extend(
        [
            helper.make_node("Max", ["trees_probabilities", "head_floor"], ["head_p"]),
            helper.make_node("Log", ["head_p"], [output_name]),
        ]
    )
    del g.output[:]
    g.output.append(helper.make_tensor_value_info(output_name, TensorProto.FLOAT, ["batch", k]))
    g.name = f"cropmap_{clf.family}"
    onnx.checker.check_model(merged, full_check=True)
    return merged


def _session(model_bytes: bytes) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(model_bytes, sess_options=opts, providers=["CPUExecutionProvider"])


def run_logits(session: Any, x: np.ndarray, *, batch: int = 4096) -> np.ndarray:
    """The graph's logits for raw series ``x`` ``(N, T, C)``."""
    name = session.get_inputs()[0].name
    x = np.asarray(x, dtype=np.float32)
    out = [session.run(None, {name: x[i : i + batch]})[0] for i in range(0, len(x), batch)]
    return np.concatenate(out) if out else np.empty((0, 0), np.float32)


def tree_parity(clf: TreeClassifier, session: Any, *, atol: float = PROB_ATOL) -> ParityReport:
    """Compare the bundle's probabilities with the training library's on the checkpoint's parity inputs.

    Raises:
        ParityError: If they differ by more than ``atol`` or the class differs on any input.
    """
    return probability_parity(
        softmax(run_logits(session, clf.parity_inputs)),
        clf.parity_probabilities,
        atol,
        f"tree bundle does not reproduce {clf.family}'s predict_proba",
    )


def export_tree_bundle(
    clf: TreeClassifier,
    out: str | Path,
    *,
    metadata: BundleMetadata | None = None,
    calibration_data: tuple[np.ndarray, np.ndarray] | None = None,
    calibration_note: str = "",
    overwrite: bool = False,
    precision: str = "fp32",
    atol: float = PROB_ATOL,
    calibration: Calibration | None = None,
) -> ParityReport:
    """Write the tree bundle of ``clf`` to ``out`` (atomically) after the parity check.

    Args:
        clf: The loaded tree checkpoint.
        out: Destination ``.onnx``.
        metadata: Metadata to write (default: the checkpoint's).
        calibration_data: ``(x, y)`` raw series and labels to fit a temperature on (the selection split).
        calibration_note: What those series are.
        overwrite: Replace an existing file.
        precision: Only ``fp32``; anything else is refused (:data:`REDUCED_PRECISION_REFUSAL`).
        atol: Probability tolerance of the parity check.
        calibration: Instead of ``calibration_data``: a calibration fitted elsewhere, stored as given
            (``--refit``).

    Returns:
        The parity report (with the calibration, when fitted; its ``max_abs_logit_diff`` is the largest
        probability difference).

    Raises:
        ExportError: For a reduced precision.
        ParityError: If the bundle does not reproduce the training library.
        FileExistsError: If ``out`` exists and ``overwrite`` is false.
    """
    from onnx import helper

    if precision != "fp32":
        raise ExportError(REDUCED_PRECISION_REFUSAL.format(precision=precision))
    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(None, "exists", str(out))
    meta = metadata or clf.metadata
    meta = dataclasses.replace(meta, input_name="x", output_name="logits", embedding=None, precision=None)
    model = build_tree_graph(clf, input_name=meta.input_name, output_name=meta.output_name)
    session = _session(model.SerializeToString())
    report = tree_parity(clf, session, atol=atol)
    cal = calibration
    if calibration_data is not None:
        from exporters.calibration import calibrate

        x_cal, y_cal = calibration_data
        cal = calibrate(run_logits(session, x_cal), np.asarray(y_cal), data=calibration_note)
    if cal is not None:
        meta = dataclasses.replace(meta, calibration=cal)
        report = dataclasses.replace(report, calibration=cal)
    helper.set_model_props(model, {METADATA_KEY: meta.to_json()})
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out, mode=0o644) as tmp:
        tmp.write_bytes(model.SerializeToString())
    logger.info("wrote tree bundle %s (%s); parity on %s", out, clf.family, report.summary())
    return report


def verify_tree_checkpoint(path: str | Path) -> None:
    """Check a tree checkpoint's zip CRC-32 checksums before anything is exported from it.

    Raises:
        ExportError: For a file that is not a zip archive or whose bytes changed after it was written.
    """
    import zipfile
    import zlib

    path = Path(path)
    try:
        if not zipfile.is_zipfile(path):
            raise ExportError(
                f"checkpoint {path} is not a zip archive (the format torch.save writes); expected a tree "
                "checkpoint written by training (save_tree_classifier), intact"
            )
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, zlib.error, EOFError) as err:
        raise ExportError(
            f"checkpoint {path} is a damaged zip archive ({err}); copy it again from its source"
        ) from err
    if bad is not None:
        raise ExportError(
            f"checkpoint {path} is corrupted: its member {bad} fails the zip CRC-32 check; copy it again "
            "from its source; nothing was written"
        )


def export_best_tree(
    choice: Any,
    run_dir: str | Path,
    out: str | Path,
    *,
    created: str | None = None,
    overwrite: bool = False,
    precision: str = "fp32",
    calibration: Calibration | None = None,
) -> ParityReport:
    """Export the tree model chosen by :func:`exporters.best.select_best` (calibrated on the split it was chosen
    on: the model-selection series, or the validation series for a ``validation`` choice; or with
    ``calibration`` as given, ``--refit``)."""
    from exporters.best import calibration_series, choice_metrics
    from training.downstream.run import VAL_INPUTS
    from training.downstream.trees import load_tree_classifier

    if precision != "fp32":
        raise ExportError(REDUCED_PRECISION_REFUSAL.format(precision=precision))
    verify_tree_checkpoint(choice.model)
    clf = load_tree_classifier(choice.model)
    prov = clf.metadata.provenance
    metrics = {**prov.metrics, **choice_metrics(choice)}
    prov = dataclasses.replace(
        prov,
        training_data=f"{prov.training_data}; {choice.describe()} (run directory {Path(run_dir).name})",
        metrics=metrics,
        created=created or prov.created,
    )
    meta = dataclasses.replace(clf.metadata, provenance=prov)
    cal = None if calibration is not None else calibration_series(choice, run_dir)
    if cal is None and calibration is None:
        val = Path(run_dir) / VAL_INPUTS.format(task=choice.record["task"])
        if val.is_file():
            with np.load(val) as data:
                cal = (
                    (np.asarray(data["x"], np.float32), np.asarray(data["y"], np.int64)),
                    (f"validation series of {Path(run_dir).name} (task {choice.record['task']})"),
                )
    return export_tree_bundle(
        clf,
        out,
        metadata=meta,
        calibration_data=None if cal is None else cal[0],
        calibration_note="" if cal is None else cal[1],
        overwrite=overwrite,
        calibration=calibration,
    )


def export_tree_checkpoint(
    checkpoint: str | Path,
    out: str | Path,
    *,
    created: str | None = None,
    overwrite: bool = False,
    precision: str = "fp32",
) -> ParityReport:
    """Export one tree checkpoint as a bundle (uncalibrated: a lone checkpoint carries no held-out series)."""
    from training.downstream.trees import load_tree_classifier

    if precision != "fp32":
        raise ExportError(REDUCED_PRECISION_REFUSAL.format(precision=precision))
    verify_tree_checkpoint(checkpoint)
    clf = load_tree_classifier(checkpoint)
    meta = clf.metadata
    if created is not None:
        meta = dataclasses.replace(meta, provenance=dataclasses.replace(meta.provenance, created=created))
    return export_tree_bundle(clf, out, metadata=meta, overwrite=overwrite)


def parity_summary(report: ParityReport) -> str:
    """One line of a tree bundle's parity: probabilities against the training library's ``predict_proba``."""
    return (
        f"{report.n} inputs: max |probability diff| vs predict_proba {report.max_abs_logit_diff:.3g} "
        f"(atol {report.atol:g}), argmax agreement {100 * report.argmax_agreement:.2f} %"
    )
