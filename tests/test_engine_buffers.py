"""IO-binding buffers on the CPU device: keyed by batch size and bounded whatever frame sizes arrive,
and results that the next run cannot overwrite. The same code runs on CUDA (tests/gpu)."""

from __future__ import annotations

import numpy as np
import pytest
from segserve.engine import GRAPH_FRAME_SIZES, SKIP_GRAPH, Engine, EngineConfig


def frames(n: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, h, w, 3), dtype=np.uint8)


@pytest.fixture
def resizing(toy_model) -> Engine:
    return Engine(EngineConfig(toy_model, resize_in_graph=True, io_binding=True, max_batch=4))


@pytest.fixture
def reference(toy_model) -> Engine:
    return Engine(EngineConfig(toy_model, resize_in_graph=True, io_binding=False))


def test_results_survive_the_next_run_of_the_same_batch_size(toy_model):
    engine = Engine(EngineConfig(toy_model, io_binding=True))
    first_in, second_in = frames(2, 96, 128, 1), frames(2, 96, 128, 2)
    first = engine.run(first_in)
    kept = first.copy()
    engine.run(second_in)  # reuses the output buffer that `first` came from
    assert np.array_equal(first, kept)
    plain = Engine(EngineConfig(toy_model, io_binding=False))
    assert np.array_equal(first, plain.run(first_in))


def test_new_frame_sizes_replace_a_batch_sizes_binding_instead_of_adding_one(resizing, reference):
    for seed, (h, w) in enumerate([(240, 320), (360, 480), (250, 333), (720, 1280), (240, 320)]):
        for n in (1, 2):
            batch = frames(n, h, w, seed)
            assert np.array_equal(resizing.run(batch), reference.run(batch))
        assert resizing.binding_count == 2  # one per batch size seen, whatever the frame sizes
    assert resizing.buffers_for((2, 240, 320, 3)).shape == (2, 240, 320, 3)


def test_cuda_graph_bookkeeping_is_bounded(resizing, reference):
    """The graph-id policy, on a CPU session (which ignores gpu_graph_id): the first GRAPH_FRAME_SIZES
    frame sizes of each batch size keep a captured binding, the rest share one uncaptured binding."""
    resizing.cuda_graph = True
    sizes = [(240, 320), (360, 480), (250, 333), (300, 400), (240, 320), (360, 480), (250, 333)]
    ids = set()
    for seed, (h, w) in enumerate(sizes):
        for n in (1, 3):
            batch = frames(n, h, w, seed)
            assert np.array_equal(resizing.run(batch), reference.run(batch))
            ids.add(resizing.buffers_for(batch.shape).graph_id)
    captured = {b.shape: b for bs in resizing._graphed.values() for b in bs}
    assert len(captured) == 2 * GRAPH_FRAME_SIZES
    assert set(captured) == {(n, *hw, 3) for n in (1, 3) for hw in sizes[:GRAPH_FRAME_SIZES]}
    assert ids == {*range(1, 2 * GRAPH_FRAME_SIZES + 1), SKIP_GRAPH}
    assert resizing.binding_count == 2 * (GRAPH_FRAME_SIZES + 1)
    # A captured binding is never replaced: its graph replays these very addresses.
    pinned = resizing.buffers_for((1, 240, 320, 3))
    resizing.run(frames(1, 500, 500))
    assert resizing.buffers_for((1, 240, 320, 3)) is pinned
