"""Subcommand of the data stage: `span split`."""

from __future__ import annotations

import argparse
import logging

log = logging.getLogger(__name__)


def _split(args: argparse.Namespace) -> None:
    from span.data.samplesheet import load_sample_sheet
    from span.data.splits import make_splits, write_splits

    samples = load_sample_sheet(args.samples, args.classes)
    rows, warnings = make_splits(
        samples,
        args.classes,
        seed=args.seed,
        test_fraction=args.test_fraction,
        val_fraction=args.val_fraction,
    )
    for warning in warnings:
        log.warning("%s", warning)
    write_splits(rows, args.out)
    counts = {s: sum(r.split == s for r in rows) for s in ("train", "val", "test")}
    log.info("splits: %s -> %s", counts, args.out)


def register(stages: argparse._SubParsersAction) -> None:
    """Add `span split`."""
    p = stages.add_parser(
        "split",
        help="train/val/test splits of the labelled slides (official splits win; seed 42)",
    )
    p.add_argument("--samples", required=True, help="sample sheet (TSV)")
    p.add_argument("--classes", nargs="+", required=True)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--test-fraction", type=float, default=1 / 3)
    p.add_argument("--val-fraction", type=float, default=0.15)
    p.add_argument("--out", required=True, help="splits.tsv to write")
    p.set_defaults(func=_split)
