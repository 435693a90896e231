"""The large benchmark slide (40960 px a side by default), written tile by tile with bounded
memory: the tissue layout of `span.synthetic.tissue`, filled with a seamless periodic texture."""

from __future__ import annotations

import math
import os

import cv2
import numpy as np

from span.slides.tiff_writer import write_pyramidal_tiff_from_tiles
from span.synthetic.noise import smooth_noise, upsample
from span.synthetic.tissue import BACKGROUND_RGB, EOSIN, HAEMATOXYLIN, tissue_layout, to_rgb


def _periodic_tissue_texture(rng: np.random.Generator, size: int, mpp: float) -> np.ndarray:
    """Seamless (size, size, 3) H&E stroma texture with nuclei, for tiling huge slides."""

    def noise(cell_y: float, cell_x: float | None = None) -> np.ndarray:
        return smooth_noise(rng, (size, size), cell_y, cell_x, periodic=True)

    fibre_a = noise(14.0 / mpp, 2.5 / mpp)
    fibre_b = noise(2.5 / mpp, 14.0 / mpp)
    blend = 1.0 / (1.0 + np.exp(-3.0 * noise(120.0 / mpp)))
    grain = noise(1.5 / mpp)
    fibre = blend * fibre_a + (1 - blend) * fibre_b
    c_eosin = np.clip(0.9 + 0.3 * fibre + 0.08 * grain, 0.25, None)
    # Nuclei: Poisson points convolved (circularly) with a Gaussian, thresholded.
    sigma_um = 2.0
    n = int(rng.poisson((size * mpp) ** 2 / 300.0))
    ys, xs = rng.integers(0, size, n), rng.integers(0, size, n)
    r = rng.uniform(2.1, 3.1, n)
    points = np.zeros((size, size))
    s = sigma_um / mpp
    points[ys, xs] = np.exp(r * r / (2 * sigma_um**2)) * (2 * math.pi * s * s)
    fy = np.fft.fftfreq(size)[:, None]
    fx = np.fft.rfftfreq(size)[None, :]
    gauss = np.exp(-2 * (math.pi**2) * (s**2) * (fy**2 + fx**2))
    field = np.fft.irfft2(np.fft.rfft2(points) * gauss, s=(size, size))
    nuc = np.clip((field - 0.6) * 1.6, 0.0, 1.0).astype(np.float32)
    c_haem = 0.06 + 0.95 * nuc * np.clip(0.85 + 0.2 * grain, 0.5, 1.1)
    od = c_eosin[..., None] * EOSIN + c_haem[..., None] * HAEMATOXYLIN
    return to_rgb(od.astype(np.float32))


def write_large_synthetic_slide(
    path: str | os.PathLike,
    side_px: int = 40960,
    mpp: float = 0.25,
    tissue_fraction: float = 0.35,
    seed: int = 0,
) -> dict:
    """Write a side x side px benchmark slide (levels 1, 4, 16, 64) with bounded memory.

    Every level samples one low-resolution layout (side/64 px) so levels agree; tissue texture is
    a seamless periodic tile, downsampled per level. Returns size, mpp and the layout's tissue
    fraction.
    """
    layout_ds = 64
    period = 2048
    rng_layout, rng_tex = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(2))
    g = max(8, math.ceil(side_px / layout_ds))
    layout = tissue_layout(rng_layout, g, g, layout_ds * mpp, tissue_fraction)
    actual_fraction = float((layout > 0).mean())

    texture0 = _periodic_tissue_texture(rng_tex, period, mpp)
    bg0 = np.empty((period, period, 3), dtype=np.uint8)
    bg_noise = 1.2 * smooth_noise(rng_tex, (period, period), 2.0, periodic=True)
    for ch in range(3):
        bg0[..., ch] = np.clip(BACKGROUND_RGB[ch] + bg_noise, 0, 255).astype(np.uint8)
    textures: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def level_textures(ds: int) -> tuple[np.ndarray, np.ndarray]:
        if ds not in textures:
            p = max(1, period // ds)
            textures[ds] = (
                cv2.resize(texture0, (p, p), interpolation=cv2.INTER_AREA),
                cv2.resize(bg0, (p, p), interpolation=cv2.INTER_AREA),
            )
        return textures[ds]

    def render(ds: int, y: int, x: int, h: int, w: int) -> np.ndarray:
        s = ds / layout_ds
        val = upsample(layout, s, s, (h, w), offset=(y, x))
        tex, bg = level_textures(ds)
        p = tex.shape[0]
        rows = np.arange(y, y + h) % p
        cols = np.arange(x, x + w) % p
        out = bg.take(rows, axis=0).take(cols, axis=1)
        mask = val > 0
        if mask.any():
            tissue = tex.take(rows, axis=0).take(cols, axis=1)
            out[mask] = tissue[mask]
        return out

    out = write_pyramidal_tiff_from_tiles(
        path, side_px, side_px, render, mpp, downsamples=(1, 4, 16, 64)
    )
    return {
        "path": str(out),
        "side_px": side_px,
        "mpp": mpp,
        "downsamples": [1, 4, 16, 64],
        "tissue_fraction": actual_fraction,
    }
