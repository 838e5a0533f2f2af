"""The admission point as plain asyncio: frame and byte limits, FIFO waiters, cancellation, tickets.

No transport and no clock: waiters are tasks, and the test moves them on with loop turns
(``asyncio.sleep(0)``) and by releasing tickets, so no step depends on timing.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Awaitable, Callable
from typing import TypeVar

import pytest
from segserve.admission import Admission, Ticket
from segserve.errors import Overloaded

T = TypeVar("T")


def run(body: Callable[[], Awaitable[T]]) -> T:
    async def main() -> T:
        return await body()

    return asyncio.run(main())


async def settle(turns: int = 20) -> None:
    """Let every ready task run to its next wait (loop turns, not time)."""
    for _ in range(turns):
        await asyncio.sleep(0)


def held(admission: Admission) -> tuple[int, int]:
    return admission.frames, admission.bytes


def test_limits_must_be_positive():
    async def body() -> None:
        with pytest.raises(ValueError, match="at least 1"):
            Admission(0, 100)
        with pytest.raises(ValueError, match="at least 1"):
            Admission(1, 0)

    run(body)


def test_frame_limit_refuses_at_once_and_release_gives_the_slot_back():
    async def body() -> None:
        admission = Admission(max_frames=2, max_bytes=1000)
        first = admission.try_admit(10)
        admission.try_admit(20)
        assert held(admission) == (2, 30)
        with pytest.raises(Overloaded, match="2 frames"):
            admission.try_admit(1)
        assert held(admission) == (2, 30)  # a refusal charges nothing
        first.release()
        assert held(admission) == (1, 20)
        admission.try_admit(1)
        assert held(admission) == (2, 21)

    run(body)


def test_byte_limit_counts_every_held_byte():
    async def body() -> None:
        admission = Admission(max_frames=10, max_bytes=100)
        admission.try_admit(60)
        with pytest.raises(Overloaded):
            admission.try_admit(41)
        admission.try_admit(40)  # exactly at the limit is allowed
        assert held(admission) == (2, 100)
        with pytest.raises(Overloaded):
            admission.try_admit(1)

    run(body)


def test_a_lone_frame_larger_than_the_budget_runs_only_when_nothing_is_held():
    async def body() -> None:
        admission = Admission(max_frames=4, max_bytes=100)
        small = admission.try_admit(1)
        with pytest.raises(Overloaded):
            admission.try_admit(500)
        small.release()
        big = admission.try_admit(500)  # nothing held: the budget cannot deadlock it
        assert held(admission) == (1, 500)
        with pytest.raises(Overloaded):
            admission.try_admit(1)  # but nothing joins it while it is over the budget
        waiting = asyncio.ensure_future(admission.admit(1))
        await settle()
        assert not waiting.done()
        big.release()
        ticket = await waiting
        assert ticket.nbytes == 1
        assert held(admission) == (1, 1)
        # a waiter that is larger than the budget is also let in once everything is given back
        large = asyncio.ensure_future(admission.admit(700))
        await settle()
        assert not large.done()
        ticket.release()
        await large
        assert held(admission) == (1, 700)

    run(body)


def test_try_admit_refuses_while_waiters_queue_even_when_it_would_fit():
    async def body() -> None:
        admission = Admission(max_frames=4, max_bytes=100)
        holder = admission.try_admit(80)
        waiter = asyncio.ensure_future(admission.admit(50))  # does not fit: waits
        await settle()
        assert not waiter.done()
        with pytest.raises(Overloaded):
            admission.try_admit(1)  # would fit, but must not overtake the waiter
        queued = asyncio.ensure_future(admission.admit(1))  # admit does not overtake either
        await settle()
        assert not queued.done()
        holder.release()
        await asyncio.gather(waiter, queued)
        assert held(admission) == (2, 51)

    run(body)


def test_waiters_are_admitted_in_arrival_order_each_woken_by_a_release():
    async def body() -> list[str]:
        admission = Admission(max_frames=1, max_bytes=1000)
        holder = admission.try_admit(1)
        order: list[str] = []
        tickets: dict[str, Ticket] = {}

        async def wait(name: str, nbytes: int) -> None:
            tickets[name] = await admission.admit(nbytes)
            order.append(name)

        tasks = []
        for name, nbytes in (("a", 500), ("b", 1), ("c", 300), ("d", 2)):
            tasks.append(asyncio.ensure_future(wait(name, nbytes)))
            await settle()  # queued in this order
        assert order == []
        holder.release()
        await settle()
        assert order == ["a"]  # one release, one waiter woken
        assert held(admission) == (1, 500)
        for expected, name in (("ab", "a"), ("abc", "b"), ("abcd", "c")):
            tickets[name].release()
            await settle()
            assert "".join(order) == expected
        await asyncio.gather(*tasks)
        assert held(admission) == (1, 2)
        return order

    assert run(body) == ["a", "b", "c", "d"]


def test_a_waiter_cancelled_while_waiting_leaves_no_trace():
    async def body() -> None:
        admission = Admission(max_frames=1, max_bytes=1000)
        holder = admission.try_admit(1)
        gone = asyncio.ensure_future(admission.admit(5))
        await settle()
        gone.cancel()
        with pytest.raises(asyncio.CancelledError):
            await gone
        assert held(admission) == (1, 1)
        holder.release()
        assert held(admission) == (0, 0)  # the slot was not handed to the cancelled waiter
        admission.try_admit(3)  # and it no longer queues ahead of anyone
        assert held(admission) == (1, 3)

    run(body)


def test_a_cancelled_head_waiter_lets_the_next_one_in():
    async def body() -> None:
        admission = Admission(max_frames=4, max_bytes=100)
        admission.try_admit(60)
        head = asyncio.ensure_future(admission.admit(50))  # does not fit
        behind = asyncio.ensure_future(admission.admit(10))  # fits, but waits behind the head
        await settle()
        assert not behind.done()
        head.cancel()
        await settle()
        assert behind.done() and behind.result().nbytes == 10  # no release was needed
        assert held(admission) == (2, 70)

    run(body)


def test_a_waiter_granted_just_as_it_was_cancelled_gives_the_slot_back():
    async def body() -> None:
        admission = Admission(max_frames=1, max_bytes=1000)
        holder = admission.try_admit(1)
        late = asyncio.ensure_future(admission.admit(7))
        await settle()
        holder.release()  # grants the slot to ``late``, which has not run yet
        assert held(admission) == (1, 7)
        late.cancel()  # ... and its caller leaves before it resumes
        with pytest.raises(asyncio.CancelledError):
            await late
        assert held(admission) == (0, 0)
        next_one = asyncio.ensure_future(admission.admit(2))
        await settle()
        assert next_one.done() and held(admission) == (1, 2)

    run(body)


def test_a_granted_but_cancelled_waiter_passes_the_slot_on_to_the_next():
    async def body() -> None:
        admission = Admission(max_frames=1, max_bytes=1000)
        holder = admission.try_admit(1)
        late = asyncio.ensure_future(admission.admit(7))
        behind = asyncio.ensure_future(admission.admit(3))
        await settle()
        holder.release()
        late.cancel()
        await settle()
        assert late.cancelled()
        assert behind.done() and behind.result().nbytes == 3
        assert held(admission) == (1, 3)

    run(body)


def test_held_bytes_are_never_refused_but_make_later_callers_wait():
    async def body() -> None:
        admission = Admission(max_frames=2, max_bytes=100)
        answer = admission.hold_bytes(1000)  # already in memory: over the budget is allowed
        assert held(admission) == (0, 1000)
        assert answer.frames == 0
        with pytest.raises(Overloaded):
            admission.try_admit(1)
        waiting = asyncio.ensure_future(admission.admit(1))
        await settle()
        assert not waiting.done()
        answer.release()
        await settle()
        assert waiting.done()
        assert held(admission) == (1, 1)
        admission.hold_bytes(10)  # also while a frame is held and waiters could queue
        assert held(admission) == (1, 11)

    run(body)


def test_release_is_idempotent():
    async def body() -> None:
        admission = Admission(max_frames=4, max_bytes=1000)
        ticket = admission.try_admit(10)
        other = admission.try_admit(20)
        answer = admission.hold_bytes(5)
        for _ in range(3):
            ticket.release()
            answer.release()
        assert ticket.released and answer.released
        assert held(admission) == (1, 20)
        other.release()
        other.release()
        assert held(admission) == (0, 0)

    run(body)


def test_release_after_keeps_the_slot_until_the_pool_job_ends():
    async def body() -> None:
        admission = Admission(max_frames=1, max_bytes=1000)
        gate = threading.Event()
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            job = pool.submit(gate.wait, 60)
            ticket = admission.try_admit(10)
            ticket.release_after(job)
            ticket.release()  # the caller left; its decode still runs on the pool thread
            assert not ticket.released
            assert held(admission) == (1, 10)
            waiting = asyncio.ensure_future(admission.admit(4))
            await settle()
            assert not waiting.done()
            gate.set()
            assert await asyncio.wrap_future(job) is True
            await settle()
        assert ticket.released
        assert waiting.done()
        assert held(admission) == (1, 4)

    run(body)


def test_release_after_waits_for_every_pinned_job_and_for_release_itself():
    async def body() -> None:
        admission = Admission(max_frames=2, max_bytes=1000)
        ticket = admission.try_admit(10)
        first: concurrent.futures.Future[None] = concurrent.futures.Future()
        second: concurrent.futures.Future[None] = concurrent.futures.Future()
        ticket.release_after(first)
        ticket.release_after(second)
        first.set_result(None)
        await settle()
        assert held(admission) == (1, 10)  # finished work alone does not release
        ticket.release()
        assert held(admission) == (1, 10)  # still pinned by ``second``
        second.set_result(None)
        await settle()
        assert held(admission) == (0, 0)
        done: concurrent.futures.Future[None] = concurrent.futures.Future()
        done.set_result(None)
        again = admission.try_admit(3)
        again.release_after(done)  # already finished: pins nothing
        again.release()
        assert held(admission) == (0, 0)

    run(body)


def test_room_waits_until_a_frame_of_that_size_would_be_admitted_and_nobody_waits():
    async def body() -> None:
        admission = Admission(max_frames=2, max_bytes=100)
        await admission.room(60)  # empty: at once
        answers = admission.hold_bytes(50)  # unread answers hold half the bytes
        await admission.room(50)  # a frame of 50 still fits
        big = asyncio.ensure_future(admission.room(60))
        await settle()
        assert not big.done() and not admission.has_room(60)
        answers.release()
        await big
        a, b = admission.try_admit(10), admission.try_admit(10)  # both frame slots
        queued = asyncio.ensure_future(admission.admit(10))  # a waiter: no room for another read
        small = asyncio.ensure_future(admission.room(1))
        await settle()
        a.release()  # the slot goes to the waiter, not to a new read
        await queued
        await settle()
        assert not small.done()
        b.release()
        await small
        assert admission.has_room(1) and held(admission) == (1, 10)

    run(body)
