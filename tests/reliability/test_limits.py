"""Limits: open streams, frame bytes, pixels, gRPC message size, frames in flight per stream."""

from __future__ import annotations

import threading

import grpc
import pytest
from conftest import channel_for, wait_until
from relutil import frame, jpeg, raw_request
from segserve._proto.segmentation.v1 import segmentation_pb2 as pb
from segserve._proto.segmentation.v1 import segmentation_pb2_grpc as pb_grpc
from segserve.codec import Limits

IMAGE = frame()


def test_max_streams_refuses_the_next_stream_and_frees_on_close(server_factory):
    with server_factory(max_streams=2) as running, channel_for(running) as channel:
        stub = pb_grpc.SegmenterStub(channel)
        gates = [threading.Event() for _ in range(2)]

        def held(gate):
            yield raw_request("a", IMAGE)
            gate.wait(10)

        calls = [stub.StreamSegment(held(g), timeout=20) for g in gates]
        for c in calls:
            assert next(c).frame_id == "a"
        with pytest.raises(grpc.RpcError) as err:
            list(stub.StreamSegment(iter([raw_request("x", IMAGE)]), timeout=5))
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "too many open streams" in err.value.details()
        # unary calls are not streams: still served
        assert stub.Segment(raw_request("u", IMAGE), timeout=5).frame_id == "u"
        gates[0].set()
        list(calls[0])
        assert wait_until(running, lambda s: s["streams"] == 1)
        assert [r.frame_id for r in stub.StreamSegment(iter([raw_request("y", IMAGE)]), timeout=5)] == ["y"]
        gates[1].set()
        list(calls[1])
        errors = running.service.metrics.errors.labels("StreamSegment", "RESOURCE_EXHAUSTED")._value.get()
        assert errors == 1


def test_frame_bytes_and_pixels_limits(server_factory):
    big = jpeg(frame(320, 240, seed=2))
    limits = Limits(max_frame_bytes=len(big) - 1, max_pixels=200 * 200)
    with server_factory(limits=limits) as running, channel_for(running) as channel:
        stub = pb_grpc.SegmenterStub(channel)
        for request, needle in (
            (pb.SegmentRequest(frame_id="bytes", encoded=big), "bytes, over the limit"),
            (raw_request("pixels", frame(320, 240)), "Mpx"),
            (pb.SegmentRequest(frame_id="jpeg-px", encoded=jpeg(frame(256, 200))), "Mpx"),
        ):
            with pytest.raises(grpc.RpcError) as err:
                stub.Segment(request, timeout=5)
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, request.frame_id
            assert needle in err.value.details()
        # on a stream the same frame is a per-frame error and the stream goes on
        responses = list(
            stub.StreamSegment(
                iter(
                    [
                        raw_request("ok1", IMAGE),
                        raw_request("pixels", frame(320, 240)),
                        raw_request("ok2", IMAGE),
                    ]
                ),
                timeout=10,
            )
        )
        assert [r.frame_id for r in responses] == ["ok1", "pixels", "ok2"]
        assert responses[1].error.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
        assert not responses[0].HasField("error") and not responses[2].HasField("error")


def test_grpc_message_size_limit(server_factory):
    with server_factory(max_message_bytes=64 * 1024) as running, channel_for(running) as channel:
        stub = pb_grpc.SegmenterStub(channel)
        with pytest.raises(grpc.RpcError) as err:
            stub.Segment(raw_request("huge", frame(320, 240)), timeout=5)  # 230 KB
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert stub.Segment(raw_request("small", IMAGE), timeout=5).frame_id == "small"


def test_max_inflight_per_stream_bounds_one_streams_share(server_factory):
    """One stream never has more than max_inflight_per_stream frames in the pipeline."""
    with (
        server_factory(max_inflight=16, max_inflight_per_stream=3, max_batch=8) as running,
        channel_for(running) as channel,
    ):
        stub = pb_grpc.SegmenterStub(channel)
        responses = list(stub.StreamSegment((raw_request(f"f{i}", IMAGE) for i in range(40)), timeout=30))
        assert [r.frame_id for r in responses] == [f"f{i}" for i in range(40)]
        assert max(running.probe.batches) <= 3
        assert max(r.timing.batch_size for r in responses) <= 3


def test_unary_admission_limit_is_refused_at_once(server_factory):
    with (
        server_factory(max_inflight=2, max_batch=1) as running,
        channel_for(running) as channel,
    ):
        stub = pb_grpc.SegmenterStub(channel)
        running.probe.gate.clear()
        held = [stub.Segment.future(raw_request(f"h{i}", IMAGE), timeout=60) for i in range(2)]
        assert wait_until(running, lambda s: s["frames"] == 2)
        with pytest.raises(grpc.RpcError) as err:
            stub.Segment(raw_request("x", IMAGE), timeout=60)  # refused at once, not queued
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "retry with backoff" in err.value.details()
        running.probe.gate.set()
        assert [f.result().frame_id for f in held] == ["h0", "h1"]
