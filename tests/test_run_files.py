"""The run files written by training and prediction read back by the evaluation."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from span.errors import SpanError
from span.run_files import (
    REQUIRED_KEYS,
    read_run_metrics,
    read_test_predictions,
    write_predictions,
    write_run_metrics,
    write_test_predictions,
)
from span.training.bags import Bag

CLASSES = ["a", "b", "c"]


def _bags(labels: list[int | None]) -> list[Bag]:
    return [Bag(f"s{i}", Path(f"s{i}.h5"), label) for i, label in enumerate(labels)]


def test_test_predictions_read_back(tmp_path: Path) -> None:
    probs = np.random.default_rng(0).dirichlet([1, 1, 1], size=4)
    write_test_predictions(tmp_path / "p.csv", _bags([0, 2, 1, 2]), probs, CLASSES)
    ids, y, read = read_test_predictions(tmp_path / "p.csv", CLASSES)
    assert ids == ["s0", "s1", "s2", "s3"] and y.tolist() == [0, 2, 1, 2]
    np.testing.assert_allclose(read, probs, atol=5e-7)


def test_predictions_per_run_then_mean(tmp_path: Path) -> None:
    probs = np.random.default_rng(1).dirichlet([1, 1, 1], size=(2, 3))
    write_predictions(tmp_path / "p.csv", _bags([0, None, 1]), probs, ["seed0", "seed1"], CLASSES)
    with (tmp_path / "p.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["run"] for r in rows] == ["seed0"] * 3 + ["seed1"] * 3 + ["mean"] * 3
    assert [r["label"] for r in rows[:3]] == ["a", "", "b"]
    mean = probs.mean(axis=0)
    for row, expected in zip(rows[6:], mean, strict=True):
        assert [float(row[f"prob_{c}"]) for c in CLASSES] == pytest.approx(expected, abs=5e-7)
        assert row["predicted"] == CLASSES[int(np.argmax(expected))]


def test_run_metrics_written_as_read(tmp_path: Path) -> None:
    record = {
        "model": "abmil",
        "variant": "abmil",
        "seed": 0,
        "device": "cpu",
        "parameters": 10,
        "runtime_per_epoch_s": 1.5,
        "peak_memory_mb": None,
        "peak_memory_kind": "peak RSS (CPU)",
        "encoder_weights": "random",
        "slides": {"train": 3},
    }
    assert set(REQUIRED_KEYS) <= set(record)
    write_run_metrics(tmp_path / "metrics.json", record)
    assert read_run_metrics(tmp_path / "metrics.json") == record
    with pytest.raises(ValueError, match="missing keys \\['seed'\\]"):
        write_run_metrics(tmp_path / "bad.json", {k: v for k, v in record.items() if k != "seed"})
    assert not (tmp_path / "bad.json").exists()
    (tmp_path / "bad.json").write_text('{"seed": 0}')
    with pytest.raises(SpanError, match="missing keys"):
        read_run_metrics(tmp_path / "bad.json")
