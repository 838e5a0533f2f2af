"""A stream's life, without any transport: reads frames, runs them concurrently, answers in order.

Policies: ``queue`` waits for room (the client feels HTTP/2 flow control) so every frame is
answered; ``latest`` keeps only the newest waiting frame and answers the ones it replaces with a
``Dropped`` marker, so a live camera's latency stays bounded when it sends faster than the service
runs; such a stream has at most ``LATEST_MAX_INFLIGHT`` frames in flight.

Bounds, so that neither a fast sender nor a slow (or absent) reader can grow the server's memory:

- a per-stream slot is held from the moment a frame is admitted until its answer is written
  (``max_inflight``); a slow reader therefore stops the reading side;
- at most ``max_unwritten`` answers and ``max_unwritten_bytes`` bytes of them wait to be written,
  and those bytes are also held in the global admission budget;
- ``idle_s``: a stream with no progress (nothing read, nothing written) for that long ends with
  ``StreamIdle``: a camera that never sends, or a client that never reads, frees its slot.

Frames read before a drain began are answered (they were accepted); frames the client sends after it
are not read, and the stream ends with ``end_reason`` "draining" once every accepted frame has been
answered, so the edge can answer UNAVAILABLE and the client moves to another replica.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

from segserve.admission import Admission, Ticket
from segserve.errors import SegserveError, ShuttingDown, StreamIdle
from segserve.types import FrameRequest, FrameResult

log = logging.getLogger(__name__)

# A live camera gains nothing from a deeper pipeline than one frame running and one being decoded:
# more would only queue its own stale frames ahead of its newest one.
LATEST_MAX_INFLIGHT = 2


@dataclass(frozen=True)
class StreamLimits:
    max_inflight: int = 4  # frames of this stream admitted and not yet written back
    max_unwritten: int = 64  # answers of any kind waiting to be written back
    max_unwritten_bytes: int = 4 * 1024 * 1024
    idle_s: float = 30.0


@dataclass(frozen=True)
class FrameFailure:
    """A frame answered with an error; the stream goes on."""

    frame_id: str
    error: SegserveError
    capture_time_us: int = 0


@dataclass(frozen=True)
class Dropped:
    """A stale frame a ``latest`` stream skipped for a newer one."""

    frame_id: str
    capture_time_us: int = 0


Outcome = FrameResult | FrameFailure | Dropped
Incoming = FrameRequest | FrameFailure  # the edge turns a request it cannot parse into a failure


@dataclass(eq=False)
class _Entry:
    """One read frame's place in the answer order."""

    outcome: asyncio.Future[Outcome]
    slot: bool = False  # holds a per-stream slot until its answer is written
    held: Ticket | None = None  # the answer's bytes, held until written


@dataclass
class StreamStats:
    read: int = 0
    answered: int = 0
    dropped: int = 0
    failed: int = 0


@dataclass
class _Pending:
    request: FrameRequest
    entry: _Entry


# An answer being written exists three times: the result, its serialized message and the transport's
# copy (held until the client reads it), so a stream's and the server's byte bounds count it thrice.
WRITE_COPIES = 3


def _nbytes(outcome: Outcome) -> int:
    if isinstance(outcome, FrameResult):
        return WRITE_COPIES * outcome.nbytes
    return len(outcome.frame_id) + (len(str(outcome.error)) if isinstance(outcome, FrameFailure) else 0)


