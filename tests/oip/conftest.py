"""Fixtures for the Open Inference Protocol contract tests: a real server (tests/servers.py) over a
small model made by tests/modelgen.py, and the tritonclient client as its users run it."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import tritonclient.grpc as tritonclient_grpc

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE.parent))  # modelgen, frames, servers
sys.path.insert(0, str(HERE))  # oiputil

from modelgen import served_model_file  # noqa: E402
from oiputil import MAX_BATCH, MODEL_HW  # noqa: E402
from segserve._proto.segmentation.v1 import segmentation_pb2_grpc as pb_grpc  # noqa: E402
from segserve.edge.server import RunningServer  # noqa: E402
from servers import start_server  # noqa: E402


@pytest.fixture(scope="session")
def oip_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return served_model_file(
        tmp_path_factory.mktemp("oip-models") / "toy.onnx", height=MODEL_HW[0], width=MODEL_HW[1]
    )


@pytest.fixture(scope="module")
def oip_server(oip_model: Path) -> Iterator[RunningServer]:
    running = start_server(oip_model, max_batch=MAX_BATCH)
    yield running
    running.drain_and_stop(1.0)


@pytest.fixture(scope="module")
def url(oip_server: RunningServer) -> str:
    return f"127.0.0.1:{oip_server.port}"


@pytest.fixture(scope="module")
def client(url: str) -> Iterator[tritonclient_grpc.InferenceServerClient]:
    with tritonclient_grpc.InferenceServerClient(url) as c:
        yield c


@pytest.fixture(scope="module")
def segmenter(url: str) -> Iterator[pb_grpc.SegmenterStub]:
    with grpc.insecure_channel(url) as channel:
        yield pb_grpc.SegmenterStub(channel)
