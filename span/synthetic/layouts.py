"""Slide layouts whose label depends only on where patch types sit.

A layout is a set of tissue cells on the integer patch grid and a type per cell (background,
a rare type, another type). For every task both classes draw the tissue, the number of cells
of each type and each type's features from the same distributions: only the arrangement
differs, so any permutation-invariant model (mean pooling, ABMIL, CLAM, ...) is at chance by
construction. numpy only: the demo slides and the feature cohorts both build on it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy.ndimage import distance_transform_cdt

from span.synthetic import TASK_NAMES

BACKGROUND, RARE, OTHER = 0, 1, 2
TYPE_NAMES = ("background", "rare", "other")
_NEIGHBOURS = ((0, 1), (1, 0), (0, -1), (-1, 0))


@dataclass(frozen=True)
class Layout:
    """One slide: tissue cells and their types; `label` indexes the task's classes."""

    grid: np.ndarray  # (N, 2) int64 (column, row), >= 0
    types: np.ndarray  # (N,) int8: BACKGROUND, RARE or OTHER
    label: int


class LayoutError(RuntimeError):
    """A random draw could not place the requested regions (the caller draws again)."""


# ---------------------------------------------------------------------------------------------
# Tissue shapes and regions, as boolean masks over a small box
# ---------------------------------------------------------------------------------------------


def blob_tissue(rng: np.random.Generator, cells: tuple[int, int] = (400, 1200)) -> np.ndarray:
    """A tissue section: an ellipse of random area, aspect and angle, with a wavy outline."""
    area = rng.uniform(*cells)
    aspect = rng.uniform(1.0, 2.2)
    a, b = np.sqrt(area * aspect / np.pi), np.sqrt(area / (aspect * np.pi))
    half = int(np.ceil(a * 1.25)) + 2
    y, x = np.mgrid[-half : half + 1, -half : half + 1].astype(float)
    angle = rng.uniform(0, np.pi)
    u = x * np.cos(angle) + y * np.sin(angle)
    v = -x * np.sin(angle) + y * np.cos(angle)
    phi = np.arctan2(v / b, u / a)
    wave = 1.0 + sum(
        rng.uniform(0.0, 0.08) * np.cos(k * phi + rng.uniform(0, 2 * np.pi)) for k in (2, 3, 5)
    )
    return (u / a) ** 2 + (v / b) ** 2 <= wave**2


def ring_tissue(
    rng: np.random.Generator, radius: tuple[float, float] = (15.0, 19.0)
) -> tuple[np.ndarray, float]:
    """An annulus (a duct or bowel wall in cross-section) and its mid radius: every point of
    the ring sees the same surroundings, so a region's position on it carries no local cue."""
    mid = rng.uniform(*radius)
    width = rng.uniform(6.5, 8.5)
    half = int(np.ceil(mid + width)) + 2
    y, x = np.mgrid[-half : half + 1, -half : half + 1].astype(float)
    r = np.hypot(x, y)
    return (r >= mid - width / 2) & (r <= mid + width / 2), mid


def distance_to(region: np.ndarray) -> np.ndarray:
    """Chebyshev distance (in cells) of every cell of the box to the nearest `region` cell."""
    if not region.any():
        return np.full(region.shape, np.inf)
    return distance_transform_cdt(~region, metric="chessboard").astype(float)


def grow_region(
    allowed: np.ndarray, seed: tuple[int, int], size: int, rng: np.random.Generator
) -> np.ndarray:
    """A compact connected region of `size` cells grown from `seed` inside `allowed`: each step
    adds a frontier cell, preferring cells with more neighbours already inside (round blobs).
    Raises LayoutError when `allowed` has no room."""
    if not allowed[seed]:
        raise LayoutError("seed outside the allowed cells")
    region = np.zeros_like(allowed)
    region[seed] = True
    frontier: dict[tuple[int, int], int] = {}

    def add(cell: tuple[int, int]) -> None:
        region[cell] = True
        frontier.pop(cell, None)
        for dy, dx in _NEIGHBOURS:
            n = (cell[0] + dy, cell[1] + dx)
            inside = 0 <= n[0] < allowed.shape[0] and 0 <= n[1] < allowed.shape[1]
            if inside and allowed[n] and not region[n]:
                frontier[n] = frontier.get(n, 0) + 1

    add(seed)
    for _ in range(size - 1):
        if not frontier:
            raise LayoutError(f"no room to grow a region of {size} cells")
        cells = list(frontier)
        weight = np.array([frontier[c] for c in cells], float) ** 3
        add(cells[rng.choice(len(cells), p=weight / weight.sum())])
    return region


def _random_cell(mask: np.ndarray, rng: np.random.Generator) -> tuple[int, int]:
    rows, cols = np.nonzero(mask)
    if len(rows) == 0:
        raise LayoutError("no cell to choose from")
    k = rng.integers(len(rows))
    return int(rows[k]), int(cols[k])


