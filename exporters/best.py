"""Pick the best run of a downstream run directory and export it as a bundle.

``python -m training.downstream ... --out RUN_DIR`` writes ``RUN_DIR/results.jsonl`` (one line per
finished run, with its validation metrics and the path of its model under ``RUN_DIR/models/``) and
``RUN_DIR/validation-task<T>.npz`` (the validation series). :func:`select_best` ranks the runs that
kept a model by a validation metric; :func:`export_best` exports the winner with the parity check on
the validation series and names the choice (metric, value, family, method, encoder) in the bundle's
provenance.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from exporters.ensemble import MODES as ENSEMBLE_MODES
from exporters.ensemble import EnsembleChoice
from exporters.parity import ParityReport
from exporters.refit import Refit, calibration_from, open_refit, refit_note, with_record
from exporters.to_onnx import (
    DEFAULT_OPSET,
    ExportError,
    export_bundle,
    refuse_inputs_as_outputs,
    split_precision_data,
    verify_checkpoint,
)
from training.downstream.classifier import load_classifier
from training.downstream.run import VAL_INPUTS
from training.downstream.selection import SELECT_INPUTS
from training.downstream.trees import TREE_FAMILIES

logger = logging.getLogger(__name__)

METRICS = {"macro_f1": "macro_f1", "accuracy": "val_accuracy"}
"""Selection metric name -> its key in ``results.jsonl`` (measured on the validation split)."""

SELECT_METRICS = {"macro_f1": "select_macro_f1", "accuracy": "select_accuracy"}
"""Selection metric name -> its key measured on the model-selection split (:mod:`training.downstream.selection`)."""

SPLITS = ("auto", "cv", "selection", "validation")
"""What ``--best`` ranks on: the out-of-fold predictions of a cross-validated selection (``cv``,
:mod:`exporters.crossval`), the model-selection split carved from the training samples (``selection``; the
validation split then stays an untouched test split in both), the validation split, or ``auto`` (cv when the run
directory holds its folds, else selection when every candidate was scored on one, else validation, with a warning
that the score it reports is then not held out)."""

PARITY_LIMIT = 4096
"""Validation series compared between torch and ONNX Runtime in a ``--best`` export."""


@dataclass(frozen=True)
class Choice:
    """The run chosen from a run directory."""

    record: dict[str, Any]
    """Its line of ``results.jsonl``."""
    model: Path
    """Its classifier checkpoint."""
    metric: str
    value: float
    n_candidates: int
    split: str = "validation"
    """``selection``, ``validation`` or ``cross-validation`` (out-of-fold predictions): what ``value`` was measured
    on."""
    refit: str = ""
    """How the exported run was refit after the choice (``--refit``; empty: it was not)."""

    def describe(self) -> str:
        """One line: what was chosen and why."""
        r = self.record
        method = r["method"] + ("" if r.get("corruption") is None else f" (corruption {r['corruption']:g})")
        variant = "default hyper-parameters" if int(r["variant"]) < 0 else f"variant {r['variant']}"
        encoder = r.get("encoder") or "none (raw bands)"
        text = (
            f"best of {self.n_candidates} runs by {self.split} {self.metric} = {self.value:.4f}: task {r['task']}, "
            f"{r['family']} {variant}, method {method}, encoder {encoder}"
        )
        if self.refit:
            text += f"; {self.refit}"
        if self.split != "validation":
            text += (
                f"; on the untouched test split ({r['n_val']} samples): accuracy {r['val_accuracy']:.4f}, "
                f"macro F1 {r['macro_f1']:.4f}"
            )
        return text


def _read_records(path: Path) -> list[dict[str, Any]]:
    """The records of a results file (:class:`~training.downstream.store.ResultsStore`), each checked for the
    fields a selection reads."""
    from training.downstream.store import ResultsError, ResultsStore

    def check(record: dict[str, Any], lineno: int) -> None:
        required = ("task", "family", *METRICS.values())
        missing = [k for k in required if k not in record]
        if missing:
            raise ExportError(
                f"{path}:{lineno} lacks {', '.join(missing)} (found {sorted(record)}); expected one record "
                "per run as python -m training.downstream writes it"
            )

    try:
        return ResultsStore(path).records(check)
    except ResultsError as err:
        raise ExportError(str(err)) from err


def kept_runs(run_dir: Path, task: str | None) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The records of the task (the only one when ``task`` is ``None``) and those of them that kept a model.

    Raises:
        ExportError: If the folder holds no results, no run kept its model, or the results mix tasks and
            ``task`` is not given.
    """
    results = run_dir / "results.jsonl"
    if not results.is_file():
        raise ExportError(
            f"{run_dir} holds no results.jsonl; expected the --out folder of python -m training.downstream"
        )
    records = _read_records(results)
    tasks = sorted({str(r["task"]) for r in records})
    if task is None and len(tasks) > 1:
        raise ExportError(f"{results} holds tasks {tasks}; choose one with --task")
    if task is not None:
        records = [r for r in records if str(r["task"]) == str(task)]
        if not records:
            raise ExportError(f"{results} holds no run of task {task}; tasks there: {tasks}")
    with_model = [r for r in records if r.get("model") and (run_dir / r["model"]).is_file()]
    if not with_model:
        raise ExportError(
            f"none of the {len(records)} runs in {results} kept a model file; rerun python -m training.downstream "
            "with this version (it writes models/ for every run)"
        )
    return records, with_model


