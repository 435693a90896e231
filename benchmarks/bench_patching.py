"""Slide-stage speed and memory on a large synthetic slide (40x, 40960 x 40960, ~35% tissue).

Prints, in one run: seconds of `span patch` on that slide (segmentation + grid selection +
QC image + writing), with a per-phase breakdown, the number of patches, peak memory above
the process baseline, and how many level-0 pixels were read. Each repetition runs in a fresh
subprocess so peaks do not hide each other.

Goal (issue 2): at least 3x faster than CLAM's create_patches_fp (seg + patch + stitch),
which took 2.8-4.3 s on a 40960^2 slide on this kind of machine (2 cores); under 1 GB;
level 0 never read in full.

    python benchmarks/bench_patching.py [--side 40960] [--repeats 3] [--workdir /tmp/span-bench]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

CLAM_SECONDS = (2.8, 4.3)  # create_patches_fp seg + patch + stitch, 40960^2, this machine


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def child(slide: Path, out_dir: Path) -> None:
    """One timed patching run; prints a JSON line."""
    import openslide

    from span.slides import patching
    from span.slides.patching import PatchingParams, run_patching

    phases: dict[str, float] = {}

    def timed(name, fn):
        def wrapper(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                phases[name] = phases.get(name, 0.0) + time.perf_counter() - t0

        return wrapper

    pixels_by_level: dict[int, int] = {}
    original_read = openslide.OpenSlide.read_region

    def counting_read(self, location, level, size):
        pixels_by_level[level] = pixels_by_level.get(level, 0) + size[0] * size[1]
        return original_read(self, location, level, size)

    openslide.OpenSlide.read_region = counting_read
    patching.read_downsampled = timed("read low-res image", patching.read_downsampled)
    patching.segment_tissue = timed("segmentation", patching.segment_tissue)
    patching.cell_tissue_fraction = timed("grid selection", patching.cell_tissue_fraction)
    patching.select_cells = timed("grid selection", patching.select_cells)
    patching.render_qc = timed("QC image", patching.render_qc)
    patching.write_png = timed("write QC PNG", patching.write_png)
    patching.write_patch_file = timed("write patch h5", patching.write_patch_file)

    baseline = _rss_mb()
    t0 = time.perf_counter()
    patches = run_patching(
        slide, "large", out_dir / "large.h5", out_dir / "large.png", PatchingParams()
    )
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    with openslide.OpenSlide(str(slide)) as s:
        level0 = s.dimensions[0] * s.dimensions[1]
    print(
        json.dumps(
            {
                "seconds": seconds,
                "phases": phases,
                "patches": len(patches),
                "baseline_mb": baseline,
                "peak_mb": peak,
                "level0_fraction_read": pixels_by_level.get(0, 0) / level0,
                "pixels_by_level": pixels_by_level,
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", type=int, default=40960)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/span-bench"))
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.workdir)
        return

    from span.slides.synthetic import write_large_synthetic_slide

    args.workdir.mkdir(parents=True, exist_ok=True)
    slide = args.workdir / f"synthetic_40x_{args.side}.tiff"
    if not slide.exists():
        t0 = time.perf_counter()
        info = write_large_synthetic_slide(slide, side_px=args.side, mpp=0.25, seed=0)
        print(f"wrote {slide} in {time.perf_counter() - t0:.1f} s: {info}")
    runs = []
    for _ in range(args.repeats):
        out = subprocess.run(
            [sys.executable, __file__, "--child", str(slide), "--workdir", str(args.workdir)],
            check=True,
            capture_output=True,
            text=True,
        )
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    seconds = [r["seconds"] for r in runs]
    median = statistics.median(seconds)
    print(
        f"slide: {args.side} x {args.side} px at 0.25 um/px (40x), "
        f"{slide.stat().st_size / 1e6:.0f} MB"
    )
    print(f"patches: {runs[0]['patches']} (224 px at 0.5 um/px = 448 px at level 0)")
    print(
        f"seconds (segmentation + grid + QC + writing), {args.repeats} runs: "
        + ", ".join(f"{s:.2f}" for s in seconds)
        + f"; median {median:.2f}"
    )
    for name in runs[0]["phases"]:
        values = [r["phases"][name] for r in runs]
        print(f"  {name:<20} {statistics.median(values):.3f} s")
    peak_above = max(r["peak_mb"] - r["baseline_mb"] for r in runs)
    print(
        f"peak memory: {max(r['peak_mb'] for r in runs):.0f} MB RSS "
        f"({peak_above:.0f} MB above the {runs[0]['baseline_mb']:.0f} MB after imports)"
    )
    print(
        f"level-0 pixels read: {100 * runs[0]['level0_fraction_read']:.2f}% of level 0; "
        f"pixels read per level: {runs[0]['pixels_by_level']}"
    )
    lo, hi = CLAM_SECONDS
    print(
        f"CLAM create_patches_fp reference: {lo}-{hi} s -> speed-up {lo / median:.1f}x-"
        f"{hi / median:.1f}x (goal >= 3x)"
    )


if __name__ == "__main__":
    main()