def _split_sizes(total: int, parts: int) -> list[int]:
    return [total // parts + (k < total % parts) for k in range(parts)]


# ---------------------------------------------------------------------------------------------
# Tasks
# ---------------------------------------------------------------------------------------------


def _clumped(rng: np.random.Generator, label: int) -> np.ndarray:
    """Rare cells (3-8% of the tissue) in 1-3 compact clumps (1) or scattered at random (0)."""
    tissue = blob_tissue(rng)
    types = np.where(tissue, BACKGROUND, -1)
    n_rare = max(4, round(rng.uniform(0.03, 0.08) * tissue.sum()))
    if label == 0:
        rows, cols = np.nonzero(tissue)
        pick = rng.choice(len(rows), n_rare, replace=False)
        types[rows[pick], cols[pick]] = RARE
        return types
    for size in _split_sizes(n_rare, int(rng.integers(1, 4))):
        free = types == BACKGROUND
        region = grow_region(free, _random_cell(free, rng), size, rng)
        types[region] = RARE
    return types


def _interface(rng: np.random.Generator, label: int) -> np.ndarray:
    """A region of another type (15-25%) and two clumps of rare cells (3-6% in all) that touch
    it (1) or stay at least two cells away from it (0): tumour at a margin or not."""
    tissue = blob_tissue(rng)
    types = np.where(tissue, BACKGROUND, -1)
    n_tissue = int(tissue.sum())
    other = grow_region(
        tissue, _random_cell(tissue, rng), round(rng.uniform(0.15, 0.25) * n_tissue), rng
    )
    types[other] = OTHER
    distance = distance_to(other)
    inner = distance_to(~tissue) >= 3  # clumps start away from the edge in both classes
    n_rare = max(4, round(rng.uniform(0.03, 0.06) * n_tissue))
    for size in _split_sizes(n_rare, 2):
        free = types == BACKGROUND
        if label == 1:
            seed_cells, allowed = free & inner & (distance == 1), free
        else:
            seed_cells, allowed = free & inner & (distance >= 4), free & (distance >= 3)
        region = grow_region(allowed, _random_cell(seed_cells, rng), size, rng)
        types[region] = RARE
    return types


def _distance(rng: np.random.Generator, label: int) -> np.ndarray:
    """A ring of tissue with a rare-type region and another-type region (4-7% each), 6-12
    cells apart along the ring (0) or on opposite sides (1). Too far apart for one window of
    the first stage either way: telling them apart takes the coarser stages of the pyramid."""
    tissue, mid = ring_tissue(rng)
    types = np.where(tissue, BACKGROUND, -1)
    n_tissue = int(tissue.sum())
    centre = np.array(tissue.shape) // 2
    sizes = [max(4, round(rng.uniform(0.04, 0.07) * n_tissue)) for _ in range(2)]

    def seed_at(angle: float, allowed: np.ndarray) -> tuple[int, int]:
        cell = np.round(centre + mid * np.array([np.sin(angle), np.cos(angle)])).astype(int)
        near = np.zeros_like(allowed)
        near[cell[0] - 1 : cell[0] + 2, cell[1] - 1 : cell[1] + 2] = True
        return _random_cell(allowed & near, rng)

    start = rng.uniform(0, 2 * np.pi)
    first = grow_region(tissue, seed_at(start, tissue), sizes[0], rng)
    types[first] = RARE
    distance = distance_to(first)
    if label == 1:
        allowed = (types == BACKGROUND) & (distance >= 13)
        angle = start + np.pi + rng.uniform(-0.3, 0.3)
    else:
        gap = rng.uniform(6, 12)
        allowed = (types == BACKGROUND) & (distance >= gap)
        extent = sizes[0] / (2 * (tissue.sum() / (2 * np.pi * mid)))  # half its arc length
        arc = extent + gap + sizes[1] / (2 * (tissue.sum() / (2 * np.pi * mid)))
        angle = start + rng.choice([-1, 1]) * arc / mid
    second = grow_region(allowed, seed_at(angle, allowed), sizes[1], rng)
    if label == 0 and distance[second].min() > 12:
        raise LayoutError("regions drifted apart")
    types[second] = OTHER
    return types


@dataclass(frozen=True)
class SpatialTask:
    """A binary task whose label is a spatial relation between patch types."""

    name: str
    classes: tuple[str, str]
    description: str
    draw: Callable[[np.random.Generator, int], np.ndarray]


TASKS: dict[str, SpatialTask] = {
    task.name: task
    for task in (
        SpatialTask(
            "clumped", ("scattered", "clumped"), "local arrangement: a rare type clumped", _clumped
        ),
        SpatialTask(
            "interface",
            ("apart", "touching"),
            "an interface: a rare type touching another type",
            _interface,
        ),
        SpatialTask(
            "distance",
            ("near", "far"),
            "long range: two regions on opposite sides of the tissue or near each other",
            _distance,
        ),
    )
}


assert tuple(TASKS) == TASK_NAMES, "span.synthetic.TASK_NAMES lists the tasks defined here"


def draw_layout(task: str, label: int, rng: np.random.Generator, attempts: int = 50) -> Layout:
    """One slide of `task` with class `label`; the tissue sits at a random place on the grid."""
    if task not in TASKS:
        raise ValueError(f"unknown spatial task {task!r}; choose one of {sorted(TASKS)}")
    for _ in range(attempts):
        try:
            types = TASKS[task].draw(rng, label)
        except LayoutError:
            continue
        rows, cols = np.nonzero(types >= 0)
        offset = rng.integers(0, 64, size=2)
        grid = np.stack([cols + offset[0], rows + offset[1]], axis=1).astype(np.int64)
        return Layout(grid, types[rows, cols].astype(np.int8), label)
    raise RuntimeError(f"could not draw a {task} layout in {attempts} attempts")
