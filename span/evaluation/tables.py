"""The report's Markdown tables from the summary rows: the paper's Table 1 (binary) or Table 2
(C > 2) layout, the seed-averaged predictions' CIs and tests, and the per-seed appendix; every
n/a carries a footnote with its reason."""

from __future__ import annotations

import math
from collections.abc import Sequence

from span.evaluation.summary import ALPHA, unique_values


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
        return "\n".join(f"[^{i}]: {cell(t)}" for i, t in enumerate(self.texts, 1))


def cell(text: str) -> str:
    """Text as one Markdown table cell (pipes escaped, one line)."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


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
    kinds = unique_values(r["peak_memory_kind"] for r in rows)
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
    delong = (
        "the t-test on AUC and DeLong's test on the seed-averaged predictions are in results.csv."
        if all(r["_shared_test"] for r in rows)
        else "the t-test on AUC is in results.csv, DeLong's test of each seed's own test set "
        "in results_per_seed.csv."
    )
    p_h = "p-value" + notes.ref(
        "Two-sided paired t-test over seeds (paired by seed number) on accuracy against the "
        f"reference row (`-`), as in the paper; {delong}"
    )
    run_h = "Runtime" + notes.ref(
        "Runtime is the mean time of one epoch of training + validation, averaged over seeds."
    )
    mem_h = "Memory Use" + notes.ref(mem_note)
    header = ["Method", acc_h, *auc_h, p_h, run_h, "Parameter Size", mem_h]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        rn = r["_notes"]
        cells = [cell(r["method"])]
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


def secondary_table(rows: Sequence[dict], classes: Sequence[str], notes: Footnotes) -> str:
    """Seed-averaged predictions: bootstrap CIs, t-test on AUC, DeLong, balanced acc., macro F1."""
    level = f"{1 - ALPHA:.0%}"
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
        cells = [cell(r["method"]), _ci(r, "accuracy", notes), _ci(r, "auc", notes)]
        cells.append(_p_cell(r, "p_ttest_auc", notes))
        cells += [_p_cell(r, c, notes) for c in delong_cols]
        for m in ("balanced_accuracy", "macro_f1"):
            cells.append(_mean_pm(r[f"{m}_mean"], r[f"{m}_std"], notes, r["_notes"].get(m)))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def per_seed_table(seed_rows: Sequence[dict], classes: Sequence[str]) -> str:
    """Per-seed numbers (appendix); DeLong p against the reference's same seed where the
    rows have it (each seed its own test set)."""
    binary = len(classes) == 2
    aucs = ["AUC"] if binary else [f"AUC ({c})" for c in classes]
    delong_cols = ["p_delong"] if binary else [f"p_delong_{c}" for c in classes]
    if not seed_rows or delong_cols[0] not in seed_rows[0]:
        delong_cols = []
    delong = [("DeLong p" if binary else f"DeLong p ({c[9:]})") for c in delong_cols]
    header = [
        "Method",
        "Seed",
        "Accuracy",
        *aucs,
        *delong,
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
            cell(r["method"]),
            str(r["seed"]),
            f3(r["accuracy"]),
            *map(f3, auc_vals),
            *(format_p(r[c]) if math.isfinite(r[c]) else "n/a" for c in delong_cols),
            f3(r["balanced_accuracy"]),
            f3(r["macro_f1"]),
            f"{run:.2f}s" if _finite(run) else "n/a",
            f"{mem:.0f} MB ({r['peak_memory_kind']})" if _finite(mem) else "n/a",
            cell(r["device"]),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
