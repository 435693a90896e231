"""Slide-level metrics against scikit-learn, undefined AUCs, bootstrap CIs."""

from __future__ import annotations

import math
import warnings
from fractions import Fraction

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score, roc_auc_score

from span.metrics import (
    auc,
    bootstrap_ci,
    bootstrap_distribution,
    classification_metrics,
)


def _data(n: int, c: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, c, n)
    logits = rng.normal(size=(n, c)) + 1.5 * np.eye(c)[y]
    logits[::7] = np.round(logits[::7])  # some ties
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return y, probs


@pytest.mark.parametrize(("c", "seed"), [(2, 0), (2, 1), (3, 2), (4, 3)])
def test_metrics_equal_sklearn(c: int, seed: int) -> None:
    y, p = _data(80, c, seed)
    m = classification_metrics(y, p)
    pred = p.argmax(axis=1)
    assert m["accuracy"] == pytest.approx(accuracy_score(y, pred), abs=1e-12)
    assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, pred), abs=1e-12)
    f1 = f1_score(y, pred, labels=list(range(c)), average="macro", zero_division=0)
    assert m["macro_f1"] == pytest.approx(f1, abs=1e-12)
    if c == 2:
        assert m["auc"] == pytest.approx(roc_auc_score(y, p[:, 1]), abs=1e-12)
    else:
        assert m["auc"] == pytest.approx(
            roc_auc_score(y, p, multi_class="ovr", average="macro"), abs=1e-12
        )
    for k in range(c):
        assert m[f"auc_{k}"] == pytest.approx(roc_auc_score(y == k, p[:, k]), abs=1e-12)
    assert m["reasons"] == {}


@pytest.mark.parametrize("c", [2, 3])
def test_metrics_equal_sklearn_on_small_resamples(c: int) -> None:
    """Resamples of 6 slides: absent classes, classes only predicted, heavy score ties."""
    y, p = _data(30, c, 11)
    p = np.round(p, 1)  # many tied scores
    rng = np.random.default_rng(0)
    for idx in rng.integers(0, len(y), size=(300, 6)):
        yi, pi = y[idx], p[idx]
        pred = pi.argmax(axis=1)
        m = classification_metrics(yi, pi)
        assert m["accuracy"] == pytest.approx(accuracy_score(yi, pred), abs=1e-12)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "y_pred contains classes not in y_true"
            expected = balanced_accuracy_score(yi, pred)
        assert m["balanced_accuracy"] == pytest.approx(expected, abs=1e-12)
        f1 = f1_score(yi, pred, labels=list(range(c)), average="macro", zero_division=0)
        assert m["macro_f1"] == pytest.approx(f1, abs=1e-12)
        for k in range(c):
            if 0 < np.sum(yi == k) < len(yi):
                expected = roc_auc_score(yi == k, pi[:, k])
                assert m[f"auc_{k}"] == pytest.approx(expected, abs=1e-12)
            else:
                assert math.isnan(m[f"auc_{k}"])


def test_auc_is_the_exact_pair_fraction_correctly_rounded() -> None:
    """Equal AUCs are equal to the last bit, so that early stopping's tie-break on validation
    loss decides between epochs, not rounding (scikit-learn's trapezoids gave one epoch
    0.4444444444444445 and the next 0.4444444444444444 on the demo)."""
    rng = np.random.default_rng(3)
    for _ in range(200):
        n = int(rng.integers(2, 14))
        y = rng.integers(0, 2, n)
        if y.min() == y.max():
            continue
        scores = rng.integers(0, 4, n) / 4  # ties
        pos, neg = scores[y == 1], scores[y == 0]
        wins = sum(2 * (a > b) + (a == b) for a in pos for b in neg)  # half-pairs
        exact = float(Fraction(int(wins), 2 * len(pos) * len(neg)))
        assert auc(y, np.stack([1 - scores, scores], axis=1)) == exact


def test_absent_class_gives_nan_with_reason() -> None:
    y, p = _data(40, 3, 5)
    y[y == 1] = 0  # class 1 absent
    m = classification_metrics(y, p)
    assert math.isnan(m["auc_1"]) and "no positive slides" in m["reasons"]["auc_1"]
    assert math.isnan(m["auc"]) and "[1]" in m["reasons"]["auc"]
    assert math.isfinite(m["auc_0"]) and math.isfinite(m["accuracy"])
    assert "balanced_accuracy" in m["reasons"]

    yb = np.zeros(10, dtype=int)
    pb = np.tile([0.6, 0.4], (10, 1))
    mb = classification_metrics(yb, pb)
    assert math.isnan(mb["auc"]) and "auc" in mb["reasons"]
    assert mb["accuracy"] == 1.0


def test_bad_inputs_raise() -> None:
    with pytest.raises(ValueError):
        classification_metrics(np.array([0, 3]), np.full((2, 2), 0.5))
    with pytest.raises(ValueError):
        classification_metrics(np.array([0, 1]), np.array([[0.5, np.nan], [0.5, 0.5]]))


@pytest.mark.parametrize("metric", ["accuracy", "auc", "balanced_accuracy", "macro_f1"])
def test_bootstrap_ci_contains_estimate_and_is_deterministic(metric: str) -> None:
    y, p = _data(60, 2, 7)
    point = classification_metrics(y, p)[metric]
    low, high, valid, reason = bootstrap_ci(y, p, metric, n=300, seed=3)
    assert low <= point <= high and low < high and valid == 300 and reason is None
    assert bootstrap_ci(y, p, metric, n=300, seed=3)[:2] == (low, high)
    other = bootstrap_distribution(y, p, metric, n=300, seed=4)
    assert not np.array_equal(other, bootstrap_distribution(y, p, metric, n=300, seed=3))


def test_bootstrap_ci_na_when_too_few_valid() -> None:
    y, p = np.zeros(30, dtype=int), np.tile([0.5, 0.5], (30, 1))
    low, high, valid, reason = bootstrap_ci(y, p, "auc", n=200, seed=0)
    assert math.isnan(low) and math.isnan(high) and valid == 0
    assert "0 of 200 bootstrap resamples" in reason

    # A metric undefined on the ~64% of resamples that contain slide 0.
    y = np.arange(30) % 2
    p = np.stack([np.linspace(0.01, 0.99, 30), 1 - np.linspace(0.01, 0.99, 30)], axis=1)
    low, high, valid, reason = bootstrap_ci(
        y, p, lambda yy, pp: float("nan") if np.any(pp[:, 0] == p[0, 0]) else 1.0, n=200
    )
    assert math.isnan(low) and 0 < valid < 100 and reason
    y, p = np.array([1] + [0] * 29), np.tile([0.5, 0.5], (30, 1))  # ~63% of resamples valid
    low, high, valid, reason = bootstrap_ci(y, p, "auc", n=200, seed=0)
    assert (low, high) == (0.5, 0.5) and 100 <= valid < 200 and reason is None


@pytest.mark.parametrize(("c", "absent"), [(2, None), (3, None), (3, 1), (2, 0)])
def test_one_auc_for_validation_and_test(c: int, absent: int | None) -> None:
    """The trainer's validation AUC is the report's: NaN when a class is absent."""
    from span.training import trainer

    y, p = _data(40, c, 9)
    if absent is not None:
        y[y == absent] = (absent + 1) % c
    assert trainer.auc is auc
    expected = classification_metrics(y, p)["auc"]
    assert auc(y, p) == pytest.approx(expected, nan_ok=True)
    assert math.isnan(expected) == (absent is not None)
