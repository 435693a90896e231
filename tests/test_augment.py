"""Training augmentation: the 8 grid symmetries, translation and patch dropout keep every
patch's features with its own cell and keep neighbours neighbours."""

from __future__ import annotations

import pytest
import torch

from span.training.augment import Augmentation, cosine_strength, dihedral

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


def _blob(radius: int = 9) -> torch.Tensor:
    """A disc of cells away from the origin."""
    cells = [
        (x, y)
        for y in range(2 * radius + 1)
        for x in range(2 * radius + 1)
        if (x - radius) ** 2 + (y - radius) ** 2 <= radius**2
    ]
    return torch.tensor(cells) + 5


def test_affine_keeps_features_with_their_cells_one_patch_per_cell() -> None:
    grid = _blob()
    features = torch.arange(len(grid), dtype=torch.float32)[:, None].expand(-1, 3).clone()
    gen = torch.Generator().manual_seed(3)
    aug = Augmentation(flips=False, translate=0, affine=True)
    changed = 0
    for _ in range(50):
        f, g = aug(features, grid, gen, progress=0.0)
        assert len(g) == len(f) and len(_cells(g)) == len(g)  # one patch per cell
        assert torch.equal(g.min(dim=0).values, grid.min(dim=0).values)  # the original corner
        assert len(f) >= 0.8 * len(grid)  # collisions of the rounding cost few patches
        index = f[:, 0].long()
        assert len(set(index.tolist())) == len(index)  # kept rows are distinct originals
        # a near-rigid map: neighbours stay neighbours, the slide keeps its size
        before = torch.cdist(grid[index].double(), grid[index].double())
        after = torch.cdist(g.double(), g.double())
        assert after[before == 1].max() < 2.5
        assert float(after.mean()) == pytest.approx(float(before.mean()), rel=0.1)
        changed += _cells(g) != _cells(grid)
    assert changed >= 40  # p 0.75 each: almost every step moves the grid


def test_affine_strength_decays_to_lattice_symmetries() -> None:
    """At the end of training (strength 0) only the mirror and quarter turns remain: every
    patch is kept and distances between patches are exact."""
    grid = _blob(6)
    features = torch.randn(len(grid), 2)
    gen = torch.Generator().manual_seed(0)
    for _ in range(30):
        f, g = Augmentation(flips=False, translate=0, affine=True)(features, grid, gen, 1.0)
        assert len(f) == len(grid)
        assert _distances(g) == _distances(grid)


def test_affine_strength_is_a_half_cosine() -> None:
    assert cosine_strength(0.0) == 1.0 and cosine_strength(1.0) == pytest.approx(0.0)
    assert cosine_strength(0.5) == pytest.approx(0.5)
    assert Augmentation(flips=False, translate=0, affine=True).active
