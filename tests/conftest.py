"""Shared fixtures: the real CMU-1-Small-Region slide and small generated slides."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from span.slides.tiff_writer import write_pyramidal_tiff

if os.environ.get("PYTEST_XDIST_WORKER"):  # parallel test workers: one core each
    torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
_CMU1_NAME = Path("shared", "data", "slides", "CMU-1-Small-Region.svs")


def _find_cmu1() -> Path:
    """SPAN_TEST_SLIDE, else shared/data/slides/ beside the checkout or any folder above it."""
    if "SPAN_TEST_SLIDE" in os.environ:
        return Path(os.environ["SPAN_TEST_SLIDE"])
    for folder in [*REPO.parents, Path("/work")]:
        if (folder / _CMU1_NAME).is_file():
            return folder / _CMU1_NAME
    return REPO.parent / _CMU1_NAME


CMU1 = _find_cmu1()


@pytest.fixture(scope="session")
def cmu1() -> Path:
    """The real Aperio slide CMU-1-Small-Region (20x, 2220 x 2967, 0.499 um/px)."""
    if not CMU1.is_file():
        pytest.skip(f"real test slide not found at {CMU1} (set SPAN_TEST_SLIDE)")
    return CMU1


@pytest.fixture
def write_slide(tmp_path):
    """Write an RGB array as a pyramidal TIFF slide and return its path."""

    def _write(image: np.ndarray, mpp: float | None = 0.5, name: str = "slide.tiff") -> Path:
        path = tmp_path / name
        if mpp is None:  # a TIFF without resolution tags: no mpp for openslide
            import tifffile

            tifffile.imwrite(path, image, tile=(256, 256), photometric="rgb")
            return path
        return write_pyramidal_tiff(path, image, mpp, downsamples=(1, 4, 16))

    return _write
