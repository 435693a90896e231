"""Attention heatmaps: a model's patch scores painted on the slide thumbnail, and a captioned
figure of it that a reader understands without the README."""

from __future__ import annotations

import logging
import textwrap
from dataclasses import dataclass
from pathlib import Path

import cv2
import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from span.errors import SpanError
from span.settings.stages import PredictSettings
from span.slides.reader import open_slide, read_downsampled, read_rgb

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


def paint_heatmap(
    image: np.ndarray, downsample: float, grid: np.ndarray, patch_size0: int, scores: np.ndarray
) -> np.ndarray:
    """A thumbnail (level-0 px per pixel `downsample`, as `thumbnail` returns it) with each
    patch's cell coloured by its score (rank-normalised, viridis), half and half.

    Colours are looked up per cell before painting (a colormap over every pixel of a
    1200-px float canvas took most of a heatmap's time)."""
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


#: Dots per inch of a heatmap figure: each panel shows its thumbnail pixel for pixel.
DPI = 100
#: Side of a gallery tile, pixels (larger patches are shrunk to it), and inches.
TILE_PX = 160
TILE_IN = TILE_PX / DPI
#: A top patch's number on the heatmap, on a white backing readable over any colour.
LABEL = {
    "color": "red",
    "fontsize": 8,
    "weight": "bold",
    "va": "bottom",
    "bbox": {"facecolor": "white", "edgecolor": "none", "alpha": 0.7, "pad": 1},
}
#: Percentiles whose score values label the colour bar.
TICK_PERCENTILES = (0.0, 0.25, 0.5, 0.75, 1.0)
#: Layout, inches: outer margin, gap between panels, colour bar width and the room right of it
#: for its tick labels and label, a panel's title, a title line, and the narrowest figure.
MARGIN, GAP, BAR_W, BAR_ROOM, PANEL_TITLE, LINE, MIN_WIDTH = 0.2, 0.25, 0.2, 1.1, 0.3, 0.25, 6.0


@dataclass(frozen=True)
class HeatmapCaption:
    """What a heatmap's title states."""

    slide_id: str
    true_label: str | None  # None: unlabelled slide
    predicted: str  # predicted class
    probability: float  # its probability (mean over seeds)
    model: str  # variant name, e.g. "span"
    meaning: str  # what the score is, e.g. "gradient x input toward the predicted class"


