"""Shared fixtures: small models built by the project's own code and a real server on a free port."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # tests/modelgen.py for every test folder

from modelgen import served_model_file
from segserve.engine import EngineConfig
from segserve.server import RunningServer, ServerConfig, Service, create_server

MODEL_HW = (96, 128)


@pytest.fixture(scope="session")
def toy_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return served_model_file(
        tmp_path_factory.mktemp("models") / "toy.onnx", height=MODEL_HW[0], width=MODEL_HW[1]
    )


def start_server(model: Path, **config) -> RunningServer:
    config.setdefault("host", "127.0.0.1")
    config.setdefault("port", 0)
    return create_server(Service.from_model(EngineConfig(model, intra_op_threads=1), ServerConfig(**config)))


@pytest.fixture(scope="session")
def server(toy_model: Path) -> Iterator[RunningServer]:
    running = start_server(toy_model)
    yield running
    running.drain_and_stop(1.0)


@pytest.fixture(scope="session")
def target(server: RunningServer) -> str:
    return f"127.0.0.1:{server.port}"
