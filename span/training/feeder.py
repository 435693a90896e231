"""Slides' features for training and prediction, read ahead while the model computes.

A background thread reads (and standardises, augments, pins) the next slides while the current
one trains, so a step does not wait for the disk; slides are kept in memory, up to a budget, so
later epochs read none; and tensors reach the device by an asynchronous copy, so feeding a step
never synchronises the host with the device. The time the loop still waits is measured.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence

import torch

from span.features.feature_file import read_feature_file
from span.training.bags import Bag, FeatureStats

#: Slides read ahead of the one the model is on.
READ_AHEAD = 2

Transform = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


class BagFeeder:
    """Yields (position, features (N, D) float32, grid (N, 2) int64) on `device`, for the bags
    in the order asked, reading ahead in a thread; keeps up to `cache_mb` of prepared slides in
    host memory (first come, first kept); `wait_seconds` adds up the time spent waiting."""

    def __init__(
        self,
        feature_dim: int,
        device: torch.device,
        stats: FeatureStats | None = None,
        cache_mb: float = 0.0,
    ) -> None:
        self.feature_dim = feature_dim
        self.device = device
        self.stats = stats
        self.cache_bytes = cache_mb * 2**20
        self.cached_bytes = 0
        self._cache: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self.wait_seconds = 0.0
        self.reads = 0  # slides read from disk (a cached slide is read once)
        self.read_seconds = 0.0  # spent reading them, in the thread: what reading ahead hides

    def _prepare(self, bag: Bag) -> tuple[torch.Tensor, torch.Tensor]:
        """The slide's standardised float32 features and int64 grid, from memory or disk."""
        hit = self._cache.get(bag.slide_id)
        if hit is not None:
            return hit
        t0 = time.perf_counter()
        fs = read_feature_file(bag.features, expected_dim=self.feature_dim, with_attrs=False)
        self.read_seconds += time.perf_counter() - t0
        self.reads += 1
        features = torch.from_numpy(fs.features).float()
        if self.stats is not None:
            features = (features - self.stats.mean) / self.stats.std
        grid = torch.from_numpy(fs.grid).long()
        size = features.nbytes + grid.nbytes
        if self.cached_bytes + size <= self.cache_bytes:
            if self.device.type == "cuda":  # pinned once, copied to the device every epoch
                features, grid = features.pin_memory(), grid.pin_memory()
            self._cache[bag.slide_id] = (features, grid)
            self.cached_bytes += size
        return features, grid

    def __call__(
        self,
        bags: Sequence[Bag],
        order: Sequence[int] | None = None,
        transform: Transform | None = None,
    ) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
        """The bags at `order` (default: all, in turn), each transformed on the host by
        `transform` (augmentation, in order: reproducible) before it moves to the device."""
        order = range(len(bags)) if order is None else order
        ready: queue.Queue = queue.Queue(maxsize=READ_AHEAD)
        stop = threading.Event()
        pin = self.device.type == "cuda"

        def produce() -> None:
            try:
                for position in order:
                    if stop.is_set():
                        return
                    features, grid = self._prepare(bags[position])
                    if transform is not None:
                        features, grid = transform(features, grid)
                    if pin:  # a cached tensor is pinned already, a transformed one is new
                        features = features if features.is_pinned() else features.pin_memory()
                        grid = grid if grid.is_pinned() else grid.pin_memory()
                    ready.put((position, features, grid))
                ready.put(None)
            except BaseException as exc:  # handed to the consumer, raised there
                ready.put(exc)

        thread = threading.Thread(target=produce, name="bag-feeder", daemon=True)
        thread.start()
        try:
            while True:
                t0 = time.perf_counter()
                item = ready.get()
                self.wait_seconds += time.perf_counter() - t0
                if item is None:
                    return
                if isinstance(item, BaseException):
                    raise item
                position, features, grid = item
                yield (
                    position,
                    features.to(self.device, non_blocking=True),
                    grid.to(self.device, non_blocking=True),
                )
        finally:
            stop.set()
            while thread.is_alive():  # unblock a producer waiting on a full queue
                try:
                    ready.get_nowait()
                except queue.Empty:
                    thread.join(timeout=0.01)
