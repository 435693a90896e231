"""How long Snakemake takes to plan a cohort before its first job: `snakemake -n` (start-up,
config and sample-sheet checks, the job graph) on cohorts of 1,000 and 10,000 slides, raw
slides and features-only, with the shipped experiment `main` (5 models x 3 seeds).

Rows point at one small slide file (or one features file) each: planning reads no slide, it
only checks that each file is there, so the sizes do not matter. Nothing has run yet, so every
job is planned (the slowest case).

Goal (issue 26): 10,000 slides planned in under 30 s.

    python benchmarks/bench_planning.py [--slides 1000 10000] [--repeats 1]
"""

from __future__ import annotations

import argparse
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
import yaml

from span.slides.tiff_writer import write_pyramidal_tiff

REPO = Path(__file__).resolve().parents[1]
GOAL = 30.0


def cohort(root: Path, n: int, kind: str) -> Path:
    """A sample sheet of n slides, every row pointing at the same file."""
    if kind == "raw":
        source = root / "slide.tiff"
        if not source.exists():
            image = np.full((512, 512, 3), 200, np.uint8)
            write_pyramidal_tiff(source, image, 0.5, downsamples=(1,))
        rows = [f"s{i:05d}\t{source}\t{'tumor' if i % 2 else 'normal'}\t" for i in range(n)]
    else:
        source = root / "features.h5"
        if not source.exists():
            with h5py.File(source, "w") as f:
                f["features"] = np.zeros((4, 8), np.float32)
                f["coords"] = np.zeros((4, 2), np.int64)
        rows = [f"s{i:05d}\t\t{'tumor' if i % 2 else 'normal'}\t{source}" for i in range(n)]
    sheet = root / f"{kind}-{n}.tsv"
    sheet.write_text("slide_id\tpath\tlabel\tfeatures\n" + "\n".join(rows) + "\n")
    return sheet


def plan(root: Path, sheet: Path) -> tuple[float, int]:
    """Seconds of `snakemake -n` and the jobs it planned."""
    workdir = root / f"run-{sheet.stem}"
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir()
    shutil.copytree(REPO / "config", workdir / "config")
    cfg = {"cohort": "plan", "samples": str(sheet), "demo": {"generate": False}}
    (workdir / "plan.yaml").write_text(yaml.safe_dump(cfg))
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(workdir)]
    cmd += ["-n", "--quiet", "rules", "--configfile", "config/config.yaml", "plan.yaml"]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if done.returncode:
        sys.exit(f"planning failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    total = re.search(r"^total\s+(\d+)", done.stdout, re.MULTILINE)
    return seconds, int(total.group(1)) if total else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slides", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--repeats", type=int, default=1, help="median of this many runs")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        print(f"{'cohort':<28}{'jobs':>8}{'snakemake -n':>16}{'per slide':>12}")
        worst = 0.0
        for n in args.slides:
            for kind in ("raw", "features-only"):
                sheet = cohort(root, n, kind)
                runs = [plan(root, sheet) for _ in range(args.repeats)]
                seconds = statistics.median(s for s, _ in runs)
                print(
                    f"{f'{n:,} slides, {kind}':<28}{runs[0][1]:>8}{seconds:>14.1f} s"
                    f"{1000 * seconds / n:>9.1f} ms"
                )
                if n == max(args.slides):
                    worst = max(worst, seconds)
    verdict = "met" if worst < GOAL else "NOT MET"
    largest = max(args.slides)
    print(f"goal: {largest:,} slides planned in under {GOAL:.0f} s: {worst:.1f} s -> {verdict}")


if __name__ == "__main__":
    main()
