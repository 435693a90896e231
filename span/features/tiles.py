"""Reading patches as encoder-ready tiles, in parallel DataLoader workers.

Each worker process opens its own slide handles. The patches of several slides form one dataset
(`CohortTiles`), so the workers read the next slide's tiles while the current one encodes. A
failed read is retried once with a fresh handle (openslide refuses every read after an error); a
tile that still fails comes back blank and flagged, and the extraction leaves it out of the
slide's features.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import openslide
import torch
from PIL import Image
from torch.utils.data import Dataset

from span.features.registry import Interpolation
from span.features.worker_lifetime import die_with_parent
from span.slides.reader import rgba_to_rgb

log = logging.getLogger(__name__)

#: The encoders' published transforms resize PIL images (torchvision's Resize on a PIL image
#: is PIL's resize, antialiased when shrinking); tiles are resized by PIL with the same filter.
_PIL_FILTERS = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}


def resize_tile(rgb: np.ndarray, side: int, interpolation: Interpolation) -> np.ndarray:
    """A uint8 RGB tile resized to `side` x `side` with the encoder's published filter."""
    return np.asarray(Image.fromarray(rgb).resize((side, side), _PIL_FILTERS[interpolation]))


def centre_crop(rgb: np.ndarray, side: int) -> np.ndarray:
    """The central `side` x `side` square, offset rounded as torchvision's CenterCrop does."""
    top = round((rgb.shape[0] - side) / 2.0)
    left = round((rgb.shape[1] - side) / 2.0)
    return np.ascontiguousarray(rgb[top : top + side, left : left + side])


class SlideTiles(Dataset):
    """Patches `start..` of a slide as uint8 (crop, crop, 3) tiles, with index and success flag:
    each read at its level, resized to `out_size` with `interpolation`, then centre-cropped to
    `crop_size` (the encoder's published transform; no crop by default)."""

    def __init__(
        self,
        slide_path: str | Path,
        coords: np.ndarray,
        level: int,
        read_size: int,
        out_size: int,
        start: int = 0,
        crop_size: int | None = None,
        interpolation: Interpolation = "bilinear",
    ) -> None:
        self.slide_path = str(slide_path)
        self.coords = np.asarray(coords, np.int64)
        self.level = int(level)
        self.read_size = int(read_size)
        self.out_size = int(out_size)
        self.start = int(start)
        self.crop_size = int(crop_size or out_size)
        self.interpolation = interpolation
        if self.crop_size > self.out_size:
            raise ValueError(f"crop {self.crop_size} larger than the resized tile {out_size}")
        self._slide: openslide.OpenSlide | None = None
        self._pid: int | None = None

    def __len__(self) -> int:
        return len(self.coords) - self.start

    def _handle(self, fresh: bool = False) -> openslide.OpenSlide:
        if fresh or self._slide is None or self._pid != os.getpid():
            if self._slide is not None and self._pid == os.getpid():
                self._slide.close()
            self._slide = openslide.OpenSlide(self.slide_path)
            self._pid = os.getpid()
        return self._slide

    def close(self) -> None:
        """Close this process's handle (reopened on the next read)."""
        if self._slide is not None and self._pid == os.getpid():
            self._slide.close()
        self._slide = None

    def read_tile(self, index: int, fresh: bool = False) -> np.ndarray:
        """One patch, read at its level, resized and centre-cropped to the encoder's input."""
        x, y = self.coords[index]
        size = (self.read_size, self.read_size)
        rgb = rgba_to_rgb(np.asarray(self._handle(fresh).read_region((x, y), self.level, size)))
        if self.read_size != self.out_size:
            rgb = resize_tile(rgb, self.out_size, self.interpolation)
        if self.crop_size != self.out_size:
            rgb = centre_crop(rgb, self.crop_size)
        return rgb

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, bool]:
        index = self.start + i
        for attempt in range(2):
            try:
                return torch.from_numpy(self.read_tile(index, fresh=attempt > 0)), index, True
            except openslide.OpenSlideError as exc:
                log.warning(
                    "%s: patch %d at %s: read failed (%s)%s",
                    self.slide_path,
                    index,
                    tuple(self.coords[index].tolist()),
                    exc,
                    "; retrying" if attempt == 0 else "; left out of the bag",
                )
                self._slide = None  # the handle is in an error state; reopen on next use
        blank = torch.zeros((self.crop_size, self.crop_size, 3), dtype=torch.uint8)
        return blank, index, False


class CohortTiles(Dataset):
    """The patches of several slides as one dataset, slide after slide: item k is (tile, slide
    number, patch index, ok). A process keeps at most two slides open (the one it reads and
    the one before, whose last batch another worker may still be reading)."""

    def __init__(self, slides: Sequence[SlideTiles]) -> None:
        self.slides = list(slides)
        self.offsets = np.cumsum([0, *(len(s) for s in self.slides)])
        self._open: list[int] = []  # slides this process holds open, most recent last

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __getitem__(self, k: int) -> tuple[torch.Tensor, int, int, bool]:
        j = int(np.searchsorted(self.offsets, k, side="right")) - 1
        if not self._open or self._open[-1] != j:
            if j in self._open:
                self._open.remove(j)
            self._open.append(j)
            while len(self._open) > 2:
                self.slides[self._open.pop(0)].close()
        tile, index, ok = self.slides[j][k - int(self.offsets[j])]
        return tile, j, index, ok

    def batches(self, batch_size: int) -> list[list[int]]:
        """Batches of item numbers in order, none of them straddling two slides (a DataLoader
        `batch_sampler`)."""
        return [
            list(range(lo, min(lo + batch_size, int(hi))))
            for lo_slide, hi in zip(self.offsets[:-1], self.offsets[1:], strict=True)
            for lo in range(int(lo_slide), int(hi), batch_size)
        ]


def worker_init(_: int) -> None:
    """Workers decode tiles; one thread each leaves the cores to the encoder. A worker dies with
    the process that started it, however that one ends (a kill -9 left it running)."""
    die_with_parent(multiprocessing.parent_process().pid)
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
