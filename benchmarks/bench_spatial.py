"""Spatial benchmark: SPAN against permutation-invariant MIL on tasks that only arrangement
decides (issues 11 and 28), across levels of patch-type uncertainty.

For each task x cohort size x feature width x patch accuracy, writes a features-only cohort,
splits it with the paper's protocol, trains SPAN and ABMIL for every seed, fits a mean-pool
logistic regression, and prints test AUC per seed, mean +- sd, the paired t-test and DeLong's
test of SPAN against ABMIL, and whether the goals hold (at patch accuracy >= 0.9 and certain):

- SPAN test AUC >= 0.95 on every seed at ~270 training slides, >= 0.90 at ~70;
- ABMIL and mean pooling <= 0.60 (at chance by construction: both classes share every
  instance distribution);
- paired t-test SPAN vs ABMIL p < 0.01.

Patch accuracy is the accuracy of the best rule telling two patch types apart from one
patch's features (`span.synthetic.feature_cohort.FeatureModel`); `certain` is the first
cohorts'. `--span-hparams`, `--abmil-hparams` and `--train` train a variant of the defaults,
in run folders named by it; `--recipes default authors` trains it from each recipe
(span/plan/recipes.py) and prints them side by side. Runs are resumable; each is a worker
process with one torch thread. The logic is `span.synthetic.spatial_benchmark`.

    python benchmarks/bench_spatial.py                    # the full table (many hours on 2 cores)
    python benchmarks/bench_spatial.py --tasks clumped --slides 120 --dims 1024 --seeds 2
    python benchmarks/bench_spatial.py --patch-accuracy 0.9 --span-hparams center=false \\
        --train flips=false translate=0
    python benchmarks/bench_spatial.py --recipes default authors   # both recipes side by side
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from span.errors import SpanError  # noqa: E402
from span.plan.recipes import RECIPES  # noqa: E402
from span.synthetic import TASK_NAMES, patch_level  # noqa: E402
from span.synthetic.spatial_benchmark import (  # noqa: E402
    MODELS,
    Cohort,
    make_variant,
    parse_assignment,
    run_benchmark,
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", nargs="+", default=list(TASK_NAMES), choices=TASK_NAMES)
    parser.add_argument(
        "--slides",
        nargs="+",
        type=int,
        default=[120, 480],
        help="slides per cohort: 120 gives 68 training slides, 480 gives 272",
    )
    parser.add_argument("--dims", nargs="+", type=int, default=[1024, 2048])
    parser.add_argument(
        "--patch-accuracy",
        nargs="+",
        type=patch_level,
        default=[0.8, 0.9, None],
        metavar="LEVEL",
        help="accuracy of the best rule telling a patch's type, or certain (default: 0.8 0.9 "
        "certain); the goals are checked at 0.9 and above",
    )
    parser.add_argument("--seeds", type=int, default=5, help="seeds 0 .. N-1 (default 5)")
    parser.add_argument("--workers", type=int, default=2, help="parallel runs (one thread each)")
    parser.add_argument("--work", default=str(ROOT / "results" / "spatial_benchmark"))
    for model in MODELS:
        parser.add_argument(
            f"--{model}-hparams",
            nargs="+",
            type=parse_assignment,
            default=[],
            metavar="KEY=VALUE",
            help=f"{model} constructor arguments (docs/architecture.md), e.g. "
            + ("center=false conv_init=random" if model == "span" else "gated=true"),
        )
    parser.add_argument(
        "--train",
        nargs="+",
        type=parse_assignment,
        default=[],
        metavar="KEY=VALUE",
        help="span train options of every run (config/README.md), e.g. flips=false translate=0",
    )
    parser.add_argument(
        "--recipes",
        nargs="+",
        default=["default"],
        choices=list(RECIPES),
        help="recipes (span/plan/recipes.py) the options above apply to, printed side by side; "
        "the goals are checked on the first (default: default)",
    )
    args = parser.parse_args(argv)
    hparams = {model: dict(getattr(args, f"{model}_hparams")) for model in MODELS}
    try:
        variants = [make_variant(hparams, dict(args.train), args.dims, r) for r in args.recipes]
    except SpanError as exc:
        parser.error(str(exc))
    cohorts = [
        Cohort(task, slides, dim, accuracy)
        for slides in args.slides
        for dim in args.dims
        for task in args.tasks
        for accuracy in args.patch_accuracy
    ]
    return run_benchmark(Path(args.work), cohorts, variants, list(range(args.seeds)), args.workers)


if __name__ == "__main__":
    sys.exit(main())
