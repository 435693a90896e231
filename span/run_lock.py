"""A second `snakemake` on a working folder that a run holds: one line saying whether that run
is alive (wait for it) or was killed (unlock), in place of Snakemake's LockException text.

Snakemake records no process in its locks, so each run of this workflow leaves a record of its
process (`<.snakemake>/span-runs/<host>-<pid>`) from its start to its end; a killed run's
record stays, like its locks. Standard library only: the Snakefile imports this module.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path

RUNS_DIR = "span-runs"
SNAKEMAKE_LOGGER = "snakemake.logging"
UNLOCK = "run the same command with --unlock once, then again without it"


@dataclass(frozen=True)
class RunRecord:
    """A run of the workflow: its process id, host and start time."""

    pid: int
    host: str
    started: str

    def alive(self) -> bool | None:
        """Whether the process still runs (None: on another host, it cannot be told)."""
        if self.host != socket.gethostname():
            return None
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:  # another user's process
            return True
        return True

    def __str__(self) -> str:
        return f"pid {self.pid} on {self.host}, started {self.started}"


def _records(persistence: str | Path) -> list[RunRecord]:
    """The run records in a `.snakemake` folder (unreadable ones skipped)."""
    records = []
    for path in sorted(Path(persistence, RUNS_DIR).glob("*")):
        try:
            pid, host, started = path.read_text().split("\t")
            records.append(RunRecord(int(pid), host, started.strip()))
        except (OSError, ValueError):
            continue
    return records


def _record_path(persistence: str | Path, record: RunRecord) -> Path:
    return Path(persistence, RUNS_DIR, f"{record.host}-{record.pid}")


def record_run(persistence: str | Path) -> None:
    """At a run's start (it holds the locks): record this process, and drop the records of
    this host's runs that no longer run (killed; their locks were removed, or we would not
    hold ours)."""
    for old in _records(persistence):
        if old.alive() is False:
            _record_path(persistence, old).unlink(missing_ok=True)
    me = RunRecord(os.getpid(), socket.gethostname(), time.strftime("%Y-%m-%d %H:%M:%S"))
    path = _record_path(persistence, me)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"{me.pid}\t{me.host}\t{me.started}\n")


def end_run(persistence: str | Path) -> None:
    """At a run's end (success or failure): drop this process's record."""
    Path(persistence, RUNS_DIR, f"{socket.gethostname()}-{os.getpid()}").unlink(missing_ok=True)


def lock_line(persistence: str | Path, workdir: str | Path) -> str:
    """The one line for a run that finds `workdir` locked: which run holds it, and the fix."""
    records = _records(persistence)
    head = f"{workdir} is locked by another snakemake run"
    if alive := [r for r in records if r.alive()]:
        return f"{head} ({alive[0]}, still running): wait for it to finish, then run again"
    if elsewhere := [r for r in records if r.alive() is None]:
        return f"{head} ({elsewhere[0]}): if it still runs, wait for it; else {UNLOCK}"
    if records:
        return f"{head} that no longer runs ({records[-1]}; killed?): {UNLOCK}"
    return f"{head}: wait for it to finish; if none runs (one was killed), {UNLOCK}"


class _LockLine(logging.Filter):
    """Puts `lock_line` in place of the text of Snakemake's LockException."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "exception", None) == "LockException":
            record.msg, record.args = lock_line(Path.cwd() / ".snakemake", Path.cwd()), ()
        return True


def explain_lock_errors() -> None:
    """Make Snakemake print `lock_line` when it cannot lock the working folder (it raises
    LockException before any hook of the Snakefile runs, so a log filter is the one place)."""
    logger = logging.getLogger(SNAKEMAKE_LOGGER)
    for old in [f for f in logger.filters if isinstance(f, _LockLine)]:
        logger.removeFilter(old)
    logger.addFilter(_LockLine())
