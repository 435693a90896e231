"""Reader workers die with `span extract`, however it ends: a kill -9 leaves no process behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from span.features.worker_lifetime import die_with_parent
from span.slides.patching import PatchingParams, run_patching
from span.slides.tiff_writer import write_pyramidal_tiff
from span.synthetic.tissue import render_tissue

linux_only = pytest.mark.skipif(sys.platform != "linux", reason="PR_SET_PDEATHSIG is Linux's")


def _stat(pid: int) -> tuple[str, int, int] | None:
    """(state, ppid, start time) of a live process from /proc/<pid>/stat; None when gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = text[text.rindex(")") + 2 :].split()  # the name in (...) may hold spaces
    return fields[0], int(fields[1]), int(fields[19])


def _descendants(root: int) -> dict[int, int]:
    """pid -> start time of every live descendant of `root`."""
    parents, starts = {}, {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (stat := _stat(int(entry))) and stat[0] != "Z":
            parents[int(entry)], starts[int(entry)] = stat[1], stat[2]
    found, frontier = {}, [root]
    while frontier:
        parent = frontier.pop()
        for pid, ppid in parents.items():
            if ppid == parent and pid not in found:
                found[pid] = starts[pid]
                frontier.append(pid)
    return found


def _alive(processes: dict[int, int]) -> dict[int, int]:
    """Those still running (a zombie has exited; a reused pid has another start time)."""
    alive = {}
    for pid, start in processes.items():
        stat = _stat(pid)
        if stat and stat[0] != "Z" and stat[2] == start:
            alive[pid] = start
    return alive


def _commands(pids: dict[int, int]) -> list[str]:
    """Command lines, for the failure message ('' for one that has gone meanwhile)."""
    commands = []
    for pid in pids:
        try:
            commands.append(Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode())
        except FileNotFoundError:
            commands.append("")
    return commands


@linux_only
def test_kill_9_of_extract_leaves_no_worker_behind(tmp_path):
    image, *_ = render_tissue(1000, 1000, 0.5, tumour=True, seed=11, dust=False)
    slide = write_pyramidal_tiff(tmp_path / "slide.tiff", image, 0.5, downsamples=(1, 4, 16))
    patches = tmp_path / "patches.h5"
    assert len(run_patching(slide, "s", patches, tmp_path / "qc.png", PatchingParams())) > 8
    cmd = [sys.executable, "-m", "span", "extract", "--slide", str(slide), "--patches"]
    cmd += [str(patches), "--out", str(tmp_path / "f.h5"), "--weights", "random"]
    cmd += ["--batch-size", "4", "--flush-every", "4", "--num-workers", "1", "--threads", "1"]
    log = tmp_path / "extract.log"
    with log.open("w") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err)
    descendants: dict[int, int] = {}
    try:
        deadline = time.monotonic() + 120
        while "flushed 4/" not in log.read_text():  # a batch came back: the worker runs
            assert proc.poll() is None, f"extract ended early:\n{log.read_text()}"
            assert time.monotonic() < deadline, f"no batch after 120 s:\n{log.read_text()}"
            time.sleep(0.05)
        descendants = _descendants(proc.pid)
        assert descendants, "no reader worker was started"
        proc.kill()
        proc.wait()
        deadline = time.monotonic() + 10
        while _alive(descendants) and time.monotonic() < deadline:
            time.sleep(0.1)
        left = _alive(descendants)
        assert not left, f"still running 10 s after kill -9 of extract: {_commands(left)}"
    finally:
        proc.kill()
        proc.wait()
        for pid in _alive(descendants):  # a failed run must not leak its workers
            os.kill(pid, signal.SIGKILL)


@linux_only
def test_child_whose_parent_is_already_gone_kills_itself():
    """The race: the parent died before prctl, so the kernel will never send the signal."""
    code = "from span.features.worker_lifetime import die_with_parent as d; d(-1); print('alive')"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.returncode == -signal.SIGKILL and "alive" not in res.stdout


def test_a_no_op_off_linux(monkeypatch):
    monkeypatch.setattr(sys, "platform", "darwin")
    die_with_parent(-1)  # would SIGKILL this test process on Linux
