"""Write pyramidal, tiled, JPEG-compressed TIFFs that OpenSlide reads as generic-tiff slides.

Each pyramid level is a main IFD (``subfiletype`` 0 for level 0, 1 for the reduced levels; not
SubIFDs) with the resolution tags in pixels per centimetre, so OpenSlide 4 reports
``openslide.mpp-x``/``mpp-y`` and every level. Files are written under a temporary name in the
target directory and moved into place with ``os.replace``, so a crash never leaves a half-written
slide behind.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import cv2
import numpy as np
import tifffile

from span.atomic import atomic_output

# Level-0 size (uncompressed bytes) above which we switch to BigTIFF; classic TIFF offsets are
# 32-bit, and JPEG tiles of noisy content can approach the raw size in the worst case.
BIGTIFF_THRESHOLD_BYTES = 3_500_000_000

# Raw tiles tifffile gathers before encoding them in parallel (bounds peak memory).
_ENCODE_BUFFER_BYTES = 64 << 20

RenderTile = Callable[[int, int, int, int, int], np.ndarray]


def _check_pyramid(downsamples: Sequence[int], tile: int, quality: int) -> list[int]:
    ds = [int(d) for d in downsamples]
    if not ds or ds[0] != 1:
        raise ValueError(f"downsamples must start with 1, got {list(downsamples)}")
    if any(b <= a for a, b in itertools.pairwise(ds)):
        raise ValueError(f"downsamples must be strictly increasing, got {ds}")
    if tile <= 0 or tile % 16:
        raise ValueError(f"tile size must be a positive multiple of 16, got {tile}")
    if not 1 <= quality <= 100:
        raise ValueError(f"JPEG quality must be in 1..100, got {quality}")
    return ds


def _level_shape(height: int, width: int, downsample: int) -> tuple[int, int]:
    return max(1, round(height / downsample)), max(1, round(width / downsample))


def _level_kwargs(index: int, mpp: float, downsample: int, tile: int, quality: int) -> dict:
    px_per_cm = 1e4 / (mpp * downsample)
    return {
        "subfiletype": 0 if index == 0 else 1,
        "tile": (tile, tile),
        "photometric": "rgb",
        "compression": "jpeg",
        "compressionargs": {"level": quality},
        "resolution": (px_per_cm, px_per_cm),
        "resolutionunit": "CENTIMETER",
        "metadata": None,
    }


def write_pyramidal_tiff(
    path: str | os.PathLike,
    image: np.ndarray,
    mpp: float,
    downsamples: Sequence[int] = (1, 4, 16),
    tile: int = 256,
    quality: int = 90,
) -> Path:
    """Write an in-memory RGB uint8 level 0 as a pyramidal tiled JPEG TIFF (levels by INTER_AREA).

    Returns the final path. Meant for slides that fit in memory (demo cohort, tests).
    """
    ds = _check_pyramid(downsamples, tile, quality)
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be uint8 (H, W, 3), got {image.dtype} {image.shape}")
    if mpp <= 0:
        raise ValueError(f"mpp must be positive, got {mpp}")
    height, width = image.shape[:2]
    bigtiff = image.nbytes > BIGTIFF_THRESHOLD_BYTES
    with atomic_output(path) as tmp, tifffile.TiffWriter(tmp, bigtiff=bigtiff) as tif:
        for i, d in enumerate(ds):
            if d == 1:
                level = image
            else:
                h, w = _level_shape(height, width, d)
                level = cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA)
            tif.write(np.ascontiguousarray(level), **_level_kwargs(i, mpp, d, tile, quality))
    return Path(path)


def _iter_level_tiles(
    render_tile: RenderTile, downsample: int, height: int, width: int, tile: int, block_tiles: int
) -> Iterator[np.ndarray]:
    """Yield full ``tile`` x ``tile`` tiles of one level in row-major order.

    Regions are rendered ``block_tiles`` tiles wide at a time (one call, vectorised) and sliced;
    partial edge tiles are padded by edge replication so JPEG does not bleed black into them.
    """
    block_w = tile * block_tiles
    for y in range(0, height, tile):
        h = min(tile, height - y)
        for bx in range(0, width, block_w):
            bw = min(block_w, width - bx)
            region = np.asarray(render_tile(downsample, y, bx, h, bw))
            if region.shape != (h, bw, 3) or region.dtype != np.uint8:
                raise ValueError(
                    f"render_tile({downsample}, {y}, {bx}, {h}, {bw}) returned "
                    f"{region.dtype} {region.shape}, expected uint8 {(h, bw, 3)}"
                )
            for tx in range(0, bw, tile):
                t = region[:, tx : tx + tile]
                if t.shape[0] != tile or t.shape[1] != tile:
                    t = np.pad(t, ((0, tile - t.shape[0]), (0, tile - t.shape[1]), (0, 0)), "edge")
                yield np.ascontiguousarray(t)


def write_pyramidal_tiff_from_tiles(
    path: str | os.PathLike,
    height: int,
    width: int,
    render_tile: RenderTile,
    mpp: float,
    downsamples: Sequence[int] = (1, 4, 16, 64),
    tile: int = 256,
    quality: int = 90,
    block_tiles: int = 16,
) -> Path:
    """Write a huge pyramidal TIFF tile by tile, never holding a whole level in memory.

    ``render_tile(downsample, y, x, h, w)`` returns uint8 ``(h, w, 3)`` for that region in the
    level's own pixel coordinates; it is called for regions up to ``tile`` high and
    ``tile * block_tiles`` wide. Always BigTIFF (OpenSlide reads it).
    """
    ds = _check_pyramid(downsamples, tile, quality)
    if height <= 0 or width <= 0:
        raise ValueError(f"slide size must be positive, got {height} x {width}")
    if mpp <= 0:
        raise ValueError(f"mpp must be positive, got {mpp}")
    with atomic_output(path) as tmp, tifffile.TiffWriter(tmp, bigtiff=True) as tif:
        for i, d in enumerate(ds):
            h, w = _level_shape(height, width, d)
            tif.write(
                _iter_level_tiles(render_tile, d, h, w, tile, max(1, block_tiles)),
                shape=(h, w, 3),
                dtype=np.uint8,
                buffersize=_ENCODE_BUFFER_BYTES,
                **_level_kwargs(i, mpp, d, tile, quality),
            )
    return Path(path)
