"""An experiment's results tables, written by `span evaluate` and read by `span sweep-plot`:
results.csv (one row per variant, `span.evaluation.summary.summarize`) and
results_per_seed.csv (one row per variant and seed); an undefined value reads `n/a`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd

from span.atomic import write_text_atomic
from span.errors import SpanError

_NA = "n/a"


def write_results(path: Path, rows: Sequence[Mapping]) -> None:
    """A results table, one row per mapping and its keys the columns; keys starting with `_`
    are the report's own (not written)."""
    table = pd.DataFrame([{k: v for k, v in r.items() if not k.startswith("_")} for r in rows])
    write_text_atomic(path, table.to_csv(index=False, na_rep=_NA))


def read_results(path: str | Path, columns: Sequence[str]) -> pd.DataFrame:
    """A results table that has at least `columns` (`n/a` read as NaN); one-line errors."""
    path = Path(path)
    try:
        table = pd.read_csv(path, na_values=[_NA], keep_default_na=False)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise SpanError(
            path, f"cannot read the results table ({exc})", "re-run `span evaluate`"
        ) from None
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise SpanError(path, f"missing columns {missing}", "re-run `span evaluate`")
    return table
