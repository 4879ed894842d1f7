"""Write a benchmark's measured section into a markdown page without touching the prose around it.

The measured part sits between ``<!-- measured -->`` and ``<!-- /measured -->``; a rerun replaces only
that part, so a page's explanation and reading notes survive. A page without the markers is created with
them (the whole file becomes the measured section).
"""

from __future__ import annotations

from pathlib import Path

from cropmap.safeio.atomic import atomic_write

BEGIN = "<!-- measured -->"
END = "<!-- /measured -->"


def write_measured(path: Path, report: str) -> None:
    """Put ``report`` between the markers of ``path`` (create the page if needed), atomically."""
    block = f"{BEGIN}\n{report.rstrip()}\n{END}"
    text = path.read_text() if path.exists() else ""
    if BEGIN in text and END in text and text.index(BEGIN) < text.index(END):
        head, rest = text.split(BEGIN, 1)
        tail = rest.split(END, 1)[1]
        new = head + block + tail
    else:
        new = block + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, new)
