"""Feature-extraction throughput: encoder alone vs end to end from a pyramidal slide.

Prints, in one run: encoder-only throughput (uint8 tiles already in memory, same batch size,
threads and preprocessing), end-to-end throughput of `extract_slide` reading real JPEG tiles
(a 20x slide read at level 0, and a 40x slide whose 448-px patches are resized to 224) for
each worker count, and the ratio end-to-end / encoder-only. End to end is reported twice:
whole runs (including the fixed start-up: reader processes, model to device, final rename)
and steady state, (n_large - n_small) / (t_large - t_small), which cancels the fixed costs
the way a slide of thousands of patches does.

Goal (issue 3): end-to-end >= 0.9 x encoder-only on 2 CPU cores, i.e. reading is hidden
behind compute. On a GPU run with --device cuda to report both figures.

    python benchmarks/bench_features.py [--patches 128 384] [--batch-size 32] [--workers 0 1]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from span.device import resolve_device
from span.features.encoders import build_encoder
from span.features.extract import ExtractOptions, encode_tiles, extract_slide
from span.slides.patch_file import PatchSet, write_patch_file
from span.slides.patching import PatchingParams, run_patching
from span.slides.tiff_writer import write_pyramidal_tiff
from span.synthetic.tissue import render_tissue


def encoder_only(encoder, device, batch_size: int, n: int) -> float:
    """Images per second of preprocessing + encoder on in-memory uint8 tiles of the encoder's
    input size (one warm-up batch not counted)."""
    size = encoder.input_size
    tiles = torch.randint(0, 256, (batch_size, size, size, 3), dtype=torch.uint8)
    if device.type == "cuda":
        tiles = tiles.pin_memory()
    encoder.model.to(device).to(memory_format=torch.channels_last)
    with torch.inference_mode():
        encode_tiles(encoder, tiles, device, amp=True)  # warm-up
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        done = 0
        while done < n:
            encode_tiles(encoder, tiles, device, amp=True).cpu()
            done += batch_size
        if device.type == "cuda":
            torch.cuda.synchronize()
    return done / (time.perf_counter() - t0)


def make_slide(root: Path, mpp: float, sizes: list[int]) -> tuple[Path, list[Path]]:
    """A synthetic slide at `mpp` and patch files with its first n patches, for each n."""
    side_um = 112 * (max(sizes) ** 0.5) * 1.9
    image, *_ = render_tissue(side_um, side_um, mpp, tumour=True, seed=5, tissue_fraction=0.6)
    slide = write_pyramidal_tiff(root / f"slide_{mpp}.tiff", image, mpp)
    full = run_patching(slide, "bench", root / "all.h5", root / "qc.png", PatchingParams())
    if len(full) < max(sizes):
        raise SystemExit(f"synthetic slide has only {len(full)} patches (< {max(sizes)})")
    files = []
    for n in sizes:
        sub = PatchSet(full.coords[:n], full.grid[:n], full.tissue_fraction[:n], full.attrs)
        write_patch_file(root / f"patches_{mpp}_{n}.h5", sub)
        files.append(root / f"patches_{mpp}_{n}.h5")
    return slide, files


def end_to_end(encoder, slide, patches, out: Path, batch_size: int, workers: int, device) -> float:
    """Seconds of the whole extraction (reading, decoding, encoding, writing)."""
    options = ExtractOptions(batch_size=batch_size, num_workers=workers, device=device.type)
    t0 = time.perf_counter()
    extract_slide(slide, patches, out, encoder, options)
    seconds = time.perf_counter() - t0
    out.unlink()
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patches", type=int, nargs=2, default=[128, 384])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    device = resolve_device(args.device)
    encoder = build_encoder("resnet50", "layer4", "random")
    small, large = args.patches
    print(
        f"device {device}, torch threads {torch.get_num_threads()}, batch {args.batch_size}, "
        f"runs of {small} and {large} patches, ResNet50 layer4 (random weights)"
    )
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        slides = {
            "20x (224 px read)": make_slide(root, 0.5, args.patches),
            "40x (448 px read, resized)": make_slide(root, 0.25, args.patches),
        }
        enc = encoder_only(encoder, device, args.batch_size, large)
        print(f"encoder only: {enc:.1f} img/s")
        for name, (slide, (few, many)) in slides.items():
            for workers in args.workers:
                t_small, t_large = (
                    end_to_end(encoder, slide, f, root / "f.h5", args.batch_size, workers, device)
                    for f in (few, many)
                )
                whole = large / t_large
                steady = (large - small) / (t_large - t_small)
                print(
                    f"end to end, {name}, {workers} worker(s): whole run {whole:.1f} patches/s "
                    f"({whole / enc:.2f} x encoder-only), steady state {steady:.1f} patches/s "
                    f"({steady / enc:.2f} x)"
                )


if __name__ == "__main__":
    main()
