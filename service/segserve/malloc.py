"""Keep glibc's allocator from holding on to freed frame buffers across many arenas.

glibc gives each thread that allocates under contention an arena of its own (up to 8 per core), and
memory freed into an arena is seldom given back. A server whose pool, engine and transport threads
allocate and free megabyte-sized buffers (frames, masks, encoded answers) then grows its resident
memory well past what it holds. Two arenas keep RSS closer to the server's own byte accounting
(``benchmarks/hostile.py``). Fixing the mmap threshold as well kept RSS lower still, but every large
buffer then cost fresh page faults: 15-19% of the 1080p throughput, so it is not done.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

M_ARENA_MAX = -8  # glibc's mallopt parameter number (malloc.h)
ARENA_MAX = 2

log = logging.getLogger(__name__)


def bound_retention() -> bool:
    """Cap glibc's arenas; False where the C library is not glibc (nothing to do there).

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
    if not mallopt(M_ARENA_MAX, ARENA_MAX):
        log.warning("mallopt refused to cap the allocator's arenas; memory may grow past the byte budgets")
        return False
    return True
