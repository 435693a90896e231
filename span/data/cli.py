"""Subcommands of the data stage: `span qc-summary` (the cohort's register of slides and
exclusions) and `span split`."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from span.settings.options import add_options, values_for
from span.settings.stages import ExclusionSettings, SplitSettings

log = logging.getLogger(__name__)


def _qc_summary(args: argparse.Namespace) -> None:
    from span.data.qc_summary import Exclusion, write_summary

    rows = write_summary(args.features, args.out, args.max_bad_tile_share)
    log.info("%d slides summarised in %s", len(rows), args.out)
    for row in rows:
        if row["excluded"]:
            log.warning("%s", Exclusion(row["slide_id"], row["excluded"]).line())


def _split(args: argparse.Namespace) -> None:
    from span.data.qc_summary import summary_row
    from span.data.samplesheet import load_sample_sheet
    from span.data.splits import (
        EXCLUDED,
        check_classes,
        labels_by_split,
        make_splits,
        write_splits,
    )

    samples = load_sample_sheet(args.samples, args.classes)
    reasons = {
        Path(p).stem: summary_row(p, args.max_bad_tile_share)["excluded"] for p in args.features
    }
    excluded = {slide: reason for slide, reason in reasons.items() if reason}
    rows, warnings = make_splits(
        samples,
        args.classes,
        **values_for(SplitSettings, args),
        excluded=excluded,
        training_seed=args.training_seed,
    )
    for warning in warnings:  # first: they say why a class check below may fail
        log.warning("%s", warning)
    for warning in check_classes(labels_by_split(rows), args.classes, args.samples, len(excluded)):
        log.warning("%s", warning)
    write_splits(rows, args.out)
    counts = {s: sum(r.split == s for r in rows) for s in ("train", "val", "test", EXCLUDED)}
    log.info("splits: %s -> %s", counts, args.out)


def register(stages: argparse._SubParsersAction) -> None:
    """Add `span qc-summary` and `span split`."""
    q = stages.add_parser(
        "qc-summary",
        help="the cohort's table of slides (qc/summary.tsv) and which are excluded, and why",
    )
    q.add_argument("--features", nargs="*", default=[], help="every slide's features HDF5")
    add_options(q, ExclusionSettings)
    q.add_argument("--out", required=True, help="TSV to write")
    q.set_defaults(func=_qc_summary)

    p = stages.add_parser(
        "split",
        help="train/val/test splits of the labelled slides (fixed: official splits win, seed "
        "42; per_seed: pooled, one split per training seed)",
    )
    p.add_argument("--samples", required=True, help="sample sheet (TSV)")
    p.add_argument("--classes", nargs="+", required=True)
    add_options(p, SplitSettings)
    p.add_argument(
        "--training-seed",
        type=int,
        help="the training seed whose split to draw (protocol per_seed only)",
    )
    p.add_argument(
        "--features",
        nargs="*",
        default=[],
        help="the labelled slides' features files (<slide_id>.h5): slides the QC rule excludes "
        "get split `excluded`",
    )
    add_options(p, ExclusionSettings)
    p.add_argument("--out", required=True, help="splits.tsv to write")
    p.set_defaults(func=_split)
