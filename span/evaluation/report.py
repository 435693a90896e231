"""The results report: per-variant metrics over seeds, tests against the reference, ROC curves.

Input, per variant and seed, a directory `<exp>/<variant>/seed<k>/` holding
`test_predictions.csv` (`slide_id`, `label`, `prob_<class>` per class) and `metrics.json`
(model, variant, seed, device, parameters, runtime_per_epoch_s, peak_memory_mb,
peak_memory_kind, encoder_weights, optional runtime_note). Output, in `out_dir`:
`results.csv` (one row per variant), `results_per_seed.csv`, `results.md` (the paper's Table 1,
or Table 2 when C > 2), `roc.png` and `report.md`; every file is written atomically.

Choices: "mean ± std" is over seeds with the sample std (ddof = 1). Bootstrap CIs and DeLong
tests use the seed-averaged probabilities of each slide. The main p-value column is the paired
t-test over seeds on accuracy (as in the paper); the t-test on AUC and DeLong are in the CSV.
For C > 2, DeLong is computed per class (one-vs-rest, `p_delong_<class>`) and `p_delong` is
n/a. Memory is the maximum over seeds of each run's peak; runtime the mean over seeds.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from span.atomic import atomic_output, write_text_atomic
from span.errors import SpanError
from span.evaluation.metrics import binary_auc, bootstrap_ci_detail, classification_metrics
from span.evaluation.stats import delong_test, paired_ttest

PREDICTIONS = "test_predictions.csv"
RUN_METRICS = "metrics.json"
DISPLAY_NAMES = {
    "span": "SPAN",
    "abmil": "ABMIL",
    "clam_sb": "CLAM-SB",
    "clam_mb": "CLAM-MB",
    "dtfd": "DTFD",
    "mhim": "MHIM",
    "transmil": "TransMIL",
}
# metrics.json: key -> accepted types (None = JSON null allowed for measurements not taken).
_RUN_KEYS: dict[str, tuple[type, ...]] = {
    "model": (str,),
    "variant": (str,),
    "seed": (int,),
    "device": (str,),
    "parameters": (int,),
    "runtime_per_epoch_s": (int, float, type(None)),
    "peak_memory_mb": (int, float, type(None)),
    "peak_memory_kind": (str,),
    "encoder_weights": (str,),
}
_PROB_TOL = 1e-3
_NOT_BINARY_DELONG = "DeLong is defined for binary AUCs; see the per-class p_delong_<class> columns"


@dataclass(frozen=True)
class SeedRun:
    """One trained seed: its test predictions (in the reference slide order) and run metadata."""

    directory: Path
    seed: int
    slide_ids: tuple[str, ...]
    y: np.ndarray
    probs: np.ndarray
    info: dict


@dataclass
class VariantResult:
    """All seeds of one variant, their per-seed metrics and the seed-averaged probabilities."""

    name: str
    runs: list[SeedRun]
    per_seed: list[dict] = field(default_factory=list)
    label: str | None = None  # display name from the config, else the paper's for the model

    @property
    def display(self) -> str:
        return self.label or display_name(self.name)

    @property
    def avg_probs(self) -> np.ndarray:
        """Seed-averaged class probabilities [N, C]."""
        return np.mean([r.probs for r in self.runs], axis=0)


def display_name(variant: str) -> str:
    """Paper-style method name for a registered model, else the variant name itself."""
    return DISPLAY_NAMES.get(variant, variant)


def discover_variants(exp_dir: str | Path) -> dict[str, list[Path]]:
    """Find `<exp>/<variant>/seed<k>/` directories: variant -> seed dirs sorted by k."""
    exp_dir = Path(exp_dir)
    found: dict[str, list[Path]] = {}
    for variant in sorted(p for p in exp_dir.iterdir() if p.is_dir()):
        seeds = [p for p in variant.iterdir() if p.is_dir() and re.fullmatch(r"seed\d+", p.name)]
        if seeds:
            found[variant.name] = sorted(seeds, key=lambda p: int(p.name[4:]))
    return found


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def read_predictions(
    path: str | Path, classes: Sequence[str]
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Read and validate a test_predictions.csv: (slide ids, class indices [N], probs [N, C])."""
    path = Path(path)
    fix = "write slide_id, label and prob_<class> per configured class (rerun the training stage)"
    if not path.is_file():
        raise SpanError(path, "prediction file not found", "run the training stage first")
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError) as e:
        raise SpanError(path, f"cannot be read as CSV ({_first_line(e)})", fix) from None
    prob_cols = [f"prob_{c}" for c in classes]
    missing = [c for c in ("slide_id", "label", *prob_cols) if c not in df.columns]
    if missing:
        raise SpanError(path, f"missing columns {missing} (has {list(df.columns)})", fix)
    extra = [c for c in df.columns if c.startswith("prob_") and c not in prob_cols]
    if extra:
        raise SpanError(path, f"probability columns {extra} match no class of {list(classes)}", fix)
    if df.empty:
        raise SpanError(path, "holds no slides", fix)
    ids = df["slide_id"].str.strip()
    if (ids == "").any():
        raise SpanError(path, f"empty slide_id in row {int((ids == '').idxmax()) + 2}", fix)
    dup = ids[ids.duplicated()].unique().tolist()
    if dup:
        raise SpanError(path, f"duplicate slide_id {dup[:3]}", "write one row per slide")
    unlabelled = ids[df["label"].str.strip() == ""].tolist()
    if unlabelled:
        raise SpanError(
            path, f"test slides without a label {unlabelled[:3]}", "label every test slide"
        )
    index = {c: k for k, c in enumerate(classes)}
    bad = df.loc[~df["label"].isin(index), "label"].unique().tolist()
    if bad:
        raise SpanError(path, f"labels {bad[:3]} are not among the classes {list(classes)}", fix)
    probs = df[prob_cols].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=float)
    finite = np.isfinite(probs)
    if not finite.all():
        r, c = np.argwhere(~finite)[0]
        raise SpanError(path, f"row {r + 2} ({ids.iloc[r]}): {prob_cols[c]} is not a number", fix)
    if probs.min() < -1e-6 or probs.max() > 1 + 1e-6:
        raise SpanError(path, "probabilities outside [0, 1] (logits written?)", fix)
    sums = probs.sum(axis=1)
    if np.any(np.abs(sums - 1) > _PROB_TOL):
        r = int(np.argmax(np.abs(sums - 1)))
        raise SpanError(path, f"probabilities of {ids.iloc[r]} sum to {sums[r]:.4f}, not 1", fix)
    y = df["label"].map(index).to_numpy(dtype=int)
    return ids.tolist(), y, probs


