"""Subcommands that write synthetic data: `span demo-slide` and `span demo-cohort` (the demo
cohort's slides), `span spatial-cohort` (a features-only cohort whose labels depend only on
arrangement)."""

from __future__ import annotations

import argparse
import logging

from span.batches import SlideStore, add_batch_arguments, batch_rows
from span.settings.options import add_options
from span.settings.stages import DemoSettings
from span.synthetic import DEMO_LABELS, DEMO_SLIDES, TASK_NAMES, patch_level

log = logging.getLogger(__name__)


def _demo_slide(args: argparse.Namespace) -> None:
    from span.synthetic.demo import make_demo_slide

    info = make_demo_slide(args.out, args.slide_id, args.label, seed=args.seed)
    log.info(
        "%s (%s): %d x %d px at %g um/px, pen %s -> %s",
        args.slide_id,
        args.label,
        info["width_px"],
        info["height_px"],
        info["mpp"],
        info["pen"],
        args.out,
    )


def _demo_batch(args: argparse.Namespace) -> None:
    from span.synthetic.demo import run_demo_batch

    slides = batch_rows(args, "labels")
    bad = sorted({label for _, label in slides} - set(DEMO_LABELS))
    if bad:
        args.parser.error(
            f"unknown label(s) {', '.join(bad)}; choose from {', '.join(DEMO_LABELS)}"
        )
    run_demo_batch(slides, SlideStore(args.store), args.manifest, seed=args.seed)


def _demo_cohort(args: argparse.Namespace) -> None:
    from span.synthetic.demo import write_demo_cohort

    sheet = write_demo_cohort(args.out, n_slides=args.n_slides, seed=args.seed)
    log.info("demo cohort of %d slides: sample sheet %s", args.n_slides, sheet)


def _spatial_cohort(args: argparse.Namespace) -> None:
    from span.synthetic.feature_cohort import CohortSpec, write_cohort

    spec = CohortSpec(
        args.task,
        args.slides,
        args.dim,
        args.seed,
        patch_accuracy=args.patch_accuracy,
        spectrum_decay=args.spectrum_decay,
        slide_effect=args.slide_effect,
    )
    sheet = write_cohort(spec, args.out)
    log.info("%d slides of task %s (%s): sample sheet %s", args.slides, args.task, spec, sheet)
    print(sheet)


def register(stages: argparse._SubParsersAction) -> None:
    """Add `span demo-slide`, `span demo-cohort` and `span spatial-cohort`."""
    d = stages.add_parser(
        "demo-slide", help="write one synthetic demo slide (pyramidal TIFF, JPEG tiles)"
    )
    d.add_argument("--slide-id", required=True, help="also seeds the slide's variation")
    d.add_argument(
        "--label",
        required=True,
        choices=DEMO_LABELS,
        help="normal, tumor (islands), or the tumour as patch cells scattered or clumped",
    )
    add_options(d, DemoSettings)
    d.add_argument(
        "--out", required=True, help="TIFF to write (its tumour truth beside it: .truth.png)"
    )
    d.set_defaults(func=_demo_slide)

    b = stages.add_parser(
        "demo-batch",
        help="`span demo-slide` for many slides in one process, into a store (the workflow's jobs)",
    )
    add_batch_arguments(b, "labels")
    add_options(b, DemoSettings)
    b.set_defaults(func=_demo_batch, parser=b)

    c = stages.add_parser(
        "demo-cohort", help="write the whole synthetic demo cohort and its sample sheet"
    )
    c.add_argument(
        "--out", required=True, help="folder: slides/<id>.tiff (+ .truth.png) and samples.tsv"
    )
    c.add_argument("--n-slides", type=int, default=DEMO_SLIDES)
    add_options(c, DemoSettings)
    c.set_defaults(func=_demo_cohort)

    p = stages.add_parser(
        "spatial-cohort",
        help="write a features-only cohort of a spatial task (the spatial benchmark's data)",
        description="Features HDF5 files and a sample sheet (slide_id, path, label, features) "
        "for a binary task whose label depends only on how patch types are arranged: both "
        "classes share the tissue, type counts and feature distributions, so permutation-"
        "invariant MIL is at chance by construction.",
    )
    p.add_argument("--task", required=True, choices=TASK_NAMES)
    p.add_argument("--slides", type=int, required=True, help="slides (classes alternate)")
    p.add_argument("--dim", type=int, default=1024, help="feature width (default 1024)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--patch-accuracy",
        type=patch_level,
        default=None,
        help="accuracy of the best rule telling two patch types apart from one patch's "
        "features, between 0.5 and 1, or certain (the default)",
    )
    p.add_argument(
        "--spectrum-decay", type=float, default=1.0, help="noise eigenvalue k ~ k^-decay"
    )
    p.add_argument(
        "--slide-effect",
        type=float,
        default=0.3,
        help="per-slide offset of every patch (stain, scanner), relative to the patch noise",
    )
    p.add_argument("--out", required=True, help="folder for features/, samples.tsv, layouts.npz")
    p.set_defaults(func=_spatial_cohort)
