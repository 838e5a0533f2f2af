"""One StreamSegment call: reads frames, runs them concurrently, answers in request order.

Policies: ``queue`` waits for a slot (the client feels HTTP/2 flow control) so every frame is
answered; ``latest`` keeps only the newest waiting frame and answers the ones it replaces with
``dropped``, so a live camera's latency stays bounded when it sends faster than the service runs;
such a stream has at most ``LATEST_MAX_INFLIGHT`` (2) frames in flight whatever the server's limit.

Bounds, so that neither a fast sender nor a slow reader can grow the server's memory:

- a per-stream slot is held from the moment a frame is handed to the pipeline until its response
  has been written to the client (``max_inflight``); a slow reader therefore stops the reader side,
  and HTTP/2 flow control pushes back on the sender;
- a global admission slot is held only while the frame is processed, so a slow reader never blocks
  other callers;
- at most ``max_unwritten`` responses (results, per-frame errors, dropped markers) wait to be
  written; beyond it the reader stops reading.

Frames read before a drain began are answered (they were accepted); frames the client sends after
it are not read, and the call ends with UNAVAILABLE once every accepted frame has been answered.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field

import grpc

from segserve import protocol
from segserve._proto.segmentation.v1 import segmentation_pb2 as pb
from segserve.admission import Admission
from segserve.errors import SegserveError
from segserve.pipeline import FrameRequest

log = logging.getLogger(__name__)


# A live camera gains nothing from a deeper pipeline than one frame running and one being decoded:
# more would only queue its own stale frames ahead of its newest one.
LATEST_MAX_INFLIGHT = 2


@dataclass
class StreamLimits:
    max_inflight: int = 4  # frames of this stream handed to the pipeline and not yet written back
    max_unwritten: int = 64  # responses of any kind waiting to be written back


@dataclass(eq=False)
class _Entry:
    """One read frame's place in the response order."""

    future: Future = field(default_factory=Future)
    slot: bool = False  # holds a per-stream slot until its response is written


class Malformed:
    """Stands for a request message that could not be parsed (see server._lenient)."""

    frame_id = ""

    def __init__(self, reason: str):
        self.reason = reason


