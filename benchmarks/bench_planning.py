"""How long Snakemake takes to plan a cohort before its first job, on cohorts of 1,000 and
10,000 slides, raw slides and features-only, with the shipped experiment `main` (5 models x
3 seeds): the time from starting `snakemake --cores 1` until it starts its first job (start-up,
config and sample-sheet checks, the job graph; the run is then stopped), and, for comparison,
the whole `snakemake -n` (which also formats and lists every job it would run).

Rows point at one small slide file (or one features file) each: planning reads no slide, it
only checks that each file is there, so the sizes do not matter. Nothing has run yet, so every
job is planned (the slowest case).

Goal (issue 26): 10,000 slides planned (first job started) in under 30 s.

    python benchmarks/bench_planning.py [--slides 1000 10000] [--repeats 1]
"""

from __future__ import annotations

import argparse
import re
import shutil
import signal
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
        rows = [f"s{i:05d}\t{source}\t{'clumped' if i % 2 else 'scattered'}\t" for i in range(n)]
    else:
        source = root / "features.h5"
        if not source.exists():
            with h5py.File(source, "w") as f:
                f["features"] = np.zeros((4, 8), np.float32)
                f["coords"] = np.zeros((4, 2), np.int64)
        rows = [f"s{i:05d}\t\t{'clumped' if i % 2 else 'scattered'}\t{source}" for i in range(n)]
    sheet = root / f"{kind}-{n}.tsv"
    sheet.write_text("slide_id\tpath\tlabel\tfeatures\n" + "\n".join(rows) + "\n")
    return sheet


def workdir_for(root: Path, sheet: Path) -> tuple[Path, list[str]]:
    """A fresh working folder for the cohort and the snakemake command that runs it."""
    workdir = root / f"run-{sheet.stem}"
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir()
    shutil.copytree(REPO / "config", workdir / "config")
    cfg = {"cohort": "plan", "samples": str(sheet), "demo": {"generate": False}}
    (workdir / "plan.yaml").write_text(yaml.safe_dump(cfg))
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(workdir)]
    return workdir, [*cmd, "--configfile", "config/config.yaml", "plan.yaml"]


#: Rules whose jobs come before training and run as cluster jobs (the link_* rules are local).
BEFORE_TRAINING = ("demo_slides", "patch", "extract", "import_features", "qc_summary", "split")


def dry_run(root: Path, sheet: Path) -> tuple[float, dict[str, int]]:
    """Seconds of `snakemake -n` and the jobs it planned per rule (and `total`)."""
    workdir, cmd = workdir_for(root, sheet)
    t0 = time.perf_counter()
    args = [*cmd, "-n", "--quiet", "rules"]
    done = subprocess.run(args, cwd=workdir, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if done.returncode:
        sys.exit(f"planning failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    table = done.stdout[done.stdout.index("Job stats:") :]
    counts = dict(re.findall(r"^(\w+)\s+(\d+)$", table, re.MULTILINE))
    return seconds, {rule: int(n) for rule, n in counts.items()}


def to_first_job(root: Path, sheet: Path) -> float:
    """Seconds from starting a real run until its first job starts (then the run is stopped)."""
    workdir, cmd = workdir_for(root, sheet)
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [*cmd, "--cores", "1"],
        cwd=workdir,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    seconds = None
    for line in proc.stdout:
        if re.match(r"^(local)?rule \w+:", line):
            seconds = time.perf_counter() - t0
            break
    proc.send_signal(signal.SIGINT)
    try:
        proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()
    if seconds is None:
        sys.exit("the run ended before its first job")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slides", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--repeats", type=int, default=1, help="median of this many runs")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        print(f"{'cohort':<28}{'jobs':>8}{'to first job':>16}{'per slide':>12}{'snakemake -n':>16}")
        worst, cluster = 0.0, {}
        for n in args.slides:
            for kind in ("raw", "features-only"):
                sheet = cohort(root, n, kind)
                first = statistics.median(to_first_job(root, sheet) for _ in range(args.repeats))
                dry = [dry_run(root, sheet) for _ in range(args.repeats)]
                counts = dry[0][1]
                print(
                    f"{f'{n:,} slides, {kind}':<28}{counts['total']:>8}{first:>14.1f} s"
                    f"{1000 * first / n:>9.1f} ms{statistics.median(s for s, _ in dry):>14.1f} s"
                )
                if n == max(args.slides):
                    worst = max(worst, first)
                if kind == "raw":
                    cluster[n] = {r: counts[r] for r in BEFORE_TRAINING if r in counts}
        for n, counts in cluster.items():
            listed = ", ".join(f"{rule} {k}" for rule, k in counts.items())
            print(
                f"cluster jobs before training, {n:,} raw slides: {sum(counts.values())} ({listed})"
            )
    verdict = "met" if worst < GOAL else "NOT MET"
    largest = max(args.slides)
    print(
        f"goal: {largest:,} slides planned (first job started) in under {GOAL:.0f} s: "
        f"{worst:.1f} s -> {verdict}"
    )


if __name__ == "__main__":
    main()
