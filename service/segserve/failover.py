"""One logical stream of frames carried over as many StreamSegment calls as replicas come and go.

A replica that drains answers every frame it has read and then ends the call with UNAVAILABLE; one
that dies ends it with UNAVAILABLE at once (a proxy in between may reset the stream instead: see
``replica_went_away``). Either way the frames sent on that call and not yet
answered are known here (answers come in request order), so the stream re-opens on another replica
(the channel's balancer picks it) and goes on:

- ``queue`` policy: the unanswered frames are sent again, in order, before any new frame, so no
  frame is lost and the caller sees every result in order;
- ``latest`` policy: the unanswered frames but the newest are answered here as ``dropped`` (as the
  server would have done with stale frames) and the stream resumes with the newest.

The caller sees no error for a move; after ``Retry.stream_reopens`` re-opens in a row without an
answer, the last error is raised. Any other status is raised at once.
"""

from __future__ import annotations

import random
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

import grpc

from segserve._proto.segmentation.v1 import segmentation_pb2 as pb
from segserve.replicas import Retry

R = TypeVar("R")

_UNAVAILABLE = grpc.StatusCode.UNAVAILABLE.value[0]


@dataclass
class Sent:
    """A frame handed to a call: its request and what the caller needs to read its answer."""

    msg: pb.SegmentRequest
    frame_size: tuple[int, int] | None


class _Stale(Exception):
    """This call's request iterator was superseded by a newer call."""


class _Moved(Exception):
    """The replica refused a frame with UNAVAILABLE: the stream moves from that frame on."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class StreamUnavailable(grpc.RpcError):
    """Every re-open of a stream was refused: raised like the UNAVAILABLE status it stands for."""

    def __init__(self, message: str):
        super().__init__(message)
        self._message = message

    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.UNAVAILABLE

    def details(self) -> str:
        return self._message


def replica_went_away(exc: grpc.RpcError) -> bool:
    """Whether a stream's call ended because its replica (or the way to it) went, not for a reason
    of the caller's: UNAVAILABLE (a drain, a dead replica or connection); CANCELLED, which this
    module never causes on a live call, so a server that cut its calls at the end of its grace or a
    proxy that reset the stream (RST_STREAM CANCEL) did; INTERNAL "... RST_STREAM ..." (a proxy
    ending a stream whose upstream went, with no status from any server). Not a channel the caller
    closed."""
    code, details = exc.code(), exc.details() or ""
    if code == grpc.StatusCode.UNAVAILABLE:
        return True
    if code == grpc.StatusCode.CANCELLED:
        return "Channel closed" not in details
    return code == grpc.StatusCode.INTERNAL and "RST_STREAM" in details


class Feed:
    """The frames of the logical stream: pulled once from the caller's iterator, resent on demand.

    ``requests(call)`` is the request iterator of one call (gRPC consumes it in a thread of its own);
    a newer call makes the older iterators stop, and a frame an older iterator pulled meanwhile is
    sent on the newer call, in its place."""

    def __init__(self, source: Iterator[Sent]):
        self._source = source
        self._lock = threading.Lock()  # the queues and the call number
        self._pull = threading.Lock()  # one puller of the caller's iterator at a time, in order
        self._unanswered: deque[Sent] = deque()  # sent on the current call, oldest first
        self._resend: deque[Sent] = deque()  # to send first on the next call
        self._call = 0
        self._exhausted = False
        self.error: BaseException | None = None  # raised by the caller's iterator

    def next_call(self) -> int:
        """Start a call: every unanswered frame goes back in front of the frames to send."""
        with self._lock:
            self._call += 1
            self._resend.extendleft(reversed(self._unanswered))
            self._unanswered.clear()
            return self._call

    def drop_stale(self) -> list[Sent]:
        """``latest``: every frame waiting to be resent but the newest, taken out of the stream."""
        with self._lock:
            stale = [self._resend.popleft() for _ in range(max(0, len(self._resend) - 1))]
            return stale

    def requests(self, call: int) -> Iterator[pb.SegmentRequest]:
        try:
            while True:
                item = self._take_resend(call)
                if item is None:
                    with self._pull:  # resends never wait for this: the caller may pace on answers
                        item = self._take_resend(call)  # one an older call put back meanwhile
                        if item is None:
                            item = self._pull_new(call)
                    if item is None:
                        return
                yield item.msg
        except _Stale:
            return

    def _take_resend(self, call: int) -> Sent | None:
        with self._lock:
            if call != self._call:
                raise _Stale
            item = self._resend.popleft() if self._resend else None
            if item is not None:
                self._unanswered.append(item)
            return item

    def _pull_new(self, call: int) -> Sent | None:
        """The caller's next frame (holding ``_pull``), or None at its end."""
        if self._exhausted:
            return None
        try:
            item = next(self._source)
        except StopIteration:
            self._exhausted = True
            return None
        except Exception as exc:  # the caller's own iterator failed: end cleanly, raise it later
            self.error = exc
            self._exhausted = True
            return None
        with self._lock:
            if call != self._call:  # the stream moved while we waited for this frame
                self._resend.append(item)
                return None
            self._unanswered.append(item)
        return item

    def answered(self, frame_id: str) -> Sent:
        """The frame a response answers (answers come in request order)."""
        with self._lock:
            if not self._unanswered or self._unanswered[0].msg.frame_id != frame_id:
                expected = self._unanswered[0].msg.frame_id if self._unanswered else None
                raise RuntimeError(
                    f"stream answer out of order: got frame {frame_id!r}, expected {expected!r}"
                )
            return self._unanswered.popleft()

    def unanswer(self, item: Sent) -> None:
        """A frame the replica refused: it is unanswered again, ahead of the others."""
        with self._lock:
            self._unanswered.appendleft(item)

    def finished(self) -> bool:
        """The caller's frames are all sent and all answered."""
        with self._lock:
            return self._exhausted and not self._unanswered and not self._resend


