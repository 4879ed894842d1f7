"""Exporter faults (docs/faults.md): an output that is an input, and checkpoints that are not intact.

Each case runs ``python -m exporters``'s ``main`` on real files and asserts the exit status, the one-line
message, that no bundle (nor temporary) is written and that the inputs are byte-identical afterwards.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import zipfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pytest
import torch

from cropmap.contract.metadata import BundleMetadata, ClassInfo, Provenance, TimeGrid
from exporters.__main__ import main as exporters_main
from exporters.to_onnx import ExportError, save_classifier, verify_checkpoint
from training.models import build_model

BANDS = ("B02", "B03", "B04", "B08")
T, C, K = 5, len(BANDS), 3


def _meta() -> BundleMetadata:
    return BundleMetadata(
        schema_version=1,
        model_name="mlp",
        input_name="s2",
        output_name="logits",
        bands=BANDS,
        reflectance_scale=10000.0,
        nodata=65535.0,
        time_grid=TimeGrid("11-01", (0, 61, 120, 181, 242), ("2020-11-01",) * 5),
        min_valid_steps=3,
        gap_fill="linear",
        classes=tuple(ClassInfo(i + 1, f"class {i + 1}", "#10a0c0") for i in range(K)),
        embedding=None,
        provenance=Provenance("none", "lstm", "none", "random test data", "test", "2026-01-01T00:00:00"),
    )


def _save(path: Path) -> Path:
    torch.manual_seed(0)
    base = build_model("lstm", C, K, hidden=6, layers=1, dropout=0.0)
    base.eval()
    x = np.random.default_rng(0).uniform(100, 6000, (16, T, C)).astype(np.float32)
    stats = {"mean": x.reshape(-1, C).mean(0).tolist(), "std": x.reshape(-1, C).std(0).tolist()}
    save_classifier(
        path,
        encoder=None,
        encoder_name=None,
        base_model=base,
        base_model_name="lstm",
        base_model_config={"hidden": 6, "layers": 1, "dropout": 0.0},
        norm_stats=stats,
        metadata=_meta(),
        parity_inputs=x,
    )
    return path


@pytest.fixture(scope="module")
def checkpoint_bytes(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return _save(tmp_path_factory.mktemp("ckpt") / "clf.pt").read_bytes()


@pytest.fixture
def ckpt(tmp_path: Path, checkpoint_bytes: bytes) -> Path:
    path = tmp_path / "in" / "clf.pt"
    path.parent.mkdir()
    path.write_bytes(checkpoint_bytes)
    return path


LOG_RECORD = re.compile(r"(DEBUG|INFO|WARNING) (cropmap|training|exporters)[\w.]*: ")
"""A log record as the family's logging rule prints it (cropmap.cli_common.configure_logging)."""


def _hashes(paths: Iterable[Path]) -> dict[str, str]:
    out = {}
    for p in paths:
        for f in sorted(p.rglob("*")) if p.is_dir() else [p]:
            if f.is_file():
                out[str(f)] = hashlib.sha256(f.read_bytes()).hexdigest()
    return out


def _one_error_line(capsys: pytest.CaptureFixture[str], *words: str) -> str:
    """The one ``Error:`` line on stderr; log records (``WARNING exporters.best: ...``, silenced by ``-q``) aside."""
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    lines = [line for line in err.strip().splitlines() if line.strip() and not LOG_RECORD.match(line)]
    assert len(lines) == 1 and lines[0].startswith("Error: "), err
    for w in words:
        assert w in lines[0], (w, lines[0])
    return lines[0]


def _files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# ---------------------------------------------------------------------------------------------- outputs that are inputs


@pytest.mark.parametrize(
    "how", ["same path", "same path --overwrite", "symlink --overwrite", "dot-dot --overwrite"]
)
def test_output_is_the_checkpoint(ckpt: Path, capsys: pytest.CaptureFixture[str], how: str) -> None:
    d = ckpt.parent
    out = ckpt
    if how.startswith("symlink"):
        out = d / "link.onnx"
        out.symlink_to(ckpt)
    elif how.startswith("dot-dot"):
        (d / "sub").mkdir()
        out = d / "sub" / ".." / ckpt.name
    before = _hashes([d])
    args = [str(ckpt), "-o", str(out), *(["--overwrite"] if "--overwrite" in how else [])]
    assert exporters_main(args) == 1
    _one_error_line(
        capsys,
        f"output {out} is the checkpoint {ckpt}",
        "never writes over an input, with or without --overwrite",
        "(choose another -o)",
    )
    assert _hashes([d]) == before


