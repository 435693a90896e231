"""Attention heatmaps: a model's patch scores painted on the slide thumbnail."""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import matplotlib
import numpy as np
import openslide

from span.slides.reader import open_slide

log = logging.getLogger(__name__)

#: Opacity of the heatmap over tissue.
ALPHA = 0.5


def thumbnail(slide_path: str | Path, max_side: int) -> tuple[np.ndarray, float]:
    """RGB thumbnail whose longest side is at most `max_side`, and level-0 px per thumbnail px.

    A slide whose thumbnail cannot be read (damaged tiles, already left out of its bag) gets a
    white one of the same size, so its heatmap is still drawn."""
    with open_slide(slide_path) as slide:
        w0, h0 = slide.dimensions  # before a failed read leaves the handle in an error state
        try:
            image = np.asarray(slide.get_thumbnail((max_side, max_side)).convert("RGB"))
        except openslide.OpenSlideError as exc:
            log.warning(
                "%s: thumbnail unreadable (%s): heatmap on a white background", slide_path, exc
            )
            ds = max(1.0, max(w0, h0) / max_side)
            image = np.full((max(1, round(h0 / ds)), max(1, round(w0 / ds)), 3), 255, np.uint8)
        return image, w0 / image.shape[1]


def rank_normalise(scores: np.ndarray) -> np.ndarray:
    """Scores -> percentiles in [0, 1] (attention is heavy-tailed: ranks show its structure)."""
    if len(scores) < 2:
        return np.ones_like(scores, dtype=np.float64)
    ranks = np.argsort(np.argsort(scores, kind="stable"), kind="stable")
    return ranks / (len(scores) - 1)


def _viridis_table() -> np.ndarray:
    """Viridis at its 256 levels, RGB 0-255 (float64), as matplotlib's colormap quantises."""
    cmap = matplotlib.colormaps["viridis"]
    return cmap(np.arange(cmap.N))[:, :3] * 255


def render_heatmap(
    slide_path: str | Path,
    grid: np.ndarray,
    patch_size0: int,
    scores: np.ndarray,
    max_side: int = 1200,
) -> np.ndarray:
    """The thumbnail with each patch's cell coloured by its score (rank-normalised, viridis).

    Colours are looked up per cell before painting (a colormap over every pixel of a
    1200-px float canvas took most of a heatmap's time)."""
    image, downsample = thumbnail(slide_path, max_side)
    h, w = image.shape[:2]
    if len(grid) == 0:
        return image
    cols, rows = int(grid[:, 0].max()) + 1, int(grid[:, 1].max()) + 1
    levels = np.full((rows, cols), -1, np.int16)  # -1: no patch; else a colormap level
    ranks = rank_normalise(np.asarray(scores, np.float64))
    levels[grid[:, 1], grid[:, 0]] = np.minimum((ranks * 256).astype(np.int16), 255)
    size = (
        max(1, round(cols * patch_size0 / downsample)),
        max(1, round(rows * patch_size0 / downsample)),
    )
    painted = cv2.resize(levels, size, interpolation=cv2.INTER_NEAREST)[:h, :w]
    canvas = np.full((h, w), -1, np.int16)
    canvas[: painted.shape[0], : painted.shape[1]] = painted
    covered = canvas >= 0
    out = image.copy()
    colours = _viridis_table()[canvas[covered]]
    out[covered] = ((1 - ALPHA) * image[covered] + ALPHA * colours).astype(np.uint8)
    return out
