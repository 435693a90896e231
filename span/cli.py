"""`span <stage> ...`: the command line the Snakemake rules call, one subcommand per stage.

Every option is explicit (the rule passes its params); no subcommand reads config.yaml.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import span
from span.atomic import disk_full_error, is_disk_full
from span.errors import SpanError

log = logging.getLogger("span")


def _setup_logging(log_file: str | None) -> None:
    """Everything to `log_file` when given, and then only warnings and errors to stderr (a
    workflow's console stays readable; the job's log keeps the detail); else all to stderr."""
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S")
    console = logging.StreamHandler(sys.stderr)
    handlers: list[logging.Handler] = [console]
    if log_file:
        console.setLevel(logging.WARNING)
        handlers.append(logging.FileHandler(log_file, mode="w"))
    root = logging.getLogger()
    root.handlers[:] = []
    for handler in handlers:
        handler.setFormatter(fmt)
        root.addHandler(handler)
    root.setLevel(logging.INFO)
    # A log file on a full disk must not bury the job's one error line under tracebacks.
    logging.raiseExceptions = False


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every stage's subcommand registered."""
    from span import preflight
    from span.data import cli as data_cli
    from span.evaluation import cli as evaluation_cli
    from span.features import cli as features_cli
    from span.inference import cli as inference_cli
    from span.models import cli as models_cli
    from span.slides import cli as slides_cli
    from span.synthetic import cli as synthetic_cli
    from span.training import cli as training_cli

    parser = argparse.ArgumentParser(
        prog="span",
        description="Whole-slide images to slide-level predictions with SPAN and MIL baselines.",
    )
    parser.add_argument("--version", action="version", version=f"span-wsi {span.__version__}")
    parser.add_argument("--log", metavar="FILE", help="also write the log to FILE")
    stages = parser.add_subparsers(dest="stage", metavar="STAGE", required=True)
    slides_cli.register(stages)
    features_cli.register(stages)
    data_cli.register(stages)
    models_cli.register(stages)
    training_cli.register(stages)
    evaluation_cli.register(stages)
    inference_cli.register(stages)
    synthetic_cli.register(stages)
    preflight.register(stages)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `span` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    _setup_logging(args.log)
    try:
        args.func(args)
    except SpanError as exc:
        log.error("%s", exc)
        return 1
    except Exception as exc:  # into the job's log file too, not only stderr
        where = Path(getattr(exc, "filename", None) or Path.cwd())  # the file, if known
        if is_disk_full(exc, where):  # a write outside span.atomic's
            log.error("%s", disk_full_error(where))
            return 1
        log.exception("unexpected error in `span %s` (a bug: please report it)", args.stage)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
