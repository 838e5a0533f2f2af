"""Shared fixtures: small models built by the project's own code and a real server on a free port."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # modelgen, frames, servers for every test folder

from modelgen import served_model_file
from segserve.edge.server import RunningServer
from servers import MODEL_HW, start_server


@pytest.fixture(scope="session")
def toy_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return served_model_file(
        tmp_path_factory.mktemp("models") / "toy.onnx", height=MODEL_HW[0], width=MODEL_HW[1]
    )


@pytest.fixture(scope="session")
def server(toy_model: Path) -> Iterator[RunningServer]:
    running = start_server(toy_model)
    yield running
    running.drain_and_stop(1.0)


@pytest.fixture(scope="session")
def target(server: RunningServer) -> str:
    return f"127.0.0.1:{server.port}"
