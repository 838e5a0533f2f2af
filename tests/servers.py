"""Start real servers for tests (imported by name: test folders each have their own conftest)."""

from __future__ import annotations

from pathlib import Path

from segserve.edge.server import RunningServer, ServerConfig, create_server
from segserve.engine import Engine, EngineConfig

MODEL_HW = (96, 128)


def start_server(model: Path, **config) -> RunningServer:
    """A server on a free loopback port (``port=0``) over ``model``; ``config``: ServerConfig fields."""
    config.setdefault("host", "127.0.0.1")
    config.setdefault("port", 0)
    engine = Engine(EngineConfig(model, intra_op_threads=1))
    engine.warm_up()
    return create_server(engine, ServerConfig(**config))
