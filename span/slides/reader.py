"""Opening slides with openslide: clear errors, physical resolution, and bounded-memory reads."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import openslide

from span.errors import SpanError

#: Microns per pixel outside this range are treated as missing (e.g. a 72-dpi TIFF default).
PLAUSIBLE_MPP = (0.05, 5.0)
#: Largest region, in pixels of the level read, fetched by one read_region call.
MAX_READ_SIDE = 4096


@dataclass(frozen=True)
class Resolution:
    """A slide's level-0 microns per pixel and where the value came from."""

    mpp: float
    source: str  # "metadata", "objective-power" or "fallback"
    warnings: list[str] = field(default_factory=list)


def _check_openable(path: Path) -> None:
    """Raise a SpanError naming why `path` cannot be opened as a file: openslide reports a
    missing, unreadable or directory path alike as an unsupported format."""
    try:
        if path.is_dir():
            raise SpanError(
                path,
                "a directory, not a slide file",
                "give the slide file itself in the sample sheet (for MIRAX, the .mrxs file)",
            )
        os.close(os.open(path, os.O_RDONLY | os.O_NONBLOCK))  # non-blocking: a FIFO cannot hang
    except FileNotFoundError as exc:
        raise SpanError(
            path, "slide file not found", "correct its path in the sample sheet or drop the row"
        ) from exc
    except PermissionError as exc:
        raise SpanError(
            path,
            "slide file not readable by this user (permission denied)",
            "check the permissions of the file and its folders (e.g. chmod a+r)",
        ) from exc
    except OSError as exc:
        raise SpanError(
            path, f"cannot open the slide file ({exc.strerror})", "check its path and storage"
        ) from exc


def open_slide(path: str | Path) -> openslide.OpenSlide:
    """Open a slide, turning openslide's errors into one actionable line."""
    path = Path(path)
    _check_openable(path)
    try:
        return openslide.OpenSlide(str(path))
    except (openslide.OpenSlideError, OSError, ValueError) as exc:
        raise SpanError(
            path,
            f"not a readable slide ({type(exc).__name__}: {exc})",
            "re-export or re-download the file, or drop its row from the sample sheet",
        ) from exc


def slide_resolution(
    slide: openslide.OpenSlide, path: str | Path, fallback_mpp: float | None
) -> Resolution:
    """Level-0 microns per pixel: metadata, else 10 / objective power, else the fallback."""
    props = slide.properties
    warnings: list[str] = []
    try:
        mpp_x = float(props[openslide.PROPERTY_NAME_MPP_X])
        mpp_y = float(props.get(openslide.PROPERTY_NAME_MPP_Y, mpp_x))
    except (KeyError, ValueError):
        mpp_x = mpp_y = math.nan
    if PLAUSIBLE_MPP[0] <= mpp_x <= PLAUSIBLE_MPP[1]:
        if abs(mpp_x - mpp_y) > 0.01 * mpp_x:
            warnings.append(f"anisotropic pixels (mpp-x {mpp_x}, mpp-y {mpp_y}); using mpp-x")
        return Resolution(mpp_x, "metadata", warnings)
    if not math.isnan(mpp_x):
        warnings.append(f"implausible metadata mpp {mpp_x} ignored")
    try:
        power = float(props[openslide.PROPERTY_NAME_OBJECTIVE_POWER])
    except (KeyError, ValueError):
        power = math.nan
    if power > 0 and PLAUSIBLE_MPP[0] <= 10.0 / power <= PLAUSIBLE_MPP[1]:
        warnings.append(f"no mpp in metadata; derived {10.0 / power:g} um/px from {power:g}x")
        return Resolution(10.0 / power, "objective-power", warnings)
    if fallback_mpp is None:
        raise SpanError(
            path,
            "no usable microns-per-pixel or objective power in the slide metadata",
            "set patching.fallback_mpp in the config to the scanner's resolution",
        )
    warnings.append(f"no mpp or objective power in metadata; using fallback {fallback_mpp} um/px")
    return Resolution(float(fallback_mpp), "fallback", warnings)


