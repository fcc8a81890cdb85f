"""Choosing where the network runs: ``auto``, ``cpu`` or ``cuda`` (``cuda:N`` for one GPU of several)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported when a device is resolved: the CLI parser needs DEVICE_CHOICES, not torch
    import torch

from .errors import CAMLError

DEVICE_CHOICES = ("auto", "cpu", "cuda")


class DeviceError(CAMLError, ValueError):
    """A device was asked for that this machine or this PyTorch build does not have."""


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks the first CUDA GPU when there is one, else the CPU; ``cuda`` without a GPU is an error.

    Asking for CUDA explicitly and silently getting the CPU would turn a
    one-second job into minutes without telling anyone, hence the error.
    """
    import torch

    name = (name or "auto").strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" or name.startswith("cuda:"):
        if not torch.cuda.is_available():
            build = "this PyTorch build has no CUDA support" if torch.version.cuda is None else \
                f"PyTorch was built for CUDA {torch.version.cuda} but finds no usable GPU or driver"
            raise DeviceError(f"device {name!r} requested but CUDA is not available "
                              f"(torch {torch.__version__}: {build}); use --device cpu or auto")
        if ":" in name:
            index = name.split(":", 1)[1]
            if not index.isdigit() or int(index) >= torch.cuda.device_count():
                raise DeviceError(f"device {name!r}: this machine has {torch.cuda.device_count()} CUDA "
                                  f"device(s), numbered from 0")
        return torch.device(name)
    raise DeviceError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N")

