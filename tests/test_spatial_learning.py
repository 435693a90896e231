"""A seeded, small version of the spatial benchmark (benchmarks/bench_spatial.py): on a cohort
whose label only the arrangement of a rare patch type decides, SPAN learns the task and ABMIL
cannot."""

from __future__ import annotations

import pytest
from sklearn.metrics import roc_auc_score

from span.data.samplesheet import load_sample_sheet
from span.data.splits import make_splits, write_splits
from span.outputs import TEST_PREDICTIONS_CSV
from span.run_files import read_test_predictions
from span.synthetic.feature_cohort import CohortSpec, write_cohort
from span.training.run import TrainingJob, run_training
from span.training.trainer import TrainConfig


def test_auc(run, classes) -> float:
    """Test AUC of the last class, from the run's test_predictions.csv."""
    _, y, probs = read_test_predictions(run / TEST_PREDICTIONS_CSV, classes)
    return float(roc_auc_score(y == len(classes) - 1, probs[:, -1]))


test_auc.__test__ = False  # a helper, not a test


@pytest.mark.slow
def test_span_learns_arrangement_that_abmil_cannot(tmp_path):
    spec = CohortSpec("clumped", slides=72, feature_dim=64, seed=5)  # types near certain
    sheet = write_cohort(spec, tmp_path)
    rows, _ = make_splits(load_sample_sheet(sheet, spec.classes), list(spec.classes), seed=42)
    write_splits(rows, tmp_path / "splits.tsv")
    config = TrainConfig(epochs=20, patience=20, seed=0)  # the defaults otherwise
    splits, classes = tmp_path / "splits.tsv", list(spec.classes)
    auc = {}
    for model, hparams in (("span", {"embed_dim": 32, "heads": 4}), ("abmil", {})):
        out = tmp_path / model
        features = tmp_path / "features"
        run_training(TrainingJob(splits, features, classes, model, out, config, hparams))
        auc[model] = test_auc(out, classes)
    assert auc["span"] >= 0.85, auc
    assert auc["abmil"] <= 0.75, auc
    assert auc["span"] - auc["abmil"] >= 0.2, auc
