"""Index structures of a sparse slide: windows (Algorithm 1) and the 2x2 downsampling map.

A slide is N occupied cells of an integer grid (column, row). Windows and parents are found
with integer arithmetic, `unique` and one scatter into an index map: padding happens on
integer indices only, never on features, and there is no Python loop over windows or tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def check_grid(grid: torch.Tensor) -> torch.Tensor:
    """Validate an (N, 2) integer grid of (column, row) cells on the slide's global grid."""
    if grid.ndim != 2 or grid.shape[1] != 2:
        raise ValueError(f"grid must be (N, 2), got {tuple(grid.shape)}")
    if grid.dtype.is_floating_point:
        raise ValueError("grid must hold integer cell indices")
    grid = grid.long()
    if len(grid) and int(grid.min()) < 0:
        raise ValueError("grid cells must be >= 0 (the global grid starts at level-0 (0, 0))")
    return grid


@dataclass
class Windows:
    """One partition of the grid into side x side windows."""

    side: int
    window: torch.Tensor  # (N,) window index of each token
    slot: torch.Tensor  # (N,) position inside its window, row-major, in [0, side^2)
    index_map: torch.Tensor  # (W, side^2) token index per slot; N marks an empty slot

    @property
    def num_windows(self) -> int:
        return self.index_map.shape[0]

    @property
    def empty(self) -> torch.Tensor:
        """(W, side^2) True where a slot holds no token."""
        return self.index_map == len(self.window)


def make_windows(grid: torch.Tensor, side: int, offset: int = 0) -> Windows:
    """Windows of `side` cells anchored at grid (-offset, -offset): offset 0 = regular windows
    anchored at (0, 0); offset w = side/2 = the shifted windows (Algorithm 1's zero padding
    by w, done on the cell coordinates)."""
    n = len(grid)
    cell = grid + offset
    win_xy = torch.div(cell, side, rounding_mode="floor")
    local = cell - win_xy * side
    width = int(win_xy[:, 0].max()) + 1 if n else 1
    key = win_xy[:, 1] * width + win_xy[:, 0]
    keys, window = torch.unique(key, return_inverse=True)
    slot = local[:, 1] * side + local[:, 0]
    index_map = torch.full((len(keys) * side * side,), n, dtype=torch.long, device=grid.device)
    index_map[window * side * side + slot] = torch.arange(n, device=grid.device)
    return Windows(side, window, slot, index_map.view(len(keys), side * side))


@dataclass
class WindowLayout:
    """Everything a sparse window-attention layer needs for one stage's grid."""

    regular: Windows
    shifted: Windows | None  # None when shifted windows are switched off
    duplicate: torch.Tensor | None  # (N, side^2): shifted-window keys already in the regular one

    @property
    def side(self) -> int:
        return self.regular.side


def window_layout(grid: torch.Tensor, side: int, shift: bool = True) -> WindowLayout:
    """Regular windows anchored at (0, 0) and, when `shift`, windows offset by side/2."""
    if side < 2 or side % 2:
        raise ValueError(f"window side must be even and >= 2, got {side}")
    regular = make_windows(grid, side)
    if not shift:
        return WindowLayout(regular, None, None)
    shifted = make_windows(grid, side, offset=side // 2)
    # A token's shifted-window neighbour that shares its regular window is already counted.
    reg_win = torch.cat([regular.window, regular.window.new_tensor([-1])])
    keys_reg_win = reg_win[shifted.index_map[shifted.window]]  # (N, side^2)
    duplicate = keys_reg_win == regular.window[:, None]
    return WindowLayout(regular, shifted, duplicate)


def neighbour_pairs(layout: WindowLayout) -> torch.Tensor:
    """(E, 2) (query, key) pairs of the layout's neighbourhoods, each pair once."""
    n = len(layout.regular.window)
    parts = []
    reg = layout.regular.index_map[layout.regular.window]  # (N, side^2)
    parts.append(torch.where(reg < n, reg, -1))
    if layout.shifted is not None:
        sh = layout.shifted.index_map[layout.shifted.window]
        parts.append(torch.where((sh < n) & ~layout.duplicate, sh, -1))
    keys = torch.cat(parts, dim=1)
    query = torch.arange(n, device=keys.device)[:, None].expand_as(keys)
    valid = keys >= 0
    return torch.stack([query[valid], keys[valid]], dim=1)


@dataclass
class Downsampling:
    """The 2 x 2, stride-2 map from a grid to its parent grid."""

    parent_grid: torch.Tensor  # (P, 2)
    parent: torch.Tensor  # (N,) parent index of each cell
    child: torch.Tensor  # (N,) position inside the parent, row-major in [0, 4)
    children: torch.Tensor  # (P,) number of occupied children


def downsampling(grid: torch.Tensor) -> Downsampling:
    """Parent cells = unique(grid // 2); each cell's parent and its offset in the 2 x 2 block."""
    half = torch.div(grid, 2, rounding_mode="floor")
    width = int(half[:, 0].max()) + 1 if len(grid) else 1
    keys, parent = torch.unique(half[:, 1] * width + half[:, 0], return_inverse=True)
    parent_grid = torch.stack([keys % width, torch.div(keys, width, rounding_mode="floor")], 1)
    local = grid - half * 2
    children = torch.bincount(parent, minlength=len(parent_grid))
    return Downsampling(parent_grid, parent, local[:, 1] * 2 + local[:, 0], children)
