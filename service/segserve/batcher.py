"""Dynamic batching shared by all callers.

Items wait in a bounded queue, one lane per source (a stream, or the pool of unary calls); a single
worker forms batches of up to ``max_batch`` frames, waiting at most ``max_delay`` after the first
frame arrives, but only while frames are still being decoded upstream (``announce``), so a lone
frame never waits for company that is not coming. Lanes are taken round-robin so one greedy stream
cannot starve the others. Items whose deadline passed or whose caller went away are answered with
an error and never run.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Hashable
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np

from segserve.types import UNARY_LANE
from segserve.errors import Cancelled, DeadlineExceeded, Overloaded, SegserveError, ShuttingDown

log = logging.getLogger(__name__)



@dataclass(frozen=True)
class BatchResult:
    """One item's share of a batch run."""

    labels: np.ndarray  # (H, W) uint8 at the model's input size
    queue_us: int
    stack_us: int
    inference_us: int
    batch_size: int


@dataclass
class _Item:
    frame: np.ndarray
    lane: Hashable
    deadline: float | None  # time.monotonic() seconds
    is_cancelled: Callable[[], bool] | None
    enqueued: float = field(default_factory=time.perf_counter)
    future: Future = field(default_factory=Future)


@dataclass
class BatcherStats:
    batches: int = 0
    frames: int = 0
    expired: int = 0
    cancelled: int = 0


class Batcher:
    def __init__(
        self,
        run: Callable[[np.ndarray], np.ndarray],
        max_batch: int = 8,
        max_delay_s: float = 0.002,
        max_queue: int = 64,
        on_batch: Callable[[int], None] | None = None,
    ):
        if max_batch < 1 or max_queue < 1:
            raise ValueError("max_batch and max_queue must be at least 1")
        self._run = run
        self.max_batch = max_batch
        self.max_delay_s = max_delay_s
        self.max_queue = max_queue
        self._on_batch = on_batch
        self._lanes: OrderedDict[Hashable, deque[_Item]] = OrderedDict()
        self._size = 0
        self._announced = 0  # frames being decoded/resized that will be submitted soon
        self._cond = threading.Condition()
        self._closed = False
        self.stats = BatcherStats()
        self._worker = threading.Thread(target=self._loop, name="segserve-batcher", daemon=True)
        self._worker.start()

    # --- producer side ---------------------------------------------------------------------------
    @property
    def depth(self) -> int:
        return self._size

    def announce(self) -> None:
        """A frame is on its way (decoding); the worker may wait for it to fill a batch."""
        with self._cond:
            self._announced += 1

    def withdraw(self) -> None:
        """An announced frame will not come (it failed to decode)."""
        with self._cond:
            self._announced -= 1
            self._cond.notify_all()

    def submit(
        self,
        frame: np.ndarray,
        lane: Hashable = UNARY_LANE,
        deadline: float | None = None,
        is_cancelled: Callable[[], bool] | None = None,
        wait_s: float = 0.0,
        announced: bool = False,
    ) -> Future:
        """Queue one (H, W, 3) frame; the future resolves to a BatchResult or a SegserveError.

        Raises Overloaded at once when the queue is full (after waiting up to ``wait_s`` for room),
        and ShuttingDown after ``close``.
        """
        item = _Item(frame, lane, deadline, is_cancelled)
        end = time.monotonic() + wait_s
        with self._cond:
            if announced:
                self._announced -= 1
            while True:
                if self._closed:
                    raise ShuttingDown("the server is shutting down")
                if self._size < self.max_queue:
                    break
                remaining = end - time.monotonic()
                if remaining <= 0:
                    raise Overloaded(
                        f"server busy: {self._size} frames queued (limit {self.max_queue}); retry later"
                    )
                self._cond.wait(remaining)
            self._lanes.setdefault(lane, deque()).append(item)
            self._size += 1
            self._cond.notify_all()
        return item.future

    def close(self, drain: bool = True, timeout: float | None = None) -> None:
        """Stop accepting; with ``drain`` run what is queued, else fail it with ShuttingDown."""
        with self._cond:
            self._closed = True
            if not drain:
                for lane in self._lanes.values():
                    for item in lane:
                        if item.future.set_running_or_notify_cancel():
                            item.future.set_exception(
                                ShuttingDown("the server shut down before this frame ran")
                            )
                self._lanes.clear()
                self._size = 0
            self._cond.notify_all()
        self._worker.join(timeout)

    # --- worker side -----------------------------------------------------------------------------
    def _take_round_robin(self, limit: int) -> list[_Item]:
        """Up to ``limit`` items, one lane at a time in turn, all of the first item's shape (frames of
        other sizes, possible when the graph resizes, wait for the next batch)."""
        taken: list[_Item] = []
        shape = None
        skipped: list[Hashable] = []
        while len(taken) < limit and self._lanes:
            lane, queue = next(iter(self._lanes.items()))
            self._lanes.pop(lane)
            if shape is None:
                shape = queue[0].frame.shape
            if queue[0].frame.shape == shape:
                taken.append(queue.popleft())
                if queue:
                    self._lanes[lane] = queue  # to the back of the round
            else:
                skipped.append(lane)
                self._lanes[lane] = queue
                if len(skipped) >= len(self._lanes):
                    break
        self._size -= len(taken)
        self._cond.notify_all()
        return taken

    def _gather(self) -> list[_Item] | None:
        with self._cond:
            while not self._size:
                if self._closed:
                    return None
                self._cond.wait()
            first_wait_end = time.perf_counter() + self.max_delay_s
            while self._size < self.max_batch and self._announced > 0 and not self._closed:
                remaining = first_wait_end - time.perf_counter()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            return self._take_round_robin(self.max_batch)

    def _live(self, items: list[_Item]) -> list[_Item]:
        now = time.monotonic()
        live = []
        for item in items:
            if not item.future.set_running_or_notify_cancel():
                continue  # the caller cancelled the future itself
            if item.is_cancelled is not None and item.is_cancelled():
                self.stats.cancelled += 1
                item.future.set_exception(Cancelled("the caller went away before the frame ran"))
            elif item.deadline is not None and now >= item.deadline:
                self.stats.expired += 1
                item.future.set_exception(DeadlineExceeded("the deadline passed while the frame was queued"))
            else:
                live.append(item)
        return live

    def _loop(self) -> None:
        while True:
            items = self._gather()
            if items is None:
                return
            items = self._live(items)
            if items:
                self._run_batch(items)

    def _run_batch(self, items: list[_Item]) -> None:
        start = time.perf_counter()
        try:
            batch = np.stack([item.frame for item in items])
            stacked = time.perf_counter()
            labels = self._run(batch)
        except SegserveError as exc:
            for item in items:
                item.future.set_exception(exc)
            return
        except Exception as exc:  # the engine failed: every caller hears about it, the worker lives on
            log.exception("batch of %d failed", len(items))
            for item in items:
                item.future.set_exception(exc)
            return
        done = time.perf_counter()
        self.stats.batches += 1
        self.stats.frames += len(items)
        if self._on_batch is not None:
            self._on_batch(len(items))
        for i, item in enumerate(items):
            item.future.set_result(
                BatchResult(
                    labels=labels[i],
                    queue_us=int((start - item.enqueued) * 1e6),
                    stack_us=int((stacked - start) * 1e6),
                    inference_us=int((done - stacked) * 1e6),
                    batch_size=len(items),
                )
            )
