"""The files of training runs that the evaluation reads, each written and read here only.

- metrics.json (`span train`; read by `span evaluate` and `span train --add-runtime-of`): a
  JSON object (pretty, sorted keys) with the `REQUIRED_KEYS`, their types checked on writing
  and on reading, and also hparams, training, feature_dim, encoder, slides, excluded ([slide,
  reason] pairs), split_warnings (what a class missing from validation means), bad_tiles
  ([slide, tiles left out, share] triples), software, epochs_run, best_epoch, best_val_auc,
  best_val_loss, runtime_total_s and, for a run whose runtime includes its teacher's,
  runtime_note.
- test_predictions.csv (`span train`; read by `span evaluate`): `slide_id`, `label`,
  `prob_<class>` per class (6 decimals).
- predictions.csv (`span predict`, every slide with the runs of one variant): `slide_id`,
  `label` (empty when unknown), `run` (the seed folder's name, then `mean` for the average
  over seeds), `prob_<class>` per class and `predicted` (the arg-max class).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from span.atomic import write_text_atomic
from span.errors import SpanError

if TYPE_CHECKING:
    from span.training.bags import Bag

#: metrics.json: key -> accepted types (None: a measurement not taken), in the column order
#: of results_per_seed.csv.
REQUIRED_KEYS: dict[str, tuple[type, ...]] = {
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
# How far a slide's probabilities may sum from 1 (they are written with 6 decimals).
_PROB_TOL = 1e-3


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _metrics_problem(info: object) -> str | None:
    """Why `info` is no run record, or None."""
    if not isinstance(info, dict):
        return "is not a JSON object"
    missing = [k for k in REQUIRED_KEYS if k not in info]
    if missing:
        return f"missing keys {missing}"
    for key, types in REQUIRED_KEYS.items():
        value = info[key]
        if isinstance(value, bool) or not isinstance(value, types):
            return f"{key} = {value!r} is not of type {types[0].__name__}"
    if not isinstance(info.get("runtime_note"), str | type(None)):
        return "runtime_note is not a string"
    return None


def write_run_metrics(path: Path, metrics: dict) -> None:
    """Write a run's metrics.json atomically; a record the reader would refuse fails here."""
    if problem := _metrics_problem(metrics):
        raise ValueError(f"run metrics {problem}")
    write_text_atomic(path, json.dumps(metrics, indent=2, sort_keys=True) + "\n")


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
    if problem := _metrics_problem(info):
        raise SpanError(path, problem, fix)
    return info


def probability_columns(classes: Sequence[str]) -> list[str]:
    """The `prob_<class>` column of each class."""
    return [f"prob_{c}" for c in classes]


def _write_csv(path: Path, header: list[str], rows: Iterable[list[str]]) -> None:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    write_text_atomic(path, buf.getvalue())


def _slide(bag: Bag, classes: Sequence[str]) -> list[str]:
    """slide_id and label (empty when unknown)."""
    return [bag.slide_id, "" if bag.label is None else classes[bag.label]]


def _probabilities(row: np.ndarray) -> list[str]:
    return [f"{p:.6f}" for p in row]


def write_test_predictions(
    path: Path, bags: Sequence[Bag], probs: np.ndarray, classes: Sequence[str]
) -> None:
    """A run's test_predictions.csv: one row per slide of `bags` (probs [N, C])."""
    rows = (
        [*_slide(bag, classes), *_probabilities(row)] for bag, row in zip(bags, probs, strict=True)
    )
    _write_csv(path, ["slide_id", "label", *probability_columns(classes)], rows)


def write_predictions(
    path: Path,
    bags: Sequence[Bag],
    probs: np.ndarray,
    run_names: Sequence[str],
    classes: Sequence[str],
) -> None:
    """predictions.csv: the rows of each run (probs [R, N, C]), then those of their mean."""
    header = ["slide_id", "label", "run", *probability_columns(classes), "predicted"]
    runs = [*zip(run_names, probs, strict=True), ("mean", probs.mean(axis=0))]
    rows = (
        [*_slide(bag, classes), name, *_probabilities(row), classes[int(np.argmax(row))]]
        for name, table in runs
        for bag, row in zip(bags, table, strict=True)
    )
    _write_csv(path, header, rows)


def read_test_predictions(
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
    prob_cols = probability_columns(classes)
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
