"""The end-of-run summary names what ended a failed job, a signal or the cluster's limit, with
the resource to raise; read from the logs of real Snakemake runs of a tiny workflow."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from span.run_summary import failed_jobs, failure_summary

LOGS = "results/tiny/logs"

# Each rule ends the way a job of the pipeline can: killed as the OOM killer kills (the
# shell's process itself, or a child it waits for: exit status 137), terminated as a time
# limit terminates, failed with span's error line, or killed once and then finished by a retry.
TINY_WORKFLOW = f"""
import sys
from span.run_summary import failure_summary

onerror:
    print(failure_summary(log), file=sys.stderr)

rule all:
    input: "out/extract", "out/patch", "out/train", "out/evaluate", "out/predict"

rule extract:
    output: "out/extract"
    log: "{LOGS}/extract/labelled-2.log"
    resources: mem_mb=8000, runtime=25
    shell: "echo 'flushed 32/400 patches' > {{log}}; kill -9 $$"

rule patch:
    output: "out/patch"
    log: "{LOGS}/patch/labelled-1.log"
    resources: mem_mb=2000
    shell: "echo 'patched 3 slides' > {{log}}; bash -c 'kill -9 $$'; touch {{output}}"

rule train:
    output: "out/train"
    log: "{LOGS}/train/tiny/span/seed0.log"
    resources: runtime=60
    shell: "echo 'epoch 3' > {{log}}; kill -TERM $$"

rule evaluate:
    output: "out/evaluate"
    log: "{LOGS}/evaluate/tiny.log"
    shell: "echo '12:00:00 ERROR span: x.h5: damaged. Fix: re-run' > {{log}}; exit 1"

rule predict:
    output: "out/predict"
    log: "{LOGS}/predict/tiny.log"
    retries: 1
    shell: "if [ -e out/tried ]; then touch {{output}}; else touch out/tried; kill -9 $$; fi"
"""


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """The tiny workflow run once (keep-going): its folder and the completed process."""
    root = tmp_path_factory.mktemp("signals")
    (root / "Snakefile").write_text(TINY_WORKFLOW)
    res = subprocess.run(
        [sys.executable, "-m", "snakemake", "-d", str(root), "--cores", "1", "--keep-going"],
        cwd=root,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"},
        timeout=120,
    )
    return root, res


def test_a_killed_job_is_named_with_the_resource_to_raise(tiny_run):
    _, res = tiny_run
    assert res.returncode != 0
    tail = res.stdout[res.stdout.index("4 job(s) failed:") :].splitlines()
    lines = {line.split(":")[0].strip(): line for line in tail[1::2]}
    assert lines["extract labelled-2"] == (
        "  extract labelled-2: killed by SIGKILL (out of memory?): raise mem_mb for extract "
        "(--set-resources extract:mem_mb=16000); on a workstation, also cap the total with "
        "--resources mem_mb=<free MB>"
    )
    assert lines["patch labelled-1"].startswith(
        "  patch labelled-1: killed by SIGKILL (out of memory?): raise mem_mb for patch "
        "(--set-resources patch:mem_mb=4000)"
    )
    assert lines["train tiny/span/seed0"] == (
        "  train tiny/span/seed0: terminated by SIGTERM (time limit?): raise runtime for train "
        "(--set-resources train:runtime=120)"
    )
    assert lines["evaluate tiny"] == "  evaluate tiny: x.h5: damaged. Fix: re-run"
    assert "predict" not in lines  # killed once, then finished by its retry
    after = tail[tail.index(lines["extract labelled-2"]) + 1]
    assert after == f"    log: {LOGS}/extract/labelled-2.log"


def test_the_log_of_a_run_lists_each_failed_job_once(tiny_run):
    root, _ = tiny_run
    (log,) = (root / ".snakemake" / "log").glob("*.snakemake.log")
    ended = {job.rule: job.ended_by for job in failed_jobs(log)}
    assert ended == {"extract": "SIGKILL", "patch": "SIGKILL", "train": "SIGTERM", "evaluate": ""}


SLURM_JOB = """rule extract:
    input: results/tiny/patches/s0.h5
    output: results/tiny/features/resnet50/batches/extract/labelled-2.tsv
    log: results/tiny/logs/extract/labelled-2.log
    jobid: 7
    wildcards: batch=labelled-2
    resources: mem_mb=16000, mem_mib=15259, disk_mb=1000, tmpdir=<TBD>, runtime=130, gpu=1
Job 7 has been submitted with SLURM jobid 4242 (log: .snakemake/slurm_logs/4242.log).
Error in rule extract:
    message: SLURM-job '4242' failed, SLURM status is: '{state}'. Reason: Step 0: None.
    jobid: 7
    output: results/tiny/features/resnet50/batches/extract/labelled-2.tsv
    log: results/tiny/logs/extract/labelled-2.log, .snakemake/slurm_logs/4242.log (check log \
file(s) for error details)
Exiting because a job execution failed. Look above for error messages
"""


@pytest.mark.parametrize(
    "state, line",
    [
        (
            "OUT_OF_MEMORY",
            "out of memory (SLURM OUT_OF_MEMORY): raise mem_mb for extract "
            "(--set-resources extract:mem_mb=32000)",
        ),
        (
            "TIMEOUT",
            "stopped at its time limit (SLURM TIMEOUT): raise runtime for extract "
            "(--set-resources extract:runtime=260)",
        ),
        ("CANCELLED", "cancelled on the cluster (SLURM CANCELLED: scancel or an admin): re-run"),
        ("PREEMPTED", "preempted by another job (SLURM PREEMPTED): re-run, or add --slurm-requeue"),
        ("NODE_FAIL", "its node failed (SLURM NODE_FAIL): re-run (that node is avoided)"),
    ],
)
def test_a_job_the_cluster_ended_is_named_with_its_state(tmp_path, state, line):
    """The SLURM executor plugin's words (snakemake-executor-plugin-slurm 2.8, its job status
    check) for a job that SLURM ended; no cluster runs here to produce them."""
    log = tmp_path / "run.log"
    log.write_text(SLURM_JOB.format(state=state))
    assert failure_summary(log).splitlines()[1] == f"  extract labelled-2: {line}"
