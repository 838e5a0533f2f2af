"""Pacing of file sources: at their native frame rate (``--realtime``) or as fast as possible."""

from __future__ import annotations

import threading
import time


class Pacer:
    """``wait(i)`` returns when frame ``i`` is due: ``start + i / fps``; ``fps`` None: at once.

    A pacer that falls behind does not rush to catch up by more than one frame: a late frame moves
    the schedule, so a slow server makes the source slower, not burstier.
    """

    def __init__(self, fps: float | None, stop: threading.Event | None = None):
        self.period = 1.0 / fps if fps else 0.0
        self.stop = stop or threading.Event()
        self._next: float | None = None

    def wait(self) -> bool:
        """Sleep until the next frame is due; False when stopped meanwhile."""
        if not self.period:
            return not self.stop.is_set()
        now = time.perf_counter()
        if self._next is None:
            self._next = now
        delay = self._next - now
        if delay > 0 and self.stop.wait(delay):
            return False
        self._next = max(self._next, time.perf_counter() - self.period) + self.period
        return not self.stop.is_set()
