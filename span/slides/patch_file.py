"""The patch HDF5 file: `coords` and `grid` datasets plus provenance attributes.

`coords` (N x 2 int64, level-0 top-left x, y) follows CLAM/TRIDENT; `grid` (N x 2 int32,
column, row) = coords // patch_size_level0 is what SPAN consumes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from span.atomic import atomic_output
from span.h5io import open_h5, read_attrs, require_datasets, write_attrs


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


def write_patch_file(path: str | Path, patches: PatchSet) -> None:
    """Write atomically: a killed job leaves no file under `path`."""
    with atomic_output(path) as tmp, h5py.File(tmp, "w") as f:
        f.create_dataset("coords", data=np.asarray(patches.coords, np.int64).reshape(-1, 2))
        f.create_dataset("grid", data=np.asarray(patches.grid, np.int32).reshape(-1, 2))
        f.create_dataset("tissue_fraction", data=np.asarray(patches.tissue_fraction, np.float32))
        write_attrs(f, patches.attrs)


def read_patch_file(path: str | Path) -> PatchSet:
    """Read a patch file, with one clear error if it is missing, truncated or not ours."""
    fix = "delete it and re-run the patching stage"
    with open_h5(path, fix) as f:
        require_datasets(f, path, ("coords", "grid"), fix)
        coords = f["coords"][:]
        frac = f["tissue_fraction"][:] if "tissue_fraction" in f else np.ones(len(coords))
        return PatchSet(coords=coords, grid=f["grid"][:], tissue_fraction=frac, attrs=read_attrs(f))
