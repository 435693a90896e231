"""Process memory: glibc heap settings for tensor-heavy work, and peak-RSS measurement."""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
from pathlib import Path

#: glibc's mallopt parameter number of M_MMAP_THRESHOLD.
_M_MMAP_THRESHOLD = -3


def reduce_heap_fragmentation(threshold_bytes: int = 4 << 20) -> bool:
    """Serve allocations >= `threshold_bytes` by mmap, so freed tensors return to the OS.

    glibc raises its mmap threshold dynamically up to 32 MB after the first large free;
    the many short-lived activations of a training step then fragment the heap, and the
    process keeps hundreds of MB it does not use (measured: SPAN at 100k patches on CPU,
    2.3 GB -> 1.5 GB peak RSS, no slower). A fixed threshold disables that. Linux/glibc only;
    returns whether it was applied.
    """
    if not sys.platform.startswith("linux"):
        return False
    libc_name = ctypes.util.find_library("c")
    if libc_name is None:
        return False
    try:
        return bool(ctypes.CDLL(libc_name).mallopt(_M_MMAP_THRESHOLD, threshold_bytes))
    except (OSError, AttributeError):
        return False


def _status_mb(key: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def current_rss_mb() -> float | None:
    """Resident memory of this process now (MB), where /proc exists."""
    return _status_mb("VmRSS:")


def peak_rss_mb() -> float | None:
    """Peak resident memory of this process (MB) since start or the last `reset_peak_rss`."""
    return _status_mb("VmHWM:")


def reset_peak_rss() -> bool:
    """Restart peak-RSS tracking from the current RSS (Linux); returns whether it worked."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True