def read_run_metrics(path: str | Path) -> dict:
    """Read and validate a run's metrics.json (required keys and their types)."""
    path = Path(path)
    fix = "rerun the training stage for this variant and seed"
    if not path.is_file():
        raise SpanError(path, "run metrics file not found", fix)
    try:
        info = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise SpanError(path, f"not valid JSON ({_first_line(e)})", fix) from None
    if not isinstance(info, dict):
        raise SpanError(path, "is not a JSON object", fix)
    missing = [k for k in _RUN_KEYS if k not in info]
    if missing:
        raise SpanError(path, f"missing keys {missing}", fix)
    for key, types in _RUN_KEYS.items():
        value = info[key]
        if isinstance(value, bool) or not isinstance(value, types):
            raise SpanError(path, f"{key} = {value!r} is not of type {types[0].__name__}", fix)
    if "runtime_note" in info and not isinstance(info["runtime_note"], str | type(None)):
        raise SpanError(path, "runtime_note is not a string", fix)
    return info


def _load_variant(
    name: str, seed_dirs: Sequence[str | Path], classes: Sequence[str]
) -> list[tuple[Path, int, list[str], np.ndarray, np.ndarray, dict]]:
    if not seed_dirs:
        raise SpanError(None, f"variant {name!r} has no seed directories", "train it or drop it")
    loaded, seen = [], {}
    for d in map(Path, seed_dirs):
        info = read_run_metrics(d / RUN_METRICS)
        ids, y, probs = read_predictions(d / PREDICTIONS, classes)
        if info["seed"] in seen:
            raise SpanError(
                d / RUN_METRICS,
                f"seed {info['seed']} of {name!r} also in {seen[info['seed']]}",
                "list each seed directory once",
            )
        seen[info["seed"]] = d
        loaded.append((d, info["seed"], ids, y, probs, info))
    return loaded


