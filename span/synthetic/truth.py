"""A demo slide's ground truth, written beside it: where its tumour is, so that heatmaps can be
scored against it (benchmarks/bench_localisation.py).

The truth is a grey PNG `<slide>.truth.png` holding, per block of `TRUTH_DOWNSAMPLE` x
`TRUTH_DOWNSAMPLE` level-0 pixels, the block's tumour fraction (0-255). Demo patches are
multiples of that block (224 px at 20x, 448 at 40x), so a patch's fraction is exact.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from span.atomic import atomic_output
from span.errors import SpanError

#: Level-0 pixels per truth pixel (the demo pyramid's coarsest level).
TRUTH_DOWNSAMPLE = 16
#: The truth file of `slide.tiff` is `slide.truth.png`.
TRUTH_SUFFIX = ".truth.png"
#: A patch counts as tumour when at least this share of it is tumour (arranged demo tumour
#: fills most of its patch cell; no normal cell holds any).
TUMOUR_PATCH_FRACTION = 0.25


def truth_path(slide_path: str | Path) -> Path:
    """Where the truth of a slide file lies: beside it, `<stem>.truth.png`."""
    slide_path = Path(slide_path)
    return slide_path.with_name(slide_path.stem + TRUTH_SUFFIX)


def write_truth(path: str | Path, tumour: np.ndarray) -> None:
    """Write a level-0 boolean tumour mask (H, W) as block fractions, atomically."""
    s = TRUTH_DOWNSAMPLE
    h, w = tumour.shape
    rows, cols = -(-h // s), -(-w // s)
    padded = np.zeros((rows * s, cols * s), np.float32)
    padded[:h, :w] = tumour
    fraction = padded.reshape(rows, s, cols, s).mean(axis=(1, 3))
    with atomic_output(path) as tmp:
        if not cv2.imwrite(str(tmp), np.round(fraction * 255).astype(np.uint8)):
            raise OSError(f"could not write {path}")


def read_truth(path: str | Path) -> np.ndarray:
    """Tumour fraction (0-1) per truth pixel of a truth PNG."""
    image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if image is None:
        raise SpanError(
            path,
            "no readable demo truth",
            "delete the demo slides' batch manifests (results/<cohort>/batches/demo_slides) "
            "and run again, so that the slides and their truth are drawn again",
        )
    return image.astype(np.float64) / 255


def patch_tumour_fraction(truth: np.ndarray, coords: np.ndarray, patch_size0: int) -> np.ndarray:
    """Each patch's tumour fraction, (N,), from its level-0 top-left corner and side."""
    s = TRUTH_DOWNSAMPLE
    out = np.zeros(len(coords))
    for i, (x, y) in enumerate(np.asarray(coords, np.int64)):
        block = truth[y // s : -(-(y + patch_size0) // s), x // s : -(-(x + patch_size0) // s)]
        out[i] = block.mean() if block.size else 0.0
    return out
