"""Subcommands of the feature stage: `span extract`, `span import-features`, `span encoders`."""

from __future__ import annotations

import argparse
import logging

from span.settings.options import add_options, values_for
from span.settings.stages import EncoderSettings, ExtractSettings, ImportSettings

log = logging.getLogger(__name__)


def _extract(args: argparse.Namespace) -> None:
    import torch

    from span.features.encoders import build_encoder
    from span.features.extract import ExtractOptions, extract_slide

    try:
        values = values_for(ExtractOptions, args)
        options = ExtractOptions(**values)
    except ValueError as exc:
        args.parser.error(str(exc))
    torch.set_num_threads(args.threads)
    encoder = build_encoder(args.encoder, args.layer, args.weights)
    extract_slide(args.slide, args.patches, args.out, encoder, options)


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

    e = stages.add_parser(
        "encoders",
        help="print the encoder table (README), or check an encoder's weights (--check)",
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
