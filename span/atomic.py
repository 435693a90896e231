"""Atomic output files: write under a temporary name, rename when complete.

A killed job therefore never leaves a file that looks finished, and an existing finished output
is only replaced once its successor is complete. A write that fails on a full disk is one line
naming the file and the mount to free.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from span.errors import SpanError

if TYPE_CHECKING:
    import numpy as np


def temp_path_for(path: Path) -> Path:
    """The temporary name used while `path` is being written (same folder, same suffix)."""
    return path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")


#: Free bytes below which a failed write is taken for a full disk: torch's and other C++
#: writers report "file write failed" without the errno.
NEARLY_FULL = 1 << 20

#: Room kept free beyond the data of an HDF5 write (whole chunks, metadata): `require_space`.
HDF5_MARGIN = 16 << 20


def mount_of(path: str | Path) -> Path:
    """The mount point of the file system holding `path` (or its nearest existing parent)."""
    path = Path(path).absolute()
    while not path.exists() or not os.path.ismount(path):
        path = path.parent
    return path


def is_disk_full(exc: BaseException, folder: str | Path) -> bool:
    """Whether a failed write was a full disk or quota: ENOSPC/EDQUOT anywhere in the
    exception's chain (h5py and torch wrap it), or an I/O error with `folder`'s disk full."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        seen = seen.__cause__ or seen.__context__
    if not isinstance(exc, OSError | RuntimeError):
        return False
    try:
        return shutil.disk_usage(mount_of(folder)).free < NEARLY_FULL
    except OSError:
        return False


def disk_full_error(path: str | Path) -> SpanError:
    """The one line for a file that could not be written because its disk is full."""
    return SpanError(
        path,
        "disk full while writing (No space left on device)",
        f"free space on {mount_of(Path(path).parent)} and re-run; finished slides and results "
        "are kept",
    )


def require_space(path: str | Path, nbytes: int) -> None:
    """Fail with `disk_full_error` unless the disk of `path` has room for `nbytes` more (and
    `HDF5_MARGIN`). Checked before each HDF5 write: HDF5 (2.0) crashes the process when a
    write into a chunked dataset finds the disk full, instead of raising."""
    if shutil.disk_usage(mount_of(Path(path).parent)).free < nbytes + HDF5_MARGIN:
        raise disk_full_error(path)


@contextlib.contextmanager
def reporting_disk_full(path: str | Path) -> Iterator[None]:
    """Turn a write of `path` that fails on a full disk into `disk_full_error`."""
    try:
        yield
    except SpanError:
        raise
    except Exception as exc:
        if is_disk_full(exc, Path(path).parent):
            raise disk_full_error(path) from exc
        raise


@contextlib.contextmanager
def atomic_output(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path to write; rename it to `path` on success, delete it on failure
    (a full disk: one line, `disk_full_error`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path_for(path)
    try:
        with reporting_disk_full(path):
            yield tmp
            os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write a text file atomically."""
    with atomic_output(path) as tmp:
        tmp.write_text(text)


def save_torch(path: str | Path, obj: object) -> None:
    """`torch.save` atomically, through memory: saved to a file, the archive would record the
    temporary file's name, so identical objects would give different bytes."""
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    with atomic_output(path) as tmp:
        tmp.write_bytes(buf.getbuffer())


def write_png(path: str | Path, rgb: np.ndarray) -> None:
    """Write an RGB uint8 image (H, W, 3) as PNG atomically (QC images, heatmaps)."""
    import cv2

    with atomic_output(path) as tmp:
        if not cv2.imwrite(str(tmp), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)):
            raise OSError(f"could not write {path}")
