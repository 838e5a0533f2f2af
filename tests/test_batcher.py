import threading
import time

import numpy as np
import pytest
from segserve.batcher import Batcher
from segserve.errors import Cancelled, DeadlineExceeded, Overloaded, ShuttingDown


class SlowEngine:
    """Records batch sizes; returns each frame's first channel as its 'labels'."""

    def __init__(self, delay: float = 0.0):
        self.delay = delay
        self.sizes: list[int] = []
        self.gate = threading.Event()
        self.gate.set()

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        self.gate.wait()
        self.sizes.append(len(batch))
        time.sleep(self.delay)
        return batch[..., 0].copy()


def frame(value: int) -> np.ndarray:
    return np.full((4, 4, 3), value, np.uint8)


def test_results_go_back_to_their_own_callers():
    engine = SlowEngine()
    batcher = Batcher(engine, max_batch=4, max_delay_s=0.05)
    for _ in range(4):
        batcher.announce()
    futures = [batcher.submit(frame(i), announced=True) for i in range(4)]
    results = [f.result(5) for f in futures]
    assert [int(r.labels[0, 0]) for r in results] == [0, 1, 2, 3]
    assert engine.sizes == [4] and all(r.batch_size == 4 for r in results)
    batcher.close()


def test_a_lone_frame_does_not_wait_for_company():
    batcher = Batcher(SlowEngine(), max_batch=8, max_delay_s=1.0)
    start = time.perf_counter()
    batcher.submit(frame(1)).result(5)
    assert time.perf_counter() - start < 0.5  # nothing announced: no 1 s wait
    batcher.close()


def test_lanes_are_served_round_robin():
    engine = SlowEngine()
    engine.gate.clear()
    batcher = Batcher(engine, max_batch=2, max_delay_s=0.0, max_queue=64)
    blocker = batcher.submit(frame(0), lane="x")
    time.sleep(0.05)  # the worker now holds the blocker and waits at the gate
    greedy = [batcher.submit(frame(1), lane="greedy") for _ in range(10)]
    polite = batcher.submit(frame(2), lane="polite")
    engine.gate.set()
    polite.result(5)
    done_before = sum(f.done() for f in greedy)
    assert done_before <= 2, "the polite lane waited behind the whole greedy queue"
    for f in [blocker, *greedy]:
        f.result(5)
    batcher.close()


def test_full_queue_refuses_at_once_and_expired_or_cancelled_items_never_run():
    engine = SlowEngine()
    engine.gate.clear()
    batcher = Batcher(engine, max_batch=1, max_delay_s=0.0, max_queue=2)
    running = batcher.submit(frame(0))
    time.sleep(0.05)
    expired = batcher.submit(frame(1), deadline=time.monotonic() + 0.01)
    gone = batcher.submit(frame(2), is_cancelled=lambda: True)
    with pytest.raises(Overloaded, match="limit 2"):
        batcher.submit(frame(3))
    time.sleep(0.05)
    engine.gate.set()
    running.result(5)
    with pytest.raises(DeadlineExceeded):
        expired.result(5)
    with pytest.raises(Cancelled):
        gone.result(5)
    assert engine.sizes == [1]
    assert batcher.stats.expired == 1 and batcher.stats.cancelled == 1
    batcher.close()


def test_close_drains_then_refuses():
    engine = SlowEngine(delay=0.01)
    batcher = Batcher(engine, max_batch=2, max_delay_s=0.0)
    futures = [batcher.submit(frame(i)) for i in range(5)]
    batcher.close(drain=True, timeout=5)
    assert all(f.result(0).labels is not None for f in futures)
    with pytest.raises(ShuttingDown):
        batcher.submit(frame(9))


def test_engine_failure_reaches_callers_and_worker_survives():
    calls = {"n": 0}

    def flaky(batch):
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("boom")
        return batch[..., 0]

    batcher = Batcher(flaky, max_batch=1)
    with pytest.raises(RuntimeError, match="boom"):
        batcher.submit(frame(1)).result(5)
    assert batcher.submit(frame(2)).result(5).labels[0, 0] == 2
    batcher.close()


def test_frames_of_different_sizes_never_share_a_batch():
    engine = SlowEngine()
    engine.gate.clear()
    batcher = Batcher(engine, max_batch=8, max_delay_s=0.0)
    first = batcher.submit(frame(0), lane="a")
    time.sleep(0.05)
    small = [batcher.submit(frame(1), lane=f"s{i}") for i in range(3)]
    big = [batcher.submit(np.zeros((8, 8, 3), np.uint8), lane=f"b{i}") for i in range(2)]
    engine.gate.set()
    for f in [first, *small, *big]:
        f.result(5)
    assert sorted(engine.sizes) == [1, 2, 3]
    batcher.close()
