"""One StreamSegment call: reads frames, runs them concurrently, answers in request order.

Policies: ``queue`` waits for a slot (the client feels HTTP/2 flow control) so every frame is
answered; ``latest`` keeps only the newest waiting frame and answers the ones it replaces with
``dropped``, so a live camera's latency stays bounded when it sends faster than the service runs.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future
from dataclasses import dataclass

import grpc

from segserve import protocol
from segserve._proto.segmentation.v1 import segmentation_pb2 as pb
from segserve.admission import Admission
from segserve.errors import SegserveError
from segserve.pipeline import FrameRequest

log = logging.getLogger(__name__)


@dataclass
class StreamLimits:
    max_inflight: int = 4


class StreamSession:
    def __init__(
        self,
        run: Callable[[FrameRequest, str], pb.SegmentResponse],
        pool: Executor,
        admission: Admission,
        limits: StreamLimits,
        deadline: float | None,
        on_dropped: Callable[[], None],
        on_request: Callable[[], None],
    ):
        self._run = run
        self._pool = pool
        self._admission = admission
        self._slots = Admission(limits.max_inflight)
        self._deadline = deadline
        self._on_dropped = on_dropped
        self._on_request = on_request
        self._out: queue.Queue[Future | None] = queue.Queue()
        self._lock = threading.Lock()
        self._pending: tuple[FrameRequest, Future] | None = None
        self.accepting = True
        self.cancelled = threading.Event()
        self.policy = "queue"

    # --- lifecycle -------------------------------------------------------------------------------
    def stop_accepting(self) -> None:
        """Drain: answer what was accepted, take nothing more."""
        with self._lock:
            self.accepting = False

    def cancel(self) -> None:
        self.cancelled.set()
        self.stop_accepting()

    def _give_up(self) -> bool:
        return self.cancelled.is_set() or not self.accepting

    # --- reader side -----------------------------------------------------------------------------
    def read(self, requests: Iterator[pb.SegmentRequest]) -> None:
        """Consume the request stream (run in a thread of its own)."""
        try:
            for index, msg in enumerate(requests):
                future: Future = Future()
                with self._lock:
                    if not self.accepting:
                        break
                    self._out.put(future)
                self._on_request()
                self._accept(index, msg, future)
        except grpc.RpcError:
            self.cancelled.set()  # the client went away mid-stream
        except Exception:  # never let a reader failure hang the response side
            log.exception("stream reader failed")
            self.cancelled.set()
        finally:
            self._flush_pending()
            self._out.put(None)

    def _accept(self, index: int, msg: pb.SegmentRequest, future: Future) -> None:
        try:
            if index == 0:
                self.policy = protocol.stream_policy(msg)
            request = protocol.request_from_proto(msg)
        except SegserveError as exc:
            future.set_result(protocol.error_response(msg.frame_id, grpc.StatusCode[exc.status].value[0], str(exc)))
            return
        request.lane = id(self)
        request.deadline = self._deadline
        request.is_cancelled = self.cancelled.is_set
        if self.policy == "latest":
            self._offer_latest(request, future)
        elif self._acquire(blocking=True):
            self._dispatch(request, future)
        else:
            self._refuse(request, future)

    def _refuse(self, request: FrameRequest, future: Future) -> None:
        code = grpc.StatusCode.CANCELLED if self.cancelled.is_set() else grpc.StatusCode.UNAVAILABLE
        future.set_result(protocol.error_response(request.frame_id, code.value[0], "stream closing"))

    def _acquire(self, blocking: bool) -> bool:
        if blocking:
            if not self._slots.acquire(self._give_up):
                return False
            if self._admission.acquire(self._give_up):
                return True
        elif self._slots.try_acquire():
            if self._admission.try_acquire():
                return True
        else:
            return False
        self._slots.release()
        return False

    def _release(self) -> None:
        self._admission.release()
        self._slots.release()

    def _dispatch(self, request: FrameRequest, future: Future) -> None:
        self._pool.submit(self._work, request, future)

    def _work(self, request: FrameRequest, future: Future) -> None:
        try:
            future.set_result(self._run(request, "StreamSegment"))
        finally:
            self._release()
            if self.policy == "latest":
                self._dispatch_pending()

    # --- latest policy ---------------------------------------------------------------------------
    def _offer_latest(self, request: FrameRequest, future: Future) -> None:
        with self._lock:
            stale, self._pending = self._pending, (request, future)
        if stale is not None:
            self._on_dropped()
            stale[1].set_result(protocol.dropped_response(stale[0].frame_id, stale[0].capture_time_us))
        self._dispatch_pending()

    def _dispatch_pending(self) -> None:
        with self._lock:
            if self._pending is None or not self._acquire(blocking=False):
                return
            request, future = self._pending
            self._pending = None
        self._dispatch(request, future)

    def _flush_pending(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, None
        if pending is None:
            return
        if self._acquire(blocking=True):
            self._dispatch(*pending)
        else:
            self._refuse(*pending)

    # --- writer side -----------------------------------------------------------------------------
    def responses(self) -> Iterator[pb.SegmentResponse]:
        """Answers in request order; ends when the reader is done or, while draining, when every
        accepted frame has been answered."""
        while True:
            try:
                future = self._out.get(timeout=0.1)
            except queue.Empty:
                with self._lock:
                    if not self.accepting and self._out.empty():
                        return
                continue
            if future is None:
                return
            yield future.result()
