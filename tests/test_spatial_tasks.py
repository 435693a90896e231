"""The spatial tasks' layouts and cohorts: only the arrangement tells the classes apart."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from scipy.ndimage import label as connected_components
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from span.features.feature_file import read_feature_file
from span.synthetic import TASK_NAMES
from span.synthetic.feature_cohort import (
    CERTAIN_SEPARATION,
    CohortSpec,
    FeatureModel,
    write_cohort,
)
from span.synthetic.layouts import BACKGROUND, OTHER, RARE, TASKS, draw_layout


def dense(layout) -> np.ndarray:
    """The layout as a (rows, cols) array of types, -1 outside the tissue."""
    g = layout.grid - layout.grid.min(0)
    out = np.full((g[:, 1].max() + 3, g[:, 0].max() + 3), -1)
    out[g[:, 1] + 1, g[:, 0] + 1] = layout.types
    return out


def chebyshev_gap(types: np.ndarray, a: int, b: int) -> int:
    """Smallest Chebyshev distance between a cell of type a and one of type b."""
    pa, pb = np.argwhere(types == a), np.argwhere(types == b)
    return int(np.abs(pa[:, None, :] - pb[None, :, :]).max(-1).min())


@pytest.fixture(scope="module")
def layouts():
    rng = np.random.default_rng(7)
    return {
        task: {label: [draw_layout(task, label, rng) for _ in range(30)] for label in (0, 1)}
        for task in TASK_NAMES
    }


def test_task_names_list_the_tasks():
    assert tuple(TASKS) == TASK_NAMES


@pytest.mark.parametrize("task", TASK_NAMES)
def test_both_classes_share_size_and_type_shares(layouts, task):
    """The i.i.d. view (how many patches, which share of each type) is the same in both
    classes: equal within sampling error over 30 slides each."""
    stats = {}
    for label, slides in layouts[task].items():
        n = np.array([len(s.types) for s in slides], float)
        shares = np.array([np.bincount(s.types, minlength=3) / len(s.types) for s in slides])
        stats[label] = (n, shares)
        assert all(s.label == label for s in slides)
        assert all(
            s.grid.min() >= 0 and len(np.unique(s.grid, axis=0)) == len(s.grid) for s in slides
        )
    (n0, s0), (n1, s1) = stats[0], stats[1]
    assert 400 * 0.8 <= n0.mean() <= 1200 and 400 * 0.8 <= n1.mean() <= 1200
    assert abs(n0.mean() - n1.mean()) < 3 * np.sqrt((n0.var() + n1.var()) / 30) + 1
    for t in (RARE, OTHER):
        spread = np.sqrt((s0[:, t].var() + s1[:, t].var()) / 30)
        assert abs(s0[:, t].mean() - s1[:, t].mean()) <= 3 * spread + 1e-9, TYPE_ERROR.format(t)


TYPE_ERROR = "the share of type {} differs between the classes"


def test_clumped_has_clumps_and_scattered_has_none(layouts):
    for label, slides in layouts["clumped"].items():
        for s in slides:
            parts, count = connected_components(dense(s) == RARE)
            largest = np.bincount(parts.ravel())[1:].max()
            if label == 1:
                assert count <= 3 and largest >= (s.types == RARE).sum() / 3 - 1
            else:
                assert largest <= 6  # random scatter at <= 8%: no clump


def test_interface_touching_or_two_cells_apart(layouts):
    for label, slides in layouts["interface"].items():
        for s in slides:
            gap = chebyshev_gap(dense(s), RARE, OTHER)
            assert gap == 1 if label == 1 else gap >= 3


def test_distance_near_or_across_the_ring(layouts):
    for label, slides in layouts["distance"].items():
        for s in slides:
            gap = chebyshev_gap(dense(s), RARE, OTHER)
            if label == 0:
                assert 6 <= gap <= 12  # beyond one first-stage window, within the pyramid's
            else:
                assert gap >= 13


def test_cohort_files_round_trip_and_repeat(tmp_path):
    spec = CohortSpec("interface", slides=4, feature_dim=32, seed=3)
    sheet = write_cohort(spec, tmp_path / "a")
    rows = list(csv.DictReader(sheet.open(), delimiter="\t"))
    assert [r["label"] for r in rows] == ["apart", "touching", "apart", "touching"]
    types = np.load(tmp_path / "a" / "layouts.npz")
    for row in rows:
        fs = read_feature_file(row["features"], expected_dim=32)
        assert fs.features.dtype == np.float32 and np.isfinite(fs.features).all()
        assert len(fs) == len(types[row["slide_id"]])
        np.testing.assert_array_equal(fs.coords, fs.grid * fs.attrs["patch_size_level0"])
        assert fs.attrs["encoder"] == "synthetic"
    again = write_cohort(spec, tmp_path / "b")
    for row, row_b in zip(rows, csv.DictReader(again.open(), delimiter="\t"), strict=True):
        np.testing.assert_array_equal(
            read_feature_file(row["features"]).features,
            read_feature_file(row_b["features"]).features,
        )


def probe_accuracy(model: FeatureModel, a: int, b: int, slides: int = 600) -> float:
    """Held-out accuracy of a logistic regression telling type a from b, fitted on the patches
    of the first two thirds of `slides` slides (10 patches each, either type), scored on the
    rest: every slide has its own offset, as in a cohort."""
    rng = np.random.default_rng(2)
    types = rng.choice([a, b], size=(slides, 10))
    x = np.concatenate([model.features(t, rng) for t in types])
    y = types.ravel() == a
    cut = len(x) * 2 // 3
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    return float(probe.fit(x[:cut], y[:cut]).score(x[cut:], y[cut:]))


@pytest.mark.parametrize("target", [0.8, 0.9])
def test_patch_accuracy_is_what_a_linear_probe_reaches(target):
    """Every pair of types is told apart with the spec's accuracy by the best rule (computed)
    and, within a few points, by a linear probe fitted on patches of many slides; the rare
    type's mean lies where the certain level puts it, only nearer."""
    spec = CohortSpec("interface", slides=2, feature_dim=64, patch_accuracy=target)
    model = FeatureModel(spec, np.random.default_rng(0))
    for a, b in ((RARE, BACKGROUND), (RARE, OTHER), (OTHER, BACKGROUND)):
        assert model.accuracy(a, b) == pytest.approx(target, abs=1e-9)
    certain_spec = CohortSpec("interface", slides=2, feature_dim=64)
    certain = FeatureModel(certain_spec, np.random.default_rng(0))
    step, certain_step = (m.means[RARE] - m.means[BACKGROUND] for m in (model, certain))
    cosine = step @ certain_step / np.linalg.norm(step) / np.linalg.norm(certain_step)
    assert cosine == pytest.approx(1.0, abs=1e-9)
    assert np.array_equal(model.means[BACKGROUND], certain.means[BACKGROUND])
    assert probe_accuracy(model, RARE, BACKGROUND) == pytest.approx(target, abs=0.03)
    assert probe_accuracy(model, RARE, OTHER) == pytest.approx(target, abs=0.03)