def colourbar_ticks(scores: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Colour bar tick positions (percentiles, 0..1) and the score values there as labels.

    Colours are ranks; these labels say which real scores the ranks stand for. One patch is
    painted at percentile 1 (`rank_normalise`), so it gets that one tick; none gets none."""
    scores = np.asarray(scores, np.float64)
    if len(scores) == 0:
        return np.zeros(0), []
    positions = np.array(TICK_PERCENTILES if len(scores) >= 2 else (1.0,))
    return positions, [f"{v:.3g}" for v in np.quantile(scores, positions)]


def heatmap_figure(
    slide_path: str | Path,
    grid: np.ndarray,
    coords: np.ndarray,
    patch_size0: int,
    scores: np.ndarray,
    caption: HeatmapCaption,
    max_side: int = PredictSettings().heatmap_max_side,
    top_k: int = 0,
) -> Figure:
    """Thumbnail and heatmap side by side under a title saying what they show, a colour bar
    of real score values, and with `top_k` a gallery of the top-scored patches (outlined and
    numbered on the heatmap).

    Each panel shows its thumbnail pixel for pixel at `DPI`, so the figure is about two
    `max_side` wide, and the gallery wraps into as many rows as that width needs. Axes are
    labelled "thumbnail", "heatmap", "colourbar" and "tile <rank>" for whoever inspects them."""
    scores = np.asarray(scores, np.float64)
    image, downsample = thumbnail(slide_path, max_side)
    top = np.argsort(-scores, kind="stable")[: max(0, top_k)]
    pw, ph = image.shape[1] / DPI, image.shape[0] / DPI
    content_w = 2 * pw + 1.5 * GAP + BAR_W + BAR_ROOM
    width = max(MIN_WIDTH, content_w + 2 * MARGIN)
    cols = max(1, min(len(top), int((width - 2 * MARGIN) // (TILE_IN + GAP))))
    rows = -(-len(top) // cols)
    title = _title(caption, chars=int(width * 11))  # about 11 characters an inch at 11 pt
    panels_y = MARGIN + LINE * (title.count("\n") + 1) + PANEL_TITLE
    gallery_y = panels_y + ph + PANEL_TITLE
    height = gallery_y + rows * (TILE_IN + PANEL_TITLE) + MARGIN
    fig = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(fig)
    fig.suptitle(title, y=1 - MARGIN / 2 / height, va="top", fontsize=11)
    left = (width - content_w) / 2
    thumb = _axes(fig, left, panels_y, pw, ph, "thumbnail")
    thumb.imshow(image, interpolation="nearest")
    thumb.set_title("slide", fontsize=9)
    heat = _axes(fig, left + pw + GAP, panels_y, pw, ph, "heatmap")
    painted = paint_heatmap(image, downsample, grid, patch_size0, scores)
    heat.imshow(painted, interpolation="nearest")
    heat.set_title(f"{len(scores)} patches coloured by score", fontsize=9)
    bar = _axes(fig, left + 2 * pw + 1.5 * GAP, panels_y, BAR_W, ph, "colourbar")
    positions, labels = colourbar_ticks(scores)
    fig.colorbar(ScalarMappable(Normalize(0, 1), "viridis"), cax=bar, ticks=positions)
    bar.set_yticklabels(labels, fontsize=8)
    bar.set_ylabel("score (colour = rank in this slide)", fontsize=9)
    if len(top):
        fig.text(MARGIN / width, 1 - gallery_y / height, f"top {len(top)} patches by score")
    tiles = _read_tiles(slide_path, coords[top], patch_size0) if len(top) else []
    for rank, (i, tile) in enumerate(zip(top, tiles, strict=True), 1):
        x, y = coords[i] / downsample
        side = patch_size0 / downsample
        heat.add_patch(Rectangle((x, y), side, side, fill=False, edgecolor="red", lw=1.5))
        heat.text(x, y, str(rank), **LABEL)
        row, col = divmod(rank - 1, cols)
        ax = _axes(
            fig,
            MARGIN + col * (TILE_IN + GAP),
            gallery_y + PANEL_TITLE + row * (TILE_IN + PANEL_TITLE),
            TILE_IN,
            TILE_IN,
            f"tile {rank}",
        )
        ax.set_title(f"#{rank}  score {scores[i]:.3g}", fontsize=8)
        if tile is None:
            ax.imshow(np.full((TILE_PX, TILE_PX, 3), 160, np.uint8))
            ax.text(0.5, 0.5, "unreadable", ha="center", va="center", transform=ax.transAxes)
        else:
            ax.imshow(tile, interpolation="nearest")
    for ax in fig.axes:
        if ax is not bar:
            ax.set_xticks([])
            ax.set_yticks([])
    return fig


def figure_rgb(fig: Figure) -> np.ndarray:
    """A figure rendered with Agg as RGB uint8 (H, W, 3); the figure is cleared afterwards, so
    its images are freed at once rather than at the next garbage collection."""
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    rgb = np.asarray(canvas.buffer_rgba())[..., :3].copy()
    fig.clear()
    return rgb


def _axes(fig: Figure, x: float, y: float, w: float, h: float, label: str):
    """Axes `w` x `h` inches whose top left is `x`, `y` inches from the figure's top left."""
    width, height = fig.get_size_inches()
    return fig.add_axes((x / width, 1 - (y + h) / height, w / width, h / height), label=label)


def _title(caption: HeatmapCaption, chars: int) -> str:
    """The suptitle: what slide, its truth and prediction; what model, what the score means."""
    truth = "unlabelled" if caption.true_label is None else f"true: {caption.true_label}"
    lines = [
        f"{caption.slide_id}  |  {truth}  |  "
        f"predicted: {caption.predicted} (p = {caption.probability:.2f})",
        f"model: {caption.model}  |  score: {caption.meaning}",
    ]
    return "\n".join(textwrap.fill(line, chars) for line in lines)


def _read_tiles(slide_path: str | Path, coords: np.ndarray, size0: int) -> list[np.ndarray | None]:
    """Level-0 patches at `coords`, each shrunk to at most `TILE_PX`; None for one unreadable.

    The slide is reopened after a failed read, which leaves openslide's handle unusable."""
    tiles: list[np.ndarray | None] = []
    slide = open_slide(slide_path)
    try:
        for location in coords:
            try:
                tile = read_rgb(slide, slide_path, location, 0, (size0, size0))
            except SpanError as exc:
                log.warning("%s: gallery tile unreadable (%s): drawn grey", slide_path, exc)
                tiles.append(None)
                slide.close()
                slide = open_slide(slide_path)
                continue
            if size0 > TILE_PX:
                tile = cv2.resize(tile, (TILE_PX, TILE_PX), interpolation=cv2.INTER_AREA)
            tiles.append(tile)
    finally:
        slide.close()
    return tiles
