"""The one admission point: frames and bytes in flight, all callers together.

Every frame holds a ``Ticket`` from the moment it is admitted until its work is really over: a
caller that leaves does not free the slot while a decode it started is still running on a pool
thread (``Ticket.release_after``). Answers waiting to be written hold their bytes too
(``hold_bytes``), so callers that never read cannot grow the server's memory past ``max_bytes``.
Plain asyncio: one event loop owns it, waiters are woken in order, nothing polls.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections import deque
from dataclasses import dataclass

from segserve.errors import Overloaded


@dataclass(eq=False)
class Ticket:
    """One admitted frame's share: a frame slot and ``nbytes``. ``release`` is idempotent, and waits
    for the pool jobs pinned with ``release_after`` (work the caller no longer waits for)."""

    admission: Admission
    nbytes: int
    frames: int = 1
    released: bool = False
    _pinned: int = 0
    _release_wanted: bool = False

    def release(self) -> None:
        if self.released:
            return
        if self._pinned:
            self._release_wanted = True
            return
        self.released = True
        self.admission._give_back(self.frames, self.nbytes)

    def release_after(self, work: concurrent.futures.Future) -> None:
        """Keep the ticket held until ``work`` (a pool job its caller left behind) has finished."""
        if work.done():
            return
        self._pinned += 1
        loop = self.admission.loop
        work.add_done_callback(lambda _: loop.call_soon_threadsafe(self._unpin))

    def _unpin(self) -> None:
        self._pinned -= 1
        if not self._pinned and self._release_wanted:
            self.release()


class Admission:
    def __init__(self, max_frames: int, max_bytes: int):
        if max_frames < 1 or max_bytes < 1:
            raise ValueError("admission limits must be at least 1")
        self.max_frames = max_frames
        self.max_bytes = max_bytes
        self.frames = 0
        self.bytes = 0
        self._waiters: deque[tuple[int, asyncio.Future[None]]] = deque()
        self._freed = asyncio.Event()  # set whenever frames or bytes are given back
        self.loop = asyncio.get_running_loop()

    def has_room(self, nbytes: int = 0) -> bool:
        """Nobody waits and a frame of ``nbytes`` would be admitted now."""
        return not self._waiters and self._fits(max(nbytes, 1))

    async def room(self, nbytes: int = 0) -> None:
        """Wait until ``has_room(nbytes)``. Stream readers wait here, with the size of their last
        frame, before reading the next message: a frame is not read (its bytes held, uncharged)
        only to wait for admission, and while the budget is used up clients feel HTTP/2 flow
        control instead of filling the server's memory."""
        while not self.has_room(nbytes):
            self._freed.clear()
            await self._freed.wait()

    def _fits(self, nbytes: int) -> bool:
        # A frame larger than the whole byte budget still runs when nothing else is held (it passed
        # the frame-size limit), so the budget can never deadlock a lone caller.
        return self.frames < self.max_frames and (self.bytes + nbytes <= self.max_bytes or self.bytes == 0)

    def try_admit(self, nbytes: int) -> Ticket:
        """A ticket at once, or ``Overloaded`` (unary calls: the caller retries with backoff)."""
        if self._waiters or not self._fits(nbytes):
            raise Overloaded(
                f"server busy: {self.frames} frames / {self.bytes >> 20} MiB in flight "
                f"(limits {self.max_frames} / {self.max_bytes >> 20} MiB); retry with backoff"
            )
        return self._take(nbytes)

    async def admit(self, nbytes: int) -> Ticket:
        """Wait in order for room (streams: the client feels HTTP/2 flow control meanwhile)."""
        if not self._waiters and self._fits(nbytes):
            return self._take(nbytes)
        waiter: asyncio.Future[None] = self.loop.create_future()
        entry = (nbytes, waiter)
        self._waiters.append(entry)
        try:
            await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self._give_back(1, nbytes)  # granted just as the caller left
            else:
                self._waiters.remove(entry)
                self._wake()
            raise
        return Ticket(self, nbytes)

    def hold_bytes(self, nbytes: int) -> Ticket:
        """Account bytes already in memory (an answer waiting to be written); never refused."""
        self.bytes += nbytes
        return Ticket(self, nbytes, frames=0)

    def _take(self, nbytes: int) -> Ticket:
        self.frames += 1
        self.bytes += nbytes
        return Ticket(self, nbytes)

    def _give_back(self, frames: int, nbytes: int) -> None:
        self.frames -= frames
        self.bytes -= nbytes
        self._wake()

    def _wake(self) -> None:
        while self._waiters:
            nbytes, waiter = self._waiters[0]
            if waiter.done():
                self._waiters.popleft()
                continue
            if not self._fits(nbytes):
                break
            self._waiters.popleft()
            self.frames += 1
            self.bytes += nbytes
            waiter.set_result(None)
        self._freed.set()
