"""Smooth random fields for the synthetic slides: one noise generator for every texture and layout.

A `NoiseField` is a seeded coarse grid of white noise resampled by cubic interpolation, so any
window of rows can be drawn on its own and still agree with its neighbours (slides rendered in
strips), and a periodic field tiles seamlessly (the large benchmark slide's texture tile).
"""

from __future__ import annotations

import math

import cv2
import numpy as np


def upsample(
    field: np.ndarray,
    scale_y: float,
    scale_x: float,
    shape: tuple[int, int],
    *,
    cubic: bool = False,
    offset: tuple[float, float] = (0.0, 0.0),
    border: int = cv2.BORDER_REPLICATE,
) -> np.ndarray:
    """Resample a coarse field to ``shape``; output pixel centre j maps to field (j+0.5)*s-0.5.

    ``scale_*`` is field pixels per output pixel; ``offset`` (in output pixels) shifts the window,
    which lets tiles of any pyramid level sample the same layout consistently.
    """
    h, w = shape
    oy, ox = offset
    m = np.array(
        [
            [scale_x, 0.0, (ox + 0.5) * scale_x - 0.5],
            [0.0, scale_y, (oy + 0.5) * scale_y - 0.5],
        ],
        dtype=np.float64,
    )
    flags = (cv2.INTER_CUBIC if cubic else cv2.INTER_LINEAR) | cv2.WARP_INVERSE_MAP
    return cv2.warpAffine(
        np.ascontiguousarray(field, dtype=np.float32), m, (w, h), flags=flags, borderMode=border
    )


def _fitted_grid(
    shape: tuple[int, int], cell_y: float, cell_x: float, periodic: bool
) -> tuple[int, int]:
    """Grid points for a whole number of cells per side: one a cell, plus the closing edge
    unless the field wraps."""
    edge = 0 if periodic else 1
    return max(2, round(shape[0] / cell_y) + edge), max(2, round(shape[1] / cell_x) + edge)


class NoiseField:
    """Zero-mean, roughly unit-variance smooth noise over ``shape`` with feature size ``cell_y``
    by ``cell_x`` output pixels, defined by a seeded coarse grid and resampled for any strip of
    rows (a strip equals those rows of the whole field to float32 rounding).

    By default the grid holds a whole number of cells per side, so a cell is ``cell`` pixels
    rounded to fit the shape, and ``periodic`` wraps the field around both edges (it tiles
    seamlessly). ``exact`` keeps the cell at exactly ``cell`` pixels instead, with a margin of
    grid points past the far edges: the stain textures use it, so a texture's scale in microns
    does not depend on the slide's size.
    """

    def __init__(
        self,
        rng: np.random.Generator,
        shape: tuple[int, int],
        cell_y: float,
        cell_x: float | None = None,
        *,
        periodic: bool = False,
        exact: bool = False,
    ) -> None:
        if periodic and exact:
            raise ValueError("a periodic noise field needs a whole number of cells: not exact")
        cell_x = cell_y if cell_x is None else cell_x
        h, w = shape
        if exact:
            self.sy, self.sx = 1.0 / cell_y, 1.0 / cell_x
            gh, gw = math.ceil(h * self.sy) + 2, math.ceil(w * self.sx) + 2
        else:
            gh, gw = _fitted_grid(shape, cell_y, cell_x, periodic)
            self.sy, self.sx = gh / h, gw / w
        self.border = cv2.BORDER_WRAP if periodic else cv2.BORDER_REPLICATE
        # Cubic interpolation of white noise has std ~0.75; rescale to ~1.
        self.grid = rng.standard_normal((gh, gw), dtype=np.float32) * np.float32(1.33)
        self.shape = shape

    def rows(self, y0: int, y1: int) -> np.ndarray:
        """Rows [y0, y1) of the field, float32 (y1 - y0, width)."""
        return upsample(
            self.grid,
            self.sy,
            self.sx,
            (y1 - y0, self.shape[1]),
            cubic=True,
            offset=(y0, 0.0),
            border=self.border,
        )


def smooth_noise(
    rng: np.random.Generator,
    shape: tuple[int, int],
    cell_y: float,
    cell_x: float | None = None,
    *,
    periodic: bool = False,
) -> np.ndarray:
    """The whole of a (fitted) `NoiseField` at once.

    Without wrapping, ``cv2.resize`` does the same mapping as `NoiseField.rows` and differs only
    by float rounding; it is what the demo slides' layouts were drawn with, so they stay
    byte-identical from release to release.
    """
    if periodic:
        return NoiseField(rng, shape, cell_y, cell_x, periodic=True).rows(0, shape[0])
    cell_x = cell_y if cell_x is None else cell_x
    gh, gw = _fitted_grid(shape, cell_y, cell_x, periodic=False)
    out = cv2.resize(
        rng.standard_normal((gh, gw), dtype=np.float32),
        (shape[1], shape[0]),
        interpolation=cv2.INTER_CUBIC,
    )
    # Cubic interpolation of white noise has std ~0.75; rescale to ~1.
    return cv2.multiply(out, 1.33, dst=out)
