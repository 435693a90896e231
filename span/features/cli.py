"""Subcommands of the feature stage: `span extract` and `span import-features`."""

from __future__ import annotations

import argparse
import logging
import os

log = logging.getLogger(__name__)


def _workers(value: str) -> int:
    """`auto` = half the CPUs (at least 1): the other half runs the encoder's threads."""
    return max(1, (os.cpu_count() or 2) // 2) if value == "auto" else int(value)


def _extract(args: argparse.Namespace) -> None:
    import torch

    from span.features.encoders import build_encoder
    from span.features.extract import ExtractOptions, extract_slide

    try:
        options = ExtractOptions(
            batch_size=args.batch_size,
            num_workers=args.num_workers,
            dtype=args.dtype,
            device=args.device,
            amp=args.amp,
            flush_every=args.flush_every,
        )
    except ValueError as exc:
        args.parser.error(str(exc))
    if args.threads:
        torch.set_num_threads(args.threads)
    encoder = build_encoder(args.encoder, args.layer, args.weights)
    extract_slide(args.slide, args.patches, args.out, encoder, options)


def _import(args: argparse.Namespace) -> None:
    from span.features.interop import import_features

    fs = import_features(
        args.features, args.out, args.slide_id, args.patch_size_level0, args.encoder, args.layer
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
    p.add_argument("--encoder", default="resnet50")
    p.add_argument("--layer", default="penultimate", help="penultimate (2048-d) or layer3 (1024-d)")
    p.add_argument(
        "--weights", default="imagenet", help="imagenet, random, or a local checkpoint path"
    )
    p.add_argument("--dtype", default="float32", choices=["float32", "float16"])
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--num-workers", type=_workers, default="auto", help="tile readers, or auto")
    p.add_argument("--threads", type=int, help="encoder threads on CPU (default: torch's)")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:1")
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, default=True, help="CUDA AMP")
    p.add_argument("--flush-every", type=int, default=256, help="patches per resumable chunk")
    p.set_defaults(func=_extract, parser=p)

    q = stages.add_parser(
        "import-features",
        help="bring a CLAM/TRIDENT features HDF5 into this pipeline's layout (grid-snapped)",
    )
    q.add_argument("--features", required=True, help="source HDF5 with features and coords")
    q.add_argument("--slide-id", required=True)
    q.add_argument("--out", required=True, help="features HDF5 to write")
    q.add_argument(
        "--patch-size-level0", type=int, help="patch side at level 0 when the file has no attrs"
    )
    q.add_argument(
        "--encoder",
        help="encoder that made the features, recorded when the file does not say (CLAM's do "
        "not); a file that records its own keeps it, with a warning if it differs",
    )
    q.add_argument(
        "--layer",
        help="that encoder's output layer (layer3 for CLAM's 1024-d ResNet-50), recorded the "
        "same way; give both so the slides match ones extracted with that encoder and layer",
    )
    q.set_defaults(func=_import)
