"""The experiment's figures: ROC curves of the seed-averaged test predictions (per_seed splits:
every seed's pooled; roc.png) and, for a sweep experiment, accuracy and peak memory against the
swept hyperparameter (sweep.png, the paper's Figure 4, from results.csv)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from span.atomic import atomic_output
from span.errors import SpanError
from span.evaluation.results_files import read_results
from span.evaluation.seed_runs import VariantResult
from span.metrics import binary_auc

_SWEEP_COLUMNS = ("variant", "accuracy_mean", "accuracy_std", "peak_memory_mb", "peak_memory_kind")


def _figure(width: float, height: float):
    """A matplotlib Figure drawn without pyplot (no GUI backend, no global state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save_png(fig, path: str | Path) -> None:
    with atomic_output(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)


def _roc_points(positive: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.metrics import roc_curve

    fpr, tpr, _ = roc_curve(positive.astype(int), scores)
    return fpr, tpr


def plot_roc(
    path: str | Path, results: Mapping[str, VariantResult], classes: Sequence[str]
) -> None:
    """ROC curves of the seed-averaged predictions, or of every seed's pooled where the seeds'
    test sets differ (binary: one panel; C > 2: one per class)."""
    panels = [1] if len(classes) == 2 else list(range(len(classes)))
    fig = _figure(5 * len(panels), 5)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, k in zip(axes, panels, strict=True):
        title = f"{classes[1]} vs {classes[0]}" if len(classes) == 2 else f"{classes[k]} vs rest"
        for res in results.values():
            labels, probs = (res.runs[0].y, res.avg_probs) if res.shared_test else res.pooled
            y, scores = labels == k, probs[:, k]
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
    _save_png(fig, path)


def sweep_table(results_csv: str | Path, values: Mapping[str, float]) -> pd.DataFrame:
    """results.csv rows of the swept variants with their `value`, sorted by value."""
    table = read_results(results_csv, _SWEEP_COLUMNS)
    absent = sorted(set(values) - set(table["variant"]))
    if absent:
        raise SpanError(
            results_csv, f"no row for variant(s) {absent}", "evaluate every variant of the sweep"
        )
    rows = table[table["variant"].isin(list(values))].copy()
    rows["value"] = rows["variant"].map(values).astype(float)
    return rows.sort_values("value").reset_index(drop=True)


def plot_sweep(
    results_csv: str | Path,
    parameter: str,
    values: Mapping[str, float],
    out: str | Path,
    labels: Mapping[str, str] | None = None,
) -> pd.DataFrame:
    """Write a PNG of accuracy (mean ± std over seeds, left axis) and peak memory (right axis)
    against `parameter`; return the plotted rows."""
    rows = sweep_table(results_csv, values)
    x = rows["value"].to_numpy()
    fig = _figure(6.5, 4.2)
    ax = fig.subplots()
    ax.errorbar(
        x,
        rows["accuracy_mean"],
        yerr=np.nan_to_num(rows["accuracy_std"].to_numpy()),
        marker="o",
        capsize=3,
        color="tab:blue",
        label="accuracy",
    )
    ax.set_xlabel(parameter)
    ax.set_ylabel("test accuracy (mean ± std over seeds)", color="tab:blue")
    ax.set_xticks(x, [_tick(v, labels, r) for v, r in zip(x, rows["variant"], strict=True)])
    memory = ax.twinx()
    kinds = " / ".join(dict.fromkeys(rows["peak_memory_kind"].dropna().astype(str)))
    memory.plot(x, rows["peak_memory_mb"], marker="s", ls="--", color="tab:red", label="memory")
    memory.set_ylabel(f"peak memory, MB ({kinds or 'not recorded'})", color="tab:red")
    ax.set_title(f"Accuracy and peak memory against {parameter}")
    _save_png(fig, out)
    return rows


def _tick(value: float, labels: Mapping[str, str] | None, variant: str) -> str:
    """Axis label of one point: the variant's label, else the value."""
    if labels and variant in labels:
        return labels[variant]
    return f"{value:g}"
