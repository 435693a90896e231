"""End-of-run summaries printed by the Snakefile: each failed job with its one error line, and
the slides the cohort excluded; and the results put back after a failed re-run, marked so that
the next run redoes their jobs.

Snakemake prints a job's error inside its job block and ends a run with "Look above for error
messages"; with many slides the one line that matters scrolls away. This gathers them.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

from span.data.qc_summary import read_exclusions
from span.errors import SpanError

_FAILED_JOB = re.compile(r"^Error in rule (\S+):$")
_LOG = re.compile(r"^\s+log: (.+?)(?: \(check log file\(s\) for error details\))?$")
_ERROR = re.compile(r"^\S+ ERROR \S+: (.*)$")  # span.cli's log format
_RESTORED = re.compile(r"^Restored previous version of (.+) \(updating job failed\)\.$")


def failed_jobs(snakemake_log: str | Path) -> list[tuple[str, str, str]]:
    """(rule, job, log file) of each failed job in a Snakemake run log, in order, once each."""
    jobs: dict[tuple[str, str, str], None] = {}
    rule = None
    for line in Path(snakemake_log).read_text(errors="replace").splitlines():
        if m := _FAILED_JOB.match(line):
            rule = m.group(1)
        elif rule and (m := _LOG.match(line)):
            log = m.group(1).split(", ")[0]
            job = log.split(f"/logs/{rule}/", 1)[-1].removesuffix(".log")
            jobs[(rule, job if job != log else "", log)] = None
            rule = None
        elif rule and not line.startswith(" "):  # a failed job without a log file
            jobs[(rule, "", "")] = None
            rule = None
    return list(jobs)


def error_line(job_log: str | Path) -> str:
    """The one line that says what went wrong: span's ERROR line (with the exception of an
    unexpected error), else the log's last line."""
    path = Path(job_log)
    if not path.is_file():
        return "no log written (killed, or out of memory/time on the cluster?)"
    lines = [x for x in path.read_text(errors="replace").splitlines() if x.strip()]
    errors = [m.group(1) for x in lines if (m := _ERROR.match(x))]
    if not errors:
        return lines[-1].strip() if lines else "empty log"
    if _ERROR.match(lines[-1]):
        return errors[-1]
    return f"{errors[-1]} ({lines[-1].strip()})"  # a traceback follows: its last line


def _run_logs(snakemake_logs: str | Path | Sequence[str | Path]) -> list[Path]:
    """The run's log file(s), as Snakemake's `onerror` handler gets them (a path or a list)."""
    logs = [snakemake_logs] if isinstance(snakemake_logs, str | Path) else snakemake_logs
    return [Path(p) for p in logs if Path(p).is_file()]


def outdate_restored(snakemake_logs: str | Path | Sequence[str | Path]) -> list[str]:
    """Date the outputs Snakemake put back after a failed job (`update()` outputs) to 1970, so
    that they are older than their inputs, and return them. Snakemake records the failed job's
    params as if it had succeeded: the caller also drops that record (its input checksums would
    hide the old date), so the next run redoes the job instead of taking the old result for
    the new one."""
    restored = [
        m.group(1)
        for log in _run_logs(snakemake_logs)
        for line in log.read_text(errors="replace").splitlines()
        if (m := _RESTORED.match(line))
    ]
    for path in restored:
        if Path(path).exists():
            os.utime(path, (1, 1))  # not 0: Snakemake reads a zero mtime as "no time"
    return restored


def failure_summary(snakemake_logs: str | Path | Sequence[str | Path]) -> str:
    """A block listing each failed job and its error line ('' when none failed), from the run's
    log file(s)."""
    jobs = [job for log in _run_logs(snakemake_logs) for job in failed_jobs(log)]
    if not jobs:
        return ""
    lines = [f"{len(jobs)} job(s) failed:"]
    for rule, job, log in jobs:
        what = error_line(log) if log else "see the job's output above"
        lines.append(f"  {rule} {job}: {what}" if job else f"  {rule}: {what}")
        if log:
            lines.append(f"    log: {log}")
    return "\n".join(lines)


def exclusion_summary(qc_summary: str | Path) -> str:
    """A block listing the slides the QC summary excludes ('' when none, or no summary yet)."""
    try:
        excluded = read_exclusions(qc_summary)
    except SpanError:  # not written yet, or by an older version: nothing to say
        return ""
    if not excluded:
        return ""
    lines = [f"{len(excluded)} slide(s) excluded from training, evaluation and predictions:"]
    lines += [f"  {e.line()}" for e in excluded]
    lines.append(f"  (listed in {qc_summary} and in each report)")
    return "\n".join(lines)
