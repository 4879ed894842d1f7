"""Who may import what, read from the source with ``ast`` (docs/architecture.md, training/__init__.py).

- ``cropmap`` (the deployable) imports neither ``training`` nor ``exporters``, nor torch, onnx or optuna, anywhere
  (module level or inside a function): ``pip install .`` has none of them.
- ``cropmap.contract`` (what every package shares) imports from cropmap only itself and ``cropmap.errors``, and of
  the libraries only numpy and the standard library: no ONNX Runtime, torch or rasterio.
- ``training`` never imports ``exporters``; of ``cropmap`` it imports the contract (:data:`CONTRACT`), the one
  atomic-write helper (:data:`HELPERS`) and, in the
  readers that turn inference's inputs into training data (:data:`READERS`), inference's input side
  (:data:`INPUT_SIDE`), so training and inference read stacks, polygons and clouds with the same code.
- ``exporters`` knows both sides: of ``cropmap`` it imports the contract and the runtime side it checks and writes
  bundles with (:data:`EXPORTER_RUNTIME`), and ``training``.

`tests/cropmap/test_imports.py` proves the runtime side (``import cropmap`` and a whole classify run with torch,
onnx and optuna blocked, ``import cropmap.contract`` without onnxruntime, torch or rasterio); this file proves the
source side, module by module, so a forbidden import in a rarely run function fails too.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

CONTRACT = frozenset({"cropmap.contract", "cropmap.errors"})
"""What every training and exporters module may import from cropmap: the contract package (band names, bundle
metadata and its JSON, the time grid and gap fill, the cloud rule) and the error types."""

HELPERS = frozenset({"cropmap.safeio.atomic"})
"""What every training module may import from cropmap besides the contract: the one atomic-write helper."""

INPUT_SIDE = frozenset(
    {"cropmap.stack", "cropmap.mask", "cropmap.tiling", "cropmap.sanity", "cropmap.safeio"}
)
"""Inference's input side: stack reader, polygon rasterisation, block plan, reflectance check, output safety."""

READERS = frozenset({"training/data/extract.py", "training/data/pairs.py"})
"""The training modules that read what ``cropmap classify`` reads (labelled series, bi-modal pairs)."""

EXPORTER_RUNTIME = frozenset({"cropmap.runtime", "cropmap.safeio", "cropmap.postprocess"})
"""What exporters also imports from cropmap: each bundle is opened as cropmap opens it (``load_bundle``), written
with inference's atomic outputs and signal handling, and calibrated with the softmax inference applies."""

CONTRACT_LIBRARIES = ("numpy",)
"""The only library the contract package imports besides the standard library and ``cropmap.errors``."""

EXECUTORS = frozenset({"training/downstream/cluster.py"})
"""The training module that runs the downstream protocol on the executors of ``cropmap batch``: it may import
:data:`BATCH` (the local / existing / HPC Dask cluster construction), so there is one cluster construction."""

BATCH = "cropmap.batch"

COMMAND_LINE = frozenset({"cropmap.cli_common"})
"""The command family's shared options and exit-code policy (docs/cli.md): every training module may import it,
since its commands and their ``python -m`` aliases are subcommands of ``cropmap``."""

HEAVY = ("torch", "onnx", "optuna")


def _imports(path: Path) -> Iterator[tuple[int, str]]:
    """``(line, dotted module)`` of every absolute import in ``path``; ``from cropmap import x`` gives
    ``cropmap.x`` when ``x`` is a module of the package, else ``cropmap``."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if "." in node.module or node.module not in ("cropmap", "training", "exporters"):
                yield node.lineno, node.module
                continue
            for alias in node.names:
                sub = REPO / node.module / alias.name
                is_module = sub.with_suffix(".py").is_file() or (sub / "__init__.py").is_file()
                yield node.lineno, f"{node.module}.{alias.name}" if is_module else node.module


def _modules(package: str) -> list[Path]:
    paths = sorted((REPO / package).rglob("*.py"))
    assert paths, f"no Python files under {package}/"
    return paths


def _violations(package: str, allowed: object) -> list[str]:
    """Every import of ``package``'s modules that ``allowed(relative path, module)`` refuses."""
    bad = []
    for path in _modules(package):
        rel = path.relative_to(REPO).as_posix()
        for line, module in _imports(path):
            if not allowed(rel, module):  # type: ignore[operator]
                bad.append(f"{rel}:{line} imports {module}")
    return bad


def _top(module: str) -> str:
    return module.split(".")[0]


def _within(module: str, allowed: frozenset[str]) -> bool:
    """Whether ``module`` is one of ``allowed`` or inside one of them (``cropmap.safeio.atomic`` in ``cropmap.safeio``)."""
    return any(module == a or module.startswith(a + ".") for a in allowed)


