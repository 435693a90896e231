"""The patch HDF5 file: `coords` and `grid` datasets plus provenance attributes.

`coords` (N x 2 int64, level-0 top-left x, y) follows CLAM/TRIDENT; `grid` (N x 2 int32,
column, row) = coords // patch_size_level0 is what SPAN consumes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from span.atomic import atomic_output
from span.errors import SpanError


@dataclass
class PatchSet:
    """Patches of one slide on the global grid, with the attributes describing them."""

    coords: np.ndarray
    grid: np.ndarray
    tissue_fraction: np.ndarray
    attrs: dict

    def __len__(self) -> int:
        return len(self.coords)

    @property
    def warnings(self) -> list[str]:
        return list(self.attrs.get("warnings", []))


#: Attributes holding lists of strings, stored as JSON text (HDF5 has no empty string lists).
JSON_ATTRS = ("warnings",)


def _encode(key: str, value):
    if key in JSON_ATTRS:
        return json.dumps(list(value))
    if isinstance(value, (list, tuple)):
        return np.asarray(value)
    return value


def _decode(key: str, value):
    if isinstance(value, bytes):
        value = value.decode()
    if key in JSON_ATTRS:
        return json.loads(value)
    if isinstance(value, np.generic):
        return value.item()
    return value


def write_patch_file(path: str | Path, patches: PatchSet) -> None:
    """Write atomically: a killed job leaves no file under `path`."""
    with atomic_output(path) as tmp, h5py.File(tmp, "w") as f:
        f.create_dataset("coords", data=np.asarray(patches.coords, np.int64).reshape(-1, 2))
        f.create_dataset("grid", data=np.asarray(patches.grid, np.int32).reshape(-1, 2))
        f.create_dataset("tissue_fraction", data=np.asarray(patches.tissue_fraction, np.float32))
        for key, value in patches.attrs.items():
            if value is not None:
                f.attrs[key] = _encode(key, value)


def read_patch_file(path: str | Path) -> PatchSet:
    """Read a patch file, with one clear error if it is missing, truncated or not ours."""
    path = Path(path)
    try:
        with h5py.File(path, "r") as f:
            missing = [k for k in ("coords", "grid") if k not in f]
            if missing:
                raise SpanError(
                    path,
                    f"not a patch file (missing dataset {', '.join(missing)})",
                    "delete it and re-run the patching stage",
                )
            coords = f["coords"][:]
            grid = f["grid"][:]
            frac = f["tissue_fraction"][:] if "tissue_fraction" in f else np.ones(len(coords))
            attrs = {k: _decode(k, v) for k, v in f.attrs.items()}
    except OSError as exc:
        raise SpanError(
            path, f"unreadable HDF5 file ({exc})", "delete it and re-run the stage that wrote it"
        ) from exc
    return PatchSet(coords=coords, grid=grid, tissue_fraction=frac, attrs=attrs)
