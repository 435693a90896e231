"""The plot of a sweep experiment: accuracy and peak memory against one hyperparameter (the
paper's Figure 4, window side 2 to 16), from the experiment's results.csv."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from span.atomic import atomic_output
from span.errors import SpanError

_COLUMNS = ("variant", "accuracy_mean", "accuracy_std", "peak_memory_mb", "peak_memory_kind")


def sweep_table(results_csv: str | Path, values: Mapping[str, float]) -> pd.DataFrame:
    """results.csv rows of the swept variants with their `value`, sorted by value."""
    path = Path(results_csv)
    try:
        table = pd.read_csv(path, na_values=["n/a"], keep_default_na=False)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise SpanError(
            path, f"cannot read the results table ({exc})", "re-run `span evaluate`"
        ) from None
    missing = [c for c in _COLUMNS if c not in table.columns]
    if missing:
        raise SpanError(path, f"missing columns {missing}", "re-run `span evaluate`")
    absent = sorted(set(values) - set(table["variant"]))
    if absent:
        raise SpanError(
            path, f"no row for variant(s) {absent}", "evaluate every variant of the sweep"
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
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = sweep_table(results_csv, values)
    x = rows["value"].to_numpy()
    fig = Figure(figsize=(6.5, 4.2), layout="constrained")
    FigureCanvasAgg(fig)
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
    with atomic_output(out) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    return rows


def _tick(value: float, labels: Mapping[str, str] | None, variant: str) -> str:
    """Axis label of one point: the variant's label, else the value."""
    if labels and variant in labels:
        return labels[variant]
    return f"{value:g}"
