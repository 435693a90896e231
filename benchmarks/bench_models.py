"""Memory and time of one training step of each model on synthetic slides of N patches.

Prints, in one run, side by side: peak resident memory above the process baseline (measured
after the inputs are loaded, with the heap setting `span train` uses; each (model, N) in its
own subprocess, so peaks do not mask each other) and seconds per step (forward + backward +
AdamW step; the mean of two warm steps), for SPAN, the MIL baselines present in the registry
and a naive SPAN that pads features into the dense bounding grid of the slide; plus SPAN's
window-generation time at the largest N.

Goals (issue 4, 2 CPU cores, fp32, 1024-d input): memory linear in N (100k / 25k <= 4.2);
SPAN's peak at 100k within 2x ABMIL's and under 3 GB; window generation for 100k patches
under 100 ms; SPAN / ABMIL seconds below the paper's 4.4x.

    python benchmarks/bench_models.py [--sizes 10000 25000 50000 100000] [--models span naive]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

import numpy as np
import torch

IN_DIM = 1024
TISSUE_FRACTION = 0.35  # of the bounding box, as on a typical resection slide
STEPS = 3  # training steps per (model, N); seconds = mean of the warm ones (all but the first)


def blob_grid(n: int, seed: int = 0) -> torch.Tensor:
    """N cells of blob-shaped tissue with holes: the top-N cells of a smooth random field."""
    import cv2

    side = int(np.ceil(np.sqrt(n / TISSUE_FRACTION)))
    rng = np.random.default_rng(seed)
    field = cv2.GaussianBlur(
        rng.standard_normal((side, side)).astype(np.float32), (0, 0), side / 12
    )
    top = np.argsort(field.ravel())[-n:]
    rows, cols = np.divmod(top, side)
    return torch.from_numpy(np.stack([cols, rows], 1) + np.array([37, 11])).long()


def densify(features: torch.Tensor, grid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The naive route: every cell of the bounding box, zero features where there is no tissue."""
    lo, hi = grid.min(0).values, grid.max(0).values
    ys, xs = torch.meshgrid(
        torch.arange(lo[1], hi[1] + 1), torch.arange(lo[0], hi[0] + 1), indexing="ij"
    )
    dense_grid = torch.stack([xs.reshape(-1), ys.reshape(-1)], 1)
    dense = features.new_zeros((len(dense_grid), features.shape[1]))
    width = int(hi[0] - lo[0] + 1)
    dense[(grid[:, 1] - lo[1]) * width + grid[:, 0] - lo[0]] = features
    return dense, dense_grid


def child(model_name: str, n: int) -> None:
    """One measured training step; prints a JSON line."""
    from span.memory import current_rss_mb, peak_rss_mb, reduce_heap_fragmentation, reset_peak_rss
    from span.models import build_model

    reduce_heap_fragmentation()  # as `span train` does
    torch.manual_seed(0)
    grid = blob_grid(n)
    features = torch.randn(n, IN_DIM)
    model = build_model("span" if model_name == "naive" else model_name, IN_DIM, 2)
    optimiser = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=5e-5)
    label = torch.tensor(1)
    reset_peak_rss()
    baseline = current_rss_mb()
    seconds = []
    for _ in range(STEPS):  # the first step is cold (allocator, optimiser state): not timed
        t0 = time.perf_counter()
        x, g = densify(features, grid) if model_name == "naive" else (features, grid)
        out = model(x, g)
        model.loss(out, label, 0.0).backward()
        optimiser.step()
        optimiser.zero_grad(set_to_none=True)
        model.after_step()
        seconds.append(time.perf_counter() - t0)
    peak = peak_rss_mb()
    warm = statistics.mean(seconds[1:])
    print(json.dumps({"peak_mb": peak - baseline, "seconds": warm, "baseline_mb": baseline}))


def window_generation_ms(n: int) -> float:
    """Median time to build every stage's windows and downsampling maps for N patches."""
    from span.models.sparse import downsampling, window_layout

    grid = blob_grid(n)
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        g = grid
        for stage in range(3):
            window_layout(g, 6)
            if stage < 2:
                g = downsampling(g).parent_grid
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def main() -> None:
    from span.models import MODELS

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10000, 25000, 50000, 100000])
    parser.add_argument("--models", nargs="+", default=[*sorted(MODELS), "naive"])
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], int(args.child[1]))
        return
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, fp32, {IN_DIM}-d input, "
        "one training step (forward + backward + AdamW)"
    )
    results: dict[tuple[str, int], dict] = {}
    for name in args.models:
        for n in args.sizes:
            proc = subprocess.run(
                [sys.executable, __file__, "--child", name, str(n)], capture_output=True, text=True
            )
            if proc.returncode != 0:
                tail = proc.stderr.strip().splitlines()[-1:] or ["killed"]
                results[name, n] = {"error": tail[0]}
            else:
                results[name, n] = json.loads(proc.stdout.strip().splitlines()[-1])
    header = f"{'model':<10}" + "".join(f"{n:>22,}" for n in args.sizes)
    print("\npeak memory above baseline (MB) / seconds per step")
    print(header)
    for name in args.models:
        cells = []
        for n in args.sizes:
            r = results[name, n]
            cells.append(
                "failed" if "error" in r else f"{r['peak_mb']:.0f} MB / {r['seconds']:.2f} s"
            )
        print(f"{name:<10}" + "".join(f"{c:>22}" for c in cells))
    big, quarter = max(args.sizes), max(args.sizes) // 4
    for name in args.models:
        a, b = results.get((name, big), {}), results.get((name, quarter), {})
        if "peak_mb" in a and "peak_mb" in b:
            print(
                f"{name}: memory {big:,} / {quarter:,} = {a['peak_mb'] / b['peak_mb']:.2f} "
                "(goal <= 4.2 for SPAN)"
            )
    span, abmil = results.get(("span", big), {}), results.get(("abmil", big), {})
    if "peak_mb" in span and "peak_mb" in abmil:
        print(
            f"SPAN / ABMIL at {big:,}: memory {span['peak_mb'] / abmil['peak_mb']:.2f}x "
            f"(goal <= 2, paper 1.67x on a GPU), time {span['seconds'] / abmil['seconds']:.2f}x "
            "(paper 4.4x)"
        )
    print(
        f"SPAN window generation for {big:,} patches (3 stages): {window_generation_ms(big):.1f} ms"
    )
    for (name, n), r in results.items():
        if "error" in r:
            print(f"{name} at {n:,} failed: {r['error']}")


if __name__ == "__main__":
    main()
