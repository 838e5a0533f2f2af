"""Keep glibc's allocator from holding on to freed frame buffers.

A server that allocates and frees megabyte-sized buffers (frames, masks, encoded answers) on many
threads lets glibc's defaults grow its resident memory well past what it uses: the mmap threshold
rises after the first large free, so later buffers come from per-thread arenas that are seldom
given back. Fixing the threshold (large buffers are mapped and unmapped) and capping the arenas
keeps RSS close to what the server's own byte accounting holds (``benchmarks/hostile.py``).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter numbers (malloc.h)
M_ARENA_MAX = -8
MMAP_THRESHOLD_BYTES = 128 << 10  # glibc's initial value, now fixed
ARENA_MAX = 2

log = logging.getLogger(__name__)


def bound_retention() -> bool:
    """Apply the settings above; False where the C library is not glibc (nothing to do there).

    Call it before the server's threads start: a thread's arena is chosen on its first allocation.
    """
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError):  # musl and others: no mallopt
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    ok = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)) and bool(mallopt(M_ARENA_MAX, ARENA_MAX))
    if not ok:
        log.warning("mallopt refused the allocator settings; memory may grow past the byte budgets")
    return ok
