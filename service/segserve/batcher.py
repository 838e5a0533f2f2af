"""Dynamic batching shared by all callers, as one supervised asyncio task.

Items wait in a bounded queue, one lane per source (a stream, or the pool of unary calls); the
worker forms batches of up to ``max_batch`` frames, waiting at most ``max_delay`` after the first
frame arrives, but only while frames are still being decoded upstream (``announce``), so a lone
frame never waits for company that is not coming. Lanes are taken round-robin so one greedy stream
cannot starve the others. Items whose deadline passed or whose caller left are never run. The
engine runs on an executor of its own (ONNX Runtime releases the GIL).

Frames are decoded pixels, or JPEGs the engine decodes on the device (``EncodedFrame``, run with
``run_encoded``); a batch holds one kind and one size (``device_decode.batch_key``).

Supervised: if the worker itself fails, ``failure`` is set, every waiting caller gets UNAVAILABLE
at once, new submissions too, and ``on_failure`` is told (the server turns health NOT_SERVING).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from segserve.device_decode import EncodedFrame, batch_key
from segserve.errors import (
    DeadlineExceeded,
    InvalidFrame,
    Overloaded,
    SegserveError,
    ShuttingDown,
    Unavailable,
)
from segserve.types import UNARY_LANE

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BatchResult:
    """One item's share of a batch run."""

    labels: np.ndarray  # (H, W) uint8 at the model's input size
    queue_us: int
    stack_us: int
    inference_us: int
    batch_size: int
    decode_us: int = 0  # JPEGs decoded with the batch (device decode): the batch's decoding time


class EncodedRunResult(Protocol):
    """What ``run_encoded`` answers (``engine.EncodedRun``)."""

    labels: np.ndarray
    errors: list[str | None]
    decode_us: int


@dataclass
class _Ran:
    """A batch's answer on the engine's thread: ids, per-frame errors, and when each part ended."""

    labels: np.ndarray
    errors: Sequence[str | None]
    decode_us: int
    stacked: float
    done: float


@dataclass(eq=False)
class _Item:
    frame: np.ndarray | EncodedFrame
    lane: Hashable
    deadline: float | None  # time.monotonic() seconds
    future: asyncio.Future[BatchResult]
    enqueued: float = field(default_factory=time.perf_counter)


@dataclass
class BatcherStats:
    batches: int = 0
    frames: int = 0
    expired: int = 0
    cancelled: int = 0


