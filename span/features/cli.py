"""Subcommands of the feature stage: `span extract`, `span import-features`, `span encoders`."""

from __future__ import annotations

import argparse
import logging

from span.batches import SlideStore, add_batch_arguments, batch_rows
from span.settings.options import add_options, values_for
from span.settings.stages import EncoderSettings, ExtractSettings, ImportSettings, JobSettings

log = logging.getLogger(__name__)


def _options(args: argparse.Namespace):
    """The parsed options as ExtractOptions (a bad combination is a usage error), with torch's
    threads set."""
    import torch

    from span.features.extract import ExtractOptions

    try:
        options = ExtractOptions(**values_for(ExtractOptions, args))
    except ValueError as exc:
        args.parser.error(str(exc))
    torch.set_num_threads(args.threads)
    return options


def _extract(args: argparse.Namespace) -> None:
    from span.features.encoders import build_encoder
    from span.features.extract import extract_slide

    options = _options(args)
    encoder = build_encoder(args.encoder, args.layer, args.weights)
    extract_slide(args.slide, args.patches, args.out, encoder, options)


def _extract_batch(args: argparse.Namespace) -> None:
    from span.features.encoders import build_encoder
    from span.features.extract_batch import run_extract_batch

    slides = batch_rows(args, "slides", "patches")
    options = _options(args)
    encoder = build_encoder(args.encoder, args.layer, args.weights)
    run_extract_batch(slides, SlideStore(args.store), args.manifest, encoder, options, args.strict)


def _encoders(args: argparse.Namespace) -> None:
    if args.check:
        from span.features.encoders import preflight

        preflight(args.encoder, args.layer, args.weights)
        return
    from span.features.registry import markdown_table

    print(markdown_table())


def _import(args: argparse.Namespace) -> None:
    from span.features.interop import import_features

    fs = import_features(
        args.features,
        args.out,
        args.slide_id,
        args.import_patch_size_level0,
        args.import_encoder,
        args.import_layer,
    )
    log.info("%s: imported %d x %d features -> %s", args.slide_id, *fs.features.shape, args.out)


def _import_batch(args: argparse.Namespace) -> None:
    from span.features.interop import run_import_batch

    run_import_batch(
        batch_rows(args, "features"),
        SlideStore(args.store),
        args.manifest,
        args.import_patch_size_level0,
        args.import_encoder,
        args.import_layer,
        args.strict,
    )


def register(stages: argparse._SubParsersAction) -> None:
    """Add the feature-stage subcommands."""
    p = stages.add_parser(
        "extract",
        help="encode every patch of one slide into a features HDF5 (resumable)",
        description="Read each patch at its stored level and size, resize to the encoder's "
        "input, normalise, encode, and stream the rows into a features HDF5. A killed run "
        "resumes from its last flush.",
    )
    p.add_argument("--slide", required=True, help="slide file")
    p.add_argument("--patches", required=True, help="patch HDF5 from `span patch`")
    p.add_argument("--out", required=True, help="features HDF5 to write")
    add_options(p, EncoderSettings)
    add_options(p, ExtractSettings)
    p.set_defaults(func=_extract, parser=p)

    b = stages.add_parser(
        "extract-batch",
        help="`span extract` for many slides in one process, into a store (the workflow's jobs)",
        description="Build the encoder once and encode each slide into STORE/<id>.h5, reading "
        "the next slide's tiles while the current one encodes; reuse the slides already stored "
        "under the same inputs and settings, resume a half-done one from its last flush, and "
        "write a manifest with each slide's outcome. A slide that cannot be opened gets an "
        "empty features file recording why (excluded) unless --strict.",
    )
    add_batch_arguments(b, "slides", "patches")
    add_options(b, EncoderSettings)
    add_options(b, ExtractSettings)
    add_options(b, JobSettings)
    b.set_defaults(func=_extract_batch, parser=b)

    e = stages.add_parser(
        "encoders",
        help="print the encoder table (docs/encoders.md), or check an encoder's weights (--check)",
        description="Without --check: the registered encoders as a Markdown table. With "
        "--check: that the weights can be had and fit the architecture, without computing "
        "(the workflow runs this before any job).",
    )
    e.add_argument("--check", action="store_true", help="check --encoder/--layer/--weights")
    add_options(e, EncoderSettings)
    e.set_defaults(func=_encoders)

    q = stages.add_parser(
        "import-features",
        help="bring a CLAM/TRIDENT features HDF5 into this pipeline's layout (grid-snapped)",
    )
    q.add_argument("--features", required=True, help="source HDF5 with features and coords")
    q.add_argument("--slide-id", required=True)
    q.add_argument("--out", required=True, help="features HDF5 to write")
    add_options(q, ImportSettings)
    q.set_defaults(func=_import)

    r = stages.add_parser(
        "import-batch",
        help="`span import-features` for many slides in one process, into a store (the "
        "workflow's jobs)",
    )
    add_batch_arguments(r, "features")
    add_options(r, ImportSettings)
    add_options(r, JobSettings)
    r.set_defaults(func=_import_batch, parser=r)
