"""Everything a front door needs, without any transport: engine, batcher, pipeline, admission, streams.

Both edges (segmentation.v1 and the Open Inference Protocol) call ``segment`` for one frame and
``open_stream`` for a stream, so limits, batching, metrics and draining are the same for both.
Create it inside the event loop that serves (``await Service.start(engine, config)``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from segserve import priority
from segserve.admission import Admission, Ticket
from segserve.batcher import Batcher
from segserve.codec import Limits
from segserve.engine import Engine
from segserve.errors import InvalidFrame, Overloaded, SegserveError, ShuttingDown
from segserve.metrics import Metrics
from segserve.pipeline import Pipeline
from segserve.sessions import StreamLimits, StreamSession
from segserve.types import FrameRequest, FrameResult

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServiceLimits:
    """What callers may hold, in frames and bytes (see docs/operations.md)."""

    max_inflight: int = 32  # frames admitted and not yet answered, all callers
    max_buffered_bytes: int = 128 * 1024 * 1024  # admitted request bytes + unwritten answers
    max_streams: int = 32
    max_inflight_per_stream: int = 4
    max_stream_buffered_bytes: int = 4 * 1024 * 1024
    stream_idle_s: float = 30.0
    max_frame_id_bytes: int = 256
    max_batch: int = 8
    max_delay_ms: float = 2.0
    frame: Limits = field(default_factory=Limits)


class Service:
    def __init__(self, engine: Engine, limits: ServiceLimits, metrics: Metrics | None = None):
        """Use ``Service.start``: the asyncio parts need the running loop."""
        self.engine = engine
        self.limits = limits
        self.metrics = metrics or Metrics()
        self._engine_thread = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="segserve-engine", initializer=priority.lower_current_thread
        )
        self.batcher = Batcher(
            engine.run,
            self._engine_thread,
            max_batch=max(1, min(limits.max_batch, engine.max_batch)),
            max_delay_s=limits.max_delay_ms / 1000.0,
            max_queue=limits.max_inflight,
            on_batch=self.metrics.batch_size.observe,
            on_failure=self._batcher_failed,
            run_encoded=engine.run_encoded,
        )
        self.pipeline = Pipeline(
            engine.metadata, self.batcher, limits.frame, engine.resize_in_graph, device_decode=engine
        )
        self.admission = Admission(limits.max_inflight, limits.max_buffered_bytes)
        self.metrics.bind(
            inflight=lambda: self.admission.frames,
            queue_depth=lambda: self.batcher.depth,
            buffered_bytes=lambda: self.admission.bytes,
        )
        self.draining = False
        self.sessions: set[StreamSession] = set()
        self._idle = asyncio.Event()
        self._idle.set()
        self._busy_calls = 0
        self.failure_listeners: list[Callable[[], None]] = []

    @classmethod
    async def start(cls, engine: Engine, limits: ServiceLimits, metrics: Metrics | None = None) -> Service:
        service = cls(engine, limits, metrics)
        service.batcher.start()
        return service

    @property
    def serving(self) -> bool:
        return not self.draining and self.batcher.failure is None

    def _batcher_failed(self, exc: BaseException) -> None:
        for listener in self.failure_listeners:
            listener()

    @property
    def model_id(self) -> str:
        return self.pipeline.model_id

    @property
    def max_batch(self) -> int:
        return self.batcher.max_batch

    # --- checks shared by the edges --------------------------------------------------------------
    def check_frame_id(self, frame_id: str) -> None:
        size, limit = len(frame_id.encode()), self.limits.max_frame_id_bytes
        if size > limit:
            raise InvalidFrame(f"frame_id is {size} bytes, over the limit of {limit}")

    def refuse_when_draining(self) -> None:
        if self.draining:
            raise ShuttingDown("server is shutting down; retry on another instance")

    # --- work ------------------------------------------------------------------------------------
    def _call_started(self) -> None:
        self._busy_calls += 1
        self._idle.clear()

    def _call_ended(self) -> None:
        self._busy_calls -= 1
        if self._busy_calls == 0:
            self._idle.set()

    async def run_admitted(self, request: FrameRequest, ticket: Ticket, method: str) -> FrameResult:
        """Process an admitted frame with metrics; raises SegserveError (unexpected -> INTERNAL)."""
        try:
            result = await self.pipeline.process(request, ticket)
        except SegserveError as exc:
            self.metrics.error(method, exc.status)
            log.info(
                "frame refused: %s %s",
                exc.status,
                exc,
                extra={"method": method, "code": exc.status, "frame_id": request.frame_id[:128]},
            )
            raise
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.metrics.error(method, "INTERNAL")
            log.exception(
                "frame failed",
                extra={"method": method, "code": "INTERNAL", "frame_id": request.frame_id[:128]},
            )
            raise SegserveError(f"internal error: {type(exc).__name__}") from exc
        self.metrics.request_latency.labels(method).observe(result.timing.total_us / 1e6)
        self.metrics.observe_timing(result.timing)
        return result

    async def segment(self, request: FrameRequest, method: str = "Segment") -> FrameResult:
        """One frame for a unary call: admitted at once or refused (RESOURCE_EXHAUSTED). The edge
        counts the request (it also counts requests it cannot parse)."""
        self._call_started()
        try:
            try:
                self.refuse_when_draining()
                self.check_frame_id(request.frame_id)
                ticket = self.admission.try_admit(self.pipeline.cost(request))
            except SegserveError as exc:
                self.metrics.error(method, exc.status)
                raise
            try:
                return await self.run_admitted(request, ticket, method)
            finally:
                ticket.release()
        finally:
            self._call_ended()

    def open_stream(self, policy: str, method: str = "StreamSegment") -> StreamSession:
        """A stream session, or ShuttingDown / Overloaded when no more streams are taken."""
        self.refuse_when_draining()
        if len(self.sessions) >= self.limits.max_streams:
            raise Overloaded(f"too many open streams (limit {self.limits.max_streams}); retry with backoff")
        session = StreamSession(
            lambda request, ticket: self.run_admitted(request, ticket, method),
            self.admission,
            StreamLimits(
                max_inflight=self.limits.max_inflight_per_stream,
                max_unwritten_bytes=self.limits.max_stream_buffered_bytes,
                idle_s=self.limits.stream_idle_s,
            ),
            policy,
            cost=self.pipeline.cost,
            on_read=self.metrics.requests.labels(method).inc,
            on_dropped=self.metrics.dropped.inc,
        )
        self.sessions.add(session)
        self.metrics.streams.inc()
        self._call_started()
        return session

    def close_stream(self, session: StreamSession) -> None:
        if session in self.sessions:
            self.sessions.discard(session)
            self.metrics.streams.dec()
            self._call_ended()

    # --- shutdown --------------------------------------------------------------------------------
    def begin_drain(self) -> None:
        self.draining = True
        for session in list(self.sessions):
            session.stop_accepting()

    async def wait_idle(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s for no open call; True when idle."""
        try:
            await asyncio.wait_for(self._idle.wait(), max(0.0, timeout))
        except asyncio.TimeoutError:
            return False
        return True

    async def close(self) -> None:
        """Stop the batcher and the pools without waiting for work nobody waits for."""
        await self.batcher.close(drain=False)
        self.pipeline.close()
        self._engine_thread.shutdown(wait=False, cancel_futures=True)


def monotonic_deadline(remaining_s: float | None) -> float | None:
    return None if remaining_s is None else time.monotonic() + remaining_s
