"""Training-time augmentation of a slide's (features, grid): what a slide would look like had
it been scanned turned, mirrored, placed elsewhere on the glass, or with other patches lost.

Models that read the grid (SPAN) see their windows and 2 x 2 downsampling cells fall
differently on every step; permutation-invariant models only see the patch dropout.
"""

from __future__ import annotations

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


_DEFAULT = TrainSettings()


@dataclass(frozen=True)
class Augmentation:
    """Random symmetry, translation and patch dropout, drawn afresh for every training step
    (defaults: `span train`'s)."""

    flips: bool = _DEFAULT.flips  # one of the 8 rotations / reflections of the grid
    translate: int = _DEFAULT.translate  # shift the grid by 0 .. translate - 1 cells per axis
    patch_drop: float = _DEFAULT.patch_drop  # share of the patches left out

    def __post_init__(self) -> None:
        check_values(self, TrainSettings)

    @property
    def active(self) -> bool:
        return self.flips or self.translate > 1 or self.patch_drop > 0

    def __call__(
        self, features: torch.Tensor, grid: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(features (N, D), grid (N, 2)) -> an augmented copy (at least one patch kept).
        Draws on the CPU generator, so runs are reproducible on any device."""
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
