"""The statistics of an experiment: one summary row per variant and one row per variant and
seed, the rows of results.csv and results_per_seed.csv and of the report's tables.

Choices: "mean ± std" is over seeds with the sample std (ddof = 1). Bootstrap CIs and DeLong
tests use the seed-averaged probabilities of each slide. The main p-value is the paired t-test
over seeds on accuracy (as in the paper); the t-test on AUC and DeLong are in the CSV. For
C > 2, DeLong is computed per class (one-vs-rest, `p_delong_<class>`) and `p_delong` is n/a.
Memory is the maximum over seeds of each run's peak; runtime the mean over seeds. Every n/a
has its reason in the row's `notes` (and, by column, in the private `_notes`).

When every seed has its own test set (splits.protocol per_seed) there are no seed-averaged
predictions: their CIs and DeLong are n/a with `PER_SEED_TEST_SETS` as the reason, and DeLong
is computed per seed (each seed's slides are the same for both variants) in the per-seed rows.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from span.evaluation.seed_runs import SeedRun, VariantResult
from span.evaluation.stats import delong_test, paired_ttest
from span.metrics import bootstrap_ci, classification_metrics
from span.run_files import REQUIRED_KEYS

#: Bootstrap CIs: seed of the resampling and 1 - confidence level.
BOOTSTRAP_SEED = 0
ALPHA = 0.05
_NOT_BINARY_DELONG = "DeLong is defined for binary AUCs; see the per-class p_delong_<class> columns"
PER_SEED_TEST_SETS = (
    "each seed has its own test set (splits.protocol per_seed), so no slide has a prediction "
    "from every seed to average and DeLong's test, which compares two models on the same "
    "slides, is per seed (results_per_seed.csv)"
)


def unique_values(values: Iterable) -> list:
    """The distinct values other than None, in order of first appearance."""
    return list(dict.fromkeys(v for v in values if v is not None))


def _nan(value: float | None) -> float:
    return float("nan") if value is None else float(value)


def _mean_std(values: Sequence[float]) -> tuple[float, float, str | None]:
    """Mean over defined values and the sample std; reason when either is n/a."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return float("nan"), float("nan"), "undefined on every seed"
    if v.size == 1:
        note = "std needs >= 2 seeds" if len(values) == 1 else "defined on 1 seed only"
        return float(v[0]), float("nan"), note
    note = None if v.size == len(values) else f"over the {v.size} of {len(values)} defined seeds"
    return float(v.mean()), float(v.std(ddof=1)), note


def _seed_metric_columns(
    res: VariantResult, classes: Sequence[str], row: dict, notes: dict
) -> None:
    """Mean and std over seeds of each test metric."""
    names = ["accuracy", "auc"]
    if len(classes) > 2:
        names += [f"auc_{k}" for k in range(len(classes))]
    for m in [*names, "balanced_accuracy", "macro_f1"]:
        col = f"auc_{classes[int(m[4:])]}" if m.startswith("auc_") else m
        mean, std, why = _mean_std([s[m] for s in res.per_seed])
        row[f"{col}_mean"], row[f"{col}_std"] = mean, std
        seed_reasons = unique_values(s["reasons"].get(m) for s in res.per_seed)
        if seed_reasons:
            notes[col] = "; ".join(seed_reasons)
        elif why:
            notes[col] = why


def _seed_averaged_columns(res: VariantResult, n_bootstrap: int, row: dict, notes: dict) -> None:
    """Accuracy and AUC of the seed-averaged predictions with their bootstrap CIs."""
    if not res.shared_test:
        for m in ("accuracy", "auc"):
            row[f"seed_avg_{m}"] = row[f"{m}_ci_low"] = row[f"{m}_ci_high"] = float("nan")
            notes[f"{m}_ci"] = PER_SEED_TEST_SETS
        return
    avg, y = res.avg_probs, res.runs[0].y
    pooled = classification_metrics(y, avg)
    for m in ("accuracy", "auc"):
        row[f"seed_avg_{m}"] = pooled[m]
        low, high, _, why = bootstrap_ci(y, avg, m, n=n_bootstrap, seed=BOOTSTRAP_SEED, alpha=ALPHA)
        row[f"{m}_ci_low"], row[f"{m}_ci_high"] = low, high
        if why or m in pooled["reasons"]:
            notes[f"{m}_ci"] = pooled["reasons"].get(m) or why