def select_best(
    run_dir: str | Path, *, metric: str = "macro_f1", task: str | None = None, split: str = "auto"
) -> Choice:
    """The finished run with the highest ``metric`` on ``split`` (``selection``, ``validation`` or ``auto``, see
    :data:`SPLITS`; ties: the other metric, then file order). Every family with a kept model competes: neural
    runs, their ensembles and tree models.

    Raises:
        ExportError: If the folder holds no results, no run kept its model, the metric is unknown, or
            the results mix tasks and ``task`` is not given.
    """
    if metric not in METRICS:
        raise ExportError(f"unknown metric {metric!r}; choose from {sorted(METRICS)}")
    run_dir = Path(run_dir)
    results = run_dir / "results.jsonl"
    _, with_model = kept_runs(run_dir, task)
    if split not in SPLITS or split == "cv":
        raise ExportError(
            f"select_best ranks on one split, got {split!r}; choose from {[s for s in SPLITS if s != 'cv']} "
            "(out-of-fold ranking is export_best's)"
        )
    scored = all(r.get("select_macro_f1") is not None for r in with_model)
    if split == "selection" and not scored:
        lacking = sorted({r["family"] for r in with_model if r.get("select_macro_f1") is None})
        raise ExportError(
            f"runs of {lacking} in {results} were not scored on a model-selection split (trained with "
            "selection_holdout 0, or before it existed); retrain with --set selection_holdout=0.2 or pass "
            "--select-on validation"
        )
    chosen = "selection" if split == "selection" or (split == "auto" and scored) else "validation"
    if chosen == "validation":
        logger.warning(
            "ranking on the validation split: the score reported for the chosen model is the one it was "
            "picked on, not a held-out score (train with selection_holdout > 0 for an untouched test split)"
        )
    names = SELECT_METRICS if chosen == "selection" else METRICS
    key = names[metric]
    other = names["accuracy" if metric == "macro_f1" else "macro_f1"]
    best = max(enumerate(with_model), key=lambda ir: (float(ir[1][key]), float(ir[1][other]), -ir[0]))[1]
    return Choice(best, run_dir / best["model"], metric, float(best[key]), len(with_model), chosen)


