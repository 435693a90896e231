"""Tissue segmentation on a low-resolution image: saturation threshold, pen-ink removal,
morphological closing, hole filling and area filters in physical units."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import cv2
import numpy as np

#: Otsu's saturation threshold is clipped to this range: below 8 (CLAM's fixed value) a blank
#: slide would have its glass noise split in two; above 20 a slide filled with tissue would
#: have its pale stroma split off from the hematoxylin-rich areas.
OTSU_RANGE = (8.0, 20.0)


@dataclass(frozen=True)
class SegmentationParams:
    """Segmentation settings; pixel sizes are at `seg_mpp`, areas in square micrometres."""

    seg_mpp: float = 8.0
    saturation_threshold: float | str = "otsu"
    median_blur: int = 7
    close: int = 4
    min_tissue_area_um2: float = 20_000.0
    min_hole_area_um2: float = 40_000.0
    exclude_pen: bool = True

    def __post_init__(self) -> None:
        thr = self.saturation_threshold
        if not (thr == "otsu" or (isinstance(thr, (int, float)) and 0 <= thr < 255)):
            raise ValueError(f"saturation_threshold must be 'otsu' or 0..254, got {thr!r}")
        if self.median_blur < 1 or self.median_blur % 2 == 0:
            raise ValueError(f"median_blur must be a positive odd number, got {self.median_blur}")
        if self.seg_mpp <= 0 or self.close < 0:
            raise ValueError("seg_mpp must be > 0 and close >= 0")
        if self.min_tissue_area_um2 < 0 or self.min_hole_area_um2 < 0:
            raise ValueError("area thresholds must be >= 0")

    def as_attrs(self) -> dict:
        """Flat dict for HDF5 attributes (prefixed `seg_`)."""
        return {k if k.startswith("seg_") else f"seg_{k}": v for k, v in asdict(self).items()}


#: `default` keeps small biopsies; `clam` is CLAM's create_patches_fp (sthresh 8, mthresh 7,
#: close 4 at 64x downsample, a_t = 100 and a_h = 16 reference 512-px patches) converted to
#: physical units for a 40x (0.25 um/px) scan. CLAM does not remove pen ink.
PRESETS: dict[str, SegmentationParams] = {
    "default": SegmentationParams(),
    "clam": SegmentationParams(
        seg_mpp=16.0,
        saturation_threshold=8,
        median_blur=7,
        close=4,
        min_tissue_area_um2=100 * (512 * 0.25) ** 2,
        min_hole_area_um2=16 * (512 * 0.25) ** 2,
        exclude_pen=False,
    ),
}


def segmentation_params(preset: str = "default", **overrides) -> SegmentationParams:
    """A preset with the given non-None overrides applied."""
    if preset not in PRESETS:
        raise ValueError(f"unknown segmentation preset {preset!r}; choose one of {sorted(PRESETS)}")
    return replace(PRESETS[preset], **{k: v for k, v in overrides.items() if v is not None})


@dataclass
class TissueMask:
    """Result of segmentation: tissue and pen-ink masks at the segmentation image's size."""

    tissue: np.ndarray  # bool (H, W)
    pen: np.ndarray  # bool (H, W)
    threshold: float  # saturation threshold actually used


def pen_mask(hsv: np.ndarray) -> np.ndarray:
    """Blue, green and black marker ink: saturated blue/green hues, or dark neutral pixels.

    H&E never looks green, its hematoxylin purple sits above the blue-ink hue band (OpenCV
    hue 95-125 of 180), and its darkest nuclei clusters are far more saturated than black ink.
    """
    blue = cv2.inRange(hsv, (95, 91, 0), (124, 255, 234))  # h 95-124, s > 90, v < 235
    green = cv2.inRange(hsv, (35, 41, 0), (94, 255, 234))  # h 35-94, s > 40, v < 235
    black = cv2.inRange(hsv, (0, 0, 0), (255, 109, 59))  # s < 110, v < 60
    ink = (blue | green | black) & 1
    ink = cv2.morphologyEx(ink, cv2.MORPH_OPEN, np.ones((2, 2), np.uint8))  # drop lone pixels
    return cv2.dilate(ink, np.ones((5, 5), np.uint8)).astype(bool)  # ink edges blend with glass


def _fill_small_holes(tissue: np.ndarray, max_hole_px: float) -> np.ndarray:
    """Fill background regions enclosed by tissue that are smaller than `max_hole_px`."""
    _, labels, stats, _ = cv2.connectedComponentsWithStats((~tissue).astype(np.uint8), 4)
    fill = stats[:, cv2.CC_STAT_AREA] < max_hole_px
    fill[np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])] = False  # not holes
    fill[0] = False  # label 0 is tissue itself
    return tissue | fill[labels]


def _drop_small_regions(tissue: np.ndarray, min_px: float) -> np.ndarray:
    """Remove connected tissue regions smaller than `min_px` pixels (dust, debris)."""
    _, labels, stats, _ = cv2.connectedComponentsWithStats(tissue.astype(np.uint8), 8)
    keep = stats[:, cv2.CC_STAT_AREA] >= min_px
    keep[0] = False
    return keep[labels]


def segment_tissue(rgb: np.ndarray, mpp: float, params: SegmentationParams) -> TissueMask:
    """Tissue mask of an RGB image whose pixels are `mpp` micrometres wide."""
    hsv = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)
    sat = cv2.medianBlur(cv2.extractChannel(hsv, 1), params.median_blur)
    if params.saturation_threshold == "otsu":
        otsu, _ = cv2.threshold(sat, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
        threshold = float(np.clip(otsu, *OTSU_RANGE))
    else:
        threshold = float(params.saturation_threshold)
    tissue = sat > threshold
    pen = pen_mask(hsv) if params.exclude_pen else np.zeros_like(tissue)
    tissue &= ~pen
    if params.close > 0:
        kernel = np.ones((params.close, params.close), np.uint8)
        tissue = cv2.morphologyEx(tissue.astype(np.uint8), cv2.MORPH_CLOSE, kernel).astype(bool)
    px_area = mpp * mpp
    tissue = _fill_small_holes(tissue, params.min_hole_area_um2 / px_area) & ~pen
    tissue = _drop_small_regions(tissue, params.min_tissue_area_um2 / px_area)
    return TissueMask(tissue=tissue, pen=pen, threshold=threshold)
