"""The device values of the config: resolved here, or one clear error naming the fix."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import yaml

from span.device import DEVICE_PATTERN, resolve_device
from span.errors import SpanError

SCHEMA = "workflow/schemas/config.schema.yaml"


def test_auto_and_cpu():
    assert resolve_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected


@pytest.mark.parametrize("value", ["gpu", "cuda:", "cuda:x", "CPU", ""])
def test_unknown_values_are_refused(value):
    with pytest.raises(SpanError, match="unknown device") as exc_info:
        resolve_device(value)
    assert "use auto, cpu, cuda, cuda:N or mps" in str(exc_info.value)


def test_a_cuda_device_this_machine_lacks_is_one_line():
    index = torch.cuda.device_count()  # one past the last device (cuda:0 on a CPU machine)
    with pytest.raises(SpanError) as exc_info:
        resolve_device(f"cuda:{index}")
    message = str(exc_info.value)
    assert f"device cuda:{index} asked but this machine has" in message and "\n" not in message
    assert "set device: auto (CUDA when present) or cpu" in message


def test_the_schema_accepts_the_same_values():
    schema = yaml.safe_load((Path(__file__).resolve().parents[1] / SCHEMA).read_text())
    for section in ("features", "training"):
        assert schema["properties"][section]["properties"]["device"]["pattern"] == DEVICE_PATTERN
    for value in ("auto", "cpu", "cuda", "cuda:3", "mps"):
        assert re.match(DEVICE_PATTERN, value)
