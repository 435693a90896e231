"""Attention heatmaps: a model's patch scores painted on the slide thumbnail."""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import matplotlib
import numpy as np

from span.errors import SpanError
from span.settings.stages import PredictSettings
from span.slides.reader import open_slide, read_downsampled

log = logging.getLogger(__name__)

#: Opacity of the heatmap over tissue.
ALPHA = 0.5
#: How much coarser than asked a pyramid level may be and still be read for the thumbnail.
LEVEL_SLACK = 1.5


def thumbnail(slide_path: str | Path, max_side: int) -> tuple[np.ndarray, float]:
    """RGB thumbnail whose longest side is at most `max_side`, and level-0 px per thumbnail px.

    A pyramid level up to `LEVEL_SLACK` times coarser than `max_side` asks for is read as it
    is, a thumbnail a little smaller, rather than a finer level shrunk: on a small slide that
    finer level is level 0, whose decoding took most of a heatmap's time. A slide whose
    thumbnail cannot be read (damaged tiles, already left out of its bag) gets a white one of
    the same size, so its heatmap is still drawn."""
    with open_slide(slide_path) as slide:
        w0, h0 = slide.dimensions  # before a failed read leaves the handle in an error state
        downsample = max(1.0, max(w0, h0) / max_side)
        coarser = [
            d for d in slide.level_downsamples if downsample <= d <= downsample * LEVEL_SLACK
        ]
        downsample = min(coarser, default=downsample)
        size = (max(1, round(w0 / downsample)), max(1, round(h0 / downsample)))
        try:
            image = read_downsampled(slide, slide_path, downsample, size)
        except SpanError as exc:
            log.warning(
                "%s: thumbnail unreadable (%s): heatmap on a white background", slide_path, exc
            )
            image = np.full((size[1], size[0], 3), 255, np.uint8)
        return image, w0 / size[0]


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
    max_side: int = PredictSettings().heatmap_max_side,
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
