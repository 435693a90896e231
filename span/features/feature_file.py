"""The features HDF5 file: `features` (N x D), `coords`, `grid`, `bad_tiles` and attributes.

The layout is a superset of CLAM's and TRIDENT's (`features` + `coords`), so their readers
load ours; `grid` is what SPAN consumes. The patch file's attributes are copied over. Rows are
the readable patches only: `bad_tiles` holds the level-0 coordinates (K x 2) of the tiles that
could not be read and were left out, and the attributes `tiles_total` and `bad_tile_share`
say how many patches the slide had and which share of them was lost. Every dataset carries
HDF5's Fletcher-32 checksum (`create_checked`): a file damaged after it was written fails on
read with one line, naming, for a file that the workflow made, the batch job to re-run.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from span.atomic import atomic_output, require_space
from span.errors import SpanError
from span.h5io import (
    create_checked,
    damaged_error,
    open_h5,
    read_attrs,
    require_datasets,
    write_attrs,
)

FEATURE_DTYPES = {"float32": np.float32, "float16": np.float16}


@dataclass
class FeatureSet:
    """Features of one slide's patches, aligned row by row with their coordinates."""

    features: np.ndarray
    coords: np.ndarray
    grid: np.ndarray
    bad_tiles: np.ndarray  # (K, 2) level-0 coords of unreadable tiles, not in the rows
    attrs: dict

    def __len__(self) -> int:
        return len(self.features)

    @property
    def feature_dim(self) -> int:
        return int(self.features.shape[1])


def write_feature_file(path: str | Path, fs: FeatureSet) -> None:
    """Write a complete features file atomically (a full disk: one line, checked first)."""
    require_space(path, fs.features.nbytes + 2 * np.asarray(fs.coords).nbytes)  # + grid
    with atomic_output(path) as tmp, h5py.File(tmp, "w") as f:
        create_checked(f, "features", data=fs.features)
        create_checked(f, "coords", data=np.asarray(fs.coords, np.int64).reshape(-1, 2))
        create_checked(f, "grid", data=np.asarray(fs.grid, np.int32).reshape(-1, 2))
        create_checked(f, "bad_tiles", data=np.asarray(fs.bad_tiles, np.int64).reshape(-1, 2))
        write_attrs(f, {**fs.attrs, "feature_dim": fs.feature_dim})


def read_feature_file(
    path: str | Path, expected_dim: int | None = None, with_attrs: bool = True
) -> FeatureSet:
    """Read and check a features file: datasets present, rows aligned, width as expected.

    `with_attrs=False` leaves `attrs` empty: a training epoch reads every bag, and decoding
    a file's ~40 attributes took two thirds of that read."""
    fix = "delete it and re-run feature extraction (or fix the sample sheet's features path)"
    with open_h5(path, fix) as f:
        require_datasets(f, path, ("features", "coords", "grid"), fix)
        try:
            features = f["features"][:]
            coords = f["coords"][:]
            grid = f["grid"][:]
            bad = f["bad_tiles"][:] if "bad_tiles" in f else np.zeros((0, 2), np.int64)
        except OSError as exc:  # a checksum that does not match, or data cut off
            raise damaged_error(
                path, f"damaged data, checksum mismatch or cut off ({exc})", fix
            ) from exc
        attrs = read_attrs(f) if with_attrs else {}
    if features.ndim != 2 or len(features) != len(coords) or len(grid) != len(coords):
        raise SpanError(
            path,
            f"misaligned datasets (features {features.shape}, coords {coords.shape}, "
            f"grid {grid.shape})",
            fix,
        )
    if expected_dim is not None and features.shape[1] != expected_dim:
        raise SpanError(
            path,
            f"features are {features.shape[1]}-d but {expected_dim}-d are expected",
            "use one encoder and layer for the whole cohort (re-extract or re-import this slide)",
        )
    return FeatureSet(features, coords, grid, bad, attrs)
