"""Ensembles across families: the probability average of every model a downstream run kept, as one bundle.

``cropmap export best RUN_DIR`` considers, next to the best single run, the **cross-family ensemble** of the run
directory: every kept model of the task (each neural run, each tree model; a family's own ``<family>_ensemble`` is
left out, since it is the average of runs that are already members), weighted equally, its class probabilities
averaged. The ensemble is scored on the model-selection split and chosen **unless the best single run beats it
there by more than two standard errors** (:data:`SINGLE_LEAD`) of the paired difference (a bootstrap over the
selection samples, :data:`BOOTSTRAP` resamples, seed 0). Why not "only when it wins": on the shipped real data sets
the selection split holds 15-49 parcels, and the single run that wins there is mostly luck; picked that way, the
bundle trailed a RandomForest on the untouched test parcels where the ensemble did not (docs/results.md). Why two
and not one: the best single run is the best of a dozen or more runs scored on the same few samples, so its lead
is biased upwards (the winner's curse); with one standard error, 6 of 20 split seeds of the shipped data sets
exported a single run (docs/results.md). A single run that is clearly better on the selection split is still
chosen.

The bundle is one ONNX graph: the members' own bundle graphs side by side on one input (each checked on its own
first: torch against ONNX Runtime for a neural member, ``predict_proba`` against ONNX Runtime for a tree member),
a softmax after each, their mean, and ``logits = log(max(mean, 1e-7))`` (softmax of which gives the mean back).
Parity of the whole: its probabilities against the mean of the members' reference probabilities (torch for neural
members, the parity-checked tree graph for tree members) on the run's validation series. A temperature is fitted
on the model-selection series. fp32 only (tree members refuse reduced precision, see :mod:`exporters.trees`).
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cropmap.contract.metadata import METADATA_KEY, BundleMetadata
from cropmap.safeio.atomic import atomic_path
from exporters.parity import ParityReport, probability_parity, softmax
from exporters.to_onnx import DEFAULT_OPSET, ExportError

logger = logging.getLogger(__name__)

ENSEMBLE_FAMILY = "cross_family_ensemble"
"""The family name the bundle's provenance and the choice give the ensemble."""

MODES = ("auto", "always", "never")
"""``auto``: the cross-family ensemble by the rule above; ``always``: the ensemble whatever the single runs score
(scored and reported all the same); ``never``: single runs only."""

BOOTSTRAP = 2000
"""Bootstrap resamples of the selection samples for the standard error of the single-vs-ensemble difference."""

SINGLE_LEAD = 2.0
"""Standard errors of the paired difference by which the best single run must lead the cross-family ensemble on
the selection (or out-of-fold) predictions to be exported instead of it."""

PROB_ATOL = 1e-5
"""Largest allowed ``|reference - bundle|`` class probability in the ensemble's parity check."""

LOG_FLOOR = 1e-7
"""The mean probability is floored here before the log (a class no member gives any weight keeps a finite logit)."""


@dataclass
class Member:
    """One member: its record, checkpoint, ONNX graph and reference probabilities."""

    record: dict[str, Any]
    checkpoint: Path
    graph: Any
    """``onnx.ModelProto``: the member's bundle graph (raw series in, logits out)."""
    metadata: BundleMetadata
    parity: ParityReport
    """The member's own check (torch or ``predict_proba`` against ONNX Runtime)."""
    torch_reference: Any = None
    """``callable(x) -> (N, K)`` torch probabilities of a neural member; ``None`` for a tree member, whose graph
    was checked against ``predict_proba`` on export and serves as its own reference."""
    session: Any = field(default=None, init=False, repr=False)

    @property
    def name(self) -> str:
        """The run's model file name without its folder and suffix (unique in a run directory)."""
        return self.checkpoint.stem

    def probabilities(self, x: np.ndarray) -> np.ndarray:
        """ONNX Runtime's probabilities of the member's graph (one session, made on first use)."""
        from exporters.trees import _session, run_logits

        if self.session is None:
            self.session = _session(self.graph.SerializeToString())
        return softmax(run_logits(self.session, x))

    def reference(self, x: np.ndarray) -> np.ndarray:
        """The reference side's probabilities: torch for a neural member, the checked graph for a tree member."""
        return self.probabilities(x) if self.torch_reference is None else self.torch_reference(x)


