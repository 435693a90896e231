"""End-of-run summaries printed by the Snakefile: each failed job with its one error line, and
the slides the cohort excluded; and the results put back after a failed re-run, marked so that
the next run redoes their jobs.

Snakemake prints a job's error inside its job block and ends a run with "Look above for error
messages"; with many slides the one line that matters scrolls away. This gathers them.
"""

from __future__ import annotations

import os
import re
import signal
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from span.data.qc_summary import read_exclusions
from span.errors import SpanError

_FAILED_JOB = re.compile(r"^Error in rule (\S+):$")
_JOB_START = re.compile(r"^(?:local)?rule (\S+):$")
_FIELD = re.compile(r"^    (\w+):(?: (.*))?$")
_LOG_FIELD = re.compile(r"^(.+?)(?: \(check log file\(s\) for error details\))?$")
_FINISHED = re.compile(r"^Finished jobid: (\d+) ")
_RESOURCE = re.compile(r"\b(mem_mb|runtime)=(\d+)\b")
_SLURM_STATE = re.compile(r"SLURM status is: '(\w+)")
_COMMAND_END = re.compile(  # a shell command's CalledProcessError, as Snakemake prints it
    r"^Command '(?P<cmd>.*?)' (?:died with <Signals\.(?P<signal>\w+): \d+>"
    r"|returned non-zero exit status (?P<code>-?\d+))\.$",
    re.MULTILINE | re.DOTALL,
)
_ERROR = re.compile(r"^\S+ ERROR \S+: (.*)$")  # span.cli's log format
_RESTORED = re.compile(r"^Restored previous version of (.+) \(updating job failed\)\.$")


@dataclass(frozen=True)
class FailedJob:
    """A failed job of a Snakemake run: its rule, batch/slide/run (from its log's name), log
    file, what ended it (a signal such as SIGKILL, or a SLURM state such as OUT_OF_MEMORY; ''
    when the job exited by itself) and the mem_mb/runtime it had."""

    rule: str
    job: str
    log: str
    ended_by: str = ""
    resources: dict[str, int] = field(default_factory=dict)


def _blocks(lines: list[str]) -> Iterator[tuple[str, dict[str, str]]]:
    """Each unindented line with the `    key: value` fields indented under it (a field with
    no value on its line, such as `shell:`, takes the next line)."""
    header, fields, pending = "", {}, ""
    for line in lines:
        if not line.startswith(" "):
            yield header, fields
            header, fields, pending = line, {}, ""
        elif m := _FIELD.match(line):
            pending = "" if m.group(2) else m.group(1)
            fields.setdefault(m.group(1), m.group(2) or "")
        elif pending:
            fields[pending], pending = line.strip(), ""
    yield header, fields


def _signal_name(code: int) -> str:
    """The signal behind a shell's exit status (-9 from Python, 137 from bash: SIGKILL), or
    '' for a plain exit status."""
    number = -code if code < 0 else code - 128 if code > 128 else 0
    try:
        return signal.Signals(number).name if number else ""
    except ValueError:
        return ""


def _signals_by_command(text: str) -> list[tuple[str, str]]:
    """(shell command, signal) of each shell command that a signal ended."""
    found = []
    for m in _COMMAND_END.finditer(text):
        name = m.group("signal") or _signal_name(int(m.group("code")))
        if name:
            found.append((m.group("cmd"), name))
    return found


def _ended_by(fields: dict[str, str], signals: list[tuple[str, str]]) -> str:
    """What ended a failed job: the SLURM state in its message, or the signal that ended its
    shell command, '' when neither."""
    if m := _SLURM_STATE.search(fields.get("message", "")):
        return m.group(1)
    shell = fields.get("shell", "").strip()
    return next((name for cmd, name in signals if shell and shell in cmd), "")


