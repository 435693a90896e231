"""Feeding slides to training and prediction: the same tensors as reading each file, read
ahead in order, kept in memory up to the budget, errors raised where they belong, and a
training step that never asks the device for a number."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from span.errors import SpanError
from span.features.feature_file import read_feature_file
from span.models import build_model
from span.training.bags import Bag, FeatureStats
from span.training.feeder import BagFeeder
from span.training.trainer import TrainConfig, train_model
from tests.test_training import DIM, write_cohort

CPU = torch.device("cpu")


@pytest.fixture
def cohort(tmp_path):
    _, features = write_cohort(tmp_path, 9)
    return [Bag(p.stem, p, i % 2) for i, p in enumerate(sorted(features.glob("*.h5")))]


def test_yields_each_slide_as_read_from_its_file_in_the_order_asked(cohort):
    stats = FeatureStats(torch.full((DIM,), 0.5), torch.full((DIM,), 2.0))
    feeder = BagFeeder(DIM, CPU, stats)
    order = [4, 0, 8, 0]
    seen = list(feeder(cohort, order))
    assert [position for position, *_ in seen] == order
    for position, features, grid in seen:
        fs = read_feature_file(cohort[position].features)
        torch.testing.assert_close(features, (torch.from_numpy(fs.features) - 0.5) / 2.0)
        assert grid.dtype == torch.int64 and np.array_equal(grid.numpy(), fs.grid)
    assert feeder.wait_seconds >= 0


def test_slides_stay_in_memory_up_to_the_budget(cohort):
    uncached = BagFeeder(DIM, CPU)
    for _ in range(2):
        list(uncached(cohort))
    assert uncached.reads == 2 * len(cohort) and uncached.cached_bytes == 0

    cached = BagFeeder(DIM, CPU, cache_mb=64)
    first = [f for _, f, _ in cached(cohort)]
    second = [f for _, f, _ in cached(cohort)]
    assert cached.reads == len(cohort) and cached.cached_bytes > 0
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))

    one_slide = first[0].nbytes + len(first[0]) * 2 * 8
    partial = BagFeeder(DIM, CPU, cache_mb=1.5 * one_slide / 2**20)
    for _ in range(2):
        list(partial(cohort))
    assert len(partial._cache) == 1 and partial.reads == 2 * len(cohort) - 1


def test_transform_runs_on_the_host_in_order(cohort):
    calls = []

    def transform(features, grid):
        calls.append(len(features))
        return features[:1], grid[:1] + 100

    out = list(BagFeeder(DIM, CPU, cache_mb=64)(cohort, [2, 1], transform))
    assert [len(f) for _, f, _ in out] == [1, 1] and (out[0][2] >= 100).all()
    assert calls == [len(read_feature_file(cohort[i].features)) for i in (2, 1)]


def test_a_damaged_file_raises_its_error_in_the_loop(cohort):
    cohort[1].features.write_bytes(b"not hdf5")
    feeder = BagFeeder(DIM, CPU)
    got = []
    with pytest.raises(SpanError, match=cohort[1].features.name):
        for position, *_ in feeder(cohort):
            got.append(position)
    assert got == [0]


def test_leaving_the_loop_early_stops_the_reader(cohort):
    import threading

    feeder = BagFeeder(DIM, CPU)
    for position, *_ in feeder(cohort):
        if position == 1:
            break
    assert not any(t.name == "bag-feeder" for t in threading.enumerate())


def test_a_training_step_never_reads_a_number_back_from_the_device(cohort, tmp_path, monkeypatch):
    """Tensor.item() (a host-device synchronisation on a GPU) once per epoch for the training
    loss and once per validation, however many slides: never per step."""
    calls = []
    item = torch.Tensor.item
    monkeypatch.setattr(torch.Tensor, "item", lambda self: calls.append(1) or item(self))
    model = build_model("abmil", DIM, 2)
    feeder = BagFeeder(DIM, CPU, cache_mb=64)
    config = TrainConfig(epochs=2, patience=5)
    train_model(model, cohort[:7], cohort[7:], 2, config, tmp_path, feeder)
    assert len(calls) <= 2 * 2 + 2  # per epoch: train loss, val loss (+ slack)
    history = (tmp_path / "history.csv").read_text().splitlines()
    header = history[0].split(",")
    row = dict(zip(header, map(float, history[1].split(",")), strict=True))
    total = row["seconds_train"] + row["seconds_val"]
    assert row["seconds_compute"] + row["seconds_data_wait"] == pytest.approx(total)