def _noop(*_args) -> None:
    return None


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
        on_error: Callable[[str], None] = _noop,
    ):
        self._run = run
        self._pool = pool
        self._admission = admission
        self._slots = Admission(limits.max_inflight)
        self._max_unwritten = max(limits.max_unwritten, limits.max_inflight + 1)
        self._deadline = deadline
        self._on_dropped = on_dropped
        self._on_request = on_request
        self._on_error = on_error
        self._out: deque[_Entry] = deque()
        self._cond = threading.Condition()
        self._pending: tuple[FrameRequest, _Entry] | None = None
        self._dispatcher: threading.Thread | None = None
        self._reader_done = False
        self._closed = False  # the writer side ended
        self.accepting = True
        self.completed = False  # the client half-closed and every frame was read
        self.cancelled = threading.Event()
        self.policy = "queue"
        self.read_count = 0
        self.answered = 0  # responses written back (results, errors and dropped markers)
        self.dropped = 0

    # --- lifecycle -------------------------------------------------------------------------------
    def stop_accepting(self) -> None:
        """Drain: answer what was accepted, read nothing more."""
        with self._cond:
            self.accepting = False
            self._cond.notify_all()

    def cancel(self) -> None:
        self.cancelled.set()
        self.stop_accepting()

    def _give_up(self) -> bool:
        return self.cancelled.is_set() or self._closed

    # --- reader side -----------------------------------------------------------------------------
    def read(self, requests: Iterator[pb.SegmentRequest]) -> None:
        """Consume the request stream (run in a thread of its own)."""
        try:
            for index, msg in enumerate(requests):
                entry = _Entry()
                with self._cond:
                    while len(self._out) >= self._max_unwritten and self.accepting and not self._give_up():
                        self._cond.wait(0.1)  # a slow reader: stop reading, let flow control push back
                    if not self.accepting or self._give_up():
                        break
                    self._out.append(entry)
                    self.read_count += 1
                    self._cond.notify_all()
                self._on_request()
                try:
                    self._accept(index, msg, entry)
                except Exception:  # never leave a read frame unanswered
                    log.exception(
                        "stream frame %r could not be accepted", str(getattr(msg, "frame_id", ""))[:64]
                    )
                    self._on_error("INTERNAL")
                    self._resolve(entry, self._error(msg, grpc.StatusCode.INTERNAL, "internal error"))
            else:
                self.completed = True
        except grpc.RpcError:
            self.cancelled.set()  # the client went away mid-stream
        except Exception:  # never let a reader failure hang the response side
            log.exception("stream reader failed")
            self.cancelled.set()
        finally:
            with self._cond:
                self._reader_done = True
                self._cond.notify_all()

    @staticmethod
    def _error(msg, code: grpc.StatusCode, message: str) -> pb.SegmentResponse:
        return protocol.error_response(str(getattr(msg, "frame_id", "")), code.value[0], message)

    @staticmethod
    def _resolve(entry: _Entry, response: pb.SegmentResponse) -> None:
        if not entry.future.done():
            entry.future.set_result(response)

    def _accept(self, index: int, msg: pb.SegmentRequest | Malformed, entry: _Entry) -> None:
        if isinstance(msg, Malformed):
            self._on_error("INVALID_ARGUMENT")
            self._resolve(entry, self._error(msg, grpc.StatusCode.INVALID_ARGUMENT, msg.reason))
            return
        try:
            if index == 0:
                self.policy = protocol.stream_policy(msg)
                if self.policy == "latest" and self._slots.limit > LATEST_MAX_INFLIGHT:
                    self._slots = Admission(LATEST_MAX_INFLIGHT)  # nothing is held before the first frame
            request = protocol.request_from_proto(msg)
        except SegserveError as exc:
            self._on_error(exc.status)
            frame_id = msg.frame_id if len(msg.frame_id) <= 128 else msg.frame_id[:128] + "..."
            log.info(
                "frame refused: %s %s",
                exc.status,
                exc,
                extra={"frame_id": frame_id, "method": "StreamSegment", "code": exc.status},
            )
            self._resolve(entry, self._error(msg, grpc.StatusCode[exc.status], str(exc)))
            return
        request.lane = id(self)
        request.deadline = self._deadline
        request.is_cancelled = self.cancelled.is_set
        if self.policy == "latest":
            self._offer_latest(request, entry)
        elif self._acquire():
            self._dispatch(request, entry)
        else:
            self._refuse(request, entry)

    def _refuse(self, request: FrameRequest, entry: _Entry) -> None:
        code = grpc.StatusCode.CANCELLED if self.cancelled.is_set() else grpc.StatusCode.UNAVAILABLE
        self._resolve(entry, protocol.error_response(request.frame_id, code.value[0], "stream closing"))

    def _acquire(self) -> bool:
        """A per-stream slot, then a global one; False when the call went away first."""
        if not self._slots.acquire(self._give_up):
            return False
        if self._admission.acquire(self._give_up):
            return True
        self._slots.release()
        return False

    def _dispatch(self, request: FrameRequest, entry: _Entry) -> None:
        entry.slot = True
        try:
            self._pool.submit(self._work, request, entry)
        except RuntimeError:  # the pool shut down under us
            self._admission.release()
            self._refuse(request, entry)

    def _work(self, request: FrameRequest, entry: _Entry) -> None:
        try:
            response = self._run(request, "StreamSegment")
        except BaseException:
            log.exception("stream frame %r failed", request.frame_id[:64])
            response = protocol.error_response(
                request.frame_id, grpc.StatusCode.INTERNAL.value[0], "internal error", request.capture_time_us
            )
        finally:
            self._admission.release()
        self._resolve(entry, response)

    # --- latest policy ---------------------------------------------------------------------------
    def _offer_latest(self, request: FrameRequest, entry: _Entry) -> None:
        with self._cond:
            stale, self._pending = self._pending, (request, entry)
            if self._dispatcher is None:
                self._dispatcher = threading.Thread(
                    target=self._dispatch_latest, name="segserve-stream-latest", daemon=True
                )
                self._dispatcher.start()
            self._cond.notify_all()
        if stale is not None:
            self._on_dropped()
            self._resolve(stale[1], protocol.dropped_response(stale[0].frame_id, stale[0].capture_time_us))

    def _dispatch_latest(self) -> None:
        """Wait for room, then run the newest frame that arrived meanwhile."""
        while True:
            with self._cond:
                while self._pending is None and not self._reader_done and not self._give_up():
                    self._cond.wait(0.1)
                if self._pending is None:
                    return
            acquired = self._acquire()
            with self._cond:
                pending, self._pending = self._pending, None
            if not acquired:
                if pending is not None:
                    self._refuse(*pending)
                return
            if pending is None:  # cannot happen: only this thread takes pending frames
                self._admission.release()
                self._slots.release()
                continue
            self._dispatch(*pending)

    # --- writer side -----------------------------------------------------------------------------
    def responses(self) -> Iterator[pb.SegmentResponse]:
        """Answers in request order; ends when the reader is done or, while draining, when every
        accepted frame has been answered."""
        try:
            while True:
                with self._cond:
                    while not self._out:
                        if self._reader_done or not self.accepting:
                            return
                        self._cond.wait(0.1)
                    entry = self._out.popleft()
                    self._cond.notify_all()
                response = entry.future.result()
                yield response
                self.answered += 1
                self.dropped += response.dropped
                if entry.slot:
                    entry.slot = False
                    self._slots.release()
        finally:
            with self._cond:
                self._closed = True
                self._cond.notify_all()
            log.info(
                "stream ended: %d frames read, %d answered, %d dropped (%s policy)%s",
                self.read_count,
                self.answered,
                self.dropped,
                self.policy,
                " (cancelled)" if self.cancelled.is_set() else "",
            )

    @property
    def unwritten(self) -> int:
        return len(self._out)
