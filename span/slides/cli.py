"""Subcommand of the slide stage: `span patch`."""

from __future__ import annotations

import argparse
import logging

from span.batches import SlideStore, add_batch_arguments, batch_rows
from span.settings.options import add_options, values_for
from span.settings.stages import JobSettings, PatchSettings

log = logging.getLogger(__name__)


def _params(args: argparse.Namespace):
    """The parsed options as PatchingParams (a bad combination is a usage error)."""
    from span.slides.patching import PatchingParams
    from span.slides.segmentation import SegmentationParams, segmentation_params

    try:
        seg = segmentation_params(args.preset, **values_for(SegmentationParams, args))
        return PatchingParams(**values_for(PatchingParams, args), segmentation=seg)
    except ValueError as exc:
        args.parser.error(str(exc))


def _patch(args: argparse.Namespace) -> None:
    from span.slides.patching import run_patching

    run_patching(args.slide, args.slide_id, args.out, args.qc, _params(args))


def _patch_batch(args: argparse.Namespace) -> None:
    from span.slides.patching import run_patch_batch

    slides = batch_rows(args, "slides")
    run_patch_batch(slides, SlideStore(args.store), args.manifest, _params(args), args.strict)


def register(stages: argparse._SubParsersAction) -> None:
    """Add `span patch`."""
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

    b = stages.add_parser(
        "patch-batch",
        help="`span patch` for many slides in one process, into a store (the workflow's jobs)",
        description="Patch each slide into STORE/<id>.h5 and STORE/<id>.png, reusing the ones "
        "already stored under the same slide file and options, and write a manifest with each "
        "slide's outcome. A slide that cannot be read is excluded (its files record why) "
        "unless --strict.",
    )
    add_batch_arguments(b, "slides")
    add_options(b, PatchSettings)
    add_options(b, JobSettings)
    b.set_defaults(func=_patch_batch, parser=b)