def _test_columns(
    res: VariantResult, ref: VariantResult, classes: Sequence[str], row: dict, notes: dict
) -> None:
    """p-values against the reference: paired t-tests over seeds, DeLong on the averages."""
    n_classes = len(classes)
    if res is ref:
        p_cols = ["p_ttest_accuracy", "p_ttest_auc", "p_delong"]
        if n_classes > 2:
            p_cols += [f"p_delong_{c}" for c in classes]
        row.update(dict.fromkeys(p_cols, float("nan")))
        notes["p-values"] = "reference variant"
        return
    ref_by_seed = {r.seed: s for r, s in zip(ref.runs, ref.per_seed, strict=True)}
    pairs = [
        (s, ref_by_seed[r.seed])
        for r, s in zip(res.runs, res.per_seed, strict=True)
        if r.seed in ref_by_seed
    ]
    unpaired = len(res.runs) - len(pairs)
    for m in ("accuracy", "auc"):
        p, why = paired_ttest([a[m] for a, _ in pairs], [b[m] for _, b in pairs])
        row[f"p_ttest_{m}"] = _nan(p)
        if unpaired:
            why = f"{why}; " if why else ""
            why += f"{unpaired} seeds without a reference seed of the same number"
        if why:
            notes[f"p_ttest_{m}"] = why
    if res.shared_test:
        _delong_columns(res.runs[0].y, res.avg_probs, ref.avg_probs, classes, row, notes)
    else:
        for col in _delong_targets(classes).values():
            row[col] = float("nan")
            notes[col] = PER_SEED_TEST_SETS
    if n_classes > 2:
        row["p_delong"] = float("nan")
        notes["p_delong"] = _NOT_BINARY_DELONG


def _delong_targets(classes: Sequence[str]) -> dict[int, str]:
    """Class index -> DeLong column: the positive class (binary), else each class vs rest."""
    if len(classes) == 2:
        return {1: "p_delong"}
    return {k: f"p_delong_{c}" for k, c in enumerate(classes)}


def _delong_columns(
    y: np.ndarray,
    probs: np.ndarray,
    ref_probs: np.ndarray,
    classes: Sequence[str],
    row: dict,
    notes: dict,
) -> None:
    """DeLong's test of two variants' probabilities of the same slides, per target class."""
    for k, col in _delong_targets(classes).items():
        p, _, _, why = delong_test((y == k).astype(int), probs[:, k], ref_probs[:, k])
        row[col] = _nan(p)
        if why:
            notes[col] = why


def _cost_columns(res: VariantResult, row: dict, notes: dict) -> None:
    """Runtime, parameters, peak memory and where the runs ran, from their metrics.json."""
    infos = [r.info for r in res.runs]
    runtimes = [i["runtime_per_epoch_s"] for i in infos]
    row["runtime_per_epoch_s"], row["runtime_per_epoch_s_std"], why = _mean_std(
        [_nan(t) for t in runtimes]
    )
    if why and all(t is None for t in runtimes):
        notes["runtime"] = "runtime not recorded"
    params = unique_values(i["parameters"] for i in infos)
    row["parameters"] = params[0]
    if len(params) > 1:
        notes["parameters"] = f"differ across seeds {params}; first shown"
    mems = [m for m in (i["peak_memory_mb"] for i in infos) if m is not None and math.isfinite(m)]
    row["peak_memory_mb"] = max(mems) if mems else float("nan")
    if not mems:
        notes["peak_memory"] = "peak memory not recorded"
    kinds = unique_values(i["peak_memory_kind"] for i in infos)
    row["peak_memory_kind"] = " / ".join(kinds)
    if len(kinds) > 1:
        notes["peak_memory_kind"] = "seeds measured different kinds of memory; max shown"
    run_notes = [
        (r.seed, r.info.get("runtime_note")) for r in res.runs if r.info.get("runtime_note")
    ]
    if len({n for _, n in run_notes}) > 1:
        row["runtime_note"] = "; ".join(f"seed {k}: {n}" for k, n in run_notes)
    else:
        row["runtime_note"] = run_notes[0][1] if run_notes else ""
    row["device"] = " / ".join(unique_values(i["device"] for i in infos))
    row["encoder_weights"] = " / ".join(unique_values(i["encoder_weights"] for i in infos))


