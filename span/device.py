"""The compute device of extraction, training and prediction, from the config's `device` value.

A device the machine does not have is one clear error, not a CUDA traceback deep in a job.
"""

from __future__ import annotations

import re

import torch

from span.errors import SpanError
from span.settings.stages import DEVICE_PATTERN  # declared with the options that take it


def resolve_device(device: str) -> torch.device:
    """`auto` = CUDA when present, else CPU; `cpu`, `cuda`, `cuda:N` and `mps` must exist here."""
    if not re.match(DEVICE_PATTERN, device):
        raise SpanError(None, f"unknown device {device!r}", "use auto, cpu, cuda, cuda:N or mps")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda":
        count = torch.cuda.device_count()
        if (dev.index or 0) >= count:
            have = f"CUDA devices cuda:0..cuda:{count - 1}" if count else "no CUDA device"
            raise SpanError(
                None,
                f"device {device} asked but this machine has {have}",
                "set device: auto (CUDA when present) or cpu, or run on a GPU node",
            )
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise SpanError(None, "device mps asked but this machine has no Apple GPU", "set auto")
    return dev
