"""Subcommands of the slide stage: `span patch`, `span demo-slide`, `span demo-cohort`."""

from __future__ import annotations

import argparse
import logging

from span.settings.options import add_options, values_for
from span.settings.stages import DemoSettings, PatchSettings
from span.synthetic import DEMO_LABELS, DEMO_SLIDES

log = logging.getLogger(__name__)


def _patch(args: argparse.Namespace) -> None:
    from span.slides.patching import PatchingParams, run_patching
    from span.slides.segmentation import SegmentationParams, segmentation_params

    try:
        seg = segmentation_params(args.preset, **values_for(SegmentationParams, args))
        params = PatchingParams(**values_for(PatchingParams, args), segmentation=seg)
    except ValueError as exc:
        args.parser.error(str(exc))
    run_patching(args.slide, args.slide_id, args.out, args.qc, params)


def _demo_slide(args: argparse.Namespace) -> None:
    from span.slides.synthetic import make_demo_slide

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


def _demo_cohort(args: argparse.Namespace) -> None:
    from span.slides.synthetic import write_demo_cohort

    sheet = write_demo_cohort(args.out, n_slides=args.n_slides, seed=args.seed)
    log.info("demo cohort of %d slides: sample sheet %s", args.n_slides, sheet)


def register(stages: argparse._SubParsersAction) -> None:
    """Add the slide-stage subcommands."""
    p = stages.add_parser(
        "patch",
        help="segment tissue and keep the cells of one global patch grid (one slide)",
        description="Segment tissue at low resolution and write the slide's patch grid "
        "(HDF5: coords, grid) and a QC image. Segmentation options left out take the preset's "
        "value.",
    )
    p.add_argument("--slide", required=True, help="slide file (anything openslide reads)")
    p.add_argument("--slide-id", required=True)
    p.add_argument("--out", required=True, help="patch HDF5 to write")
    p.add_argument("--qc", required=True, help="QC PNG to write")
    add_options(p, PatchSettings)
    p.set_defaults(func=_patch, parser=p)

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
    d.add_argument("--out", required=True, help="TIFF to write")
    d.set_defaults(func=_demo_slide)

    c = stages.add_parser(
        "demo-cohort", help="write the whole synthetic demo cohort and its sample sheet"
    )
    c.add_argument("--out", required=True, help="folder: slides/<id>.tiff and samples.tsv")
    c.add_argument("--n-slides", type=int, default=DEMO_SLIDES)
    add_options(c, DemoSettings)
    c.set_defaults(func=_demo_cohort)