def export_best(
    run_dir: str | Path,
    out: str | Path,
    *,
    metric: str = "macro_f1",
    task: str | None = None,
    opset: int = DEFAULT_OPSET,
    atol: float = 1e-4,
    created: str | None = None,
    overwrite: bool = False,
    precision: str = "fp32",
    train_x: np.ndarray | None = None,
    min_agreement: float | None = None,
    int8_method: str = "auto",
    split: str = "auto",
    ensemble: str = "auto",
    refit: str | Path | None = None,
) -> tuple[Choice | EnsembleChoice, ParityReport]:
    """Export the best run of ``run_dir`` (see :func:`select_best`), or the cross-family ensemble of its runs
    (``ensemble="auto"``: chosen on the model-selection split by the rule of :mod:`exporters.ensemble`;
    ``"always"``; ``"never"``), as one bundle.

    The parity check runs on up to :data:`PARITY_LIMIT` validation series of the run directory. An fp16/int8
    ``precision`` is calibrated on ``train_x`` (training series), else on half of those validation series, and
    its agreement with fp32 measured on the (other) validation series (see :func:`exporters.to_onnx.export_bundle`).
    ``refit``: export the chosen runs' counterparts trained on every training sample (:mod:`exporters.refit`).

    Returns:
        The choice and the parity report.
    """
    if ensemble not in ENSEMBLE_MODES:
        raise ExportError(f"unknown ensemble mode {ensemble!r}; choose from {list(ENSEMBLE_MODES)}")
    if Path(out).exists() and not overwrite:  # before the members are exported and weighed
        raise FileExistsError(None, "exists", str(out))
    if split not in SPLITS:
        raise ExportError(f"unknown split {split!r}; choose from {list(SPLITS)}")
    folds = _folds(Path(run_dir), task, split, refit)
    if folds is not None:
        refuse_inputs_as_outputs(out, run_folder_inputs(run_dir))
        found, fitted = _cross_validated(
            folds,
            out,
            metric=metric,
            task=task,
            atol=atol,
            created=created,
            overwrite=overwrite,
            precision=precision,
            ensemble=ensemble,
        )
        if not isinstance(found, Choice):
            return found
        choice = found
    else:
        choice, fitted, done = _on_selection_split(
            run_dir,
            out,
            metric=metric,
            task=task,
            atol=atol,
            created=created,
            overwrite=overwrite,
            precision=precision,
            split=split,
            ensemble=ensemble,
            refit=refit,
        )
        if done is not None:
            return done
    return _export_single(
        choice,
        run_dir,
        out,
        fitted,
        opset=opset,
        atol=atol,
        created=created,
        overwrite=overwrite,
        precision=precision,
        train_x=train_x,
        min_agreement=min_agreement,
        int8_method=int8_method,
    )


def _on_selection_split(
    run_dir: str | Path,
    out: str | Path,
    *,
    metric: str,
    task: str | None,
    atol: float,
    created: str | None,
    overwrite: bool,
    precision: str,
    split: str,
    ensemble: str,
    refit: str | Path | None,
) -> tuple[Choice, tuple[Any, np.ndarray, np.ndarray] | None, tuple[EnsembleChoice, ParityReport] | None]:
    """The choice made on the selection (or validation) split: the single run with the temperature fitted for its
    refit (``None`` without one), or the exported cross-family ensemble as the third item."""
    choice = select_best(run_dir, metric=metric, task=task, split=split)
    refuse_inputs_as_outputs(out, run_folder_inputs(run_dir))
    refit_to = None
    if refit is not None:
        if choice.split != "selection":
            raise ExportError(
                f"--refit needs runs chosen on a model-selection split; the runs of {run_dir} were ranked on the "
                "validation split (train them with selection_holdout > 0)"
            )
        refit_to = open_refit(refit, run_dir, str(choice.record["task"]))
        refuse_inputs_as_outputs(out, run_folder_inputs(refit))
    if ensemble != "never":
        found = _cross_family(
            choice,
            run_dir,
            out,
            metric=metric,
            atol=atol,
            created=created,
            overwrite=overwrite,
            precision=precision,
            always=ensemble == "always",
            refit=refit_to,
        )
        if found is not None:
            return choice, None, found
    if refit_to is None:
        return choice, None, None
    fitted = _single_refit_calibration(choice, Path(run_dir), refit_to, atol)
    record, path = refit_to.counterpart(choice.record)
    return with_record(choice, record, path, refit_to), fitted, None


