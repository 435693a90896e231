"""Subcommands of the evaluation stage: `span evaluate` and `span sweep-plot`."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from span.errors import SpanError
from span.settings.options import add_options
from span.settings.stages import SplitSettings

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
        labels=_json_object(args.labels, "--labels"),
        sweep=args.sweep,
        protocol=args.protocol,
        qc_summary=args.qc,
    )
    log.info("report: %s", out["report_md"])


def _sweep_plot(args: argparse.Namespace) -> None:
    from span.evaluation.plots import plot_sweep

    values = _json_object(args.values, "--values")
    rows = plot_sweep(
        args.results, args.parameter, values, args.out, _json_object(args.labels, "--labels")
    )
    for row in rows.itertuples():
        log.info(
            "%s = %g: accuracy %.3f, peak memory %s MB",
            args.parameter,
            row.value,
            row.accuracy_mean,
            f"{row.peak_memory_mb:.0f}" if row.peak_memory_mb == row.peak_memory_mb else "n/a",
        )
    log.info("plot: %s", args.out)


def _json_object(text: str, option: str) -> dict:
    """A command-line JSON object, or a one-line error naming the option."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SpanError(None, f"{option} is not valid JSON ({exc})", "pass a JSON object") from None
    if not isinstance(value, dict):
        raise SpanError(None, f"{option} must be a JSON object, got {text!r}", "pass {...}")
    return value


def register(stages: argparse._SubParsersAction) -> None:
    """Add `span evaluate` and `span sweep-plot`."""
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
    e.add_argument("--labels", default="{}", help="JSON object: variant -> display name")
    e.add_argument("--sweep", help="the swept hyperparameter (the report shows sweep.png)")
    add_options(e, SplitSettings, ["protocol"])
    e.add_argument(
        "--qc", help="the cohort's qc/summary.tsv: the report lists its excluded unlabelled slides"
    )
    e.add_argument("--out", required=True, help="folder for results.csv/.md, roc.png, report.md")
    e.set_defaults(func=_evaluate)

    s = stages.add_parser(
        "sweep-plot", help="accuracy and peak memory against a swept hyperparameter (Figure 4)"
    )
    s.add_argument("--results", required=True, help="the experiment's results.csv")
    s.add_argument("--parameter", required=True, help="name of the swept hyperparameter")
    s.add_argument("--values", required=True, help="JSON object: variant -> parameter value")
    s.add_argument("--labels", default="{}", help="JSON object: variant -> axis label")
    s.add_argument("--out", required=True, help="PNG to write")
    s.set_defaults(func=_sweep_plot)
