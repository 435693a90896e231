"""Subcommand of the slide stage: `span patch`."""

from __future__ import annotations

import argparse
import logging

from span.settings.options import add_options, values_for
from span.settings.stages import PatchSettings

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
