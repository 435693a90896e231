"""Running the workflow in tests: Snakemake in a work folder, sample sheets, a small config
and the jobs a dry run plans (test_workflow, test_tiny_cohort, test_slurm)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

from span.outputs import Layout

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile")]


def snakemake(workdir: Path, *args: str, config: dict | None = None):
    """Run snakemake in `workdir` (with a config written there); return the completed process."""
    cmd = [*SNAKEMAKE, "-d", str(workdir), *args]
    if config is not None:
        cfg = workdir / "config.yaml"
        cfg.write_text(yaml.safe_dump(config))
        cmd += ["--configfile", str(cfg)]
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, timeout=600
    )


def write_sheet(path: Path, rows: list[tuple], header=("slide_id", "path", "label")) -> Path:
    lines = ["\t".join(header)] + ["\t".join(map(str, r)) for r in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


#: Where base_config's cohort writes (relative to the workdir).
TINY = Layout("tiny", "resnet50-layer3")


def base_config(sheet: Path) -> dict:
    return {
        "cohort": "tiny",
        "samples": str(sheet),
        "classes": ["normal", "tumor"],
        "demo": {"generate": False},
        # Small and fast: layer3 of a seeded random ResNet50, one thread, no reader processes.
        "features": {"weights": "random", "layer": "layer3", "threads": 1, "num_workers": 0},
    }


def planned_jobs(res: subprocess.CompletedProcess) -> dict[str, int]:
    """Job counts per rule from the `Job stats` table of a dry run ({} when nothing to do)."""
    assert res.returncode == 0, res.stdout[-3000:]
    counts = {}
    lines = res.stdout.splitlines()
    start = lines.index("Job stats:") if "Job stats:" in lines else len(lines)
    for line in lines[start:]:
        parts = line.split()
        if parts and parts[0] == "total":
            break
        if len(parts) == 2 and parts[1].isdigit():
            counts[parts[0]] = int(parts[1])
    return counts
