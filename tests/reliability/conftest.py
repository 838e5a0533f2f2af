"""Fixtures for the reliability and security tests: real servers on free loopback ports, small models
made by tests/modelgen.py, an engine that can be slowed down to a known capacity, and helpers."""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE.parent))  # tests/modelgen.py, tests/frames.py
sys.path.insert(0, str(HERE))  # relutil.py

from modelgen import served_model_file  # noqa: E402
from segserve.edge.server import RunningServer, ServerConfig, create_server  # noqa: E402
from segserve.engine import Engine, EngineConfig  # noqa: E402
from segserve.service import Service  # noqa: E402

MODEL_HW = (48, 64)


@pytest.fixture(scope="session")
def small_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 48x64 served-contract model: a few hundred microseconds a frame on one core."""
    return served_model_file(tmp_path_factory.mktemp("rel-models") / "toy48.onnx", height=48, width=64)


class EngineProbe:
    """Wraps the batcher's engine call: an optional fixed cost per batch (a known capacity), and
    a record of every batch (its size, and how many frames of each lane ran)."""

    def __init__(self, service: Service, per_batch_s: float = 0.0):
        self.service = service
        self.per_batch_s = per_batch_s
        self.batches: list[int] = []
        self.running = 0
        self.max_running_frames = 0
        self._lock = threading.Lock()
        self._run = service.batcher._run
        service.batcher._run = self

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        with self._lock:
            self.batches.append(len(batch))
        if self.per_batch_s:
            time.sleep(self.per_batch_s)
        return self._run(batch)

    @property
    def frames(self) -> int:
        return sum(self.batches)


@contextlib.contextmanager
def serve(model: Path, per_batch_s: float = 0.0, grace_s: float = 2.0, **config) -> Iterator[RunningServer]:
    """A server for ``model`` with ``ServerConfig(**config)``; ``running.probe`` is its EngineProbe."""
    config.setdefault("host", "127.0.0.1")
    config.setdefault("port", 0)
    config.setdefault("grace_s", grace_s)
    engine = Engine(EngineConfig(model, intra_op_threads=1))
    engine.warm_up()
    running = create_server(engine, ServerConfig(**config))
    running.probe = EngineProbe(running.service, per_batch_s)  # type: ignore[attr-defined]
    try:
        yield running
    finally:
        running.drain_and_stop(grace_s)


@pytest.fixture
def server_factory(small_model: Path) -> Callable[..., contextlib.AbstractContextManager[RunningServer]]:
    return lambda **config: serve(small_model, **config)


@pytest.fixture(scope="module")
def shared_server(small_model: Path) -> Iterator[RunningServer]:
    """A default-configured server shared by a module's tests (no slow-down)."""
    with serve(small_model) as running:
        yield running


def channel_for(running: RunningServer, **options) -> grpc.Channel:
    opts = [("grpc.max_send_message_length", 128 << 20), ("grpc.max_receive_message_length", 128 << 20)]
    opts += list(options.items())
    return grpc.insecure_channel(f"127.0.0.1:{running.port}", options=opts)


def wait_for(predicate: Callable[[], bool], timeout: float = 5.0, poll: float = 0.02) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(poll)
    return predicate()
