"""A full disk while writing features, a checkpoint or a report: one line naming the file and
the mount to free, the earlier finished file kept, no partial file left behind."""

from __future__ import annotations

import errno
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from span import cli
from span.atomic import mount_of, save_torch, write_text_atomic
from span.errors import SpanError
from span.features.feature_file import FeatureSet, read_feature_file, write_feature_file
from tests.workflow_helpers import REPO


def features(rows: int) -> FeatureSet:
    rng = np.random.default_rng(0)
    coords = np.arange(2 * rows).reshape(-1, 2)
    return FeatureSet(rng.random((rows, 64), np.float32), coords, coords, np.zeros((0, 2)), {})


#: Each kind of output, written through its writer: (file name, write it).
WRITERS = {
    "report": ("report.md", lambda path: write_text_atomic(path, "# report\n" * 20_000)),
    "checkpoint": ("checkpoint.pt", lambda path: save_torch(path, {"w": torch.ones(60_000)})),
    "features": ("s0.h5", lambda path: write_feature_file(path, features(2_000))),
}


def _half_then_full(write):
    """`Path.write_text`/`write_bytes` that write half of the data, then find the disk full."""

    def half(self: Path, data, *args, **kwargs):
        write(self, data[: len(data) // 2], *args, **kwargs)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))

    return half


def _h5_disk_full(*args, **kwargs):
    """h5py's error for a write on a full disk (its errno set, the file named in the text)."""
    raise OSError(
        errno.ENOSPC,
        "Can't synchronously write data (file write failed: errno = 28, error message = "
        "'No space left on device')",
    )


def _expected(path: Path) -> str:
    return (
        f"{path}: disk full while writing (No space left on device). Fix: free space on "
        f"{mount_of(path.parent)} and re-run; finished slides and results are kept"
    )


@pytest.mark.parametrize("kind", sorted(WRITERS))
def test_a_full_disk_is_one_line_and_keeps_the_finished_file(tmp_path, monkeypatch, kind):
    name, write = WRITERS[kind]
    out = tmp_path / name
    write(out)
    finished = out.read_bytes()
    monkeypatch.setattr(Path, "write_text", _half_then_full(Path.write_text))
    monkeypatch.setattr(Path, "write_bytes", _half_then_full(Path.write_bytes))
    monkeypatch.setattr("span.features.feature_file.create_checked", _h5_disk_full)
    with pytest.raises(SpanError) as caught:
        write(out)
    assert str(caught.value) == _expected(out)
    assert out.read_bytes() == finished and list(tmp_path.iterdir()) == [out]


@pytest.fixture
def tiny_disk(tmp_path):
    """A folder on a 64 KiB file system (tmpfs; skipped where this process cannot mount)."""
    folder = tmp_path / "disk"
    folder.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(folder)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small file system here: {mounted.stderr.strip()}")
    yield folder
    subprocess.run(["umount", str(folder)], check=True)


def _write_in_a_child(kind: str, path: Path) -> str:
    """Write in a fresh process, as a job does, and return the one line it failed with ('' when
    it completed): HDF5 keeps a file whose close failed open for the life of its process."""
    code = (
        "import sys; from tests.test_disk_full import WRITERS; from span.errors import SpanError\n"
        "try: WRITERS[sys.argv[1]][1](sys.argv[2])\n"
        "except SpanError as exc: print(exc)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, kind, str(path)], capture_output=True, text=True, cwd=REPO
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@pytest.mark.parametrize("kind", sorted(WRITERS))
def test_a_really_full_disk_is_one_line_and_a_rerun_with_space_completes(tiny_disk, kind):
    name = WRITERS[kind][0]
    assert _write_in_a_child(kind, tiny_disk / name) == _expected(tiny_disk / name)
    assert list(tiny_disk.iterdir()) == []  # nothing a later run could take for finished
    subprocess.run(["mount", "-o", "remount,size=64m", str(tiny_disk)], check=True)
    assert _write_in_a_child(kind, tiny_disk / name) == ""  # space freed: the write completes
    if kind == "features":
        assert len(read_feature_file(tiny_disk / name)) == 2_000


def test_the_cli_says_disk_full_in_one_line_for_any_write(monkeypatch, capsys):
    """A write outside span.atomic's (a library's own file) still gives the one line."""

    def fail(args):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/data/cache/x.bin")

    monkeypatch.setattr("span.preflight.run_checks", fail)
    monkeypatch.setattr(logging, "raiseExceptions", logging.raiseExceptions)  # main sets it
    assert cli.main(["check"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].endswith(
        "ERROR span: /data/cache/x.bin: disk full while writing (No space left on device). Fix: "
        f"free space on {mount_of('/data/cache')} and re-run; finished slides and results are "
        "kept"
    )
    logging.getLogger().handlers.clear()