def summarize(
    results: Mapping[str, VariantResult],
    reference: str,
    classes: Sequence[str],
    n_bootstrap: int = 1000,
) -> list[dict]:
    """One results.csv row per variant, in the given order (see the module docstring)."""
    ref = results[reference]
    rows = []
    for res in results.values():
        notes: dict[str, str] = {}
        row: dict = {
            "variant": res.name,
            "model": ",".join(unique_values(r.info["model"] for r in res.runs)),
            "method": res.display,
            "n_seeds": len(res.runs),
            "seeds": ",".join(str(r.seed) for r in res.runs),
            "n_slides": res.test_slides,
            "is_reference": res is ref,
            "_shared_test": res.shared_test,
        }
        if not res.shared_test:
            sizes = sorted({len(r.y) for r in res.runs})
            notes["n_slides"] = (
                f"distinct test slides over the seeds' own test sets ({sizes[0]}-{sizes[-1]} "
                "per seed)"
            )
        _seed_metric_columns(res, classes, row, notes)
        _seed_averaged_columns(res, n_bootstrap, row, notes)
        _test_columns(res, ref, classes, row, notes)
        _cost_columns(res, row, notes)
        row["notes"] = "; ".join(f"{k}: {v}" for k, v in notes.items())
        row["_notes"] = notes
        rows.append(row)
    return rows


def per_seed_rows(
    results: Mapping[str, VariantResult], reference: str, classes: Sequence[str]
) -> list[dict]:
    """One results_per_seed.csv row per variant and seed: test metrics and run metadata; where
    the seeds' test sets differ, also DeLong's test against the reference's same seed."""
    ref_runs = {r.seed: r for r in results[reference].runs}
    rows = []
    for res in results.values():
        for run, m in zip(res.runs, res.per_seed, strict=True):
            row = {"variant": res.name, "method": res.display, "seed": run.seed}
            row["directory"] = str(run.directory)
            row.update({k: m[k] for k in ("accuracy", "auc", "balanced_accuracy", "macro_f1")})
            row.update({f"auc_{c}": m[f"auc_{k}"] for k, c in enumerate(classes)})
            notes = dict(m["reasons"])
            if not res.shared_test:
                _seed_delong_columns(
                    run, ref_runs.get(run.seed), res.name == reference, classes, row, notes
                )
            row.update({k: run.info[k] for k in REQUIRED_KEYS if k not in ("variant", "seed")})
            row["runtime_note"] = run.info.get("runtime_note") or ""
            row["notes"] = "; ".join(f"{k}: {v}" for k, v in notes.items())
            rows.append(row)
    return rows


def _seed_delong_columns(
    run: SeedRun,
    ref: SeedRun | None,
    is_reference: bool,
    classes: Sequence[str],
    row: dict,
    notes: dict,
) -> None:
    """DeLong's test of one seed's test predictions against the reference's same seed."""
    if is_reference or ref is None:
        row.update(dict.fromkeys(_delong_targets(classes).values(), float("nan")))
        notes["p_delong"] = (
            "reference variant" if is_reference else "no reference seed of this number"
        )
        return
    _delong_columns(run.y, run.probs, ref.probs, classes, row, notes)
