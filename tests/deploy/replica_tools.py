"""Helpers for tests over several real replicas (tests/test_client.py, tests/deploy/)."""

from __future__ import annotations

import grpc
from frames import jpeg, street_frame
from grpc_health.v1 import health_pb2, health_pb2_grpc
from segserve._proto.segmentation.v1 import segmentation_pb2 as pb
from segserve._proto.segmentation.v1 import segmentation_pb2_grpc as pb_grpc
from segserve.edge.server import RunningServer

SMALL = street_frame(160, 120)


def address(server: RunningServer) -> str:
    return f"127.0.0.1:{server.port}"


def sample(server: RunningServer, name: str, **labels: str) -> float:
    """A metric of an in-process replica, from its Prometheus registry."""
    return server.service.metrics.registry.get_sample_value(name, labels) or 0.0


def served(server: RunningServer, method: str = "Segment") -> float:
    return sample(server, "segserve_requests_total", method=method)


def wait_draining(port: int) -> None:
    """Return once the replica on ``port`` refuses new calls (its health says NOT_SERVING just
    before it starts refusing, so a probe call follows the health change), or is already gone."""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=""))
        try:
            next(s for s in watch if s.status == health_pb2.HealthCheckResponse.NOT_SERVING)
        except grpc.RpcError as exc:  # it drained and stopped (or was stopping) as we looked
            assert exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED), exc
            return
        watch.cancel()
        stub = pb_grpc.SegmenterStub(channel)
        probe = pb.SegmentRequest(encoded=jpeg(SMALL))
        for _ in range(100):
            try:
                stub.Segment(probe, timeout=10)
            except grpc.RpcError as exc:  # CANCELLED: it was already stopping
                assert exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED), exc
                return
    raise AssertionError("the replica never refused a call")