def _export_single(
    choice: Choice,
    run_dir: str | Path,
    out: str | Path,
    refit_cal: tuple[Any, np.ndarray, np.ndarray] | None,
    *,
    opset: int,
    atol: float,
    created: str | None,
    overwrite: bool,
    precision: str,
    train_x: np.ndarray | None,
    min_agreement: float | None,
    int8_method: str,
) -> tuple[Choice, ParityReport]:
    """Export the chosen single run; ``refit_cal``: a temperature fitted elsewhere (``--refit``, cross-validated
    selection), else it is fitted on the selection (or validation) series."""
    if choice.record["family"] in TREE_FAMILIES:
        from exporters.trees import export_best_tree

        return choice, export_best_tree(
            choice,
            run_dir,
            out,
            created=created,
            overwrite=overwrite,
            precision=precision,
            calibration=None if refit_cal is None else refit_cal[0],
        )
    verify_checkpoint(choice.model)
    clf = load_classifier(choice.model)
    val = Path(run_dir) / VAL_INPUTS.format(task=choice.record["task"])
    if val.is_file():
        with np.load(val) as data:
            x_val, y_val = data["x"][:PARITY_LIMIT], data["y"][:PARITY_LIMIT]
    else:
        logger.warning(
            "%s is missing; parity is checked on the %d series stored in the model",
            val,
            len(clf.parity_inputs),
        )
        x_val, y_val = clf.parity_inputs, clf.parity_labels
    meta = clf.metadata
    prov = meta.provenance
    metrics = dict(prov.metrics)
    metrics.update(choice_metrics(choice))
    prov = dataclasses.replace(
        prov,
        training_data=f"{prov.training_data}; {choice.describe()} (run directory {Path(run_dir).name})",
        metrics=metrics,
        created=created or prov.created,
    )
    meta = dataclasses.replace(meta, provenance=prov)
    warn_unfilled(clf.payload)
    cal = None if refit_cal is not None else calibration_series(choice, run_dir)
    cal_data, cal_note = (None, "") if cal is None else cal
    if cal is None and refit_cal is None and y_val is not None:
        cal_data = (x_val, y_val)
        cal_note = f"validation series of {Path(run_dir).name} (task {choice.record['task']})"
    report = export_bundle(
        encoder=clf.encoder,
        base_model=clf.base_model,
        norm_stats=clf.norm_stats,
        metadata=meta,
        out=out,
        example=x_val,
        opset=opset,
        atol=atol,
        overwrite=overwrite,
        calibration_data=cal_data,
        calibration_note=cal_note,
        calibration_fitted=refit_cal,
        precision=precision,
        min_agreement=min_agreement,
        int8_method=int8_method,
        precision_data=None
        if precision == "fp32"
        else split_precision_data(
            x_val, y_val, train_x=train_x, what=f"validation series of {Path(run_dir).name}"
        ),
    )
    return choice, report


