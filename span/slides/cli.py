"""Subcommands of the slide stage: `span patch`, `span demo-slide`, `span demo-cohort`."""

from __future__ import annotations

import argparse
import logging

from span.synthetic import DEMO_CLASSES, DEMO_SLIDES

log = logging.getLogger(__name__)


def _threshold(value: str) -> float | str:
    if value == "otsu":
        return value
    try:
        return float(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected 'otsu' or a number, got {value!r}") from exc


def _patch(args: argparse.Namespace) -> None:
    from span.slides.patching import PatchingParams, run_patching
    from span.slides.segmentation import segmentation_params

    try:
        seg = segmentation_params(
            args.preset,
            seg_mpp=args.seg_mpp,
            saturation_threshold=args.saturation_threshold,
            median_blur=args.median_blur,
            close=args.close,
            min_tissue_area_um2=args.min_tissue_area_um2,
            min_hole_area_um2=args.min_hole_area_um2,
            exclude_pen=args.exclude_pen,
        )
        params = PatchingParams(
            target_mpp=args.target_mpp,
            patch_size=args.patch_size,
            min_tissue_fraction=args.min_tissue_fraction,
            fallback_mpp=args.fallback_mpp,
            qc_max_side=args.qc_max_side,
            segmentation=seg,
        )
    except ValueError as exc:
        args.parser.error(str(exc))
    run_patching(args.slide, args.slide_id, args.out, args.qc, params)


def _demo_slide(args: argparse.Namespace) -> None:
    from span.slides.synthetic import make_demo_slide

    info = make_demo_slide(
        args.out, args.slide_id, args.label, seed=args.seed, arrangement=args.arrangement
    )
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
    p.add_argument("--target-mpp", type=float, default=0.5, help="um/px of patches (0.5 = 20x)")
    p.add_argument("--patch-size", type=int, default=224, help="patch side at the target mpp")
    p.add_argument("--min-tissue-fraction", type=float, default=0.25)
    p.add_argument("--fallback-mpp", type=float, help="um/px when the slide has no metadata")
    p.add_argument("--qc-max-side", type=int, default=1600, help="longest side of the QC PNG")
    p.add_argument("--preset", default="default", choices=["default", "clam"])
    p.add_argument("--seg-mpp", type=float, help="um/px of the segmentation image")
    p.add_argument("--saturation-threshold", type=_threshold, help="'otsu' or 0-254")
    p.add_argument("--median-blur", type=int, help="odd kernel, pixels at seg-mpp")
    p.add_argument("--close", type=int, help="closing kernel, pixels at seg-mpp (0 = off)")
    p.add_argument("--min-tissue-area-um2", type=float)
    p.add_argument("--min-hole-area-um2", type=float)
    p.add_argument("--exclude-pen", action=argparse.BooleanOptionalAction, default=None)
    p.set_defaults(func=_patch, parser=p)

    d = stages.add_parser(
        "demo-slide", help="write one synthetic demo slide (pyramidal TIFF, JPEG tiles)"
    )
    d.add_argument("--slide-id", required=True, help="also seeds the slide's variation")
    d.add_argument("--label", required=True, choices=DEMO_CLASSES)
    d.add_argument("--seed", type=int, default=42)
    d.add_argument(
        "--arrangement",
        choices=["clumped", "scattered"],
        help="tumour as whole patch cells in 1-2 foci or apart (the same share either way)",
    )
    d.add_argument("--out", required=True, help="TIFF to write")
    d.set_defaults(func=_demo_slide)

    c = stages.add_parser(
        "demo-cohort", help="write the whole synthetic demo cohort and its sample sheet"
    )
    c.add_argument("--out", required=True, help="folder: slides/<id>.tiff and samples.tsv")
    c.add_argument("--n-slides", type=int, default=DEMO_SLIDES)
    c.add_argument("--seed", type=int, default=42)
    c.set_defaults(func=_demo_cohort)
