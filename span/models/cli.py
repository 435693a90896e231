"""`span models`: the registered models and their parameter counts."""

from __future__ import annotations

import argparse
import logging


def _models(args: argparse.Namespace) -> None:
    from span.models import MODELS, build_model

    logging.getLogger("span.models").setLevel(logging.ERROR)  # MHIM's no-teacher notice
    dims = args.in_dim
    print(f"{'model':<10}" + "".join(f"{f'{d}-d input':>16}" for d in dims))
    for name in MODELS:
        counts = []
        for d in dims:
            model = build_model(name, d, args.classes)
            trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
            counts.append(f"{trainable / 1e6:.2f}M")
        print(f"{name:<10}" + "".join(f"{c:>16}" for c in counts))


def register(stages: argparse._SubParsersAction) -> None:
    """Add `span models`."""
    p = stages.add_parser("models", help="list the models and their trainable parameter counts")
    p.add_argument(
        "--in-dim",
        type=int,
        nargs="+",
        default=[1024, 1536, 2048, 2560],
        help="feature widths (ResNet50 layer3/UNI 1024, UNI2-h/H-optimus/GigaPath 1536, "
        "ResNet50 2048, Virchow2 2560)",
    )
    p.add_argument("--classes", type=int, default=2)
    p.set_defaults(func=_models)