def _align(raw: tuple, order: list[str], labels: np.ndarray, ref_file: Path) -> SeedRun:
    """Reorder a run's predictions to the reference slide order; the sets and labels must agree."""
    d, seed, ids, y, probs, info = raw
    path = d / PREDICTIONS
    fix = f"evaluate every variant on the same test slides as {ref_file}"
    if set(ids) != set(order):
        missing = sorted(set(order) - set(ids))
        extra = sorted(set(ids) - set(order))
        why = f"slides differ from {ref_file}: {len(missing)} missing {missing[:3]}, "
        raise SpanError(path, why + f"{len(extra)} extra {extra[:3]}", fix)
    pos = {s: i for i, s in enumerate(ids)}
    perm = np.array([pos[s] for s in order])
    y, probs = y[perm], probs[perm]
    if not np.array_equal(y, labels):
        first = order[int(np.argmax(y != labels))]
        raise SpanError(path, f"label of {first} differs from {ref_file}", fix)
    return SeedRun(d, seed, tuple(order), y, probs, info)


def load_results(
    variants: Mapping[str, Sequence[str | Path]],
    reference: str,
    classes: Sequence[str],
    labels: Mapping[str, str] | None = None,
) -> dict[str, VariantResult]:
    """Load and cross-check every seed of every variant (same slides and labels everywhere);
    `labels` maps variants to display names."""
    if len(classes) < 2:
        raise ValueError("need at least 2 classes")
    if reference not in variants:
        raise SpanError(
            None,
            f"reference variant {reference!r} is not among {list(variants)}",
            "name the SPAN variant as reference",
        )
    raw = {name: _load_variant(name, dirs, classes) for name, dirs in variants.items()}
    ref0 = raw[reference][0]
    order, truth, ref_file = ref0[2], ref0[3], ref0[0] / PREDICTIONS
    results = {}
    for name, runs in raw.items():
        aligned = sorted((_align(r, order, truth, ref_file) for r in runs), key=lambda r: r.seed)
        result = VariantResult(name, aligned, label=(labels or {}).get(name))
        result.per_seed = [classification_metrics(r.y, r.probs) for r in aligned]
        results[name] = result
    return results


# --------------------------------------------------------------------------------------------
# Summary rows
# --------------------------------------------------------------------------------------------


def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


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


def _recorded_pairs(infos: Sequence[dict], key: str, width: int) -> list[tuple]:
    """The runs' `key` entries (lists of `width` items, the slide id first), one per slide."""
    by_slide: dict[str, tuple] = {}
    for info in infos:
        for entry in info.get(key) or []:
            if isinstance(entry, list | tuple) and len(entry) == width:
                by_slide.setdefault(str(entry[0]), tuple(entry))
    return list(by_slide.values())


def _unique(values: Sequence) -> list:
    return list(dict.fromkeys(v for v in values if v is not None))


