"""Fixtures for the reliability and security tests: real servers on free loopback ports, small models
made by tests/modelgen.py, an engine that can be slowed down to a known capacity, and helpers."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import threading
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
    """Wraps the batcher's engine call: a gate the test opens and closes (so it decides when batches
    run: no sleeps), and a record of every batch, synchronised with a condition."""

    def __init__(self, service: Service):
        self.service = service
        self.batches: list[int] = []
        self.entered = 0
        self.gate = threading.Event()
        self.gate.set()
        self._cond = threading.Condition()
        self._run = service.batcher._run
        service.batcher._run = self

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        with self._cond:
            self.entered += 1
            self._cond.notify_all()
        if not self.gate.wait(60):
            raise RuntimeError("test gate never opened")
        out = self._run(batch)
        with self._cond:
            self.batches.append(len(batch))
            self._cond.notify_all()
        return out

    def wait_entered(self, n: int, timeout: float = 60.0) -> bool:
        """Wait until ``n`` batches have entered the engine (they may be held at the gate)."""
        with self._cond:
            return self._cond.wait_for(lambda: self.entered >= n, timeout)

    def wait_frames(self, n: int, timeout: float = 60.0) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: sum(self.batches) >= n, timeout)

    @property
    def frames(self) -> int:
        return sum(self.batches)


@contextlib.contextmanager
def serve(model: Path, grace_s: float = 2.0, **config) -> Iterator[RunningServer]:
    """A server for ``model`` with ``ServerConfig(**config)``; ``running.probe`` is its EngineProbe."""
    config.setdefault("host", "127.0.0.1")
    config.setdefault("port", 0)
    config.setdefault("grace_s", grace_s)
    engine = Engine(EngineConfig(model, intra_op_threads=1))
    engine.warm_up()
    running = create_server(engine, ServerConfig(**config))
    running.probe = EngineProbe(running.service)  # type: ignore[attr-defined]
    try:
        yield running
    finally:
        running.probe.gate.set()  # type: ignore[attr-defined]
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


def wait_idle(running: RunningServer, timeout: float = 60.0) -> bool:
    """Wait (on the server's own idle event) until no call is open and nothing is held: a pool job
    whose caller left keeps its admission ticket until the job really ends."""
    if not running.call(running.service.wait_idle(timeout)):
        return False
    return wait_until(running, lambda s: s["frames"] == 0 and s["streams"] == 0 and s["depth"] == 0, timeout)


def state(running: RunningServer) -> dict:
    """A consistent snapshot of the server's bounds, read on its event loop."""

    return running.call(_snapshot(running.service))


def wait_until(running: RunningServer, predicate: Callable[[dict], bool], timeout: float = 60.0) -> bool:
    """Wait until ``predicate(state)`` holds, re-checking whenever the server's loop turns."""

    async def watch() -> bool:
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while loop.time() < end:
            if predicate(await _snapshot(running.service)):
                return True
            await asyncio.sleep(0.01)  # yields the loop; an overall bound, not a timing assertion
        return False

    return running.call(watch())


async def _snapshot(service: Service) -> dict:
    return {
        "frames": service.admission.frames,
        "bytes": service.admission.bytes,
        "streams": len(service.sessions),
        "depth": service.batcher.depth,
        "sessions": [vars(session.stats).copy() for session in service.sessions],
        "draining": service.draining,
    }