def failed_jobs(snakemake_log: str | Path) -> list[FailedJob]:
    """Each failed job of a Snakemake run log, in order, once each (its last attempt); a job
    that a retry then finished is not listed."""
    text = Path(snakemake_log).read_text(errors="replace")
    signals = _signals_by_command(text)
    resources: dict[str, dict[str, int]] = {}
    jobs: dict[tuple[str, str, str], FailedJob] = {}
    failed_ids: dict[str, tuple[str, str, str]] = {}
    for header, fields in _blocks(text.splitlines()):
        jobid = fields.get("jobid", "")
        if _JOB_START.match(header):
            resources[jobid] = {
                k: int(v) for k, v in _RESOURCE.findall(fields.get("resources", ""))
            }
        elif m := _FAILED_JOB.match(header):
            rule = m.group(1)
            log = _LOG_FIELD.match(fields["log"]).group(1).split(", ")[0] if "log" in fields else ""
            marker = f"/logs/{rule}/"  # a batch, slide or run: logs/<rule>/<job>.log
            job = log.split(marker, 1)[1].removesuffix(".log") if marker in log else ""
            key = (rule, job, log)
            jobs.pop(key, None)  # a retry's failure: listed in the order of its last attempt
            jobs[key] = FailedJob(*key, _ended_by(fields, signals), resources.get(jobid, {}))
            failed_ids[jobid] = key
        elif (m := _FINISHED.match(header)) and m.group(1) in failed_ids:
            jobs.pop(failed_ids.pop(m.group(1)), None)
    return list(jobs.values())


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


def _raise(job: FailedJob, resource: str) -> str:
    """Which resource of the job's rule to raise, with the option that does it (twice what
    the job had, when its start in the log said)."""
    had = job.resources.get(resource)
    value = str(2 * had) if had else "<more>"
    return f"raise {resource} for {job.rule} (--set-resources {job.rule}:{resource}={value})"


def ended_line(job: FailedJob) -> str:
    """What a signal or the scheduler's state that ended a job means, and what to do: ''
    when the job exited by itself (its log says why)."""
    state = job.ended_by
    if state == "SIGKILL":
        return (
            f"killed by SIGKILL (out of memory?): {_raise(job, 'mem_mb')}; on a workstation, "
            "also cap the total with --resources mem_mb=<free MB>"
        )
    if state == "OUT_OF_MEMORY":
        return f"out of memory (SLURM OUT_OF_MEMORY): {_raise(job, 'mem_mb')}"
    if state in ("TIMEOUT", "DEADLINE"):
        return f"stopped at its time limit (SLURM {state}): {_raise(job, 'runtime')}"
    if state == "SIGTERM":
        return f"terminated by SIGTERM (time limit?): {_raise(job, 'runtime')}"
    if state == "CANCELLED":
        return "cancelled on the cluster (SLURM CANCELLED: scancel or an admin): re-run"
    if state == "PREEMPTED":
        return "preempted by another job (SLURM PREEMPTED): re-run, or add --slurm-requeue"
    if state in ("NODE_FAIL", "BOOT_FAIL"):
        return f"its node failed (SLURM {state}): re-run (that node is avoided)"
    if state.startswith("SIG"):
        last = error_line(job.log) if job.log else "no log"
        return f"killed by {state} (last log line: {last})"
    return ""


def failure_summary(snakemake_logs: str | Path | Sequence[str | Path]) -> str:
    """A block listing each failed job and its error line ('' when none failed), from the run's
    log file(s): what ended it when a signal or the cluster did, else its log's error line."""
    jobs = [job for log in _run_logs(snakemake_logs) for job in failed_jobs(log)]
    if not jobs:
        return ""
    lines = [f"{len(jobs)} job(s) failed:"]
    for job in jobs:
        what = ended_line(job) or (error_line(job.log) if job.log else "see the job's output above")
        lines.append(f"  {job.rule} {job.job}: {what}" if job.job else f"  {job.rule}: {what}")
        if job.log:
            lines.append(f"    log: {job.log}")
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
