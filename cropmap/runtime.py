"""The ONNX Runtime side of a bundle: sessions, execution providers and the graph checks.

:func:`load_bundle` opens a bundle file with ONNX Runtime, reads its metadata (the contract,
:mod:`cropmap.contract.metadata`) and checks the graph's inputs and outputs against it. It takes
``provider="auto"|"cpu"|"cuda"|"tensorrt"`` (:data:`PROVIDERS`); a provider that was asked for and that
this ONNX Runtime cannot start is an error (:class:`~cropmap.errors.RuntimeSetupError`), never a silent run
on the CPU. :func:`check_onnxruntime_install` refuses a broken installation first.

``onnxruntime`` is imported inside the functions that need it, so importing this module (and ``cropmap``)
stays light. The sessions of a classification run are pooled by :mod:`cropmap.predict`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from cropmap.contract.metadata import METADATA_KEY, BundleMetadata
from cropmap.errors import BundleError, RuntimeSetupError

logger = logging.getLogger(__name__)

PROVIDERS = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}
"""``--provider`` names and the ONNX Runtime execution providers they ask for."""
AUTO_PROVIDERS = ("cuda", "cpu")
"""What ``provider="auto"`` tries, best first. TensorRT is only used when asked for by name: it builds an
engine for every new input shape (the last, shorter batch of each block is one), which takes minutes."""


def check_onnxruntime_install() -> None:
    """Refuse to run when both ``onnxruntime`` and ``onnxruntime-gpu`` are installed.

    Both distributions install the same ``onnxruntime/`` package, so whichever was
    installed last silently overwrote part of the other; pip does not notice.

    Raises:
        RuntimeSetupError: If both distributions are installed.
    """
    found = []
    for dist in ("onnxruntime", "onnxruntime-gpu"):
        try:
            found.append(f"{dist}=={metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            continue
    if len(found) > 1:
        raise RuntimeSetupError(
            f"both {' and '.join(found)} are installed; they overwrite each other's files. "
            "Keep one: `pip uninstall -y onnxruntime onnxruntime-gpu && pip install onnxruntime-gpu` "
            "(GPU) or `... && pip install onnxruntime` (CPU)"
        )


@dataclass
class Bundle:
    """An opened bundle: its path, validated metadata and an ONNX Runtime session."""

    path: Path
    metadata: BundleMetadata
    session: Any  # onnxruntime.InferenceSession; typed loosely to keep import cheap
    providers: tuple[str, ...]
    """The execution providers the session actually runs on, first = the one that takes the graph."""
    requested: str = "cpu"
    """The provider that was asked for (a :data:`PROVIDERS` name, ``"auto"``, or the explicit list given)."""

    @property
    def provider(self) -> str:
        """The execution provider that runs the graph (``session.get_providers()[0]``)."""
        return self.providers[0]

    def run(self, x: Any, *, embedding: bool = False) -> Any:
        """Run the graph on a float32 ``(B, T, C)`` array.

        Returns:
            Logits ``(B, K)``, or ``(logits, embedding (B, D))`` when ``embedding``.
        """
        meta = self.metadata
        names = [meta.output_name]
        if embedding:
            if meta.embedding is None:
                raise BundleError(f"bundle {self.path} has no embedding output")
            names.append(meta.embedding.output_name)
        out = self.session.run(names, {meta.input_name: x})
        return (out[0], out[1]) if embedding else out[0]


def read_metadata(path: str | Path) -> BundleMetadata:
    """Read and validate only the metadata of a bundle (opens a session)."""
    return load_bundle(path).metadata


def provider_chain(provider: str, available: list[str] | tuple[str, ...]) -> list[str]:
    """The ONNX Runtime provider list for one :data:`PROVIDERS` name (not ``auto``), checked against ``available``.

    ``cuda`` runs on CUDA with the CPU for the operators CUDA lacks; ``tensorrt`` adds CUDA in between.

    Raises:
        RuntimeSetupError: If the provider is unknown or not in ``available`` (one line naming what this
            ONNX Runtime offers and how to get the GPU runtime).
    """
    if provider not in PROVIDERS:
        raise RuntimeSetupError(f"provider is {provider!r}; expected one of auto, {', '.join(PROVIDERS)}")
    want = PROVIDERS[provider]
    if want not in available:
        import onnxruntime as ort

        offered = ", ".join(p for p in available if p != "AzureExecutionProvider") or "none"
        hint = (
            "install the GPU runtime instead of the CPU one (onnxruntime-gpu, see docs/install.md) on a machine "
            "with an NVIDIA GPU, or use --provider cpu"
            if provider != "cpu"
            else "reinstall onnxruntime"
        )
        raise RuntimeSetupError(
            f"provider {provider!r} ({want}) was requested but onnxruntime {ort.__version__} here offers only "
            f"{offered}; {hint}"
        )
    chain = {"cpu": ["cpu"], "cuda": ["cuda", "cpu"], "tensorrt": ["tensorrt", "cuda", "cpu"]}[provider]
    return [PROVIDERS[p] for p in chain if PROVIDERS[p] in available]


def load_bundle(
    path: str | Path,
    *,
    provider: str | None = None,
    providers: list[str] | tuple[str, ...] | None = None,
    intra_op_threads: int | None = None,
) -> Bundle:
    """Open a cropmap bundle with ONNX Runtime and validate its contract.

    Args:
        path: The ``.onnx`` file.
        provider: ``"auto"`` (the best of :data:`AUTO_PROVIDERS` that starts; the log says which),
            ``"cpu"``, ``"cuda"`` or ``"tensorrt"``; default ``"cpu"``.
        providers: Instead of ``provider``: explicit ONNX Runtime execution provider names, best first.
            Each one must be offered by this ONNX Runtime and the first must actually take the graph.
        intra_op_threads: Threads ONNX Runtime may use inside one session (default: its own).

    Raises:
        BundleError: If the file is missing, is not an ONNX model, has no cropmap
            metadata, has an unknown schema version, or its graph does not match the
            metadata.
        RuntimeSetupError: If the provider asked for is not available or does not start (a
            bundle never runs on another provider than the one asked for).
    """
    import onnxruntime as ort  # deferred: keeps `import cropmap` light

    check_onnxruntime_install()
    if provider is not None and providers is not None:
        raise ValueError("pass provider= or providers=, not both")
    from cropmap.safeio.overlap import special_file_kind

    path = Path(path)
    if (kind := special_file_kind(path)) is not None:
        raise BundleError(
            f"model bundle {path} is {kind}, not a file; expected an .onnx file (it is not opened: "
            "reading a pipe would wait for a writer)"
        )
    if not path.is_file():
        raise BundleError(f"model bundle {path} does not exist")
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if intra_op_threads is not None:
        opts.intra_op_num_threads = intra_op_threads
    available = list(ort.get_available_providers())
    if providers is not None:
        requested = ",".join(providers)
        missing = [p for p in providers if p not in available]
        if missing or not providers:
            offered = ", ".join(p for p in available if p != "AzureExecutionProvider")
            raise RuntimeSetupError(
                f"execution provider(s) {missing or 'none'} requested but onnxruntime {ort.__version__} here offers "
                f"only {offered}; install onnxruntime-gpu for CUDA/TensorRT (docs/install.md)"
            )
        candidates = [list(providers)]
    elif (provider or "cpu") == "auto":
        requested = "auto"
        candidates = [provider_chain(p, available) for p in AUTO_PROVIDERS if PROVIDERS[p] in available]
    else:
        requested = provider or "cpu"
        candidates = [provider_chain(requested, available)]
    session = None
    skipped = []
    for chain in candidates:
        try:
            session = ort.InferenceSession(str(path), sess_options=opts, providers=chain)
        except Exception as err:  # ORT raises several private types for unreadable models
            if requested == "auto" and chain[0] != PROVIDERS["cpu"]:
                skipped.append(f"{chain[0]}: {str(err).splitlines()[0] if str(err) else type(err).__name__}")
                continue
            raise BundleError(
                f"{path} is not a readable ONNX model on {chain[0]} ({type(err).__name__}: "
                f"{str(err).splitlines()[0] if str(err) else ''})"
            ) from err
        got = session.get_providers()
        if got and got[0] == chain[0]:
            break
        # ORT could not start the provider (missing CUDA/cuDNN/TensorRT libraries) and fell back on its own.
        if requested == "auto":
            skipped.append(f"{chain[0]}: ONNX Runtime could not start it (session fell back to {got[0]})")
            session = None
            continue
        raise RuntimeSetupError(
            f"provider {requested!r} was requested and onnxruntime offers {chain[0]}, but it could not start it "
            f"(the session fell back to {', '.join(got)}; are the CUDA/cuDNN/TensorRT libraries installed and a "
            "GPU visible?); not running on another provider than the one asked for"
        )
    assert session is not None  # the CPU is always a candidate of auto, and other paths raise
    props = session.get_modelmeta().custom_metadata_map
    if METADATA_KEY not in props:
        raise BundleError(
            f"{path} is an ONNX model but not a cropmap bundle: metadata key {METADATA_KEY!r} not found "
            f"(found keys: {sorted(props) or 'none'}); export it with `python -m exporters`"
        )
    meta = BundleMetadata.from_json(props[METADATA_KEY])
    _check_graph(session, meta, path)
    used = tuple(session.get_providers())
    if requested == "auto":
        logger.info(
            "provider auto: took %s%s", used[0], f" (skipped {'; '.join(skipped)})" if skipped else ""
        )
    logger.info(
        "loaded bundle %s (%s, %s, %d classes) on %s",
        path,
        meta.model_name,
        meta.dtype,
        len(meta.classes),
        used[0],
    )
    return Bundle(path=path, metadata=meta, session=session, providers=used, requested=requested)


def _check_graph(session: Any, meta: BundleMetadata, path: Path) -> None:
    inputs = {i.name: i for i in session.get_inputs()}
    outputs = {o.name: o for o in session.get_outputs()}
    if meta.input_name not in inputs:
        raise BundleError(
            f"{path}: metadata names input {meta.input_name!r}; graph inputs are {sorted(inputs)}"
        )
    shape = inputs[meta.input_name].shape
    if len(shape) != 3:
        raise BundleError(f"{path}: input {meta.input_name!r} has rank {len(shape)}; expected 3 (B, T, C)")
    for axis, want, label in ((1, meta.n_timesteps, "T"), (2, meta.n_bands, "C")):
        if isinstance(shape[axis], int) and shape[axis] != want:
            raise BundleError(f"{path}: input {label} dimension is {shape[axis]}; metadata says {want}")
    wanted = [meta.output_name] + ([meta.embedding.output_name] if meta.embedding else [])
    for name in wanted:
        if name not in outputs:
            raise BundleError(f"{path}: metadata names output {name!r}; graph outputs are {sorted(outputs)}")
    k = outputs[meta.output_name].shape[-1]
    if isinstance(k, int) and k != len(meta.classes):
        raise BundleError(f"{path}: output has {k} classes; metadata lists {len(meta.classes)}")
