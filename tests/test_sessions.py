"""A stream session without any transport: order, per-stream bounds, policies, idle, close and drain.

The client is an async generator the test feeds frame by frame (and counts what the session took),
``process`` holds every frame at a gate the test opens, and the answer reader writes only as many
answers as the test allows. Nothing waits for time: tasks move on with loop turns, and the idle timer
fires when the test moves the event loop's clock forward.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import pytest
from segserve.admission import Admission, Ticket
from segserve.errors import InvalidFrame, Overloaded, SegserveError, StreamIdle
from segserve.sessions import (
    WRITE_COPIES,
    Dropped,
    FrameFailure,
    Incoming,
    Outcome,
    StreamLimits,
    StreamSession,
)
from segserve.types import EncodedImage, FrameRequest, FrameResult, MaskFormat, Timing

T = TypeVar("T")
IDLE_S = 1000.0  # only the test's clock reaches it


class ManualClockLoop(asyncio.SelectorEventLoop):
    """An event loop whose clock the test moves forward, so timers fire when the test says."""

    def __init__(self) -> None:
        super().__init__()
        self.offset = 0.0
        self.slow_callback_duration = math.inf  # a clock jump is not a slow callback (asyncio debug)

    def time(self) -> float:
        return super().time() + self.offset


def run(body: Callable[[], Awaitable[T]]) -> T:
    loop = ManualClockLoop()
    try:
        return loop.run_until_complete(body())
    finally:  # as asyncio.run: end what a test left running (a stuck reader), then the generators
        left = asyncio.all_tasks(loop)
        for task in left:
            task.cancel()
        if left:
            loop.run_until_complete(asyncio.gather(*left, return_exceptions=True))
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


def advance(seconds: float) -> None:
    loop = asyncio.get_running_loop()
    assert isinstance(loop, ManualClockLoop)
    loop.offset += seconds


async def settle(turns: int = 50) -> None:
    """Let every ready task run to its next wait (loop turns, not time): for 'this did not happen'."""
    for _ in range(turns):
        await asyncio.sleep(0)


async def until(predicate: Callable[[], bool], what: str) -> None:
    """Loop turns until ``predicate`` holds; everything here runs in the loop, so it is soon or never."""
    for _ in range(1000):
        if predicate():
            return
        await asyncio.sleep(0)
    raise AssertionError(f"never happened: {what}")


def frame(frame_id: str, capture_time_us: int = 0, size: int = 10) -> FrameRequest:
    return FrameRequest(frame_id=frame_id, encoded=b"\xff" * size, capture_time_us=capture_time_us)


class Client:
    """The calling side: frames the test sends one by one; ``taken`` counts what the session read."""

    def __init__(self) -> None:
        self._queue: asyncio.Queue[Incoming | None] = asyncio.Queue()
        self.taken = 0

    def send(self, *items: Incoming) -> None:
        for item in items:
            self._queue.put_nowait(item)

    def half_close(self) -> None:
        self._queue.put_nowait(None)

    async def requests(self) -> AsyncIterator[Incoming]:
        while (item := await self._queue.get()) is not None:
            self.taken += 1
            yield item


class Worker:
    """``process(request, ticket)``: each frame waits at its own gate until the test finishes it
    (with an answer of ``payload`` bytes) or fails it; with ``auto`` set, frames finish at once."""

    def __init__(self) -> None:
        self.started: list[str] = []
        self.cancelled: list[str] = []
        self.charged: dict[str, int] = {}  # the bytes each frame's admission ticket holds
        self.auto: int | None = None
        self._gates: dict[str, asyncio.Future[int | BaseException]] = {}

    def _gate(self, frame_id: str) -> asyncio.Future[int | BaseException]:
        if frame_id not in self._gates:
            self._gates[frame_id] = asyncio.get_running_loop().create_future()
        return self._gates[frame_id]

    def finish(self, frame_id: str, payload: int = 0) -> None:
        self._gate(frame_id).set_result(payload)

    def fail(self, frame_id: str, error: BaseException) -> None:
        self._gate(frame_id).set_result(error)

    def open_all(self, payload: int = 0) -> None:
        self.auto = payload
        for gate in self._gates.values():
            if not gate.done():
                gate.set_result(payload)

    async def __call__(self, request: FrameRequest, ticket: Ticket) -> FrameResult:
        assert not ticket.released
        self.started.append(request.frame_id)
        self.charged[request.frame_id] = ticket.nbytes
        if self.auto is not None:
            return result(request, self.auto)
        try:
            outcome = await self._gate(request.frame_id)
        except asyncio.CancelledError:
            self.cancelled.append(request.frame_id)
            raise
        if isinstance(outcome, BaseException):
            raise outcome
        return result(request, outcome)


def result(request: FrameRequest, payload: int) -> FrameResult:
    mask = EncodedImage(1, 1, MaskFormat.PNG, b"\0" * payload) if payload else None
    return FrameResult(request.frame_id, "gate", Timing(), mask=mask, capture_time_us=request.capture_time_us)


class Reader:
    """The edge's writing side. Answer k counts as written when the reader asks for answer k+1, which
    it does only while k <= ``writes`` (``writes=0``: it takes the first answer and stops there)."""

    def __init__(self, session: StreamSession, client: Client, writes: float = math.inf) -> None:
        self.answers: list[Outcome] = []
        self.writes = writes
        self._more = asyncio.Event()
        self.task = asyncio.ensure_future(self._consume(session.run(client.requests())))

    async def _consume(self, answers: AsyncIterator[Outcome]) -> None:
        assert isinstance(answers, AsyncGenerator)
        async with contextlib.aclosing(answers):
            async for outcome in answers:
                self.answers.append(outcome)
                while len(self.answers) > self.writes:
                    self._more.clear()
                    await self._more.wait()

    def allow(self, writes: float = math.inf) -> None:
        self.writes = writes
        self._more.set()

    @property
    def ids(self) -> list[str]:
        return [answer.frame_id for answer in self.answers]


@dataclass
class Stream:
    session: StreamSession
    admission: Admission
    client: Client
    worker: Worker
    reader: Reader
    dropped: list[str]

    async def until_answered(self, count: int) -> None:
        await until(lambda: len(self.reader.answers) == count, f"{count} answers taken")

    async def finish(self) -> None:
        """The client half-closes and the stream ends normally once every answer is written."""
        self.client.half_close()
        await self.reader.task


def open_stream(
    limits: StreamLimits,
    policy: str = "queue",
    admission: Admission | None = None,
    writes: float = math.inf,
    cost: Callable[[FrameRequest], int] | None = None,
) -> Stream:
    admission = admission or Admission(max_frames=64, max_bytes=1 << 20)
    worker, client = Worker(), Client()
    dropped: list[str] = []

    def on_dropped() -> None:
        dropped.append("x")

    if cost is None:
        session = StreamSession(worker, admission, limits, policy, on_dropped=on_dropped)
    else:
        session = StreamSession(worker, admission, limits, policy, cost=cost, on_dropped=on_dropped)
    return Stream(session, admission, client, worker, Reader(session, client, writes), dropped)


def held(admission: Admission) -> tuple[int, int]:
    return admission.frames, admission.bytes


def test_answers_come_out_in_read_order_when_frames_finish_out_of_order():
    async def body() -> None:
        s = open_stream(StreamLimits(max_inflight=4, idle_s=0))
        s.client.send(frame("a", 11), frame("b", 12), frame("c", 13))
        await until(lambda: len(s.worker.started) == 3, "three frames running at once")
        assert s.worker.started == ["a", "b", "c"]
        assert s.worker.charged == {"a": 11, "b": 11, "c": 11}  # a frame's bytes and id by default
        s.worker.finish("c")
        s.worker.finish("b")
        await settle()
        assert s.reader.answers == []  # "a" still runs: nothing may overtake it
        s.worker.finish("a")
        await until(lambda: len(s.reader.answers) == 3, "all three answered")
        await s.finish()
        assert s.reader.ids == ["a", "b", "c"]
        assert all(isinstance(answer, FrameResult) for answer in s.reader.answers)
        assert [answer.capture_time_us for answer in s.reader.answers] == [11, 12, 13]
        assert s.session.end_reason is None
        assert (s.session.stats.read, s.session.stats.answered) == (3, 3)
        assert held(s.admission) == (0, 0)

    run(body)


def test_admission_charges_each_frame_what_the_cost_function_says():
    async def body() -> None:
        admission = Admission(max_frames=8, max_bytes=1000)
        s = open_stream(StreamLimits(max_inflight=4, idle_s=0), admission=admission, cost=lambda _: 400)
        s.client.send(frame("f0"), frame("f1"), frame("f2"))
        await until(lambda: s.worker.started == ["f0", "f1"], "two frames admitted")
        await settle()
        assert s.client.taken == 2  # a third 400-byte frame does not fit in 1000 bytes: not read yet
        assert held(admission) == (2, 800)
        s.worker.finish("f0")
        await until(lambda: s.worker.started == ["f0", "f1", "f2"], "f2 admitted once f0 ended")
        assert held(admission) == (2, 800)
        s.worker.open_all()
        await s.finish()
        assert s.worker.charged == {"f0": 400, "f1": 400, "f2": 400}
        assert held(admission) == (0, 0)

    run(body)


def test_failures_are_answered_in_order_and_the_stream_goes_on():
    async def body() -> None:
        s = open_stream(StreamLimits(max_inflight=4, idle_s=0))
        unparsable = InvalidFrame("not a JPEG")
        s.client.send(
            frame("a", 1),
            FrameFailure("bad", unparsable, 2),  # the edge could not parse this one
            frame("c", 3),
            frame("d", 4),
            frame("e", 5),
        )
        s.worker.fail("c", InvalidFrame("corrupt scan"))
        s.worker.fail("d", RuntimeError("bug in the pipeline"))
        s.worker.finish("e")
        await until(lambda: len(s.worker.started) == 4, "the four real frames running")
        assert s.worker.started == ["a", "c", "d", "e"]  # the failure never reaches process
        await settle()
        assert s.reader.answers == []
        s.worker.finish("a")
        await s.finish()
        a, bad, c, d, e = s.reader.answers
        assert s.reader.ids == ["a", "bad", "c", "d", "e"]
        assert isinstance(a, FrameResult) and isinstance(e, FrameResult)
        assert bad == FrameFailure("bad", unparsable, 2)
        assert isinstance(c, FrameFailure) and isinstance(c.error, InvalidFrame)
        assert (str(c.error), c.capture_time_us) == ("corrupt scan", 3)
        assert isinstance(d, FrameFailure) and type(d.error) is SegserveError
        assert (str(d.error), d.capture_time_us) == ("internal error: RuntimeError", 4)
        stats = s.session.stats
        assert (stats.read, stats.answered, stats.failed, stats.dropped) == (5, 5, 3, 0)
        assert held(s.admission) == (0, 0)

    run(body)


def test_per_stream_slots_stop_the_reading_side_until_an_answer_is_written():
    async def body() -> None:
        s = open_stream(StreamLimits(max_inflight=2, idle_s=0))
        s.client.send(*(frame(f"f{i}") for i in range(6)))
        await until(lambda: len(s.worker.started) == 2, "two frames running")
        await settle()
        assert s.client.taken == 2  # the third frame is not even read
        assert held(s.admission) == (2, 2 * frame("f0").nbytes)
        s.worker.finish("f1")
        await settle()
        assert s.client.taken == 2  # finished but not written: "f0" is still ahead of it
        s.worker.finish("f0")
        await until(lambda: s.client.taken == 4, "two slots given back, two more frames read")
        await settle()
        assert s.client.taken == 4
        assert s.worker.started == ["f0", "f1", "f2", "f3"]
        s.worker.open_all()
        await s.finish()
        assert s.reader.ids == [f"f{i}" for i in range(6)]
        assert held(s.admission) == (0, 0)

    run(body)


def test_a_reader_that_does_not_write_stops_the_stream_and_its_answers_hold_admission_bytes():
    async def body() -> None:
        s = open_stream(StreamLimits(max_inflight=3, idle_s=0), writes=0)
        s.worker.open_all(payload=100)
        s.client.send(*(frame(f"f{i}") for i in range(10)))
        await until(lambda: len(s.reader.answers) == 1, "the first answer taken")
        await settle()
        assert s.client.taken == 3  # each slot stays taken until its answer is written
        answer = WRITE_COPIES * (2 + 100)  # frame id + mask bytes, as result, message and transport copy
        assert held(s.admission) == (0, 3 * answer)  # no frame runs; three answers wait
        s.reader.allow(1)  # one answer written: one more frame read
        await until(lambda: len(s.reader.answers) == 2, "the second answer taken")
        await settle()
        assert s.client.taken == 4
        assert held(s.admission) == (0, 3 * answer)
        s.reader.allow()
        await s.finish()
        assert s.reader.ids == [f"f{i}" for i in range(10)]
        assert held(s.admission) == (0, 0)

    run(body)


def test_max_unwritten_bounds_answers_that_hold_no_slot():
    async def body() -> None:
        s = open_stream(StreamLimits(max_inflight=2, max_unwritten=3, idle_s=0), writes=0)
        failures = [FrameFailure(f"x{i}", InvalidFrame("bad jpeg")) for i in range(8)]
        s.client.send(*failures)
        await until(lambda: len(s.reader.answers) == 1, "the first answer taken")
        await settle()
        assert s.client.taken == 3
        assert held(s.admission) == (0, 3 * (2 + len("bad jpeg")))
        s.reader.allow(1)
        await until(lambda: len(s.reader.answers) == 2, "the second answer taken")
        await settle()
        assert s.client.taken == 4
        s.reader.allow()
        await s.finish()
        assert s.reader.answers == failures
        assert held(s.admission) == (0, 0)

    run(body)


def test_max_unwritten_bytes_stops_reading_and_the_bytes_count_against_other_callers():
    async def body() -> None:
        admission = Admission(max_frames=16, max_bytes=1500)
        limits = StreamLimits(max_inflight=8, max_unwritten_bytes=1000, idle_s=0)
        s = open_stream(limits, admission=admission, writes=0)
        s.client.send(frame("f0"), frame("f1"))
        await until(lambda: len(s.worker.started) == 2, "two frames running")
        s.worker.finish("f0", payload=198)  # answers of 200 bytes, counted thrice (WRITE_COPIES)
        s.worker.finish("f1", payload=198)
        await until(lambda: len(s.reader.answers) == 1, "the first answer taken")
        s.client.send(frame("f2"), frame("f3"), frame("f4"))
        await until(lambda: s.worker.started == ["f0", "f1", "f2"], "a third frame running")
        await settle()
        assert s.client.taken == 3  # 1200 unwritten bytes >= 1000: reading stops
        assert held(admission) == (1, 2 * 600 + frame("f2").nbytes)
        with pytest.raises(Overloaded):
            admission.try_admit(300)  # another caller feels this stream's unwritten answers
        s.reader.allow()
        s.worker.open_all()
        await s.finish()
        assert s.reader.ids == ["f0", "f1", "f2", "f3", "f4"]
        assert held(admission) == (0, 0)

    run(body)


def test_latest_policy_drops_stale_frames_and_runs_the_newest():
    async def body() -> None:
        s = open_stream(StreamLimits(max_inflight=4, idle_s=0), policy="latest")
        s.client.send(frame("f1", 1))
        await until(lambda: s.worker.started == ["f1"], "f1 running")
        s.client.send(frame("f2", 2))
        await until(lambda: s.worker.started == ["f1", "f2"], "f2 running")
        s.client.send(frame("f3", 3), frame("f4", 4), frame("f5", 5))
        await until(lambda: s.client.taken == 5, "all frames read")
        await settle()
        assert s.worker.started == ["f1", "f2"]  # at most two in flight on a latest stream
        assert s.dropped == ["x", "x"]  # f3 and f4 were replaced as they waited
        s.worker.finish("f1")
        await until(lambda: s.worker.started == ["f1", "f2", "f5"], "the newest frame running")
        s.worker.finish("f2")
        s.worker.finish("f5")
        await s.finish()
        assert s.reader.ids == ["f1", "f2", "f3", "f4", "f5"]
        assert s.reader.answers[2:4] == [Dropped("f3", 3), Dropped("f4", 4)]
        kinds = [type(answer) for answer in s.reader.answers]
        assert kinds == [FrameResult, FrameResult, Dropped, Dropped, FrameResult]
        assert (s.session.stats.answered, s.session.stats.dropped) == (5, 2)
        assert held(s.admission) == (0, 0)

    run(body)


def test_a_latest_stream_whose_reader_does_not_write_stops_reading_at_max_unwritten():
    async def body() -> None:
        s = open_stream(StreamLimits(max_unwritten=4, idle_s=0), policy="latest", writes=0)
        s.client.send(frame("f1"))
        await until(lambda: s.worker.started == ["f1"], "f1 running")
        s.client.send(frame("f2"))
        await until(lambda: s.worker.started == ["f1", "f2"], "f2 running")
        s.client.send(*(frame(f"f{i}") for i in range(3, 21)))
        await until(lambda: s.client.taken == 4, "f3 and f4 read")
        s.worker.finish("f1")
        await until(lambda: len(s.reader.answers) == 1, "f1 taken")
        await settle()
        assert s.client.taken == 4  # f1, f2, Dropped f3, f4 waiting: four unwritten answers
        assert s.dropped == ["x"]
        s.reader.allow()
        s.worker.open_all()
        await s.finish()
        assert s.reader.ids == [f"f{i}" for i in range(1, 21)]
        kinds = [type(answer) for answer in s.reader.answers]
        assert kinds[:3] == [FrameResult, FrameResult, Dropped]
        assert kinds[-1] is FrameResult  # the newest frame always runs
        assert kinds.count(Dropped) == len(s.dropped) == s.session.stats.dropped
        assert held(s.admission) == (0, 0)

    run(body)


def test_an_unknown_policy_is_refused():
    async def body() -> None:
        with pytest.raises(ValueError, match="unknown stream policy"):
            StreamSession(Worker(), Admission(1, 1), StreamLimits(), "oldest")

    run(body)


def test_a_request_stream_that_fails_ends_the_stream_with_an_error():
    async def body() -> None:
        worker = Worker()
        worker.open_all()
        session = StreamSession(worker, Admission(4, 1 << 20), StreamLimits(idle_s=0))

        async def requests() -> AsyncIterator[Incoming]:
            yield frame("f0")
            yield frame("f1")
            raise RuntimeError("the request stream broke")

        answers: list[str] = []
        with pytest.raises(Exception, match="broke"):
            async for answer in session.run(requests()):
                answers.append(answer.frame_id)
        assert answers == ["f0", "f1"]  # what was read is still answered first

    run(body)


def test_a_stream_with_no_progress_ends_idle():
    async def body() -> None:
        s = open_stream(StreamLimits(idle_s=IDLE_S))
        calls: list[str] = []
        s.session.on_idle = lambda: calls.append("idle")
        await settle()
        advance(IDLE_S * 0.9)
        await settle()
        assert not s.reader.task.done() and calls == []
        advance(IDLE_S * 0.2)
        await until(s.reader.task.done, "the stream ended")
        error = s.reader.task.exception()
        assert isinstance(error, StreamIdle) and "no progress" in str(error)
        assert s.session.end_reason == "idle"
        assert calls == ["idle"]

    run(body)


def test_reading_and_writing_reset_the_idle_timer():
    async def body() -> None:
        s = open_stream(StreamLimits(idle_s=IDLE_S))
        s.worker.open_all()
        for i in range(3):
            advance(IDLE_S * 0.6)
            s.client.send(frame(f"f{i}"))
            await s.until_answered(i + 1)
            await settle()
            assert not s.reader.task.done()
        advance(IDLE_S * 0.6)  # 2.4 idle periods since the start, with progress in each
        await settle()
        assert not s.reader.task.done()
        advance(IDLE_S * 0.6)
        await until(s.reader.task.done, "the stream ended")
        assert isinstance(s.reader.task.exception(), StreamIdle)
        assert s.reader.ids == ["f0", "f1", "f2"]

    run(body)


def test_writing_alone_resets_the_idle_timer():
    async def body() -> None:
        s = open_stream(StreamLimits(idle_s=IDLE_S), writes=0)
        s.worker.open_all()
        s.client.send(frame("f0"), frame("f1"), frame("f2"))
        await until(lambda: s.client.taken == 3 and len(s.reader.answers) == 1, "all read, one taken")
        for written in (1, 2):  # nothing more is read: only the writes are progress
            advance(IDLE_S * 0.6)
            s.reader.allow(written)
            await s.until_answered(written + 1)
            await settle()
            assert s.session.end_reason is None
        advance(IDLE_S * 0.6)
        await settle()
        assert s.session.end_reason is None  # 1.2 idle periods since the last read
        advance(IDLE_S * 0.6)
        await until(lambda: s.session.end_reason == "idle", "the stream timed out")

    run(body)


def test_the_idle_timer_stops_the_frames_of_a_stream_whose_writer_is_stuck():
    async def body() -> None:
        admission = Admission(max_frames=2, max_bytes=1 << 20)
        s = open_stream(StreamLimits(max_inflight=4, idle_s=IDLE_S), admission=admission, writes=0)
        s.worker.finish("f0", payload=50)
        s.client.send(*(frame(f"f{i}") for i in range(5)))
        await until(lambda: len(s.worker.started) == 3, "the budget is used up")
        await settle()
        assert s.client.taken == 3  # f3 is not read: there is no room to admit it
        advance(IDLE_S + 1)  # no on_idle hook here: the writer stays stuck on answer f0
        await until(lambda: len(s.worker.cancelled) == 2, "the running frames cancelled")
        await settle()
        assert sorted(s.worker.cancelled) == ["f1", "f2"]
        assert held(admission) == (0, WRITE_COPIES * 52)  # only the taken answer, until the writer gives up
        assert not s.reader.task.done()
        s.reader.allow()
        await until(s.reader.task.done, "the stream ended")
        assert isinstance(s.reader.task.exception(), StreamIdle)
        assert s.reader.ids == ["f0"]
        assert held(admission) == (0, 0)

    run(body)


def test_an_idle_stream_frees_its_frames_and_bytes_when_the_client_never_reads():
    async def body() -> None:
        admission = Admission(max_frames=2, max_bytes=1 << 20)
        s = open_stream(StreamLimits(max_inflight=4, idle_s=IDLE_S), admission=admission, writes=0)
        s.session.on_idle = s.reader.task.cancel  # what the edge does: end the stuck handler
        s.worker.finish("f0", payload=50)
        s.client.send(*(frame(f"f{i}") for i in range(5)))
        await until(lambda: len(s.worker.started) == 3, "the budget is used up")
        await settle()
        # f0 answered but not written, f1 and f2 running, f3 and f4 not read (no room to admit them)
        assert s.reader.ids == ["f0"] and s.worker.started == ["f0", "f1", "f2"] and s.client.taken == 3
        assert held(admission) == (2, WRITE_COPIES * 52 + 2 * frame("f1").nbytes)
        advance(IDLE_S + 1)
        await until(s.reader.task.done, "the stream ended")
        assert s.reader.task.cancelled()
        assert s.session.end_reason == "idle"
        assert sorted(s.worker.cancelled) == ["f1", "f2"]
        assert held(admission) == (0, 0)
        admission.try_admit(1)  # no cancelled waiter left queued ahead of others

    run(body)


@pytest.mark.parametrize("writes", [0, math.inf], ids=["reader-holds-an-answer", "reader-waits"])
def test_cancelling_the_stream_releases_every_slot_and_byte(writes: float):
    async def body() -> None:
        admission = Admission(max_frames=2, max_bytes=1 << 20)
        s = open_stream(StreamLimits(max_inflight=4, idle_s=0), admission=admission, writes=writes)
        s.worker.finish("f0", payload=50)
        s.client.send(*(frame(f"f{i}") for i in range(5)))
        await until(lambda: len(s.worker.started) == 3, "the budget is used up")
        await until(lambda: s.reader.ids == ["f0"], "f0 answered")
        await settle()
        assert admission.frames == 2
        assert admission.bytes == (WRITE_COPIES * 52 if writes == 0 else 0) + 2 * frame("f1").nbytes
        s.reader.task.cancel()  # the call ended (client gone, deadline, server stop)
        with pytest.raises(asyncio.CancelledError):
            await s.reader.task
        assert sorted(s.worker.cancelled) == ["f1", "f2"]
        assert held(admission) == (0, 0)
        admission.try_admit(1)

    run(body)


def test_drain_answers_accepted_frames_and_reads_no_more():
    async def body() -> None:
        s = open_stream(StreamLimits(max_inflight=4, idle_s=0))
        s.client.send(frame("f0"), frame("f1"))
        await until(lambda: len(s.worker.started) == 2, "two frames running")
        await settle()
        s.session.stop_accepting()
        assert s.session.end_reason == "draining"
        s.client.send(frame("f2"))
        await settle()
        assert s.client.taken == 2
        s.worker.finish("f1")
        s.worker.finish("f0")
        await s.reader.task  # ends without the client half-closing
        assert s.reader.ids == ["f0", "f1"]
        assert all(isinstance(answer, FrameResult) for answer in s.reader.answers)
        assert s.session.end_reason == "draining"
        assert s.client.taken == 2
        assert held(s.admission) == (0, 0)

    run(body)


def test_a_stream_reads_nothing_while_the_admission_budget_is_used_up():
    """A frame read with no room to admit it would sit in memory, uncharged, for as long as the
    budget stays full (32 such streams of raw 1080p frames: ~400 MB): the client waits instead."""

    async def body() -> None:
        admission = Admission(max_frames=4, max_bytes=1000)
        other = admission.hold_bytes(1000)  # answers another stream's client does not read
        s = open_stream(StreamLimits(max_inflight=4, idle_s=0), admission=admission)
        s.client.send(frame("f0", size=400), frame("f1", size=400), frame("f2", size=400))
        await settle()
        assert s.client.taken == 0 and s.worker.started == []
        other.release()
        other = admission.hold_bytes(150)  # room for two frames like the last, not three
        await until(lambda: s.worker.started == ["f0", "f1"], "read and admitted once there is room")
        await settle()
        assert s.client.taken == 2  # f2 is not read: it would only wait for admission
        s.worker.finish("f0")
        await until(lambda: s.worker.started == ["f0", "f1", "f2"], "f2 read once f0 gave room back")
        other.release()
        for frame_id in ("f1", "f2"):
            s.worker.finish(frame_id)
        s.client.half_close()
        await s.reader.task
        assert s.reader.ids == ["f0", "f1", "f2"] and held(admission) == (0, 0)

    run(body)


def test_drain_of_a_stream_waiting_for_room_reads_nothing_more():
    async def body() -> None:
        admission = Admission(max_frames=1, max_bytes=1 << 20)
        other = admission.try_admit(1)  # another caller's frame
        s = open_stream(StreamLimits(max_inflight=4, idle_s=0), admission=admission)
        s.client.send(frame("f0"))
        await settle()
        s.session.stop_accepting()
        await s.reader.task
        assert s.client.taken == 0 and s.reader.ids == [] and s.session.end_reason == "draining"
        other.release()
        assert held(admission) == (0, 0)

    run(body)


def test_drain_of_a_latest_stream_still_runs_its_waiting_newest_frame():
    async def body() -> None:
        s = open_stream(StreamLimits(max_inflight=4, idle_s=0), policy="latest")
        s.client.send(frame("f1"))
        await until(lambda: s.worker.started == ["f1"], "f1 running")
        s.client.send(frame("f2"))
        await until(lambda: s.worker.started == ["f1", "f2"], "f2 running")
        s.client.send(frame("f3"))
        await until(lambda: s.client.taken == 3, "f3 read")
        await settle()
        s.session.stop_accepting()
        s.client.send(frame("f4"))
        s.worker.open_all()
        await s.reader.task
        assert s.reader.ids == ["f1", "f2", "f3"]
        assert all(isinstance(answer, FrameResult) for answer in s.reader.answers)
        assert s.worker.started == ["f1", "f2", "f3"]
        assert s.client.taken == 3
        assert s.session.end_reason == "draining"
        assert held(s.admission) == (0, 0)

    run(body)
