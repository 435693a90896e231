"""A second `snakemake` on a results folder that another run holds: one line saying whether
that run is alive (wait) or was killed (--unlock), from the workflow's Snakefile."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

from span.run_lock import end_run, record_run
from tests.test_workflow import small_slide
from tests.workflow_helpers import TINY, base_config, snakemake, write_sheet


def _locked_folder(tmp_path):
    """A work folder whose Snakemake locks (as Snakemake writes them) hold the QC summary."""
    small_slide(tmp_path / "a.tiff", 1)
    sheet = write_sheet(tmp_path / "s.tsv", [("a", "a.tiff", "normal")])
    locks = tmp_path / ".snakemake" / "locks"
    locks.mkdir(parents=True)
    (locks / "0.output.lock").write_text(f"{TINY.qc_summary}\n")
    return base_config(sheet)


def _lock_line(res) -> str:
    assert res.returncode != 0
    lines = [x for x in res.stdout.splitlines() if "is locked by another snakemake run" in x]
    assert len(lines) == 1 and "Directory cannot be locked" not in res.stdout, res.stdout[-2000:]
    return lines[0]


def test_a_run_that_was_killed_is_named_with_the_unlock_fix(tmp_path):
    config = _locked_folder(tmp_path)
    # The run that holds the locks recorded itself at its start, then died (killed).
    code = "from span.run_lock import record_run; record_run('.snakemake')"
    subprocess.run([sys.executable, "-c", code], cwd=tmp_path, check=True)
    res = snakemake(tmp_path, "--cores", "1", TINY.qc_summary, config=config)
    line = _lock_line(res)
    assert line.startswith(
        f"{tmp_path} is locked by another snakemake run that no longer runs (pid "
    )
    assert line.endswith(
        "; killed?): run the same command with --unlock once, then again without it"
    )
    # The fix works: once unlocked, the folder is free.
    unlocked = snakemake(tmp_path, "--unlock", config=config)
    assert unlocked.returncode == 0, unlocked.stdout[-2000:]
    res = snakemake(tmp_path, "-n", TINY.qc_summary, config=config)
    assert res.returncode == 0 and "cannot be locked" not in res.stdout, res.stdout[-2000:]


def test_a_run_still_alive_is_named_with_the_wait_fix(tmp_path):
    config = _locked_folder(tmp_path)
    record_run(tmp_path / ".snakemake")  # this process: alive
    try:
        res = snakemake(tmp_path, "--cores", "1", TINY.qc_summary, config=config)
    finally:
        end_run(tmp_path / ".snakemake")
    line = _lock_line(res)
    assert line == (
        f"{tmp_path} is locked by another snakemake run (pid {os.getpid()} on "
        f"{socket.gethostname()}, started {line.split(', started ')[1].split(',')[0]}, still "
        "running): wait for it to finish, then run again"
    )


def test_locks_without_a_record_name_both_fixes(tmp_path):
    config = _locked_folder(tmp_path)
    line = _lock_line(snakemake(tmp_path, "--cores", "1", TINY.qc_summary, config=config))
    assert line == (
        f"{tmp_path} is locked by another snakemake run: wait for it to finish; if none runs "
        "(one was killed), run the same command with --unlock once, then again without it"
    )


def test_a_run_drops_the_records_of_killed_runs_and_its_own_at_its_end(tmp_path):
    code = "from span.run_lock import record_run; record_run('.snakemake')"
    subprocess.run([sys.executable, "-c", code], cwd=tmp_path, check=True)  # then killed
    records = tmp_path / ".snakemake" / "span-runs"
    assert len(list(records.iterdir())) == 1
    record_run(tmp_path / ".snakemake")
    assert [p.name for p in records.iterdir()] == [f"{socket.gethostname()}-{os.getpid()}"]
    end_run(tmp_path / ".snakemake")
    assert not list(records.iterdir())
