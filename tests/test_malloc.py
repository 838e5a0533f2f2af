from __future__ import annotations

import platform
import subprocess
import sys

import pytest


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the arena cap is glibc's")
def test_the_arena_cap_is_taken_by_glibc() -> None:
    # in a fresh interpreter: the cap is meant to be set before the server's threads start
    code = "from segserve import malloc; print(malloc.bound_retention())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "True"


FRAME_BUFFERS = """
import ctypes, resource, sys, threading
from segserve import malloc
if sys.argv[1] == "bound":
    assert malloc.bound_retention()
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
SIZES = [6 << 20, 2 << 20, 6 << 20, 300 << 10, 1 << 20]  # a 1080p frame, its mask, overlay, JPEG, ...

def frame():
    ptrs = [libc.malloc(size) for size in SIZES]
    for ptr, size in zip(ptrs, SIZES):
        ctypes.memset(ptr, 1, size)
    for ptr in ptrs:
        libc.free(ptr)

def work():  # on a thread, as the server's pool allocates
    frame()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(20):
        frame()
    print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)

thread = threading.Thread(target=work)
thread.start()
thread.join()
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the thresholds are glibc's")
def test_frame_sized_buffers_are_reused_without_page_faults() -> None:
    """Without the thresholds every frame's buffers are mapped afresh (thousands of page faults a
    frame); with them the second frame onwards reuses the heap."""

    def faults(mode: str) -> int:
        command = [sys.executable, "-c", FRAME_BUFFERS, mode]
        return int(subprocess.run(command, capture_output=True, text=True, check=True, timeout=60).stdout)

    assert faults("default") > 20 * 1000
    assert faults("bound") < 200
