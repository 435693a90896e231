"""Training augmentation: the 8 grid symmetries, translation and patch dropout keep every
patch's features with its own cell and keep neighbours neighbours."""

from __future__ import annotations

import pytest
import torch

from span.training.augment import Augmentation, dihedral

# An L-shaped, asymmetric grid: every symmetry of the square gives a different set of cells.
GRID = torch.tensor([[3, 5], [4, 5], [5, 5], [3, 6], [3, 7], [3, 8]])


def _cells(grid: torch.Tensor) -> set[tuple[int, int]]:
    return {tuple(c) for c in grid.tolist()}


def _distances(grid: torch.Tensor) -> list[int]:
    """Sorted squared distances between every pair of patches."""
    diff = grid[:, None, :] - grid[None, :, :]
    return sorted((diff**2).sum(-1).flatten().tolist())


def test_dihedral_gives_the_8_symmetries_in_the_same_bounding_box() -> None:
    turned = [dihedral(GRID, k) for k in range(8)]
    assert torch.equal(turned[0], GRID)
    assert len({frozenset(_cells(g)) for g in turned}) == 8
    for g in turned:
        assert _distances(g) == _distances(GRID)  # a rigid motion: neighbours stay neighbours
        assert torch.equal(g.min(dim=0).values, GRID.min(dim=0).values)  # cells stay >= 0


def test_translation_shifts_every_cell_alike_and_keeps_features() -> None:
    features = torch.arange(len(GRID) * 4, dtype=torch.float32).reshape(len(GRID), 4)
    shifts = set()
    gen = torch.Generator().manual_seed(0)
    for _ in range(200):
        f, g = Augmentation(flips=False, translate=3)(features, GRID, gen)
        assert torch.equal(f, features)
        shift = g - GRID
        assert (shift == shift[0]).all()  # one shift for the whole slide
        shifts.add(tuple(shift[0].tolist()))
    assert shifts == {(x, y) for x in range(3) for y in range(3)}


def test_patch_drop_keeps_rows_together_and_at_least_one_patch() -> None:
    features = GRID.float() * 10  # each row's features name its cell
    gen = torch.Generator().manual_seed(1)
    kept = []
    for _ in range(300):
        f, g = Augmentation(flips=False, translate=0, patch_drop=0.5)(features, GRID, gen)
        assert torch.equal(f, g.float() * 10) and len(f) >= 1
        kept.append(len(f))
    assert abs(sum(kept) / len(kept) / len(GRID) - 0.5) < 0.1
    f, _ = Augmentation(flips=False, translate=0, patch_drop=0.99)(features[:1], GRID[:1], gen)
    assert len(f) == 1


def test_same_generator_seed_same_augmentation() -> None:
    features = torch.randn(len(GRID), 4)
    aug = Augmentation(patch_drop=0.3)
    a = aug(features, GRID, torch.Generator().manual_seed(7))
    b = aug(features, GRID, torch.Generator().manual_seed(7))
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def test_defaults_and_bad_values() -> None:
    assert Augmentation().active and Augmentation().flips and Augmentation().translate == 8
    assert not Augmentation(flips=False, translate=1, patch_drop=0.0).active
    with pytest.raises(ValueError, match="translate"):
        Augmentation(translate=-1)
    with pytest.raises(ValueError, match="patch_drop"):
        Augmentation(patch_drop=1.0)
