"""Admission control: a counter of frames in flight with try/blocking acquire that a shutdown or a
cancelled caller can interrupt."""

from __future__ import annotations

import threading
from collections.abc import Callable


class Admission:
    def __init__(self, limit: int):
        if limit < 1:
            raise ValueError("admission limit must be at least 1")
        self.limit = limit
        self._used = 0
        self._cond = threading.Condition()

    @property
    def in_use(self) -> int:
        return self._used

    def try_acquire(self) -> bool:
        with self._cond:
            if self._used >= self.limit:
                return False
            self._used += 1
            return True

    def acquire(self, give_up: Callable[[], bool], poll_s: float = 0.05) -> bool:
        """Wait for a slot; False when ``give_up()`` turns true first (checked every ``poll_s``)."""
        with self._cond:
            while self._used >= self.limit:
                if give_up():
                    return False
                self._cond.wait(poll_s)
            self._used += 1
            return True

    def release(self) -> None:
        with self._cond:
            if self._used <= 0:
                raise RuntimeError("admission released more often than acquired")
            self._used -= 1
            self._cond.notify()
