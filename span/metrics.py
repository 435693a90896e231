"""Slide-level classification metrics with the reason when one is undefined.

Predictions are the arg-max of the class probabilities. The AUC, one definition for validation
(`span.training.trainer`) and test (the report): with 2 classes the ROC AUC of the last class
(the positive) against the first; with C > 2 the unweighted mean of the C one-vs-rest AUCs, NaN
when a class is absent (a mean over the classes present would compare different class sets
from one set of slides to the next). An undefined metric is NaN and `reasons[name]` says why.

The metrics are computed here with NumPy and tested equal to scikit-learn's: a bootstrap CI
calls them a thousand times, where scikit-learn's input validation took 4 ms a call (30 s of a
demo report), and importing it took 1.6 s of every training job.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

MetricFn = Callable[[np.ndarray, np.ndarray], float]

# At least this fraction of the bootstrap resamples must give a defined metric.
MIN_VALID_FRACTION = 0.5


def check_inputs(y_true: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Validate shapes and values; return (int labels, float probabilities [N, C])."""
    y = np.asarray(y_true)
    p = np.asarray(probs, dtype=float)
    if p.ndim != 2 or p.shape[1] < 2:
        raise ValueError(f"probs must be [N, C] with C >= 2, got shape {p.shape}")
    if y.ndim != 1 or y.shape[0] != p.shape[0]:
        raise ValueError(f"y_true must be [N] with N = {p.shape[0]}, got shape {y.shape}")
    if y.size == 0:
        raise ValueError("no slides to evaluate")
    if not np.issubdtype(y.dtype, np.integer):
        if not np.all(np.equal(np.mod(y, 1), 0)):
            raise ValueError("y_true must hold integer class indices")
        y = y.astype(int)
    if y.min() < 0 or y.max() >= p.shape[1]:
        raise ValueError(f"y_true holds class indices outside 0..{p.shape[1] - 1}")
    if not np.all(np.isfinite(p)):
        raise ValueError("probs holds NaN or infinite values")
    return y.astype(int), p


def binary_auc(positive: np.ndarray, scores: np.ndarray) -> tuple[float, str | None]:
    """ROC AUC for a boolean `positive` mask; NaN and the reason when a side is empty."""
    positive = np.asarray(positive, dtype=bool)
    if not positive.any():
        return float("nan"), "no positive slides"
    if positive.all():
        return float("nan"), "no negative slides"
    ranks = average_ranks(np.asarray(scores, dtype=float))
    n_pos = int(positive.sum())
    n_neg = positive.size - n_pos
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)), None


def average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks, ties sharing their mean rank: the Mann-Whitney form of the ROC AUC,
    which counts a tied positive-negative pair as half, as the ROC curve's trapezoids do."""
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    return ((ends - counts + 1 + ends) / 2)[inverse]


