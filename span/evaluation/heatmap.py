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


def render_heatmap(
    slide_path: str | Path,
    grid: np.ndarray,
    patch_size0: int,
    scores: np.ndarray,
    max_side: int = 1200,
) -> np.ndarray:
    """The thumbnail with each patch's cell coloured by its score (rank-normalised, viridis)."""
    image, downsample = thumbnail(slide_path, max_side)
    h, w = image.shape[:2]
    if len(grid) == 0:
        return image
    cols, rows = int(grid[:, 0].max()) + 1, int(grid[:, 1].max()) + 1
    cells = np.full((rows, cols), np.nan)
    cells[grid[:, 1], grid[:, 0]] = rank_normalise(np.asarray(scores, np.float64))
    size = (
        max(1, round(cols * patch_size0 / downsample)),
        max(1, round(rows * patch_size0 / downsample)),
    )
    painted = cv2.resize(cells, size, interpolation=cv2.INTER_NEAREST)
    canvas = np.full((h, w), np.nan)
    ch, cw = min(h, painted.shape[0]), min(w, painted.shape[1])
    canvas[:ch, :cw] = painted[:ch, :cw]
    covered = ~np.isnan(canvas)
    colours = matplotlib.colormaps["viridis"](np.nan_to_num(canvas))[..., :3] * 255
    out = image.astype(np.float64)
    out[covered] = (1 - ALPHA) * out[covered] + ALPHA * colours[covered]
    return out.astype(np.uint8)
