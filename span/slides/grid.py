"""One global patch grid from level-0 (0, 0): tissue fraction per cell, vectorised."""

from __future__ import annotations

import numpy as np


def grid_cells(width0: int, height0: int, patch_size0: int) -> tuple[int, int]:
    """Number of (columns, rows) of whole cells that fit inside the level-0 image."""
    return width0 // patch_size0, height0 // patch_size0


def cell_tissue_fraction(mask: np.ndarray, cell_px: int, n_cols: int, n_rows: int) -> np.ndarray:
    """Fraction of tissue pixels in each grid cell; `mask` is `cell_px` pixels per cell side.

    Returns (n_rows, n_cols) float32; the mask may extend beyond the last whole cell.
    """
    cells = mask[: n_rows * cell_px, : n_cols * cell_px]
    if cells.shape != (n_rows * cell_px, n_cols * cell_px):
        raise ValueError(f"mask {mask.shape} too small for {n_rows}x{n_cols} cells of {cell_px}")
    frac = cells.reshape(n_rows, cell_px, n_cols, cell_px).mean(axis=(1, 3), dtype=np.float32)
    return frac.astype(np.float32)


def select_cells(fraction: np.ndarray, min_fraction: float) -> np.ndarray:
    """Grid indices (column, row) int32 of cells with tissue fraction >= `min_fraction`."""
    rows, cols = np.nonzero(fraction >= min_fraction)
    return np.stack([cols, rows], axis=1).astype(np.int32).reshape(-1, 2)


def grid_to_coords(grid: np.ndarray, patch_size0: int) -> np.ndarray:
    """Level-0 top-left (x, y) int64 of each grid cell."""
    return grid.astype(np.int64) * int(patch_size0)


def coords_to_grid(coords: np.ndarray, patch_size0: int) -> np.ndarray:
    """Grid index (column, row) int32 of level-0 top-left coordinates."""
    return (np.asarray(coords, np.int64) // int(patch_size0)).astype(np.int32)
