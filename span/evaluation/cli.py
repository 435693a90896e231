"""Subcommands of the evaluation stage: `span evaluate` and `span predict`."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

log = logging.getLogger(__name__)


def _evaluate(args: argparse.Namespace) -> None:
    from span.evaluation.report import write_report

    variants = {name: [Path(d) for d in dirs] for name, *dirs in args.runs}
    out = write_report(
        args.out,
        args.experiment,
        variants,
        args.reference or next(iter(variants)),
        args.classes,
        cohort=args.cohort,
        n_bootstrap=args.bootstrap,
    )
    log.info("report: %s", out["report_md"])


def _predict(args: argparse.Namespace) -> None:
    from span.evaluation.predict import run_prediction

    run_prediction(
        Path(args.samples),
        args.classes,
        Path(args.features_dir),
        args.model,
        json.loads(args.hparams),
        [Path(d) for d in args.runs],
        Path(args.out),
        Path(args.heatmaps) if args.heatmaps else None,
        args.heatmap_max_side,
        args.device,
    )


def register(stages: argparse._SubParsersAction) -> None:
    """Add `span evaluate` and `span predict`."""
    e = stages.add_parser(
        "evaluate",
        help="paper-style tables with p-values, ROC curves and report.md for one experiment",
    )
    e.add_argument(
        "--run",
        dest="runs",
        nargs="+",
        action="append",
        required=True,
        metavar=("VARIANT", "SEED_DIR"),
        help="a variant and its seed folders (repeat)",
    )
    e.add_argument("--reference", help="variant the p-values compare with (default: the first)")
    e.add_argument("--experiment", required=True)
    e.add_argument("--cohort", default="")
    e.add_argument("--classes", nargs="+", required=True)
    e.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the CIs")
    e.add_argument("--out", required=True, help="folder for results.csv/.md, roc.png, report.md")
    e.set_defaults(func=_evaluate)

    p = stages.add_parser(
        "predict", help="probabilities per seed and averaged for every slide, and heatmaps"
    )
    p.add_argument("--samples", required=True, help="sample sheet (all its slides are predicted)")
    p.add_argument("--classes", nargs="+", required=True)
    p.add_argument("--features-dir", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--hparams", default="{}", help="JSON object of model hyperparameters")
    p.add_argument("--runs", nargs="+", required=True, help="seed folders with checkpoint.pt")
    p.add_argument("--out", required=True, help="predictions CSV to write")
    p.add_argument("--heatmaps", help="folder for one heatmap PNG per slide (optional)")
    p.add_argument("--heatmap-max-side", type=int, default=1200)
    p.add_argument("--device", default="auto")
    p.set_defaults(func=_predict)