class Batcher:
    """Create inside the event loop that will use it; ``start`` launches the worker."""

    def __init__(
        self,
        run: Callable[[np.ndarray], np.ndarray],
        executor: Executor,
        max_batch: int = 8,
        max_delay_s: float = 0.002,
        max_queue: int = 64,
        on_batch: Callable[[int], None] | None = None,
        on_failure: Callable[[BaseException], None] | None = None,
        run_encoded: Callable[[list[EncodedFrame]], EncodedRunResult] | None = None,
    ):
        """``run``: a stacked pixel batch -> ids; ``run_encoded``: JPEGs of one size -> ids and per-frame
        errors (``Engine.run_encoded``), for frames the engine decodes on the device."""
        if max_batch < 1 or max_queue < 1:
            raise ValueError("max_batch and max_queue must be at least 1")
        self._run = run
        self._run_encoded = run_encoded
        self._executor = executor
        self.max_batch = max_batch
        self.max_delay_s = max_delay_s
        self.max_queue = max_queue
        self._on_batch = on_batch
        self._on_failure = on_failure
        self._lanes: OrderedDict[Hashable, deque[_Item]] = OrderedDict()
        self._size = 0
        self._announced = 0  # frames being decoded/resized that will be submitted soon
        self._changed = asyncio.Event()
        self._closed = False
        self.failure: BaseException | None = None
        self._running: list[_Item] = []  # the batch on the engine now
        self.stats = BatcherStats()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._supervise(), name="segserve-batcher")

    # --- producer side ---------------------------------------------------------------------------
    @property
    def takes_encoded(self) -> bool:
        """Whether ``infer`` takes ``EncodedFrame`` JPEGs (a ``run_encoded`` was given)."""
        return self._run_encoded is not None

    @property
    def depth(self) -> int:
        return self._size

    def announce(self) -> None:
        """A frame is on its way (decoding); the worker may wait for it to fill a batch."""
        self._announced += 1

    def withdraw(self) -> None:
        """An announced frame will not come (it failed to decode, or its caller left)."""
        self._announced -= 1
        self._changed.set()

    def _refusal(self) -> SegserveError | None:
        if self.failure is not None:
            return Unavailable("the inference worker failed; this replica is not serving")
        if self._closed:
            return ShuttingDown("the server is shutting down")
        if self._size >= self.max_queue:
            return Overloaded(
                f"server busy: {self._size} frames queued (limit {self.max_queue}); retry later"
            )
        return None

    async def infer(
        self,
        frame: np.ndarray | EncodedFrame,
        lane: Hashable = UNARY_LANE,
        deadline: float | None = None,
        announced: bool = False,
    ) -> BatchResult:
        """Queue one frame (pixels, or a JPEG when ``takes_encoded``) and wait for its share of a batch.
        Raises a SegserveError (InvalidFrame: the engine could not decode this JPEG)."""
        if announced:
            self._announced -= 1
        refusal = self._refusal()
        if refusal is not None:
            self._changed.set()
            raise refusal
        item = _Item(frame, lane, deadline, asyncio.get_running_loop().create_future())
        self._lanes.setdefault(lane, deque()).append(item)
        self._size += 1
        self._changed.set()
        return await item.future  # cancelling it (caller left) makes the worker skip the item

    async def close(self, drain: bool = True) -> None:
        """Stop accepting; with ``drain`` run what is queued, else fail it with ShuttingDown."""
        self._closed = True
        if not drain:
            self._fail_waiting(ShuttingDown("the server shut down before this frame ran"))
        self._changed.set()
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)

    # --- worker side -----------------------------------------------------------------------------
    async def _supervise(self) -> None:
        try:
            await self._loop()
        except asyncio.CancelledError:
            self._fail_waiting(ShuttingDown("the server shut down before this frame ran"))
            raise
        except BaseException as exc:
            log.exception("the batcher failed: this replica stops serving")
            self.failure = exc
            self._fail_waiting(Unavailable("the inference worker failed; this replica is not serving"))
            if self._on_failure is not None:
                self._on_failure(exc)

    def _fail_waiting(self, error: SegserveError) -> None:
        for item in self._running:
            if not item.future.done():
                item.future.set_exception(error)
        self._running = []
        for lane in self._lanes.values():
            for item in lane:
                if not item.future.done():
                    item.future.set_exception(error)
        self._lanes.clear()
        self._size = 0

    async def _wait_change(self, timeout: float | None = None) -> None:
        self._changed.clear()
        if timeout is None:
            await self._changed.wait()
            return
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._changed.wait(), timeout)

    async def _gather(self) -> list[_Item] | None:
        while not self._size:
            if self._closed:
                return None
            await self._wait_change()
        first_wait_end = time.perf_counter() + self.max_delay_s
        while self._size < self.max_batch and self._announced > 0 and not self._closed:
            remaining = first_wait_end - time.perf_counter()
            if remaining <= 0:
                break
            await self._wait_change(remaining)
        return self._take_round_robin(self.max_batch)

    def _take_round_robin(self, limit: int) -> list[_Item]:
        """Up to ``limit`` items, one lane at a time in turn, all of the first item's kind and shape
        (``batch_key``: frames of other sizes, possible when the graph resizes, and JPEGs among pixels
        wait for the next batch)."""
        taken: list[_Item] = []
        key = None
        skipped = 0
        while len(taken) < limit and self._lanes and skipped < len(self._lanes):
            lane, queue = next(iter(self._lanes.items()))
            self._lanes.pop(lane)
            if key is None:
                key = batch_key(queue[0].frame)
            if batch_key(queue[0].frame) == key:
                taken.append(queue.popleft())
            else:
                skipped += 1
            if queue:
                self._lanes[lane] = queue  # to the back of the round
        self._size -= len(taken)
        return taken

    def _live(self, items: list[_Item]) -> list[_Item]:
        now = time.monotonic()
        live = []
        for item in items:
            if item.future.done():  # the caller left (its await was cancelled)
                self.stats.cancelled += 1
            elif item.deadline is not None and now >= item.deadline:
                self.stats.expired += 1
                item.future.set_exception(DeadlineExceeded("the deadline passed while the frame was queued"))
            else:
                live.append(item)
        return live

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            items = await self._gather()
            if items is None:
                return
            items = self._live(items)
            if not items:
                continue
            start = time.perf_counter()
            self._running = items
            try:
                ran = await loop.run_in_executor(
                    self._executor, self._run_batch, [item.frame for item in items]
                )
            except SegserveError as exc:
                self._settle(items, exc)
                continue
            except Exception as exc:  # the engine failed on this batch: its callers hear it, we go on
                log.exception("batch of %d failed", len(items))
                self._settle(items, exc)
                continue
            self.stats.batches += 1
            self.stats.frames += len(items)
            if self._on_batch is not None:
                self._on_batch(len(items))
            # Device decode runs inside the engine call: its time is the frames' decode, not inference.
            inference_us = max(0, int((ran.done - ran.stacked) * 1e6) - ran.decode_us)
            for i, item in enumerate(items):
                if item.future.done():
                    continue
                if ran.errors[i] is not None:
                    item.future.set_exception(InvalidFrame(ran.errors[i]))
                    continue
                item.future.set_result(
                    BatchResult(
                        labels=ran.labels[i],
                        queue_us=int((start - item.enqueued) * 1e6),
                        stack_us=int((ran.stacked - start) * 1e6),
                        inference_us=inference_us,
                        batch_size=len(items),
                        decode_us=ran.decode_us,
                    )
                )
            self._running = []

    @staticmethod
    def _settle(items: list[_Item], exc: BaseException) -> None:
        for item in items:
            if not item.future.done():
                item.future.set_exception(exc)

    def _run_batch(self, frames: list) -> _Ran:
        """On the engine's thread: stack and run pixels, or hand JPEGs to ``run_encoded``."""
        if isinstance(frames[0], EncodedFrame):
            if self._run_encoded is None:
                raise SegserveError("internal error: a JPEG was queued for a batcher without run_encoded")
            stacked = time.perf_counter()  # nothing to stack: the engine decodes into its buffer
            encoded = self._run_encoded(frames)
            return _Ran(encoded.labels, encoded.errors, encoded.decode_us, stacked, time.perf_counter())
        batch = np.stack(frames)
        stacked = time.perf_counter()
        labels = self._run(batch)
        return _Ran(labels, [None] * len(frames), 0, stacked, time.perf_counter())
