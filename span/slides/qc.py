"""Quality-control image of the slide stage: each slide's thumbnail with its kept cells (the
cohort table is span.data.qc_summary)."""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

CELL_RGB = (0, 170, 60)
TISSUE_RGB = (20, 60, 230)
PEN_RGB = (230, 0, 160)
#: Kept cells are shaded 85% thumbnail + 15% CELL_RGB; a per-channel lookup table (1, 256, 3)
#: does it in one pass, with the same truncated values as the float expression.
_SHADE_LUT = (0.85 * np.arange(256)[:, None] + 0.15 * np.array(CELL_RGB)).astype(np.uint8)[None]


def _cell_edges(n_px: int, n_cells: int) -> tuple[np.ndarray, np.ndarray]:
    """Cell index of each pixel along one axis and whether the pixel starts a new cell."""
    idx = np.minimum(np.arange(n_px) * n_cells // n_px, n_cells - 1)
    edge = np.ones(n_px, bool)
    edge[1:] = idx[1:] != idx[:-1]
    return idx, edge


def render_qc(
    thumb: np.ndarray,
    tissue: np.ndarray,
    pen: np.ndarray,
    grid: np.ndarray,
    n_cells: tuple[int, int],
    title: Sequence[str],
) -> np.ndarray:
    """Thumbnail with kept cells shaded and outlined, the tissue contour and pen ink outlined.

    The thumbnail spans exactly `n_cells` (columns, rows) grid cells; masks may be at
    another resolution covering the same area.
    """
    h, w = thumb.shape[:2]
    out = thumb.copy()
    n_cols, n_rows = n_cells
    kept = np.zeros((n_rows, n_cols), bool)
    if len(grid):
        kept[grid[:, 1], grid[:, 0]] = True
    col, col_edge = _cell_edges(w, n_cols)
    row, row_edge = _cell_edges(h, n_rows)
    kept_px = kept[row][:, col]
    border = kept_px & (row_edge[:, None] | col_edge[None, :])
    np.copyto(out, cv2.LUT(out, _SHADE_LUT), where=kept_px[..., None])
    out[border] = CELL_RGB
    for mask, colour in ((tissue, TISSUE_RGB), (pen, PEN_RGB)):
        if not mask.any():
            continue
        scaled = cv2.resize(mask.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST)
        contours, _ = cv2.findContours(scaled, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(out, contours, -1, colour, 2)
    return np.concatenate([_header(title, w), out], axis=0)


def _header(title: Sequence[str], width: int) -> np.ndarray:
    """White band with one line of black text per entry of `title`."""
    line_h = 22
    header = np.full((line_h * len(title) + 8, width, 3), 255, np.uint8)
    for i, text in enumerate(title):
        cv2.putText(
            header,
            text,
            (6, line_h * (i + 1)),
            cv2.FONT_HERSHEY_SIMPLEX,
            0.55,
            (0, 0, 0),
            1,
            cv2.LINE_AA,
        )
    return header


def render_message(title: Sequence[str], width: int = 900) -> np.ndarray:
    """The QC image of a slide that could not be patched: its title lines (the error) on a white
    band above an empty grey panel."""
    panel = np.full((width // 3, width, 3), 200, np.uint8)
    return np.concatenate([_header(title, width), panel], axis=0)