def test_certain_types_keep_the_first_cohorts_means():
    """Certain (the default): type means CERTAIN_SEPARATION x the noise norm apart, as the first
    cohorts had, so that from 256-d up a linear probe tells every patch's type (at 64-d the
    best rule tells rare from background with accuracy 0.997); the noise is full rank."""
    spec = CohortSpec("clumped", slides=2, feature_dim=256)
    assert spec.patch_accuracy is None
    model = FeatureModel(spec, np.random.default_rng(0))
    noise = model.features(np.zeros(4000, np.int8), np.random.default_rng(1))
    noise = noise - noise.mean(0)
    norm = np.sqrt((noise**2).sum(1).mean())
    distance = np.linalg.norm(model.means[RARE] - model.means[BACKGROUND])
    assert distance / norm == pytest.approx(CERTAIN_SEPARATION, rel=0.05)
    assert model.accuracy(RARE, BACKGROUND) > 0.9999
    assert probe_accuracy(model, RARE, BACKGROUND) >= 0.999
    eigenvalues = np.linalg.eigvalsh(np.cov(noise.T))
    assert eigenvalues.min() > 0.002 * eigenvalues.mean()  # every direction varies
    assert eigenvalues.max() > 5 * eigenvalues.mean()  # a few strong directions, like ResNet's


@pytest.mark.parametrize("accuracy", [0.5, 1.0, 1.2])
def test_patch_accuracy_out_of_range_is_refused(accuracy):
    with pytest.raises(ValueError, match=r"between 0\.5 and 1"):
        CohortSpec("clumped", slides=2, patch_accuracy=accuracy)
