"""The one atomic-write helper (cropmap/safeio/atomic.py): real files, real folders, a real SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cropmap.errors import FileSystemError
from cropmap.safeio.atomic import atomic_file, atomic_path, atomic_write, atomic_write_json
from cropmap.safeio.temporaries import owner_of


def _left(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_success_renames_the_temporary_onto_the_destination(tmp_path: Path) -> None:
    final = tmp_path / "out.json"
    final.write_text("old")
    with atomic_path(final, mode=0o640) as tmp:
        assert tmp.parent == tmp_path and tmp.suffix == ".json" and not tmp.exists()
        owner = owner_of(tmp.name)
        assert owner is not None and owner.pid == os.getpid() and owner.target == "out.json"
        tmp.write_text("new")
        assert final.read_text() == "old"  # nothing at the final path changes before the block ends
    assert final.read_text() == "new"
    assert final.stat().st_mode & 0o777 == 0o640
    assert _left(tmp_path) == ["out.json"]


def test_an_error_in_the_block_removes_the_temporary_and_keeps_the_destination(tmp_path: Path) -> None:
    final = tmp_path / "out.txt"
    final.write_text("old")
    with pytest.raises(ValueError, match="writer failed"), atomic_path(final) as tmp:
        tmp.write_text("half")
        raise ValueError("writer failed")
    assert final.read_text() == "old"
    assert _left(tmp_path) == ["out.txt"]


def test_an_interrupt_removes_a_temporary_folder(tmp_path: Path) -> None:
    final = tmp_path / "cache"
    with pytest.raises(KeyboardInterrupt), atomic_path(final) as tmp:
        (tmp / "sub").mkdir(parents=True)
        (tmp / "sub" / "a.npy").write_bytes(b"x")
        raise KeyboardInterrupt
    assert _left(tmp_path) == []


def test_a_folder_replaces_a_folder(tmp_path: Path) -> None:
    final = tmp_path / "pairs"
    final.mkdir()
    (final / "old.txt").write_text("old")
    with atomic_path(final) as tmp:
        tmp.mkdir()
        (tmp / "new.txt").write_text("new")
    assert _left(final) == ["new.txt"]
    assert _left(tmp_path) == ["pairs"]


def test_a_failing_rename_is_one_line_and_leaves_no_temporary(tmp_path: Path) -> None:
    final = tmp_path / "is_a_folder"
    (final / "inside").mkdir(parents=True)
    with (
        pytest.raises(FileSystemError, match=r"could not move the finished file into place at .*is_a_folder"),
        atomic_path(final) as tmp,
    ):
        tmp.write_text("file over a folder")
    assert _left(tmp_path) == ["is_a_folder"]


def test_shorthands_write_text_bytes_and_json(tmp_path: Path) -> None:
    with atomic_file(tmp_path / "a.txt") as f:
        f.write("text")
    with atomic_file(tmp_path / "b.bin", "wb") as f:
        f.write(b"\x00\x01")
    atomic_write(tmp_path / "c.txt", "c")
    atomic_write_json(tmp_path / "d.json", {"k": [1, 2]})
    assert (tmp_path / "a.txt").read_text() == "text"
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\x01"
    assert (tmp_path / "c.txt").read_text() == "c"
    assert json.loads((tmp_path / "d.json").read_text()) == {"k": [1, 2]}
    assert (tmp_path / "d.json").read_text().endswith("}\n")
    assert _left(tmp_path) == ["a.txt", "b.bin", "c.txt", "d.json"]


def test_atomic_write_into_a_missing_folder_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(FileSystemError, match=r"could not write .*missing.*no such file or directory"):
        atomic_write(tmp_path / "missing" / "x.json", "{}")


def test_sigterm_while_writing_leaves_neither_temporary_nor_destination(tmp_path: Path) -> None:
    """A real process killed by SIGTERM in the middle of the block (signals_as_interrupts, as the CLIs run)."""
    final = tmp_path / "big.bin"
    code = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from cropmap.safeio.atomic import atomic_path\n"
        "from cropmap.safeio.signals import signals_as_interrupts\n"
        "with signals_as_interrupts(), atomic_path(Path(sys.argv[1])) as tmp:\n"
        "    tmp.write_bytes(b'x' * 1000)\n"
        "    print('writing', flush=True)\n"
        "    time.sleep(60)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(final)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "writing"
    assert len(_left(tmp_path)) == 1  # the temporary, beside the destination
    proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 30
    while proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.communicate(timeout=5)
    assert proc.returncode != 0
    assert _left(tmp_path) == []


def test_replace_false_keeps_what_another_writer_put_there_first(tmp_path: Path) -> None:
    entry = tmp_path / "entry"
    expected = "could not move the finished file into place"
    with pytest.raises(FileSystemError, match=expected), atomic_path(entry, replace=False) as tmp:
        tmp.mkdir()
        (tmp / "mine.npy").write_bytes(b"mine")
        entry.mkdir()  # a concurrent writer finishes first
        (entry / "theirs.npy").write_bytes(b"theirs")
    assert _left(entry) == ["theirs.npy"]
    assert _left(tmp_path) == ["entry"]
    single = tmp_path / "one.txt"
    with pytest.raises(FileSystemError), atomic_path(single, replace=False) as tmp:
        tmp.write_text("mine")
        single.write_text("theirs")
    assert single.read_text() == "theirs"
    assert _left(tmp_path) == ["entry", "one.txt"]
