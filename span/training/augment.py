"""Training-time augmentation of a slide's (features, grid): what a slide would look like had
it been scanned turned, mirrored, sheared, placed elsewhere on the glass, or with other
patches lost.

Models that read the grid (SPAN) see their windows and 2 x 2 downsampling cells fall
differently on every step; permutation-invariant models only see the patch dropout.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from span.settings.options import check_values
from span.settings.stages import TrainSettings


def dihedral(grid: torch.Tensor, k: int) -> torch.Tensor:
    """The grid (N, 2) turned and mirrored by one of the 8 symmetries of the square (k in 0..7:
    bit 0 mirrors x, bit 1 mirrors y, bit 2 swaps the axes), moved back to its bounding box's
    original corner so that cells stay >= 0."""
    corner = grid.min(dim=0).values
    x, y = grid[:, 0], grid[:, 1]
    if k & 1:
        x = -x
    if k & 2:
        y = -y
    out = torch.stack([y, x] if k & 4 else [x, y], dim=1)
    return out - out.min(dim=0).values + corner


#: The SPAN authors' coordinate augmentation (wwyi1828/SPAN): each transform's probability,
#: the largest shear and rotation jitter in degrees (at full strength).
AFFINE_P = 0.75
AFFINE_SHEAR_DEG = 10.0
AFFINE_JITTER_DEG = 30.0


def affine_cells(
    grid: torch.Tensor, generator: torch.Generator, strength: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """The authors' augmentation of a grid (N, 2): with p 0.75 each, a mirror, a shear by up to
    10 degrees and a rotation by k x 90 +- 30 degrees (the shear and the jitter scaled by
    `strength`), about the grid's centre; cells rounded back to integers and moved to the grid's
    original corner. Returns (cells (M, 2), kept (M,) indices into grid): where two patches
    land on one cell (a sparse grid holds one patch per cell) a random one of them is kept."""

    def draw() -> float:
        return float(torch.rand((), generator=generator))

    xy = grid.double()
    centre = xy.mean(dim=0)
    xy = xy - centre
    transform = torch.eye(2, dtype=torch.float64)
    if draw() < AFFINE_P:
        transform = torch.diag(torch.tensor([-1.0, 1.0], dtype=torch.float64)) @ transform
    if draw() < AFFINE_P:
        shear = math.tan(math.radians((2 * draw() - 1) * AFFINE_SHEAR_DEG * strength))
        axis = int(draw() < 0.5)
        s = torch.eye(2, dtype=torch.float64)
        s[axis, 1 - axis] = shear
        transform = s @ transform
    if draw() < AFFINE_P:
        turn = int(4 * draw()) * 90 + (2 * draw() - 1) * AFFINE_JITTER_DEG * strength
        c, si = math.cos(math.radians(turn)), math.sin(math.radians(turn))
        transform = torch.tensor([[c, -si], [si, c]], dtype=torch.float64) @ transform
    cells = torch.round(xy @ transform.T + centre).long()
    cells = cells - cells.min(dim=0).values + grid.min(dim=0).values.cpu()
    order = torch.randperm(len(cells), generator=generator)
    width = int(cells[:, 0].max()) + 1
    key = cells[order, 1] * width + cells[order, 0]
    _, inverse = torch.unique(key, return_inverse=True)
    first = torch.full((int(inverse.max()) + 1,), len(key), dtype=torch.long)
    first.scatter_reduce_(0, inverse, torch.arange(len(key)), reduce="amin")
    kept = order[first].sort().values
    return cells[kept], kept


def cosine_strength(progress: float) -> float:
    """The authors' augmentation strength at `progress` (0 = first epoch, 1 = the end): a half
    cosine from 1 to 0."""
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, max(0.0, progress))))


_DEFAULT = TrainSettings()


@dataclass(frozen=True)
class Augmentation:
    """Random symmetry, translation and patch dropout, drawn afresh for every training step
    (defaults: `span train`'s)."""

    flips: bool = _DEFAULT.flips  # one of the 8 rotations / reflections of the grid
    translate: int = _DEFAULT.translate  # shift the grid by 0 .. translate - 1 cells per axis
    patch_drop: float = _DEFAULT.patch_drop  # share of the patches left out
    affine: bool = _DEFAULT.affine  # the authors' mirror, shear and rotation (`affine_cells`)

    def __post_init__(self) -> None:
        check_values(self, TrainSettings)

    @property
    def active(self) -> bool:
        return self.flips or self.translate > 1 or self.patch_drop > 0 or self.affine

    def __call__(
        self,
        features: torch.Tensor,
        grid: torch.Tensor,
        generator: torch.Generator,
        progress: float = 0.0,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(features (N, D), grid (N, 2)) -> an augmented copy (at least one patch kept);
        `progress` (0..1 through training) sets the affine strength. Draws on the CPU
        generator, so runs are reproducible on any device."""
        if self.affine:
            cells, kept = affine_cells(grid.cpu(), generator, cosine_strength(progress))
            kept = kept.to(features.device)
            features, grid = features[kept], cells.to(grid.device)
        if self.flips:
            grid = dihedral(grid, int(torch.randint(8, (1,), generator=generator)))
        if self.translate > 1:
            grid = grid + torch.randint(self.translate, (2,), generator=generator).to(grid.device)
        if self.patch_drop > 0:
            keep = torch.rand(len(features), generator=generator) >= self.patch_drop
            if not keep.any():
                keep[int(torch.randint(len(features), (1,), generator=generator))] = True
            keep = keep.to(features.device)
            features, grid = features[keep], grid[keep]
        return features, grid
