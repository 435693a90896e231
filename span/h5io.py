"""HDF5 helpers shared by the patch and feature files: attribute encoding, checksummed
datasets and clear errors (a damaged file that the workflow made: how to remake it alone)."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path

import h5py
import numpy as np

from span.batches import forget_damaged
from span.errors import SpanError

#: Attributes holding lists of strings, stored as JSON text (HDF5 has no empty string lists).
JSON_ATTRS = ("warnings",)


def write_attrs(obj: h5py.HLObject, attrs: dict) -> None:
    """Store a dict as HDF5 attributes (lists as arrays, `JSON_ATTRS` as JSON, None skipped)."""
    for key, value in attrs.items():
        if value is None:
            continue
        if key in JSON_ATTRS:
            value = json.dumps(list(value))
        elif isinstance(value, (list, tuple)):
            value = np.asarray(value)
        obj.attrs[key] = value


def read_attrs(obj: h5py.HLObject) -> dict:
    """The inverse of `write_attrs`: plain Python scalars, strings, arrays and lists.

    Tolerant of foreign files (other toolkits' `warnings`, undecodable bytes).
    """
    attrs = {}
    for key, value in obj.attrs.items():
        if isinstance(value, bytes):
            value = value.decode(errors="replace")
        elif isinstance(value, np.generic):
            value = value.item()
        if key in JSON_ATTRS:
            try:
                value = json.loads(value) if isinstance(value, str) else list(value)
            except (ValueError, TypeError):
                value = [str(value)]
        attrs[key] = value
    return attrs


def create_checked(f: h5py.Group, name: str, **kwargs: object) -> h5py.Dataset:
    """A dataset with a Fletcher-32 checksum of each chunk (`h5py` keyword arguments), checked
    by HDF5 on every read: data damaged after it was written fails, never reads as numbers."""
    return f.create_dataset(name, fletcher32=True, **kwargs)


def damaged_error(path: str | Path, reason: str, fix: str) -> SpanError:
    """The one line for a damaged file; for one that the workflow made, what vouches for it is
    dropped (`forget_damaged`) and the fix forces the re-run of the batch job that makes it."""
    if manifests := forget_damaged(path):
        again = " ".join(str(m) for m in manifests)
        fix = f"run snakemake again with --forcerun {again} (that batch job remakes it alone)"
    return SpanError(path, reason, fix)


@contextlib.contextmanager
def open_h5(path: str | Path, fix: str) -> Iterator[h5py.File]:
    """Open an HDF5 file for reading; a missing or damaged file is one clear SpanError."""
    path = Path(path)
    if not path.is_file():
        raise SpanError(path, "file not found", fix)
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise damaged_error(path, f"unreadable HDF5 file ({exc})", fix) from exc
    with f:
        yield f


def require_datasets(f: h5py.File, path: str | Path, names: tuple[str, ...], fix: str) -> None:
    """Fail with one line if any dataset is missing."""
    missing = [n for n in names if n not in f]
    if missing:
        raise SpanError(path, f"missing dataset(s) {', '.join(missing)}", fix)