@dataclass(frozen=True)
class EnsembleChoice:
    """The cross-family ensemble chosen from a run directory (it quacks like :class:`exporters.best.Choice`)."""

    members: tuple[str, ...]
    task: str
    metric: str
    value: float
    """The ensemble's ``metric`` on the selection split."""
    single: Any
    """The best single run's :class:`exporters.best.Choice`."""
    margin: float
    """The single run's ``metric`` minus the ensemble's, on the selection split."""
    stderr: float
    test_accuracy: float
    test_macro_f1: float
    n_test: int
    forced: bool = False
    """Chosen by ``--ensemble always`` rather than by the rule."""
    split: str = "selection"
    refit: str = ""
    """How the members were refit after the choice (``--refit``; empty: they were not)."""

    @property
    def record(self) -> dict[str, Any]:
        return {"family": ENSEMBLE_FAMILY, "task": self.task}

    @property
    def model(self) -> str:
        return f"{ENSEMBLE_FAMILY} of {len(self.members)} runs"

    def describe(self) -> str:
        """One line: the members, the comparison with the best single run, the test scores."""
        why = (
            "the ensemble asked for with --ensemble always"
            if self.forced
            else f"ahead by less than {SINGLE_LEAD:g} standard errors of {self.stderr:.4f}"
            if self.margin > 0
            else "not ahead of it"
        )
        on = "selection" if self.split == "selection" else "out-of-fold"
        return (
            f"cross-family ensemble of {len(self.members)} runs ({', '.join(self.members)}), {on} "
            f"{self.metric} = {self.value:.4f}; the best single run ({self.single.record['family']}, "
            f"{self.single.value:.4f}) is {self.margin:+.4f} from it ({why}); "
            + (f"{self.refit}; " if self.refit else "")
            + "on the untouched test split "
            f"({self.n_test} samples): accuracy {self.test_accuracy:.4f}, macro F1 {self.test_macro_f1:.4f}"
        )