def _confusion(y_true: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """C x C counts, rows the true class, columns the arg-max class."""
    n_classes = probs.shape[1]
    cells = np.asarray(y_true) * n_classes + np.argmax(probs, axis=1)
    return np.bincount(cells, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def accuracy(y_true: np.ndarray, probs: np.ndarray) -> float:
    """Fraction of slides whose arg-max class is the true class."""
    return float(np.mean(np.argmax(probs, axis=1) == np.asarray(y_true)))


def balanced_accuracy(y_true: np.ndarray, probs: np.ndarray) -> float:
    """Mean recall over the classes present in y_true (bootstrap resamples often lack one)."""
    confusion = _confusion(y_true, probs)
    support = confusion.sum(axis=1)
    present = support > 0
    return float(np.mean(np.diag(confusion)[present] / support[present]))


def macro_f1(y_true: np.ndarray, probs: np.ndarray) -> float:
    """Unweighted mean F1 over all C classes; a class never true nor predicted scores 0."""
    confusion = _confusion(y_true, probs)
    hits = np.diag(confusion)
    denominator = confusion.sum(axis=0) + confusion.sum(axis=1)  # 2 TP + FP + FN
    f1 = np.divide(2 * hits, denominator, out=np.zeros(len(hits)), where=denominator > 0)
    return float(np.mean(f1))


def class_auc(k: int) -> MetricFn:
    """One-vs-rest AUC of class k (NaN when undefined)."""

    def _auc(y_true: np.ndarray, probs: np.ndarray) -> float:
        return binary_auc(y_true == k, probs[:, k])[0]

    return _auc


def auc_detail(y_true: np.ndarray, probs: np.ndarray) -> tuple[float, str | None]:
    """The AUC (see the module docstring) and, when it is NaN, why."""
    n_classes = probs.shape[1]
    if n_classes == 2:
        value, why = binary_auc(y_true == 1, probs[:, 1])
        absent = 1 if why == "no positive slides" else 0
        return value, why and f"AUC undefined: class {absent} absent"
    values = [class_auc(k)(y_true, probs) for k in range(n_classes)]
    undefined = [k for k, v in enumerate(values) if np.isnan(v)]
    if undefined:
        why = f"macro AUC undefined: one-vs-rest AUC undefined for classes {undefined}"
        return float("nan"), why
    return float(np.mean(values)), None


def auc(y_true: np.ndarray, probs: np.ndarray) -> float:
    """The AUC of validation and test (see the module docstring); NaN when undefined."""
    return auc_detail(y_true, probs)[0]


def metric_function(metric: str | MetricFn) -> MetricFn:
    """Resolve a metric name (accuracy, balanced_accuracy, macro_f1, auc, auc_<k>) or callable."""
    if callable(metric):
        return metric
    named: dict[str, MetricFn] = {
        "accuracy": accuracy,
        "balanced_accuracy": balanced_accuracy,
        "macro_f1": macro_f1,
        "auc": auc,
    }
    if metric in named:
        return named[metric]
    if metric.startswith("auc_") and metric[4:].isdigit():
        return class_auc(int(metric[4:]))
    raise ValueError(f"unknown metric {metric!r}; use {sorted(named)} or auc_<class index>")


def classification_metrics(y_true: np.ndarray, probs: np.ndarray) -> dict:
    """accuracy, balanced_accuracy, macro_f1, auc, per-class auc_<k>; NaNs explained in reasons."""
    y, p = check_inputs(y_true, probs)
    n_classes = p.shape[1]
    reasons: dict[str, str] = {}
    out: dict = {
        "n_slides": int(y.size),
        "accuracy": accuracy(y, p),
        "balanced_accuracy": balanced_accuracy(y, p),
        "macro_f1": macro_f1(y, p),
    }
    absent = [k for k in range(n_classes) if not np.any(y == k)]
    if absent:
        reasons["balanced_accuracy"] = f"averaged over the classes present (absent: {absent})"
    per_class = {}
    for k in range(n_classes):
        per_class[f"auc_{k}"], why = binary_auc(y == k, p[:, k])
        if why is not None:
            reasons[f"auc_{k}"] = f"class {k} one-vs-rest AUC undefined: {why}"
    out["auc"], why = auc_detail(y, p)
    if why:
        reasons["auc"] = why
    out.update(per_class)
    out["reasons"] = reasons
    return out


def bootstrap_distribution(
    y_true: np.ndarray, probs: np.ndarray, metric: str | MetricFn, n: int = 1000, seed: int = 0
) -> np.ndarray:
    """Metric values on `n` resamples of the slides with replacement (NaN where undefined)."""
    y, p = check_inputs(y_true, probs)
    fn = metric_function(metric)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, y.size, size=(n, y.size))
    return np.array([fn(y[i], p[i]) for i in idx], dtype=float)


def bootstrap_ci(
    y_true: np.ndarray,
    probs: np.ndarray,
    metric: str | MetricFn,
    n: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> tuple[float, float, int, str | None]:
    """Percentile bootstrap CI as (low, high, valid resamples, reason); NaNs + reason if n/a."""
    if n < 1 or not 0 < alpha < 1:
        raise ValueError("need n >= 1 and 0 < alpha < 1")
    values = bootstrap_distribution(y_true, probs, metric, n=n, seed=seed)
    valid = values[np.isfinite(values)]
    if valid.size < max(2, MIN_VALID_FRACTION * n):
        reason = (
            f"only {valid.size} of {n} bootstrap resamples had a defined metric "
            f"(need {MIN_VALID_FRACTION:.0%})"
        )
        return float("nan"), float("nan"), int(valid.size), reason
    low, high = np.quantile(valid, [alpha / 2, 1 - alpha / 2])
    return float(low), float(high), int(valid.size), None
