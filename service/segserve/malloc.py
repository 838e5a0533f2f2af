"""Keep glibc's allocator from holding freed frame buffers across many arenas, and from paying
fresh page faults for every frame.

glibc gives each thread that allocates under contention an arena of its own (up to 8 per core), and
memory freed into an arena is seldom given back. A server whose pool, engine and transport threads
allocate and free megabyte-sized buffers (frames, masks, encoded answers) then grows its resident
memory well past what it holds. Two arenas keep RSS closer to the server's own byte accounting
(``benchmarks/hostile.py``).

Left to itself, glibc also maps each large buffer afresh and trims freed heap space back to the
kernel: a 1080p frame then costs 800-1,600 page faults (about 1 ms of decode and encode, measured
with ``/proc/PID/stat``). Buffers up to ``MMAP_THRESHOLD`` come from the heap and up to
``TRIM_THRESHOLD`` of free heap is kept for the next frame: no page faults per frame, the same idle
RSS, and peak RSS under ``hostile.py`` the same over idle. (A *low* fixed threshold, tried before,
did the opposite: every buffer faulted, -15-19% throughput.)
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

# glibc's mallopt parameter numbers (malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8

ARENA_MAX = 2
MMAP_THRESHOLD = 32 << 20  # glibc's largest: a raw 1080p frame (6 MB) and its masks stay on the heap
TRIM_THRESHOLD = 256 << 20

log = logging.getLogger(__name__)


def bound_retention() -> bool:
    """Cap glibc's arenas and keep large buffers on the heap; False where the C library is not
    glibc (nothing to do there).

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
    settings = {M_ARENA_MAX: ARENA_MAX, M_MMAP_THRESHOLD: MMAP_THRESHOLD, M_TRIM_THRESHOLD: TRIM_THRESHOLD}
    refused = [number for number, value in settings.items() if not mallopt(number, value)]
    if refused:
        log.warning("mallopt refused settings %s; memory may grow past the byte budgets", refused)
        return False
    return True