def member_records(run_dir: Path, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The runs that join the ensemble: kept models, a family's own ``_ensemble`` left out."""
    return [
        r
        for r in records
        if r.get("model") and (run_dir / r["model"]).is_file() and not str(r["family"]).endswith("_ensemble")
    ]


def candidate_runs(
    run_dir: Path, records: list[dict[str, Any]], task: str, *, always: bool = False
) -> list[dict[str, Any]] | None:
    """The members of the task's ensemble, or ``None`` when there are fewer than two runs of two families.

    Raises:
        ExportError: With ``always``, when there are not.
    """
    runs = member_records(run_dir, [r for r in records if str(r["task"]) == task])
    families = {str(r["family"]) for r in runs}
    if len(runs) >= 2 and len(families) >= 2:
        return runs
    if always:
        raise ExportError(
            f"--ensemble always needs kept runs of at least two families; {run_dir} has {len(runs)} of "
            f"{sorted(families)}"
        )
    logger.info("no cross-family ensemble: %d kept runs of %d families", len(runs), len(families))
    return None


def load_member(
    record: dict[str, Any], run_dir: Path, work: Path, example: np.ndarray, atol: float
) -> Member:
    """Export one member to ``work`` with its own parity check and keep its graph and reference side."""
    import onnx
    import torch

    from exporters.to_onnx import build_graph, export_bundle, verify_checkpoint
    from exporters.trees import export_tree_bundle, verify_tree_checkpoint
    from training.downstream.classifier import load_classifier
    from training.downstream.trees import TREE_FAMILIES, load_tree_classifier

    path = run_dir / record["model"]
    out = work / f"{path.stem}.onnx"
    if record["family"] in TREE_FAMILIES:
        verify_tree_checkpoint(path)
        tree = load_tree_classifier(path)
        report = export_tree_bundle(tree, out, overwrite=True)
        return Member(record, path, onnx.load(str(out)), tree.metadata, report)
    verify_checkpoint(path)
    clf = load_classifier(path)
    report = export_bundle(
        encoder=clf.encoder,
        base_model=clf.base_model,
        norm_stats=clf.norm_stats,
        metadata=clf.metadata,
        out=out,
        example=example,
        opset=DEFAULT_OPSET,
        atol=atol,
        overwrite=True,
    )
    module = build_graph(encoder=clf.encoder, base_model=clf.base_model, norm_stats=clf.norm_stats)

    def torch_probabilities(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            logits = [module(torch.from_numpy(x[i : i + 1024]))[0] for i in range(0, len(x), 1024)]
        return softmax(torch.cat(logits).numpy())

    return Member(record, path, onnx.load(str(out)), clf.metadata, report, torch_probabilities)


def merge_graphs(
    graphs: list[Any], *, n_classes: int, input_name: str = "x", output_name: str = "logits"
) -> Any:
    """One ONNX model: the member graphs on one input, the mean of their softmaxes, its log as logits."""
    import onnx
    from onnx import TensorProto, compose, helper

    nodes: list[Any] = []
    inits: list[Any] = []
    infos: list[Any] = []
    opsets: dict[str, int] = {}
    probs: list[str] = []
    first_input = None
    for i, model in enumerate(graphs):
        prefixed = compose.add_prefix(model, f"m{i}_")
        g = prefixed.graph
        if first_input is None:
            first_input = g.input[0]
        logits = next(o.name for o in g.output if o.name.endswith("logits"))
        nodes.append(helper.make_node("Identity", [input_name], [g.input[0].name]))
        nodes.extend(g.node)
        inits.extend(g.initializer)
        infos.extend(g.value_info)
        nodes.append(helper.make_node("Softmax", [logits], [f"m{i}_probabilities"], axis=-1))
        probs.append(f"m{i}_probabilities")
        for o in prefixed.opset_import:
            opsets[o.domain] = max(opsets.get(o.domain, 0), o.version)
    assert first_input is not None
    n = len(graphs)
    inits += [
        helper.make_tensor("ens_weight", TensorProto.FLOAT, [], [1.0 / n]),
        helper.make_tensor("ens_floor", TensorProto.FLOAT, [], [LOG_FLOOR]),
    ]
    nodes += [
        helper.make_node("Sum", probs, ["ens_sum"]),
        helper.make_node("Mul", ["ens_sum", "ens_weight"], ["ens_mean"]),
        helper.make_node("Max", ["ens_mean", "ens_floor"], ["ens_floored"]),
        helper.make_node("Log", ["ens_floored"], [output_name]),
    ]
    shape = [d.dim_param or d.dim_value for d in first_input.type.tensor_type.shape.dim]
    graph = helper.make_graph(
        nodes,
        f"cropmap_{ENSEMBLE_FAMILY}",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, ["batch", n_classes])],
        initializer=inits,
        value_info=infos,
    )
    merged = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid(d, v) for d, v in sorted(opsets.items())],
        ir_version=max(m.ir_version for m in graphs),
    )
    onnx.checker.check_model(merged, full_check=True)
    return merged


def _metric(y: np.ndarray, pred: np.ndarray, n_classes: int, metric: str) -> float:
    from training.downstream.baselines import score

    s = score(y, pred, n_classes)
    return float(s["macro_f1"] if metric == "macro_f1" else s["val_accuracy"])


def paired_stderr(
    y: np.ndarray, pred_a: np.ndarray, pred_b: np.ndarray, n_classes: int, metric: str, *, n: int = BOOTSTRAP
) -> float:
    """Bootstrap standard error of ``metric(a) - metric(b)`` over resamples of the same samples."""
    rng = np.random.default_rng(0)
    diffs = np.empty(n)
    for k in range(n):
        i = rng.integers(0, len(y), len(y))
        diffs[k] = _metric(y[i], pred_a[i], n_classes, metric) - _metric(y[i], pred_b[i], n_classes, metric)
    return float(diffs.std(ddof=1))


def single_leads(margin: float, stderr: float) -> bool:
    """Whether the best single run, ``margin`` ahead of the cross-family ensemble with the paired difference's
    standard error ``stderr``, is exported instead of it (the rule of :data:`SINGLE_LEAD`); logs the outcome."""
    leads = margin > SINGLE_LEAD * stderr
    if leads:
        logger.info(
            "the best single run beats the ensemble by more than %g standard errors: it is exported",
            SINGLE_LEAD,
        )
    return leads