class StreamSession:
    """One stream. ``process(request, ticket)`` runs an admitted frame (the pipeline, with metrics)."""

    def __init__(
        self,
        process: Callable[[FrameRequest, Ticket], Awaitable[FrameResult]],
        admission: Admission,
        limits: StreamLimits,
        policy: str = "queue",
        cost: Callable[[FrameRequest], int] = lambda request: request.nbytes,
        on_read: Callable[[], None] | None = None,
        on_dropped: Callable[[], None] | None = None,
    ):
        self._process = process
        self._cost = cost  # bytes admission charges a frame (the pipeline's estimate of what it holds)
        self._admission = admission
        self.limits = limits
        self._on_read = on_read
        self._on_dropped = on_dropped
        self.on_idle: Callable[[], object] | None = None  # e.g. cancel the transport's handler
        self.set_policy(policy)
        self._out: deque[_Entry] = deque()
        self._unwritten_bytes = 0
        self._room = asyncio.Event()  # set whenever an answer was written or the stream is ending
        self._arrived = asyncio.Event()  # set whenever an entry was appended or reading ended
        self._pending: _Pending | None = None
        self._last_cost = 0  # bytes admission charged the last frame read (queue policy)
        self._pending_ready = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._reading_done = False
        self._accepting = True
        self._waiting_for_client = False
        self.end_reason: str | None = None  # None: client closed; "draining"; "idle"
        self.stats = StreamStats()
        self._loop = asyncio.get_running_loop()
        self._idle_timer: asyncio.TimerHandle | None = None
        self._reader: asyncio.Task[None] | None = None
        self._dispatcher: asyncio.Task[None] | None = None

    def set_policy(self, policy: str) -> None:
        """``queue`` or ``latest``; set before ``run`` (the first frame of a stream carries it)."""
        if policy not in ("queue", "latest"):
            raise ValueError(f"unknown stream policy {policy!r}")
        self.policy = policy
        inflight = self.limits.max_inflight
        if policy == "latest":
            inflight = min(inflight, LATEST_MAX_INFLIGHT)
        self._slots = asyncio.Semaphore(max(1, inflight))

    # --- lifecycle -------------------------------------------------------------------------------
    def stop_accepting(self) -> None:
        """Drain: answer what was accepted, read nothing more."""
        if self._accepting:
            self._accepting = False
            self.end_reason = self.end_reason or "draining"
            if self._reader is not None and self._waiting_for_client:
                self._reader.cancel()  # a frame being admitted finishes; only the next read is skipped

    def _touch(self) -> None:
        if self._idle_timer is not None:
            self._idle_timer.cancel()
        if self.limits.idle_s > 0:
            self._idle_timer = self._loop.call_later(self.limits.idle_s, self._on_idle)

    def _on_idle(self) -> None:
        log.info("stream idle for %.1fs: closing it", self.limits.idle_s)
        self.end_reason = "idle"
        self._accepting = False
        if self._reader is not None:
            self._reader.cancel()
        for task in list(self._tasks):
            task.cancel()
        # Unanswered frames will not be answered: wake the writer, which then raises StreamIdle.
        self._room.set()
        self._arrived.set()
        for entry in self._out:
            if not entry.outcome.done():
                entry.outcome.cancel()
        if self.on_idle is not None:
            self.on_idle()

    # --- the one entry point ---------------------------------------------------------------------
    async def run(self, requests: AsyncIterator[Incoming]) -> AsyncIterator[Outcome]:
        """Answers in request order. Ends when the client half-closes and all is answered, or (with
        ``end_reason`` "draining") when a drain began and all accepted frames are answered. Raises
        StreamIdle when the stream made no progress for ``idle_s``."""
        self._touch()
        self._reader = self._loop.create_task(self._read(requests), name="segserve-stream-reader")
        try:
            while True:
                while not self._out:
                    if self.end_reason == "idle":
                        raise StreamIdle(f"no progress on this stream for {self.limits.idle_s:g}s: closed")
                    if self._reading_done:
                        self._raise_read_error()
                        return
                    self._arrived.clear()
                    await self._arrived.wait()
                entry = self._out[0]
                try:
                    outcome = await entry.outcome
                except asyncio.CancelledError:
                    if self.end_reason == "idle":
                        raise StreamIdle(
                            f"no progress on this stream for {self.limits.idle_s:g}s: closed"
                        ) from None
                    raise
                yield outcome  # returns once the edge has written it
                self._out.popleft()
                self._written(entry, outcome)
        finally:
            await self._close()

    def _raise_read_error(self) -> None:
        """A request stream that failed (not a half-close, not a cancel) ends the stream with that error,
        once every frame read before it is answered."""
        reader = self._reader
        if reader is not None and reader.done() and not reader.cancelled():
            error = reader.exception()
            if error is not None:
                raise error

    def _written(self, entry: _Entry, outcome: Outcome) -> None:
        self._touch()
        self.stats.answered += 1
        if isinstance(outcome, Dropped):
            self.stats.dropped += 1
        elif isinstance(outcome, FrameFailure):
            self.stats.failed += 1
        if entry.held is not None:
            self._unwritten_bytes -= entry.held.nbytes
            entry.held.release()
        if entry.slot:
            entry.slot = False
            self._slots.release()
        self._room.set()

    async def _close(self) -> None:
        if self._idle_timer is not None:
            self._idle_timer.cancel()
        pending = [t for t in (self._reader, self._dispatcher, *self._tasks) if t is not None]
        for task in pending:
            task.cancel()
        with contextlib.suppress(BaseException):
            await asyncio.gather(*pending, return_exceptions=True)
        for entry in self._out:
            if entry.held is not None:
                entry.held.release()
            if not entry.outcome.done():
                entry.outcome.cancel()
        self._out.clear()
        log.info(
            "stream ended: %d frames read, %d answered, %d dropped, %d failed (%s policy)%s",
            self.stats.read,
            self.stats.answered,
            self.stats.dropped,
            self.stats.failed,
            self.policy,
            f" ({self.end_reason})" if self.end_reason else "",
            extra={
                "stream_read": self.stats.read,
                "stream_answered": self.stats.answered,
                "stream_dropped": self.stats.dropped,
                "stream_end": self.end_reason or "closed",
            },
        )

    # --- reading side ----------------------------------------------------------------------------
    def _full(self) -> bool:
        return bool(self._out) and (
            len(self._out) >= self.limits.max_unwritten
            or self._unwritten_bytes >= self.limits.max_unwritten_bytes
        )

    async def _read(self, requests: AsyncIterator[Incoming]) -> None:
        iterator = aiter(requests)
        try:
            while self._accepting:
                self._waiting_for_client = True
                # queue policy: take the frame's per-stream slot, and wait for room in the admission
                # budget, before reading it: the server holds no frame it read but cannot run
                slot = self.policy == "queue"
                if slot:
                    await self._slots.acquire()
                try:
                    if slot:  # frames of a stream are alike: room for one like the last
                        await self._admission.room(self._last_cost)
                    incoming = await anext(iterator)
                except StopAsyncIteration:
                    if slot:
                        self._slots.release()
                    break
                except BaseException:
                    if slot:
                        self._slots.release()
                    raise
                finally:
                    self._waiting_for_client = False
                self._touch()
                self.stats.read += 1
                if self._on_read is not None:
                    self._on_read()
                entry = _Entry(self._loop.create_future())
                self._out.append(entry)
                self._arrived.set()
                if isinstance(incoming, FrameFailure):
                    if slot:
                        self._slots.release()
                    self._resolve(entry, incoming)
                elif self.policy == "latest":
                    self._offer_latest(incoming, entry)
                else:
                    await self._admit_and_start(incoming, entry)
                del incoming  # the frame's task holds it; waiting to read the next, this loop does not
                while self._full() and self._accepting:  # a slow reader: stop reading (flow control)
                    self._waiting_for_client = True  # nothing half-done here: a drain may cancel
                    self._room.clear()
                    await self._room.wait()
                    self._waiting_for_client = False
        except asyncio.CancelledError:
            pass  # a drain, the idle timer or the end of the call
        finally:
            self._reading_done = True
            if self._pending is not None:
                self._pending_ready.set()
            self._arrived.set()

    def _resolve(self, entry: _Entry, outcome: Outcome) -> None:
        if entry.outcome.done():
            return
        nbytes = _nbytes(outcome)
        entry.held = self._admission.hold_bytes(nbytes)
        self._unwritten_bytes += nbytes
        entry.outcome.set_result(outcome)

    async def _admit_and_start(self, request: FrameRequest, entry: _Entry) -> None:
        """With its per-stream slot taken: global admission, then the frame runs as a task of its own."""
        entry.slot = True
        self._last_cost = self._cost(request)
        try:
            ticket = await self._admission.admit(self._last_cost)
        except asyncio.CancelledError:
            self._resolve(entry, FrameFailure(request.frame_id, ShuttingDown("stream closing"), 0))
            raise
        self._start(request, entry, ticket)

    def _start(self, request: FrameRequest, entry: _Entry, ticket: Ticket) -> None:
        task = self._loop.create_task(self._run_frame(request, entry, ticket))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(lambda _: ticket.release())  # also when cancelled before it ran

    async def _run_frame(self, request: FrameRequest, entry: _Entry, ticket: Ticket) -> None:
        try:
            outcome: Outcome = await self._process(request, ticket)
        except SegserveError as exc:
            outcome = FrameFailure(request.frame_id, exc, request.capture_time_us)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # never leave a read frame unanswered
            log.exception("stream frame %r failed", request.frame_id[:64])
            outcome = FrameFailure(
                request.frame_id,
                SegserveError(f"internal error: {type(exc).__name__}"),
                request.capture_time_us,
            )
        finally:
            ticket.release()
        self._resolve(entry, outcome)

    # --- latest policy ---------------------------------------------------------------------------
    def _offer_latest(self, request: FrameRequest, entry: _Entry) -> None:
        stale, self._pending = self._pending, _Pending(request, entry)
        if stale is not None:
            if self._on_dropped is not None:
                self._on_dropped()
            self._resolve(stale.entry, Dropped(stale.request.frame_id, stale.request.capture_time_us))
        self._pending_ready.set()
        if self._dispatcher is None:
            self._dispatcher = self._loop.create_task(self._dispatch_latest(), name="segserve-stream-latest")

    async def _dispatch_latest(self) -> None:
        """Wait for room, then run the newest frame that arrived meanwhile."""
        while True:
            while self._pending is None:
                if self._reading_done:
                    return
                self._pending_ready.clear()
                await self._pending_ready.wait()
            await self._slots.acquire()
            pending, self._pending = self._pending, None
            if pending is None:  # taken by nobody else, but be safe
                self._slots.release()
                continue
            pending.entry.slot = True
            ticket = await self._admission.admit(self._cost(pending.request))
            self._start(pending.request, pending.entry, ticket)
