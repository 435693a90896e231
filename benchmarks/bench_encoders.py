"""Patch-encoder throughput, one line per encoder, next to ResNet50 (random weights, no
download): the encoder alone on in-memory uint8 tiles, with the extraction's own preprocessing,
batching, `inference_mode`, timm's fused attention and, on CUDA, its mixed precision.

The large ViTs are slow on CPU (ViT-g has 1.1B parameters): choose them with --encoders and
keep --patches small there.

    python benchmarks/bench_encoders.py [--encoders resnet50 uni h0-mini] [--patches 16]
        [--batch-size 8] [--threads 2] [--device auto]
"""

from __future__ import annotations

import argparse
import logging

import torch
from bench_features import encoder_only

from span.device import resolve_device
from span.features.encoders import build_architecture, build_encoder
from span.features.registry import ENCODERS


def patches_per_second(name: str, device: torch.device, batch_size: int, n: int) -> float:
    """Patches per second of preprocessing + encoder (one warm-up batch not counted)."""
    return encoder_only(build_encoder(name, None, "random"), device, batch_size, n)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--encoders", nargs="+", default=["resnet50", "h0-mini", "uni"], choices=list(ENCODERS)
    )
    parser.add_argument("--patches", type=int, default=16, help="timed patches per encoder")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)  # the random-weights warning, once per encoder
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    names = ["resnet50", *[n for n in args.encoders if n != "resnet50"]]
    print(
        f"device {device}, torch threads {torch.get_num_threads()}, batch {args.batch_size}, "
        f"{args.patches} timed patches per encoder, random weights"
    )
    print(f"{'encoder':<14}{'dim':>6}{'params':>10}{'patches/s':>12}{'vs resnet50':>13}")
    reference = None
    for name in names:
        info = ENCODERS[name]
        with torch.device("meta"):
            params = sum(p.numel() for p in build_architecture(info).parameters())
        rate = patches_per_second(name, device, args.batch_size, args.patches)
        reference = reference or rate
        dim = info.outputs[info.default_output].dim
        print(
            f"{name:<14}{dim:>6}{params / 1e6:>9.0f}M{rate:>12.2f}{rate / reference:>12.2f}x",
            flush=True,
        )


if __name__ == "__main__":
    main()