def _check_legend(members: list[Member], run_dir: Path) -> None:
    """Refuse members that disagree on classes or bands (their probabilities could not be averaged)."""
    base = members[0].metadata
    for m in members[1:]:
        if m.metadata.classes != base.classes or m.metadata.bands != base.bands:
            raise ExportError(
                f"members {members[0].name} and {m.name} of {run_dir} differ in classes or bands; an ensemble "
                "needs one legend and one band order"
            )


def consider_ensemble(
    single: Any,
    run_dir: Path,
    records: list[dict[str, Any]],
    *,
    metric: str,
    select: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray],
    work: Path,
    atol: float,
    always: bool = False,
) -> tuple[EnsembleChoice, list[Member]] | None:
    """The cross-family ensemble when the rule picks it over ``single`` (the best single run), or ``always``;
    else ``None``.

    Returns the choice and its members (exported and checked).
    """
    from training.downstream.trees import TREE_FAMILIES

    runs = candidate_runs(run_dir, records, str(single.record["task"]), always=always)
    if runs is None:
        return None
    x_sel, y_sel = select
    x_test = test[0]
    neural = next((r for r in runs if r["family"] not in TREE_FAMILIES), None)
    example = x_test[:256] if neural is not None else x_test[:1]
    members = [load_member(r, run_dir, work, example, atol) for r in runs]
    _check_legend(members, run_dir)
    k = len(members[0].metadata.classes)
    ens_pred = np.mean([m.probabilities(x_sel) for m in members], axis=0).argmax(1)
    value = _metric(y_sel, ens_pred, k, metric)
    single_member = next((m for m in members if m.checkpoint == Path(single.model)), None)
    if single_member is None:  # the best single run is a family's own ensemble: export it beside the members
        single_member = load_member(single.record, run_dir, work, example, atol)
    single_pred = single_member.probabilities(x_sel).argmax(1)
    margin = _metric(y_sel, single_pred, k, metric) - value
    stderr = paired_stderr(y_sel, single_pred, ens_pred, k, metric)
    logger.info(
        "cross-family ensemble of %d runs: selection %s %.4f; best single run %s %.4f (margin %+.4f, "
        "standard error %.4f)",
        len(members),
        metric,
        value,
        single.record["family"],
        single.value,
        margin,
        stderr,
    )
    if not always and single_leads(margin, stderr):
        return None
    choice = ensemble_choice(
        members, single, metric=metric, value=value, margin=margin, stderr=stderr, test=test, forced=always
    )
    return choice, members


def ensemble_choice(
    members: list[Member],
    single: Any,
    *,
    metric: str,
    value: float,
    margin: float,
    stderr: float,
    test: tuple[np.ndarray, np.ndarray],
    forced: bool,
    split: str = "selection",
) -> EnsembleChoice:
    """The :class:`EnsembleChoice` of ``members`` weighed against ``single``, with its scores on the test series."""
    x_test, y_test = test
    k = len(members[0].metadata.classes)
    test_pred = np.mean([m.probabilities(x_test) for m in members], axis=0).argmax(1)
    return EnsembleChoice(
        members=tuple(m.name for m in members),
        task=str(single.record["task"]),
        metric=metric,
        value=value,
        single=single,
        margin=margin,
        stderr=stderr,
        test_accuracy=_metric(y_test, test_pred, k, "accuracy"),
        test_macro_f1=_metric(y_test, test_pred, k, "macro_f1"),
        n_test=len(y_test),
        forced=forced,
        split=split,
    )


