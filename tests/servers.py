"""Start real servers for tests (imported by name: test folders each have their own conftest)."""

from __future__ import annotations

from pathlib import Path

from segserve.edge.server import RunningServer, ServerConfig, create_server
from segserve.engine import Engine, EngineConfig

MODEL_HW = (96, 128)


def start_server(model: Path, engine: dict | None = None, **config) -> RunningServer:
    """A server on a free loopback port (``port=0``) over ``model``; ``config``: ServerConfig fields;
    ``engine``: EngineConfig fields (the model flags: channel_order, output, labels, ...)."""
    config.setdefault("host", "127.0.0.1")
    config.setdefault("port", 0)
    served = Engine(EngineConfig(model, **{"intra_op_threads": 1, **(engine or {})}))
    served.warm_up()
    return create_server(served, ServerConfig(**config))