def _cross_family(
    choice: Choice,
    run_dir: str | Path,
    out: str | Path,
    *,
    metric: str,
    atol: float,
    created: str | None,
    overwrite: bool,
    precision: str,
    always: bool,
    refit: Refit | None = None,
) -> tuple[EnsembleChoice, ParityReport] | None:
    """Export the cross-family ensemble of ``run_dir`` when the rule picks it over ``choice``; else ``None``."""
    import tempfile

    from exporters.ensemble import candidate_runs, consider_ensemble, export_ensemble, refit_members

    run_dir = Path(run_dir)
    records = _read_records(run_dir / "results.jsonl")
    if candidate_runs(run_dir, records, str(choice.record["task"]), always=always) is None:
        return None
    if choice.split != "selection":
        if always:
            raise ExportError(
                f"--ensemble always needs runs scored on a model-selection split (its temperature is fitted "
                f"there); the runs of {run_dir} were ranked on the validation split"
            )
        logger.info(
            "no cross-family ensemble: it is weighed against single runs on a model-selection split, and the "
            "runs of %s were ranked on the validation split",
            run_dir,
        )
        return None
    cal = calibration_series(choice, run_dir)
    val = run_dir / VAL_INPUTS.format(task=choice.record["task"])
    if cal is None or not val.is_file():
        raise ExportError(f"{val} is missing; it holds the test series the ensemble is checked and scored on")
    with np.load(val) as data:
        test = (np.asarray(data["x"], np.float32), np.asarray(data["y"], np.int64))
    with tempfile.TemporaryDirectory(prefix="cropmap-ensemble-") as work:
        found = consider_ensemble(
            choice,
            run_dir,
            records,
            metric=metric,
            select=cal[0],
            test=test,
            work=Path(work),
            atol=atol,
            always=always,
        )
        if found is None:
            return None
        ens, members = found
        calibration = None
        if refit is not None:
            ens, members, calibration = refit_members(
                ens, members, refit, run_dir=run_dir, select=cal[0], test=test, work=Path(work), atol=atol
            )
        if precision != "fp32":
            raise ExportError(
                f"the cross-family ensemble was chosen and is fp32 only (its tree members refuse {precision}); "
                f"export it with --weights fp32, or pass --ensemble never for the best single run at {precision}"
            )
        report = export_ensemble(
            ens,
            members,
            run_dir,
            Path(out),
            select=cal[0],
            parity_x=test[0][:PARITY_LIMIT],
            created=created,
            overwrite=overwrite,
            calibration=calibration,
        )
    return ens, report


def _folds(run_dir: Path, task: str | None, split: str, refit: str | Path | None) -> Any:
    """The folds of a cross-validated selection to rank on (:class:`exporters.crossval.Folds`), or ``None`` when
    ``split`` does not ask for them (``auto``: when ``run_dir`` holds them).

    Raises:
        ExportError: ``cv`` without folds, or folds with ``--refit``.
    """
    from exporters.crossval import open_folds
    from training.downstream.run import CV

    if split not in ("auto", "cv"):
        return None
    records, _ = kept_runs(run_dir, task)
    folds = open_folds(run_dir, str(records[0]["task"]))
    if folds is None and split == "cv":
        raise ExportError(
            f"{run_dir} holds no {CV}/ folder; expected the output folder of 'cropmap train downstream "
            "--selection-folds K'"
        )
    if folds is not None and refit is not None:
        raise ExportError(
            f"--refit: the runs of {run_dir} were chosen by cross-validation and trained on every training sample "
            "already; expected no --refit"
        )
    return folds


def _cross_validated(
    folds: Any,
    out: str | Path,
    *,
    metric: str,
    task: str | None,
    atol: float,
    created: str | None,
    overwrite: bool,
    precision: str,
    ensemble: str,
) -> tuple[Any, Any]:
    """The choice on out-of-fold predictions (:mod:`exporters.crossval`); the cross-family ensemble is exported
    here. Returns ``(choice, calibration)`` for a single run, ``((ensemble choice, parity report), None)`` else."""
    import tempfile

    from exporters.crossval import choose
    from exporters.ensemble import export_ensemble

    if metric not in METRICS:
        raise ExportError(f"unknown metric {metric!r}; choose from {sorted(METRICS)}")
    run_dir = folds.run_dir
    records, with_model = kept_runs(run_dir, task)
    with tempfile.TemporaryDirectory(prefix="cropmap-cv-") as work:
        choice, members, cal = choose(
            folds, records, with_model, metric=metric, ensemble=ensemble, work=Path(work), atol=atol
        )
        if members is None:
            return choice, cal
        if precision != "fp32":
            raise ExportError(
                f"the cross-family ensemble was chosen and is fp32 only (its tree members refuse {precision}); "
                f"export it with --weights fp32, or pass --ensemble never for the best single run at {precision}"
            )
        with np.load(run_dir / VAL_INPUTS.format(task=choice.task)) as data:
            parity_x = np.asarray(data["x"][:PARITY_LIMIT], np.float32)
        report = export_ensemble(
            choice,
            members,
            run_dir,
            Path(out),
            select=(cal[1], cal[2]),
            parity_x=parity_x,
            created=created,
            overwrite=overwrite,
            calibration=cal[0],
        )
    return (choice, report), None


