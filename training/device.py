"""The one resolver of the ``--device`` option that the training commands share.

``cropmap.cli_common.device_option`` checks the spelling (``auto``, ``cpu``, ``cuda`` or ``cuda:N``) when the
command line is parsed; :func:`resolve_device` turns the value into a :class:`torch.device` and refuses, with a
one-line :class:`DeviceError`, a CUDA device that torch cannot see (no GPU, a CPU-only torch build, or an index
past the last GPU), so a command never starts on the CPU when a GPU was asked for and never ends in a traceback
from deep inside torch.
"""

from __future__ import annotations

import torch

from cropmap.cli_common import DEVICE_HELP
from cropmap.errors import CropmapError

__all__ = ["DEVICE_HELP", "DeviceError", "resolve_device"]


class DeviceError(CropmapError, ValueError):
    """A ``--device`` value that is not a device, or a CUDA device torch does not see."""


def resolve_device(name: str) -> torch.device:
    """The device for a ``--device`` value.

    Args:
        name: ``auto`` (CUDA when torch sees a GPU, else CPU), ``cpu``, ``cuda`` or ``cuda:N``.

    Raises:
        DeviceError: For another device kind, or a CUDA device torch does not see.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise DeviceError(f"--device {name!r} is not a device; expected {DEVICE_HELP}") from None
    if device.type == "cpu":
        return device
    if device.type != "cuda":
        raise DeviceError(
            f"--device {name!r}: only CPU and CUDA devices are supported; expected {DEVICE_HELP}"
        )
    if not torch.cuda.is_available():
        build = f"torch {torch.__version__}" + ("" if torch.version.cuda else ", a build without CUDA")
        raise DeviceError(
            f"--device {name} was asked for but torch sees no CUDA device ({build}); use --device cpu"
        )
    count = torch.cuda.device_count()
    if device.index is not None and device.index >= count:
        raise DeviceError(f"--device {name}: torch sees {count} CUDA device(s), cuda:0 to cuda:{count - 1}")
    return device
