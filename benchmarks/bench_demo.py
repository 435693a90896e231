"""`make demo` from a clean clone, timed as a new user runs it: install, then the workflow,
with the wall time of each stage and the demo's main table, as printed by its report.

The machine's speed varies (a shared VM can run the same work 40% slower in another hour), so
the script also prints ResNet-18 patches/s on one thread before and after the run: a demo
time is only comparable with another at the same calibration.

    python benchmarks/bench_demo.py [--workdir /tmp/span-demo] [--keep]
"""

from __future__ import annotations

import argparse
import logging
import re
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import torch
from bench_encoders import patches_per_second

from span import outputs as files
from span.evaluation.results_files import read_results

REPO = Path(__file__).resolve().parents[1]

#: The workflow's stages, by the rules that make them.
STAGES = {
    "slides, patching, features": (
        "demo_slides",
        "link_demo_slide",
        "patch",
        "link_patches",
        "extract",
        "link_features",
    ),
    "training, predictions, report": ("qc_summary", "split", "train", "predict", "evaluate"),
}


def calibration() -> float:
    """ResNet-18 patches per second on one CPU thread (random weights, 64 timed patches)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return patches_per_second("resnet18", torch.device("cpu"), 32, 64)
    finally:
        torch.set_num_threads(threads)


def timed(command: list[str], cwd: Path, log: Path) -> float:
    """Run `command` with its output in `log`; seconds taken (a failure stops the script)."""
    t0 = time.perf_counter()
    with log.open("w") as out:
        done = subprocess.run(command, cwd=cwd, stdout=out, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        sys.exit(f"{' '.join(command)} failed (exit {done.returncode}): see {log}")
    return time.perf_counter() - t0


def _stage(rule: str | None) -> str | None:
    """The stage a rule belongs to (None for `all` and unknown rules)."""
    return next((stage for stage, rules in STAGES.items() if rule in rules), None)


def stage_spans(snakemake_log: Path) -> dict[str, tuple[datetime, datetime]]:
    """First job start and last job end of each stage, from Snakemake's timestamped log."""
    stamp, rule, rule_of_job, spans = None, None, {}, {}
    for line in (line.strip() for line in snakemake_log.read_text().splitlines()):
        if m := re.fullmatch(r"\[(\w{3} \w{3} +\d+ [\d:]+ \d{4})\]", line):
            stamp = datetime.strptime(" ".join(m.group(1).split()), "%a %b %d %H:%M:%S %Y")
        elif m := re.fullmatch(r"(?:local)?rule (\w+):", line):
            rule = m.group(1)
        elif (m := re.fullmatch(r"jobid: (\d+)", line)) and (stage := _stage(rule)):
            rule_of_job[m.group(1)] = rule
            first, last = spans.get(stage, (stamp, stamp))
            spans[stage] = (min(first, stamp), max(last, stamp))
        elif (m := re.fullmatch(r"Finished job(?:id:)? (\d+)\.?(?: \(.*\))?", line)) and (
            stage := _stage(rule_of_job.get(m.group(1)))
        ):
            first, last = spans[stage]
            spans[stage] = (first, max(last, stamp))
    return spans


def main_table(report: Path) -> str:
    """The 'Main results' table of the demo's report: method, accuracy, AUC and p-value."""
    lines = report.read_text().splitlines()
    first = lines.index("## Main results")
    first = next(i for i in range(first, len(lines)) if lines[i].startswith("| Method"))
    last = next((i for i in range(first, len(lines)) if not lines[i].startswith("|")), len(lines))
    return "\n".join("|".join(row.split("|")[:5]) + "|" for row in lines[first:last])


def auc_per_seed(results: Path) -> str:
    """Test AUC of every method on every seed (a result counts when it holds on each)."""
    table = read_results(results, ["method", "seed", "auc"])
    wide = table.pivot_table(index="method", columns="seed", values="auc", sort=False)
    return "\n".join(
        f"{method:24s} " + "  ".join(f"{v:.3f}" for v in row) for method, row in wide.iterrows()
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, help="where to clone (default: a temp folder)")
    parser.add_argument("--keep", action="store_true", help="keep the clone and its results")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)  # the random-weights warning of the calibration
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="span-demo-"))
    clone = workdir / "clone"
    if clone.exists():
        shutil.rmtree(clone)
    workdir.mkdir(parents=True, exist_ok=True)
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
    ).stdout.strip()
    before = calibration()
    subprocess.run(["git", "clone", "--quiet", str(REPO), str(clone)], check=True)
    install = timed(["make", "venv"], clone, workdir / "install.log")
    workflow = timed(["make", "demo"], clone, workdir / "demo.log")
    after = calibration()

    print(f"make demo from a clean clone of {commit}, {torch.get_num_threads()} CPU threads")
    print(f"ResNet-18 patches/s on one thread: {before:.1f} before, {after:.1f} after")
    print(f"{'install (make venv)':32s} {install / 60:6.1f} min")
    for stage, (first, last) in stage_spans(workdir / "demo.log").items():
        print(f"{stage:32s} {(last - first).total_seconds() / 60:6.1f} min")
    print(f"{'workflow (make demo)':32s} {workflow / 60:6.1f} min")
    total = install + workflow
    print(f"{'total':32s} {total / 60:6.1f} min = {int(total // 60)} min {total % 60:.0f} s")
    demo = files.Layout("demo", "resnet18-layer4")
    print(main_table(clone / demo.experiment("main", files.REPORT_MD)))
    print("test AUC per seed:")
    print(auc_per_seed(clone / demo.experiment("main", files.RESULTS_PER_SEED_CSV)))
    if not args.keep:
        shutil.rmtree(workdir)


if __name__ == "__main__":
    main()