def resilient_stream(
    open_call: Callable[[Iterator[pb.SegmentRequest], float | None], grpc.Call],
    feed: Feed,
    *,
    policy: str,
    retry: Retry,
    timeout: float | None,
    on_response: Callable[[pb.SegmentResponse, Sent], R],
    on_dropped: Callable[[Sent], R],
    on_move: Callable[[], object] = lambda: None,
) -> Iterator[R]:
    """Yield ``on_response(...)`` for every frame in order, moving the stream when its replica goes.

    ``open_call(requests, timeout)`` starts one StreamSegment call. ``on_dropped`` makes the result
    of a frame that ``latest`` skips while moving; ``on_move`` is told of every re-open.

    Raises grpc.RpcError: the last error once the re-opens are spent (StreamUnavailable when the
    replicas refused frames), any other status at once; and whatever the caller's iterator raised."""
    deadline = None if timeout is None else time.monotonic() + timeout
    failures = 0
    while True:
        call_number = feed.next_call()
        if policy == "latest":
            for stale in feed.drop_stale():
                yield on_dropped(stale)
        remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
        call = open_call(feed.requests(call_number), remaining)
        try:
            for response in call:
                sent = feed.answered(response.frame_id)
                if response.HasField("error") and response.error.code == _UNAVAILABLE:
                    feed.unanswer(sent)  # a closing replica refused it: send it to the next one
                    raise _Moved(f"frame {sent.msg.frame_id!r} refused: {response.error.message}")
                failures = 0
                yield on_response(response, sent)
            if feed.error is not None:
                raise feed.error
            if feed.finished():
                return
            raise _Moved("the call ended with frames unanswered")  # a replica may not do that: move
        except (grpc.RpcError, _Moved) as exc:
            if feed.error is not None:
                raise feed.error from None
            if feed.finished():
                return  # every frame was sent and answered: how the call ended concerns none of them
            if isinstance(exc, grpc.RpcError) and not replica_went_away(exc):
                raise
            failures += 1
            on_move()
            if failures > retry.stream_reopens:
                if isinstance(exc, grpc.RpcError):
                    raise
                raise StreamUnavailable(f"no replica took the stream: {exc.message}") from None
            wait = retry.backoff_s(failures)
            if wait:
                time.sleep(random.uniform(wait / 2, wait))  # a backoff between attempts, not a sync
        finally:
            call.cancel()