def rgba_to_rgb(rgba: np.ndarray) -> np.ndarray:
    """Composite an RGBA region on white: transparent areas (outside the scan) become background.

    Only partly transparent pixels need arithmetic: opaque ones keep their colour and fully
    transparent ones (a region reaching past the slide's edge) become exactly white.
    """
    rgba = np.ascontiguousarray(rgba)
    alpha = cv2.extractChannel(rgba, 3)
    rgb = cv2.cvtColor(rgba, cv2.COLOR_RGBA2RGB)
    if alpha.min() == 255:
        return rgb
    if cv2.countNonZero(cv2.inRange(alpha, 1, 254)) == 0:
        rgb[alpha == 0] = 255
        return rgb
    rgb16 = rgb.astype(np.uint16)
    alpha16 = alpha[..., None].astype(np.uint16)
    return ((rgb16 * alpha16 + 255 * (255 - alpha16) + 127) // 255).astype(np.uint8)


def read_rgb(
    slide: openslide.OpenSlide, path: str | Path, location, level: int, size
) -> np.ndarray:
    """One region as RGB uint8 (H, W, 3); a failing read names the slide."""
    try:
        region = slide.read_region(tuple(int(v) for v in location), level, tuple(size))
    except openslide.OpenSlideError as exc:
        raise SpanError(
            path,
            f"cannot read region {tuple(location)} at level {level} ({exc})",
            "the file is damaged: re-export it, or drop its row from the sample sheet",
        ) from exc
    return rgba_to_rgb(np.asarray(region))


def read_subpixel(
    slide: openslide.OpenSlide, path: str | Path, location, level: int, size
) -> np.ndarray:
    """read_rgb of a region whose level-0 `location` may fall between two pixels of `level`.

    openslide resamples such a region with cairo, about 4x slower than an aligned read. On a
    level with an integer downsample this reads aligned, one pixel larger, and shifts by the
    fraction with OpenCV's bilinear filter (values within one grey level of openslide's).
    """
    level_ds = slide.level_downsamples[level]
    lx, ly = (int(v) / level_ds for v in location)
    fx, fy = lx - math.floor(lx), ly - math.floor(ly)
    if not float(level_ds).is_integer() or fx == fy == 0:
        return read_rgb(slide, path, location, level, size)
    w, h = size
    aligned = (math.floor(lx) * level_ds, math.floor(ly) * level_ds)
    rgb = read_rgb(slide, path, aligned, level, (w + 1, h + 1))
    shift = np.float32([[1, 0, fx], [0, 1, fy]])  # output (x, y) samples aligned (x + fx, y + fy)
    return cv2.warpAffine(rgb, shift, (w, h), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP)


def read_downsampled(
    slide: openslide.OpenSlide, path: str | Path, downsample: float, out_size: tuple[int, int]
) -> np.ndarray:
    """The slide from level-0 (0, 0) at `downsample` level-0 pixels per output pixel.

    Reads the coarsest level that is at least as fine, block by block (never a whole level
    in memory), and area-averages each block; out-of-slide areas come back white.
    """
    out_w, out_h = out_size
    level = slide.get_best_level_for_downsample(downsample)
    level_ds = slide.level_downsamples[level]
    scale = downsample / level_ds  # level pixels per output pixel, >= 1
    block = max(1, min(1024, int(MAX_READ_SIDE // scale)))
    out = np.empty((out_h, out_w, 3), np.uint8)
    for by in range(0, out_h, block):
        bh = min(block, out_h - by)
        for bx in range(0, out_w, block):
            bw = min(block, out_w - bx)
            size = (max(1, round(bw * scale)), max(1, round(bh * scale)))
            rgb = read_subpixel(slide, path, (bx * downsample, by * downsample), level, size)
            out[by : by + bh, bx : bx + bw] = cv2.resize(
                rgb, (bw, bh), interpolation=cv2.INTER_AREA
            )
    return out
