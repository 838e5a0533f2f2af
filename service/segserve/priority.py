"""Compute threads run at a lower CPU priority than the event loop.

When the CPU is saturated (more frames offered than it can run), every thread of the server waits
for a core. The event loop is the one whose waiting nobody needs: it only moves bytes and starts
work, and each of its delays adds to every call in flight. Decode, resize, encode and the network
run at ``COMPUTE_NICENESS`` above it, so under load frames wait in the admission queue (bounded and
measured) instead of in the transport. Linux applies niceness per thread; elsewhere this does nothing.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

COMPUTE_NICENESS = 5

T = TypeVar("T")


def lower_current_thread(by: int = COMPUTE_NICENESS) -> None:
    """Raise this thread's niceness by ``by`` (any user may lower a thread's priority). Threads it
    creates afterwards inherit it."""
    try:
        tid = threading.get_native_id()
        now = os.getpriority(os.PRIO_PROCESS, tid)
        os.setpriority(os.PRIO_PROCESS, tid, min(19, now + by))
    except (AttributeError, OSError):  # not Linux, or not permitted: run at the same priority
        pass


def call_lowered(fn: Callable[[], T]) -> T:
    """Run ``fn`` on a short-lived thread of lowered priority and return its result (or raise its
    error): threads that ``fn`` creates (onnxruntime's intra-op pool when it builds a session)
    inherit the priority."""
    with ThreadPoolExecutor(max_workers=1, initializer=lower_current_thread) as pool:
        return pool.submit(fn).result()