def _run_dir(root: Path, checkpoint_bytes: bytes) -> Path:
    """A downstream run folder: results.jsonl naming two models, their checkpoints, the validation series."""
    run = root / "run"
    (run / "models").mkdir(parents=True)
    records = []
    for i, f1 in enumerate((0.5, 0.7)):
        (run / "models" / f"m{i}.pt").write_bytes(checkpoint_bytes)
        records.append(
            {
                "task": "real",
                "model": f"models/m{i}.pt",
                "macro_f1": f1,
                "val_accuracy": f1,
                "family": "lstm",
                "variant": -1,
                "method": "supervised",
                "encoder": None,
            }
        )
    (run / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    x = np.random.default_rng(1).uniform(100, 6000, (8, T, C)).astype(np.float32)
    np.savez(run / "validation-taskreal.npz", x=x, y=np.arange(8) % K)
    return run


@pytest.mark.parametrize(
    "target", ["models/m1.pt", "models/m0.pt", "results.jsonl", "validation-taskreal.npz"]
)
def test_best_output_is_a_file_of_the_run_folder(
    tmp_path: Path, checkpoint_bytes: bytes, capsys: pytest.CaptureFixture[str], target: str
) -> None:
    run = _run_dir(tmp_path, checkpoint_bytes)
    before = _hashes([run])
    out = run / target
    assert exporters_main(["--best", str(run), "-o", str(out), "--overwrite"]) == 1
    what = {
        "models": "run folder's checkpoint",
        "results.jsonl": "run folder's results",
        "validation-taskreal.npz": "run folder's series",
    }[target.split("/")[0]]
    _one_error_line(capsys, f"output {out} is the {what} {out}", "never writes over an input")
    assert _hashes([run]) == before


def test_calibration_data_as_output(ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    npz = tmp_path / "in" / "train.npz"
    np.savez(npz, x=np.ones((4, T, C), np.float32))
    before = _hashes([tmp_path / "in"])
    args = [str(ckpt), "-o", str(npz), "--overwrite", "--precision", "int8", "--calibration-data", str(npz)]
    assert exporters_main(args) == 1
    _one_error_line(capsys, f"output {npz} is the calibration data {npz}", "never writes over an input")
    assert _hashes([tmp_path / "in"]) == before


# ---------------------------------------------------------------------------------------------- checkpoint integrity


def _flip_a_weight_byte(path: Path) -> str:
    """Change one byte inside the data of the largest zip member; returns the member's name."""
    with zipfile.ZipFile(path) as zf:
        info = max(zf.infolist(), key=lambda i: i.file_size)
    raw = bytearray(path.read_bytes())
    name_len, extra_len = (
        int.from_bytes(raw[info.header_offset + 26 : info.header_offset + 28], "little"),
        int.from_bytes(raw[info.header_offset + 28 : info.header_offset + 30], "little"),
    )
    at = info.header_offset + 30 + name_len + extra_len + info.compress_size // 2
    raw[at] ^= 0x5A
    path.write_bytes(bytes(raw))
    return info.filename


def test_corrupted_checkpoint_is_refused(
    ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    member = _flip_a_weight_byte(ckpt)
    torch.load(ckpt, weights_only=True)  # torch itself loads the damaged file without a word
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    before = _hashes([ckpt])
    assert exporters_main([str(ckpt), "-o", str(out_dir / "model.onnx")]) == 1
    _one_error_line(
        capsys,
        f"checkpoint {ckpt} is corrupted: its member {member} fails the zip CRC-32 check",
        "nothing was written",
    )
    assert _files(out_dir) == [] and _hashes([ckpt]) == before


def test_corrupted_checkpoint_is_refused_by_best(
    tmp_path: Path, checkpoint_bytes: bytes, capsys: pytest.CaptureFixture[str]
) -> None:
    run = _run_dir(tmp_path, checkpoint_bytes)
    _flip_a_weight_byte(run / "models" / "m1.pt")  # the best run's model
    out = tmp_path / "best.onnx"
    assert exporters_main(["--best", str(run), "-o", str(out)]) == 1
    _one_error_line(capsys, f"checkpoint {run / 'models' / 'm1.pt'} is corrupted")
    assert not out.exists() and _files(tmp_path) == ["run"]


def test_checkpoint_missing_keys_is_refused(
    ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    payload = torch.load(ckpt, weights_only=True)
    del payload["model_name"], payload["n_classes"]
    torch.save(payload, ckpt)
    out = tmp_path / "model.onnx"
    assert exporters_main([str(ckpt), "-o", str(out)]) == 1
    _one_error_line(capsys, f"checkpoint {ckpt} lacks model_name, n_classes (found ", "nothing was written")
    assert not out.exists() and _files(tmp_path) == ["in"]


def test_encoder_missing_keys_and_not_a_zip(ckpt: Path) -> None:
    payload = torch.load(ckpt, weights_only=True)
    payload["encoder"] = {"model_name": "resmlp"}
    torch.save(payload, ckpt)
    with pytest.raises(ExportError, match=r"lacks encoder.model_config, encoder.state_dict"):
        verify_checkpoint(ckpt)
    torch.save(payload, ckpt, _use_new_zipfile_serialization=False)
    with pytest.raises(ExportError, match=r"is not a zip archive \(the format torch.save writes\)"):
        verify_checkpoint(ckpt)
    os.truncate(ckpt, 0)
    with pytest.raises(ExportError, match=r"is not a zip archive"):
        verify_checkpoint(ckpt)


def test_intact_checkpoint_still_exports(
    ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    verify_checkpoint(ckpt)
    out = tmp_path / "model.onnx"
    assert exporters_main([str(ckpt), "-o", str(out)]) == 0
    assert out.is_file() and "wrote" in capsys.readouterr().out