def refit_members(
    choice: EnsembleChoice,
    members: list[Member],
    refit: Any,
    *,
    run_dir: Path,
    select: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray],
    work: Path,
    atol: float,
) -> tuple[EnsembleChoice, list[Member], Any]:
    """The chosen ensemble with its members swapped for their refit counterparts (``--refit``, an
    :class:`exporters.refit.Refit`).

    Returns:
        The choice with the refit members' test scores, the refit members, and the calibration: fitted on the
        selection series with the original members (which never saw them), to be applied unchanged.
    """
    from exporters.refit import calibration_from, refit_note

    x_sel, y_sel = select
    x_test, y_test = test
    cal = calibration_from(
        np.mean([m.probabilities(x_sel) for m in members], axis=0),
        y_sel,
        refit_note(run_dir, choice.task, refit),
    )[0]
    example = x_test[:256] if any(m.torch_reference is not None for m in members) else x_test[:1]
    refit_work = work / "refit"
    refit_work.mkdir(exist_ok=True)
    swapped = [
        load_member(refit.counterpart(m.record)[0], refit.run_dir, refit_work, example, atol) for m in members
    ]
    _check_legend(swapped, refit.run_dir)
    if swapped[0].metadata.classes != members[0].metadata.classes:
        raise ExportError(f"the refit runs of {refit.run_dir} have other classes than those of {run_dir}")
    k = len(swapped[0].metadata.classes)
    pred = np.mean([m.probabilities(x_test) for m in swapped], axis=0).argmax(1)
    choice = dataclasses.replace(
        choice,
        test_accuracy=_metric(y_test, pred, k, "accuracy"),
        test_macro_f1=_metric(y_test, pred, k, "macro_f1"),
        refit=refit.describe(),
    )
    return choice, swapped, cal


def export_ensemble(
    choice: EnsembleChoice,
    members: list[Member],
    run_dir: Path,
    out: Path,
    *,
    select: tuple[np.ndarray, np.ndarray],
    parity_x: np.ndarray,
    created: str | None,
    overwrite: bool,
    atol: float = PROB_ATOL,
    calibration: Any = None,
) -> ParityReport:
    """Write the ensemble bundle (atomically) after its parity check; the temperature fitted on ``select``, or
    ``calibration`` (a :class:`~cropmap.contract.metadata.Calibration` fitted elsewhere: ``--refit``) as given."""
    import onnx

    from exporters.calibration import calibrate
    from exporters.trees import _session, run_logits

    if out.exists() and not overwrite:
        raise FileExistsError(None, "exists", str(out))
    base = members[0].metadata  # one legend and band order: checked when the members were weighed
    model = merge_graphs([m.graph for m in members], n_classes=len(base.classes))
    session = _session(model.SerializeToString())
    report = probability_parity(
        softmax(run_logits(session, parity_x)),
        np.mean([m.reference(parity_x) for m in members], axis=0),
        atol,
        "the ensemble bundle does not reproduce the mean of its members' probabilities",
    )
    x_sel, y_sel = select
    cal = (
        calibrate(
            run_logits(session, x_sel),
            np.asarray(y_sel),
            data=f"model-selection series of {run_dir.name} (task {choice.task}; never the test split)",
        )
        if calibration is None
        else calibration
    )
    report = dataclasses.replace(report, calibration=cal)
    prov = base.provenance
    metrics = {
        f"selected_by_{'selection' if choice.split == 'selection' else 'cv'}_{choice.metric}": choice.value,
        "test_accuracy": choice.test_accuracy,
        "test_macro_f1": choice.test_macro_f1,
        "n_test": float(choice.n_test),
    }
    prov = dataclasses.replace(
        prov,
        encoder="; ".join(sorted({m.metadata.provenance.encoder for m in members})),
        base_model=ENSEMBLE_FAMILY,
        training_data=f"{prov.training_data.split(';')[0]}; {choice.describe()} (run directory {run_dir.name})",
        metrics=metrics,
        created=created or prov.created,
    )
    meta = dataclasses.replace(
        base,
        model_name=ENSEMBLE_FAMILY,
        input_name="x",
        output_name="logits",
        embedding=None,
        precision=None,
        calibration=cal,
        provenance=prov,
    )
    onnx.helper.set_model_props(model, {METADATA_KEY: meta.to_json()})
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out, mode=0o644) as tmp:
        tmp.write_bytes(model.SerializeToString())
    logger.info("wrote ensemble bundle %s (%d members); parity %s", out, len(members), summary(report))
    return report


def summary(report: ParityReport) -> str:
    """One line of the ensemble's parity."""
    return (
        f"{report.n} inputs: max |probability diff| vs the members' mean {report.max_abs_logit_diff:.3g} "
        f"(atol {report.atol:g}), argmax agreement {100 * report.argmax_agreement:.2f} %"
    )
