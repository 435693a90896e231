"""Significance tests against the reference model: paired t-test over seeds, DeLong for AUCs.

Both return a p-value or None with a one-line reason, never an exception for degenerate data.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import stats
from scipy.stats import rankdata

# Differences closer than this (relative to the values) count as equal: k/N accuracies
# subtracted in floating point differ by ~1e-16, which must not read as a huge t statistic.
_EQUAL_TOL = 1e-12


def paired_ttest(a: Sequence[float], b: Sequence[float]) -> tuple[float | None, str | None]:
    """Two-sided scipy.stats.ttest_rel over seed-paired values; (None, reason) when n/a.

    Pairs with a non-finite value are dropped (noted in the reason). All differences 0 -> p = 1.0
    ("identical"); constant non-zero differences -> None ("zero variance of the differences").
    """
    x = np.asarray(a, dtype=float)
    y = np.asarray(b, dtype=float)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"paired samples must be 1-D and equally long, got {x.shape}, {y.shape}")
    keep = np.isfinite(x) & np.isfinite(y)
    dropped = int(x.size - keep.sum())
    x, y = x[keep], y[keep]
    dropped_note = f" ({dropped} pairs with undefined values dropped)" if dropped else ""
    if x.size < 2:
        return None, f"fewer than 2 paired seeds ({x.size}){dropped_note}"
    d = x - y
    tol = _EQUAL_TOL * max(1.0, float(np.max(np.abs(np.concatenate([x, y])))))
    if np.all(np.abs(d) <= tol):
        return 1.0, f"identical values in all {x.size} paired seeds{dropped_note}"
    if np.ptp(d) <= tol:
        return None, f"zero variance of the paired differences (all {d[0]:+.4g}){dropped_note}"
    p = float(stats.ttest_rel(x, y).pvalue)
    return p, (dropped_note.strip(" ()") if dropped else None)


def _structural_components(
    positive: np.ndarray, scores: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Midrank (Sun & Xu 2014) AUCs [K] and DeLong components V10 [K, m], V01 [K, n]."""
    pos = scores[:, positive]
    neg = scores[:, ~positive]
    m, n = pos.shape[1], neg.shape[1]
    tz = rankdata(np.concatenate([pos, neg], axis=1), axis=1)
    tx = rankdata(pos, axis=1)
    ty = rankdata(neg, axis=1)
    aucs = (tz[:, :m].sum(axis=1) - m * (m + 1) / 2) / (m * n)
    v10 = (tz[:, :m] - tx) / n  # per positive: fraction of negatives it outscores
    v01 = 1.0 - (tz[:, m:] - ty) / m  # per negative: fraction of positives that outscore it
    return aucs, v10, v01


def delong_test(
    y_true: Sequence[int], scores_a: Sequence[float], scores_b: Sequence[float]
) -> tuple[float | None, float, float, str | None]:
    """DeLong et al. (1988) test of two correlated AUCs on the same slides: (p, auc_a, auc_b, why).

    Two-sided normal p-value. A missing class or fewer than 2 slides per class -> p None;
    zero variance with equal AUCs (e.g. identical scores) -> p = 1.0; with unequal AUCs -> None.
    """
    y = np.asarray(y_true)
    sa = np.asarray(scores_a, dtype=float)
    sb = np.asarray(scores_b, dtype=float)
    if not (y.ndim == sa.ndim == sb.ndim == 1 and y.size == sa.size == sb.size):
        raise ValueError("y_true, scores_a and scores_b must be 1-D and equally long")
    if not np.all(np.isin(y, [0, 1])):
        raise ValueError("y_true must be binary (0/1)")
    if not (np.all(np.isfinite(sa)) and np.all(np.isfinite(sb))):
        raise ValueError("scores hold NaN or infinite values")
    positive = y.astype(bool)
    m = int(positive.sum())
    n = y.size - m
    nan = float("nan")
    if m == 0 or n == 0:
        return None, nan, nan, f"only one class present ({m} positive, {n} negative slides)"
    aucs, v10, v01 = _structural_components(positive, np.stack([sa, sb]))
    auc_a, auc_b = float(aucs[0]), float(aucs[1])
    if m < 2 or n < 2:
        return (
            None,
            auc_a,
            auc_b,
            f"DeLong needs >= 2 slides per class ({m} positive, {n} negative)",
        )
    cov = np.cov(v10) / m + np.cov(v01) / n
    var = float(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    diff = auc_a - auc_b
    if var <= 1e-14:
        if abs(diff) <= _EQUAL_TOL:
            return 1.0, auc_a, auc_b, "equal AUCs with zero variance of their difference"
        return None, auc_a, auc_b, "zero variance of the AUC difference with unequal AUCs"
    z = diff / np.sqrt(var)
    return float(2 * stats.norm.sf(abs(z))), auc_a, auc_b, None
