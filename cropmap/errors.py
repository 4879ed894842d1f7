"""Exceptions raised by cropmap.

Every user mistake (bad input file, wrong option, incompatible bundle) raises a
:class:`CropmapError` subclass whose message says what was found and what was
expected. The CLI turns these into a one-line error and a non-zero exit; anything
else is a bug and surfaces with a traceback.
"""

from __future__ import annotations


class CropmapError(Exception):
    """Base class of all errors cropmap raises for bad input or configuration."""


class InputRasterError(CropmapError, ValueError):
    """The Sentinel-2 stack is missing, unreadable, or does not match the bundle."""


class MaskError(CropmapError, ValueError):
    """The cropland polygons are missing, empty, not polygons or do not overlap the stack."""


class BundleError(CropmapError, ValueError):
    """The model file is not a valid cropmap bundle (or has an unknown schema version)."""


class OutputExistsError(CropmapError, FileExistsError):
    """The output exists and ``overwrite`` was not requested."""


class RuntimeSetupError(CropmapError, RuntimeError):
    """The runtime environment is broken (e.g. onnxruntime and onnxruntime-gpu both installed)."""


class FileSystemError(CropmapError, OSError):
    """Reading or writing a file failed (permission denied, read-only file system, disk full, ...).

    The message names the operation, the path and the cause; ``errno``, ``filename``
    and ``operation`` carry them for callers.
    """

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else super().__str__()


class InputOverwriteError(CropmapError, ValueError):
    """A file the run would write is one of its inputs (or lies inside a folder stack)."""


class RunLockedError(CropmapError, RuntimeError):
    """Another cropmap run holds the lock of the same output (or batch folder)."""


class NothingClassifiedError(CropmapError, RuntimeError):
    """The run finished without classifying a single pixel; no output is written."""


class AssessError(CropmapError, ValueError):
    """A map, reference sample or class map that ``cropmap assess`` cannot use."""


class SummaryError(CropmapError, ValueError):
    """A run summary that cannot be read back: not JSON, another schema version, a missing or unknown key."""


class OptionValueError(CropmapError, ValueError):
    """An option of :class:`~cropmap.options.ClassifyOptions` (or a batch setting) with a value it cannot take.

    ``option`` names the field (``block_size``), so a command line can point at its own flag (``--block-size``)
    without reading the message.
    """

    def __init__(self, option: str, message: str) -> None:
        super().__init__(message)
        self.option = option