def _summarize(
    res: VariantResult,
    ref: VariantResult,
    classes: Sequence[str],
    n_bootstrap: int,
    seed: int,
    alpha: float,
) -> dict:
    """One results.csv row (with `notes` explaining every n/a)."""
    n_classes = len(classes)
    notes: dict[str, str] = {}
    infos = [r.info for r in res.runs]
    row: dict = {
        "variant": res.name,
        "model": ",".join(_unique(i["model"] for i in infos)),
        "method": res.display,
        "n_seeds": len(res.runs),
        "seeds": ",".join(str(r.seed) for r in res.runs),
        "n_slides": len(res.runs[0].y),
        "is_reference": res is ref,
    }
    metric_names = ["accuracy", "auc"]
    if n_classes > 2:
        metric_names += [f"auc_{k}" for k in range(n_classes)]
    metric_names += ["balanced_accuracy", "macro_f1"]
    for m in metric_names:
        col = f"auc_{classes[int(m[4:])]}" if m.startswith("auc_") else m
        mean, std, why = _mean_std([s[m] for s in res.per_seed])
        row[f"{col}_mean"], row[f"{col}_std"] = mean, std
        seed_reasons = _unique(s["reasons"].get(m) for s in res.per_seed)
        if seed_reasons:
            notes[col] = "; ".join(seed_reasons)
        elif why:
            notes[col] = why

    # Seed-averaged predictions: point estimates, bootstrap CIs, DeLong.
    avg, y = res.avg_probs, res.runs[0].y
    pooled = classification_metrics(y, avg)
    for m in ("accuracy", "auc"):
        row[f"seed_avg_{m}"] = pooled[m]
        low, high, _, why = bootstrap_ci_detail(y, avg, m, n=n_bootstrap, seed=seed, alpha=alpha)
        row[f"{m}_ci_low"], row[f"{m}_ci_high"] = low, high
        if why or m in pooled["reasons"]:
            notes[f"{m}_ci"] = pooled["reasons"].get(m) or why

    # Tests against the reference.
    p_cols = ["p_ttest_accuracy", "p_ttest_auc", "p_delong"]
    if n_classes > 2:
        p_cols += [f"p_delong_{c}" for c in classes]
    if res is ref:
        row.update(dict.fromkeys(p_cols, float("nan")))
        notes["p-values"] = "reference variant"
    else:
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
        ref_avg = ref.avg_probs
        targets = (
            [(1, "p_delong")]
            if n_classes == 2
            else [(k, f"p_delong_{c}") for k, c in enumerate(classes)]
        )
        for k, col in targets:
            p, _, _, why = delong_test((y == k).astype(int), avg[:, k], ref_avg[:, k])
            row[col] = _nan(p)
            if why:
                notes[col] = why
        if n_classes > 2:
            row["p_delong"] = float("nan")
            notes["p_delong"] = _NOT_BINARY_DELONG

    # Cost of training.
    runtimes = [i["runtime_per_epoch_s"] for i in infos]
    row["runtime_per_epoch_s"], row["runtime_per_epoch_s_std"], why = _mean_std(
        [_nan(t) for t in runtimes]
    )
    if why and all(t is None for t in runtimes):
        notes["runtime"] = "runtime not recorded"
    params = _unique(i["parameters"] for i in infos)
    row["parameters"] = params[0]
    if len(params) > 1:
        notes["parameters"] = f"differ across seeds {params}; first shown"
    mems = [m for m in (i["peak_memory_mb"] for i in infos) if m is not None and math.isfinite(m)]
    row["peak_memory_mb"] = max(mems) if mems else float("nan")
    if not mems:
        notes["peak_memory"] = "peak memory not recorded"
    kinds = _unique(i["peak_memory_kind"] for i in infos)
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
    row["device"] = " / ".join(_unique(i["device"] for i in infos))
    row["encoder_weights"] = " / ".join(_unique(i["encoder_weights"] for i in infos))
    row["notes"] = "; ".join(f"{k}: {v}" for k, v in notes.items())
    row["_notes"] = notes
    return row


