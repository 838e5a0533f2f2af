"""The batcher as plain asyncio: batches, fairness, bounds, deadlines, cancellation, supervision.

The fake engine is held at a gate (a threading.Event) the test opens, so no step depends on timing.
"""

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from segserve.batcher import Batcher
from segserve.errors import DeadlineExceeded, Overloaded, ShuttingDown, Unavailable


class GatedEngine:
    """Records batch sizes (and each frame's lane tag); returns each frame's first channel as labels."""

    def __init__(self):
        self.batches: list[list[int]] = []
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        self.entered.set()
        assert self.gate.wait(60)
        self.batches.append([int(f[0, 0, 1]) for f in batch])
        return batch[..., 0].copy()


def frame(value: int, tag: int = 0, shape=(4, 6)) -> np.ndarray:
    f = np.full((*shape, 3), value, np.uint8)
    f[..., 1] = tag
    return f


def run(coro_fn, engine: GatedEngine, **kwargs):
    async def main():
        with ThreadPoolExecutor(1) as pool:
            batcher = Batcher(engine, pool, **kwargs)
            batcher.start()
            try:
                return await coro_fn(batcher)
            finally:
                engine.gate.set()
                await batcher.close(drain=False)

    return asyncio.run(main())


async def until_entered(engine: GatedEngine) -> None:
    await asyncio.get_running_loop().run_in_executor(None, engine.entered.wait, 60)


def test_results_go_back_to_their_own_callers():
    engine = GatedEngine()

    async def body(batcher):
        results = await asyncio.gather(*(batcher.infer(frame(v)) for v in range(1, 8)))
        return [int(r.labels[0, 0]) for r in results], [r.batch_size for r in results]

    values, sizes = run(body, engine, max_batch=4)
    assert values == list(range(1, 8))
    assert all(1 <= s <= 4 for s in sizes)


def test_a_lone_frame_does_not_wait_for_company():
    engine = GatedEngine()

    async def body(batcher):
        return await batcher.infer(frame(3))

    result = run(body, engine, max_batch=8, max_delay_s=3600.0)  # nothing announced: no wait
    assert result.batch_size == 1


def test_lanes_are_served_round_robin():
    engine = GatedEngine()

    async def body(batcher):
        engine.gate.clear()
        blocker = asyncio.ensure_future(batcher.infer(frame(0, tag=9), lane="blocker"))
        await until_entered(engine)
        greedy = [asyncio.ensure_future(batcher.infer(frame(1, tag=1), lane="greedy")) for _ in range(6)]
        polite = asyncio.ensure_future(batcher.infer(frame(2, tag=2), lane="polite"))
        await asyncio.sleep(0)  # let them queue (a loop turn, not a wait for time)
        engine.gate.set()
        await asyncio.gather(blocker, polite, *greedy)

    run(body, engine, max_batch=2)
    after_blocker = engine.batches[1]
    assert sorted(after_blocker) == [1, 2]  # the newcomer rides in the very next batch


def test_full_queue_refuses_at_once_and_expired_or_cancelled_items_never_run():
    engine = GatedEngine()

    async def body(batcher):
        engine.gate.clear()
        blocker = asyncio.ensure_future(batcher.infer(frame(0)))
        await until_entered(engine)
        expired = asyncio.ensure_future(batcher.infer(frame(1, tag=1), deadline=time.monotonic() - 1))
        cancelled = asyncio.ensure_future(batcher.infer(frame(2, tag=2)))
        await asyncio.sleep(0)
        with pytest.raises(Overloaded):
            await batcher.infer(frame(3, tag=3))
        cancelled.cancel()
        engine.gate.set()
        await blocker
        with pytest.raises(DeadlineExceeded):
            await expired
        return batcher.stats

    stats = run(body, engine, max_batch=1, max_queue=2)
    assert engine.batches == [[0]]
    assert stats.expired == 1 and stats.cancelled == 1


def test_close_drains_then_refuses():
    engine = GatedEngine()

    async def main():
        with ThreadPoolExecutor(1) as pool:
            batcher = Batcher(engine, pool, max_batch=2)
            batcher.start()
            pending = [asyncio.ensure_future(batcher.infer(frame(v))) for v in range(3)]
            await asyncio.sleep(0)
            await batcher.close(drain=True)
            values = [int((await p).labels[0, 0]) for p in pending]
            with pytest.raises(ShuttingDown):
                await batcher.infer(frame(9))
            return values

    assert asyncio.run(main()) == [0, 1, 2]


def test_engine_failure_reaches_callers_and_worker_survives():
    calls = []

    def engine(batch):
        calls.append(len(batch))
        if len(calls) == 1:
            raise RuntimeError("boom")
        return batch[..., 0].copy()

    async def body(batcher):
        with pytest.raises(RuntimeError, match="boom"):
            await batcher.infer(frame(1))
        return await batcher.infer(frame(2))

    async def main():
        with ThreadPoolExecutor(1) as pool:
            batcher = Batcher(engine, pool)
            batcher.start()
            result = await body(batcher)
            await batcher.close()
            return result, batcher.failure

    result, failure = asyncio.run(main())
    assert int(result.labels[0, 0]) == 2 and failure is None


def test_a_dead_worker_fails_every_waiter_promptly_and_says_so():
    """Item 10: if the worker itself dies, waiting callers get UNAVAILABLE (never hang), new ones too,
    and the failure listener is told (the server turns health NOT_SERVING)."""
    engine = GatedEngine()
    told = []

    def bad_on_batch(size: int) -> None:
        raise RuntimeError("bug in the worker, outside the per-batch handling")

    async def main():
        with ThreadPoolExecutor(1) as pool:
            batcher = Batcher(engine, pool, max_batch=1, on_batch=bad_on_batch, on_failure=told.append)
            batcher.start()
            engine.gate.clear()
            first = asyncio.ensure_future(batcher.infer(frame(1)))
            await until_entered(engine)
            waiting = asyncio.ensure_future(batcher.infer(frame(2)))
            await asyncio.sleep(0)
            engine.gate.set()
            outcomes = await asyncio.gather(first, waiting, return_exceptions=True)
            with pytest.raises(Unavailable):
                await batcher.infer(frame(3))
            return outcomes

    outcomes = asyncio.run(main())
    assert all(isinstance(o, Unavailable) for o in outcomes), outcomes
    assert len(told) == 1


def test_frames_of_different_sizes_never_share_a_batch():
    engine = GatedEngine()

    async def body(batcher):
        engine.gate.clear()
        blocker = asyncio.ensure_future(batcher.infer(frame(0)))
        await until_entered(engine)
        small = [asyncio.ensure_future(batcher.infer(frame(1, tag=1), lane=i)) for i in range(2)]
        large = [
            asyncio.ensure_future(batcher.infer(frame(2, tag=2, shape=(8, 8)), lane=10 + i)) for i in range(2)
        ]
        await asyncio.sleep(0)
        engine.gate.set()
        await asyncio.gather(blocker, *small, *large)

    run(body, engine, max_batch=8)
    assert all(len(set(b)) == 1 for b in engine.batches), engine.batches
