"""The trained seeds of an experiment's variants, loaded and checked against each other.

Each seed folder `<exp>/<variant>/seed<k>/` holds the run files of `span.run_files`
(metrics.json, test_predictions.csv); every run must predict the same test slides with the
same labels as the reference's first seed, and is reordered to that seed's slide order. When
each seed has its own test set (splits.protocol per_seed), a run is held to the reference's run
of the same seed instead.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from span.errors import SpanError
from span.metrics import classification_metrics
from span.models.registry import display_name
from span.outputs import METRICS_JSON, TEST_PREDICTIONS_CSV
from span.run_files import read_run_metrics, read_test_predictions


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
    label: str | None = None  # display name from the config, else the registry's for the model
    shared_test: bool = True  # every seed tested on the same slides (splits.protocol fixed)

    @property
    def display(self) -> str:
        return self.label or display_name(self.name)

    @cached_property
    def per_seed(self) -> list[dict]:
        """`classification_metrics` of each seed's test predictions."""
        return [classification_metrics(r.y, r.probs) for r in self.runs]

    @property
    def avg_probs(self) -> np.ndarray:
        """Seed-averaged class probabilities [N, C] (one shared test set only)."""
        if not self.shared_test:
            raise ValueError("seeds with their own test sets have no seed-averaged predictions")
        return np.mean([r.probs for r in self.runs], axis=0)

    @property
    def pooled(self) -> tuple[np.ndarray, np.ndarray]:
        """(labels [N], probabilities [N, C]) of every seed's test predictions, one row per
        slide and seed (the ROC curve where the seeds' test sets differ)."""
        runs = self.runs
        return np.concatenate([r.y for r in runs]), np.concatenate([r.probs for r in runs])

    @property
    def test_slides(self) -> int:
        """Distinct test slides over the seeds."""
        return len({s for r in self.runs for s in r.slide_ids})


def discover_variants(exp_dir: str | Path) -> dict[str, list[Path]]:
    """Find `<exp>/<variant>/seed<k>/` directories: variant -> seed dirs sorted by k."""
    exp_dir = Path(exp_dir)
    found: dict[str, list[Path]] = {}
    for variant in sorted(p for p in exp_dir.iterdir() if p.is_dir()):
        seeds = [p for p in variant.iterdir() if p.is_dir() and re.fullmatch(r"seed\d+", p.name)]
        if seeds:
            found[variant.name] = sorted(seeds, key=lambda p: int(p.name[4:]))
    return found


def _load_variant(
    name: str, seed_dirs: Sequence[str | Path], classes: Sequence[str]
) -> list[tuple[Path, int, list[str], np.ndarray, np.ndarray, dict]]:
    if not seed_dirs:
        raise SpanError(None, f"variant {name!r} has no seed directories", "train it or drop it")
    loaded, seen = [], {}
    for d in map(Path, seed_dirs):
        info = read_run_metrics(d / METRICS_JSON)
        ids, y, probs = read_test_predictions(d / TEST_PREDICTIONS_CSV, classes)
        if info["seed"] in seen:
            raise SpanError(
                d / METRICS_JSON,
                f"seed {info['seed']} of {name!r} also in {seen[info['seed']]}",
                "list each seed directory once",
            )
        seen[info["seed"]] = d
        loaded.append((d, info["seed"], ids, y, probs, info))
    return loaded


def _align(raw: tuple, order: list[str], labels: np.ndarray, ref_file: Path) -> SeedRun:
    """Reorder a run's predictions to the reference slide order; the sets and labels must agree."""
    d, seed, ids, y, probs, info = raw
    path = d / TEST_PREDICTIONS_CSV
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
    shared_test: bool = True,
) -> dict[str, VariantResult]:
    """Load and cross-check every seed of every variant (same slides and labels everywhere,
    or, without a `shared_test` set, as the reference's run of the same seed where it has
    one); `labels` maps variants to display names."""
    if len(classes) < 2:
        raise ValueError("need at least 2 classes")
    if reference not in variants:
        raise SpanError(
            None,
            f"reference variant {reference!r} is not among {list(variants)}",
            "name the SPAN variant as reference",
        )
    raw = {name: _load_variant(name, dirs, classes) for name, dirs in variants.items()}
    ref_runs = {r[1]: r for r in raw[reference]}

    def align(run: tuple) -> SeedRun:
        ref = raw[reference][0] if shared_test else ref_runs.get(run[1], run)
        return _align(run, ref[2], ref[3], ref[0] / TEST_PREDICTIONS_CSV)

    return {
        name: VariantResult(
            name,
            sorted(map(align, runs), key=lambda r: r.seed),
            label=(labels or {}).get(name),
            shared_test=shared_test,
        )
        for name, runs in raw.items()
    }