def summarize(
    results: Mapping[str, VariantResult],
    reference: str,
    classes: Sequence[str],
    n_bootstrap: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> list[dict]:
    """One summary row per variant, in the given order (see the module docstring)."""
    ref = results[reference]
    return [_summarize(r, ref, classes, n_bootstrap, seed, alpha) for r in results.values()]


def per_seed_rows(results: Mapping[str, VariantResult], classes: Sequence[str]) -> list[dict]:
    """One row per variant and seed: test metrics and the run's metadata."""
    rows = []
    for res in results.values():
        for run, m in zip(res.runs, res.per_seed, strict=True):
            row = {"variant": res.name, "method": res.display, "seed": run.seed}
            row["directory"] = str(run.directory)
            row.update({k: m[k] for k in ("accuracy", "auc", "balanced_accuracy", "macro_f1")})
            row.update({f"auc_{c}": m[f"auc_{k}"] for k, c in enumerate(classes)})
            row.update({k: run.info[k] for k in _RUN_KEYS if k not in ("variant", "seed")})
            row["runtime_note"] = run.info.get("runtime_note") or ""
            row["notes"] = "; ".join(f"{k}: {v}" for k, v in m["reasons"].items())
            rows.append(row)
    return rows


# --------------------------------------------------------------------------------------------
# Markdown
# --------------------------------------------------------------------------------------------


class Footnotes:
    """Markdown footnotes, numbered in order of first use, deduplicated by text."""

    def __init__(self) -> None:
        self.texts: list[str] = []

    def ref(self, text: str) -> str:
        """The `[^n]` marker for `text`."""
        if text not in self.texts:
            self.texts.append(text)
        return f"[^{self.texts.index(text) + 1}]"

    def render(self) -> str:
        """The footnote definitions."""
        return "\n".join(f"[^{i}]: {_cell(t)}" for i, t in enumerate(self.texts, 1))


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def format_p(p: float) -> str:
    """Paper-style p-value: 2 decimals, 3 below 0.01, `<0.001` below that."""
    if p >= 0.01:
        return f"{p:.2f}"
    return f"{p:.3f}" if p >= 0.001 else "<0.001"


def _mean_pm(mean: float, std: float, notes: Footnotes, reason: str | None) -> str:
    if not math.isfinite(mean):
        return _na(notes, reason or "undefined")
    return f"{mean:.3f} ± {std:.3f}" if math.isfinite(std) else f"{mean:.3f}"


def _na(notes: Footnotes, reason: str) -> str:
    return "n/a" + notes.ref(reason)


def _params(n: int) -> str:
    return f"{n / 1e6:.2f}M" if n >= 10_000 else f"{n / 1e3:.1f}K"


def results_table(rows: Sequence[dict], classes: Sequence[str], notes: Footnotes) -> str:
    """Table 1 (binary) or Table 2 (C > 2, per-class AUCs) layout, footnote markers in `notes`."""
    binary = len(classes) == 2
    kinds = _unique(r["peak_memory_kind"] for r in rows)
    mem_note = (
        f"Memory use is the peak during training ({kinds[0]}), the maximum over seeds; "
        "1 GiB = 1024 MB."
        if len(kinds) == 1
        else "Memory use is the peak during training (the kind is marked per row), the maximum "
        "over seeds; 1 GiB = 1024 MB."
    )
    acc_h = "Accuracy" + notes.ref("Mean ± sample standard deviation (ddof = 1) over seeds.")
    if binary:
        auc_h = ["AUC" + notes.ref(f"AUC of {classes[1]} (positive class) against {classes[0]}.")]
    else:
        auc_h = [f"AUC ({c})" for c in classes]
    p_h = "p-value" + notes.ref(
        "Two-sided paired t-test over seeds (paired by seed number) on accuracy against the "
        "reference row (`-`), as in the paper; the t-test on AUC and DeLong's test on the "
        "seed-averaged predictions are in results.csv."
    )
    run_h = "Runtime" + notes.ref(
        "Runtime is the mean time of one epoch of training + validation, averaged over seeds."
    )
    mem_h = "Memory Use" + notes.ref(mem_note)
    header = ["Method", acc_h, *auc_h, p_h, run_h, "Parameter Size", mem_h]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        rn = r["_notes"]
        cells = [_cell(r["method"])]
        cells.append(_mean_pm(r["accuracy_mean"], r["accuracy_std"], notes, rn.get("accuracy")))
        auc_cols = ["auc"] if binary else [f"auc_{c}" for c in classes]
        for col in auc_cols:
            cells.append(_mean_pm(r[f"{col}_mean"], r[f"{col}_std"], notes, rn.get(col)))
        if r["is_reference"]:
            cells.append("-")
        elif math.isfinite(r["p_ttest_accuracy"]):
            extra = rn.get("p_ttest_accuracy")
            cells.append(format_p(r["p_ttest_accuracy"]) + (notes.ref(extra) if extra else ""))
        else:
            cells.append(_na(notes, rn.get("p_ttest_accuracy", "undefined")))
        if math.isfinite(r["runtime_per_epoch_s"]):
            run = f"{r['runtime_per_epoch_s']:.2f}s"
            if r["runtime_note"]:
                run += notes.ref(f"{r['method']}: {r['runtime_note']}")
        else:
            run = _na(notes, rn.get("runtime", "runtime not recorded"))
        cells.append(run)
        cells.append(_params(r["parameters"]))
        if math.isfinite(r["peak_memory_mb"]):
            mem = f"{r['peak_memory_mb'] / 1024:.2f}GiB"
            if len(kinds) > 1:
                mem += notes.ref(f"Measured as {r['peak_memory_kind']}.")
        else:
            mem = _na(notes, rn.get("peak_memory", "not recorded"))
        cells.append(mem)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _ci(r: dict, m: str, notes: Footnotes) -> str:
    if not math.isfinite(r[f"{m}_ci_low"]):
        return _na(notes, r["_notes"].get(f"{m}_ci", "undefined"))
    return f"{r[f'seed_avg_{m}']:.3f} [{r[f'{m}_ci_low']:.3f}, {r[f'{m}_ci_high']:.3f}]"


def _p_cell(r: dict, col: str, notes: Footnotes) -> str:
    if r["is_reference"]:
        return "-"
    if math.isfinite(r[col]):
        return format_p(r[col])
    return _na(notes, r["_notes"].get(col, "undefined"))


def secondary_table(
    rows: Sequence[dict], classes: Sequence[str], notes: Footnotes, alpha: float
) -> str:
    """Seed-averaged predictions: bootstrap CIs, t-test on AUC, DeLong, balanced acc., macro F1."""
    level = f"{1 - alpha:.0%}"
    delong = ["DeLong p"] if len(classes) == 2 else [f"DeLong p ({c})" for c in classes]
    header = [
        "Method",
        f"Accuracy [{level} CI]",
        f"AUC [{level} CI]",
        "t-test p (AUC)",
        *delong,
        "Balanced accuracy (seeds)",
        "Macro F1 (seeds)",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    delong_cols = ["p_delong"] if len(classes) == 2 else [f"p_delong_{c}" for c in classes]
    for r in rows:
        cells = [_cell(r["method"]), _ci(r, "accuracy", notes), _ci(r, "auc", notes)]
        cells.append(_p_cell(r, "p_ttest_auc", notes))
        cells += [_p_cell(r, c, notes) for c in delong_cols]
        for m in ("balanced_accuracy", "macro_f1"):
            cells.append(_mean_pm(r[f"{m}_mean"], r[f"{m}_std"], notes, r["_notes"].get(m)))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def per_seed_table(seed_rows: Sequence[dict], classes: Sequence[str]) -> str:
    """Per-seed numbers (appendix)."""
    aucs = ["AUC"] if len(classes) == 2 else [f"AUC ({c})" for c in classes]
    header = [
        "Method",
        "Seed",
        "Accuracy",
        *aucs,
        "Balanced acc.",
        "Macro F1",
        "Runtime",
        "Peak memory",
        "Device",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]

    def f3(v: float) -> str:
        return f"{v:.3f}" if math.isfinite(v) else "n/a"

    for r in seed_rows:
        auc_vals = [r["auc"]] if len(classes) == 2 else [r[f"auc_{c}"] for c in classes]
        run = r["runtime_per_epoch_s"]
        mem = r["peak_memory_mb"]
        cells = [
            _cell(r["method"]),
            str(r["seed"]),
            f3(r["accuracy"]),
            *map(f3, auc_vals),
            f3(r["balanced_accuracy"]),
            f3(r["macro_f1"]),
            f"{run:.2f}s" if _finite(run) else "n/a",
            f"{mem:.0f} MB ({r['peak_memory_kind']})" if _finite(mem) else "n/a",
            _cell(r["device"]),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# ROC curves
# --------------------------------------------------------------------------------------------


def _roc_points(positive: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.metrics import roc_curve

    fpr, tpr, _ = roc_curve(positive.astype(int), scores)
    return fpr, tpr


def plot_roc(
    path: str | Path, results: Mapping[str, VariantResult], classes: Sequence[str]
) -> None:
    """ROC curves of the seed-averaged predictions (binary: one panel; C > 2: one per class)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    panels = [1] if len(classes) == 2 else list(range(len(classes)))
    fig = Figure(figsize=(5 * len(panels), 5), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, k in zip(axes, panels, strict=True):
        title = f"{classes[1]} vs {classes[0]}" if len(classes) == 2 else f"{classes[k]} vs rest"
        for res in results.values():
            y = res.runs[0].y == k
            scores = res.avg_probs[:, k]
            value, why = binary_auc(y, scores)
            if why is not None:
                ax.text(0.5, 0.5, f"ROC undefined: {why}", ha="center", transform=ax.transAxes)
                break
            fpr, tpr = _roc_points(y, scores)
            ax.plot(fpr, tpr, lw=1.5, label=f"{res.display} (AUC = {value:.3f})")
        ax.plot([0, 1], [0, 1], ls="--", lw=0.8, color="grey")
        ax.set(
            xlim=(-0.01, 1.01),
            ylim=(-0.01, 1.01),
            xlabel="False positive rate",
            ylabel="True positive rate",
            title=title,
            aspect="equal",
        )
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="lower right", fontsize="small")
    fig.suptitle("ROC of the seed-averaged test predictions")
    with atomic_output(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)


# --------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------


def _csv_rows(rows: Sequence[dict]) -> pd.DataFrame:
    return pd.DataFrame([{k: v for k, v in r.items() if not k.startswith("_")} for r in rows])


def write_report(
    out_dir: str | Path,
    experiment: str,
    variants: Mapping[str, Sequence[str | Path]],
    reference: str,
    classes: Sequence[str],
    cohort: str = "",
    device: str | None = None,
    encoder_weights: str | None = None,
    n_bootstrap: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
    labels: Mapping[str, str] | None = None,
    sweep: str | None = None,
) -> dict:
    """Write results.csv, results_per_seed.csv, results.md, roc.png and report.md; return paths.

    `device` and `encoder_weights` default to the values recorded in the runs' metrics.json,
    as do the excluded slides and those that lost unreadable tiles. `labels` maps variants
    to display names; `sweep` names the hyperparameter of a sweep experiment, whose plot
    (sweep.png, written by `span sweep-plot`) the report then shows.
    """
    out_dir = Path(out_dir)
    classes = list(classes)
    results = load_results(variants, reference, classes, labels)
    reference_name = results[reference].display
    rows = summarize(results, reference, classes, n_bootstrap=n_bootstrap, seed=seed, alpha=alpha)
    seed_rows = per_seed_rows(results, classes)
    infos = [r.info for res in results.values() for r in res.runs]
    run_weights = _unique(i["encoder_weights"] for i in infos)
    weights = encoder_weights or " / ".join(run_weights)
    devices = device or " / ".join(_unique(i["device"] for i in infos))
    random_weights = "random" in {*run_weights, encoder_weights}
    excluded = _recorded_pairs(infos, "excluded", 2)
    damaged = _recorded_pairs(infos, "bad_tiles", 3)

    paths = {
        "results_csv": out_dir / "results.csv",
        "results_per_seed_csv": out_dir / "results_per_seed.csv",
        "results_md": out_dir / "results.md",
        "roc_png": out_dir / "roc.png",
        "report_md": out_dir / "report.md",
    }
    write_text_atomic(paths["results_csv"], _csv_rows(rows).to_csv(index=False, na_rep="n/a"))
    write_text_atomic(
        paths["results_per_seed_csv"], pd.DataFrame(seed_rows).to_csv(index=False, na_rep="n/a")
    )

    table_no = "Table 1" if len(classes) == 2 else "Table 2"
    caption = (
        f"{table_no} layout: comparison of methods on {cohort or experiment} with statistical "
        f"significance (p-values) compared to {reference_name}."
    )
    notes = Footnotes()
    table = results_table(rows, classes, notes)
    write_text_atomic(paths["results_md"], f"{caption}\n\n{table}\n\n{notes.render()}\n")

    plot_roc(paths["roc_png"], results, classes)

    notes = Footnotes()
    table = results_table(rows, classes, notes)  # again: footnote numbers restart per file
    parts = []
    if random_weights:
        parts.append(
            "> **WARNING: the features come from a randomly initialised encoder (encoder weights "
            "= `random`). These results test the pipeline only and mean nothing clinically.**\n"
        )
    parts.append(f"# Results: {experiment}\n")
    n_slides = len(results[reference].runs[0].y)
    meta = [
        f"- Cohort: {cohort or 'n/a'}",
        f"- Experiment: {experiment}",
        f"- Classes: {', '.join(classes)}; {n_slides} test slides",
        f"- Device: {devices}",
        f"- Encoder weights: {weights}",
        f"- Reference (p-values): {reference_name}",
        f"- Bootstrap: {n_bootstrap} resamples of the slides, seed {seed}",
    ]
    if len(run_weights) > 1:
        meta.append(f"- **Runs used different encoder weights: {', '.join(run_weights)}**")
    parts.append("\n".join(meta) + "\n")
    parts.append(f"## Main results\n\n{caption}\n\n{table}\n")
    parts.append(
        "## Seed-averaged predictions\n\n"
        "Probabilities averaged over seeds per slide; percentile bootstrap CIs over slides; "
        "DeLong's test against the reference on the same slides. Balanced accuracy and macro F1 "
        "are mean ± std over seeds.\n\n"
        f"{secondary_table(rows, classes, notes, alpha)}\n"
    )
    parts.append("## ROC curves\n\n![ROC curves](roc.png)\n")
    if sweep:
        parts.append(
            f"## Sweep over {sweep}\n\nAccuracy and peak memory against {sweep} "
            f"(the paper's Figure 4):\n\n![Sweep over {sweep}](sweep.png)\n"
        )
    if excluded:
        ex = "| Slide | Reason |\n|---|---|\n" + "\n".join(
            f"| {_cell(s)} | {_cell(r)} |" for s, r in excluded
        )
    else:
        ex = "None."
    parts.append(f"## Excluded slides\n\n{ex}\n")
    if damaged:
        rows_md = "\n".join(
            f"| {_cell(slide)} | {bad} | {float(share):.1%} |" for slide, bad, share in damaged
        )
        parts.append(
            "## Slides with unreadable tiles\n\nThese tiles could not be read and were left "
            "out of the slide's bag; the slide itself is kept (below "
            "features.max_bad_tile_share).\n\n| Slide | Tiles left out | Share of the slide |\n"
            f"|---|---|---|\n{rows_md}\n"
        )
    parts.append(
        "## Appendix: per-seed results\n\n<details>\n<summary>Per-seed numbers</summary>\n\n"
        f"{per_seed_table(seed_rows, classes)}\n\n</details>\n"
    )
    parts.append(notes.render() + "\n")
    write_text_atomic(paths["report_md"], "\n".join(parts))
    return {**paths, "rows": [{k: v for k, v in r.items() if k != "_notes"} for r in rows]}