def test_cropmap_imports_no_training_exporters_or_heavy_libraries() -> None:
    bad = _violations("cropmap", lambda rel, m: _top(m) not in ("training", "exporters", *HEAVY))
    assert not bad, "cropmap must run with the inference install only:\n" + "\n".join(bad)


def _owner(module: str) -> str:
    """``cropmap.contract.metadata`` -> ``cropmap.contract``, ``cropmap.stack`` -> ``cropmap.stack``."""
    return ".".join(module.split(".")[:2])


def test_contract_imports_only_numpy_the_standard_library_and_itself() -> None:
    def allowed(rel: str, module: str) -> bool:
        if _top(module) == "cropmap":
            return _owner(module) in CONTRACT
        return _top(module) in CONTRACT_LIBRARIES or _top(module) in sys.stdlib_module_names

    bad = _violations("cropmap/contract", allowed)
    assert not bad, (
        f"cropmap.contract may import only {sorted(CONTRACT)}, {list(CONTRACT_LIBRARIES)} and the standard "
        "library (no onnxruntime, torch or rasterio: training and exporters share it):\n" + "\n".join(bad)
    )


def test_training_imports_only_the_contract_and_in_readers_the_input_side() -> None:
    def allowed(rel: str, module: str) -> bool:
        if _top(module) == "exporters":
            return False
        if _top(module) != "cropmap":
            return True
        return (
            _within(module, CONTRACT | HELPERS | COMMAND_LINE)
            or (_within(module, INPUT_SIDE) and rel in READERS)
            or (_within(module, frozenset({BATCH})) and rel in EXECUTORS)
        )

    bad = _violations("training", allowed)
    assert not bad, (
        f"training may import from cropmap only {sorted(CONTRACT | HELPERS)}, and {sorted(INPUT_SIDE)} in "
        f"{sorted(READERS)}; "
        "never exporters (docs/architecture.md):\n" + "\n".join(bad)
    )


def test_exporters_import_the_contract_and_the_runtime_side_they_check_bundles_with() -> None:
    def allowed(rel: str, module: str) -> bool:
        return _top(module) != "cropmap" or _owner(module) in CONTRACT | EXPORTER_RUNTIME | COMMAND_LINE

    bad = _violations("exporters", allowed)
    assert not bad, (
        f"exporters may import from cropmap only {sorted(CONTRACT | EXPORTER_RUNTIME | COMMAND_LINE)} (docs/architecture.md):\n"
        + "\n".join(bad)
    )


def test_exporters_may_import_both_sides() -> None:
    """exporters is the only package that knows both sides (cropmap and training); this pins that it still does."""
    seen = {_top(m) for path in _modules("exporters") for _, m in _imports(path)}
    assert {"cropmap", "training"} <= seen


def test_the_rule_is_stated_where_the_code_is() -> None:
    """training/__init__.py and docs/architecture.md state the rule this file enforces, with the same modules."""
    init = (REPO / "training" / "__init__.py").read_text(encoding="utf-8")
    doc = (REPO / "docs" / "architecture.md").read_text(encoding="utf-8")
    for text, where in ((init, "training/__init__.py"), (doc, "docs/architecture.md")):
        for name in sorted(CONTRACT | HELPERS | COMMAND_LINE | INPUT_SIDE | READERS | EXECUTORS | {BATCH}):
            assert name in text, f"{where} does not name {name}"
    for name in sorted(EXPORTER_RUNTIME):
        assert name in doc, f"docs/architecture.md does not name {name} among what exporters may import"


@pytest.mark.parametrize("old", ["bands", "bundle", "clouds", "timegrid"])
def test_the_contract_lives_in_one_package(old: str) -> None:
    """The contract's modules of the flat layout are gone (no shims): one place to import the contract from."""
    assert not (REPO / "cropmap" / f"{old}.py").exists()
    assert (REPO / "cropmap" / "contract" / "__init__.py").is_file()


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("from cropmap import contract\n", ["cropmap.contract"]),
        ("from cropmap.contract.metadata import TimeGrid\n", ["cropmap.contract.metadata"]),
        ("from cropmap import classify\n", ["cropmap"]),
        ("def f():\n    from cropmap.stack import open_stack\n", ["cropmap.stack"]),
        ("import torch.nn as nn\n", ["torch.nn"]),
        ("from . import sibling\n", []),
    ],
)
def test_import_scanner_sees_every_form(source: str, expected: list[str], tmp_path: Path) -> None:
    path = tmp_path / "m.py"
    path.write_text(source)
    assert [m for _, m in _imports(path)] == expected