def _single_refit_calibration(
    choice: Choice, run_dir: Path, refit: Refit, atol: float
) -> tuple[Any, np.ndarray, np.ndarray]:
    """The temperature of the chosen run fitted on the selection series (which it never saw), for its refit."""
    import tempfile

    from exporters.ensemble import load_member

    cal = calibration_series(choice, run_dir)
    assert cal is not None  # --refit is refused unless the choice was made on the selection split
    (x_sel, y_sel), _ = cal
    with tempfile.TemporaryDirectory(prefix="cropmap-refit-") as work:
        member = load_member(choice.record, run_dir, Path(work), x_sel[:256], atol)
        probabilities = member.probabilities(x_sel)
    return calibration_from(probabilities, y_sel, refit_note(run_dir, str(choice.record["task"]), refit))


def choice_metrics(choice: Choice) -> dict[str, float]:
    """What the bundle's provenance records about the choice: the ranking value and, when it was made on the
    model-selection split, the model's scores on the untouched test split."""
    by = {"validation": "val", "selection": "selection"}.get(choice.split, "cv")
    out = {f"selected_by_{by}_{choice.metric}": choice.value}
    if choice.split != "validation":
        out.update(
            test_accuracy=float(choice.record["val_accuracy"]),
            test_macro_f1=float(choice.record["macro_f1"]),
            n_test=float(choice.record["n_val"]),
        )
    return out


def calibration_series(
    choice: Choice, run_dir: str | Path
) -> tuple[tuple[np.ndarray, np.ndarray], str] | None:
    """The model-selection series to fit the temperature on when the choice was made on them, else ``None``.

    Raises:
        ExportError: If the choice was made on the selection split but its series file is missing.
    """
    if choice.split != "selection":
        return None
    path = Path(run_dir) / SELECT_INPUTS.format(task=choice.record["task"])
    if not path.is_file():
        raise ExportError(
            f"{path} is missing; it holds the model-selection series the temperature is fitted on "
            "(rerun python -m training.downstream with the same --out)"
        )
    with np.load(path) as data:
        x, y = np.asarray(data["x"], np.float32), np.asarray(data["y"], np.int64)
    return (
        x,
        y,
    ), f"model-selection series of {Path(run_dir).name} (task {choice.record['task']}; never the test split)"


def run_folder_inputs(run_dir: str | Path) -> dict[Path, str]:
    """The files of a run folder that an export from it may read: ``results.jsonl``, the stored series (every
    ``.npz`` in it: validation and model-selection series), every checkpoint under ``models/`` and every model
    ``results.jsonl`` names."""
    run_dir = Path(run_dir)
    results = run_dir / "results.jsonl"
    inputs: dict[Path, str] = {results: "run folder's results"}
    for f in sorted(run_dir.glob("*.npz")):
        inputs[f] = "run folder's series"
    for f in sorted(run_dir.glob(SELECT_INPUTS.format(task="*"))):
        inputs[f] = "run folder's model-selection series"
    models = run_dir / "models"
    if models.is_dir():
        for f in sorted(models.rglob("*")):
            if f.is_file():
                inputs[f] = "run folder's checkpoint"
    from training.downstream.run import CV

    if (run_dir / CV).is_dir():
        for f in sorted((run_dir / CV).rglob("*")):
            if f.is_file():
                inputs[f] = "run folder's cross-validation fold"
    if results.is_file():
        for r in _read_records(results):
            if r.get("model"):
                inputs.setdefault(run_dir / r["model"], "run folder's checkpoint")
    return inputs


def warn_unfilled(payload: dict[str, Any]) -> None:
    """Say so when a model was trained on series whose cloudy observations were not filled."""
    if payload.get("fill") == "none":
        logger.warning(
            "this model was trained on series with cloudy observations left in (fill 'none', the papers' protocol); "
            "cropmap masks and fills gaps before the model at inference: retrain with --set fill=linear to deploy"
        )
