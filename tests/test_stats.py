"""Paired t-test over seeds and the DeLong test against independent implementations."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import roc_auc_score

from span.evaluation.stats import delong_test, paired_ttest


def test_paired_ttest_equals_scipy() -> None:
    a = [0.89, 0.91, 0.87, 0.90, 0.88]
    b = [0.86, 0.90, 0.84, 0.88, 0.89]
    p, reason = paired_ttest(a, b)
    assert reason is None
    assert p == pytest.approx(stats.ttest_rel(a, b).pvalue, rel=1e-12)


def test_paired_ttest_na_cases() -> None:
    assert paired_ttest([0.9], [0.8])[0] is None
    p, reason = paired_ttest([0.9, float("nan")], [0.8, 0.7])
    assert p is None and "fewer than 2" in reason and "dropped" in reason
    p, reason = paired_ttest([0.9, 0.8, 0.7], [0.9, 0.8, 0.7])
    assert p == 1.0 and "identical" in reason
    # Constant non-zero differences, with floating-point noise in the subtraction.
    p, reason = paired_ttest([0.9, 0.8, 0.7], [0.8, 0.7, 0.6])
    assert p is None and "zero variance" in reason
    with pytest.raises(ValueError):
        paired_ttest([0.1, 0.2], [0.1])


def _delong_reference(y: np.ndarray, a: np.ndarray, b: np.ndarray) -> tuple[float, float, float]:
    """DeLong (1988) with O(n^2) Mann-Whitney structural components."""
    pos, neg = y == 1, y == 0
    m, n = pos.sum(), neg.sum()

    def components(s: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
        x, z = s[pos][:, None], s[neg][None, :]
        psi = (x > z) + 0.5 * (x == z)
        return psi.mean(), psi.mean(axis=1), psi.mean(axis=0)

    auc_a, v10a, v01a = components(a)
    auc_b, v10b, v01b = components(b)
    s10 = np.cov(np.stack([v10a, v10b]))
    s01 = np.cov(np.stack([v01a, v01b]))
    var = (s10[0, 0] + s10[1, 1] - 2 * s10[0, 1]) / m + (s01[0, 0] + s01[1, 1] - 2 * s01[0, 1]) / n
    z = (auc_a - auc_b) / np.sqrt(var)
    return 2 * stats.norm.sf(abs(z)), auc_a, auc_b


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_delong_equals_quadratic_reference(seed: int) -> None:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 70)
    a = y * 0.8 + rng.normal(size=70)
    b = y * 0.5 + 0.5 * a + rng.normal(size=70)
    if seed % 2:
        a, b = np.round(a, 1), np.round(b, 1)  # ties
    p, auc_a, auc_b, reason = delong_test(y, a, b)
    p_ref, auc_a_ref, auc_b_ref = _delong_reference(y, a, b)
    assert reason is None
    assert p == pytest.approx(p_ref, abs=1e-10)
    assert auc_a == pytest.approx(auc_a_ref, abs=1e-12)
    assert auc_b == pytest.approx(auc_b_ref, abs=1e-12)
    assert auc_a == pytest.approx(roc_auc_score(y, a), abs=1e-12)
    assert auc_b == pytest.approx(roc_auc_score(y, b), abs=1e-12)


def test_delong_degenerate_cases() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 30)
    s = rng.normal(size=30)
    p, auc_a, auc_b, reason = delong_test(y, s, s)
    assert p == 1.0 and auc_a == auc_b and "equal AUCs" in reason
    p, auc_a, _, reason = delong_test(np.ones(30, dtype=int), s, s + 1)
    assert p is None and np.isnan(auc_a) and "one class" in reason
    p, *_, reason = delong_test(np.array([1, 0, 0, 0]), s[:4], s[4:8])
    assert p is None and ">= 2 slides per class" in reason
    p, auc_a, auc_b, reason = delong_test(y, y.astype(float), np.zeros(30))  # perfect vs constant
    assert p is None and (auc_a, auc_b) == (1.0, 0.5) and "zero variance" in reason
