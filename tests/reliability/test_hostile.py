"""Hostile and careless callers (issue 11, items 1-9): crafted frames, unauthenticated half-sent calls,
huge ids, unknown methods, idle metrics connections, idle streams, garbage requests, latest-policy
streams closed at every moment. Each test fails on the thread-per-RPC core this replaced."""

from __future__ import annotations

import socket
import threading
import time

import cv2
import grpc
import numpy as np
import pytest
from conftest import channel_for, state, wait_idle
from grpc_health.v1 import health_pb2, health_pb2_grpc
from relutil import frame, raw_request
from segserve import codec
from segserve._proto.segmentation.v1 import segmentation_pb2 as pb
from segserve._proto.segmentation.v1 import segmentation_pb2_grpc as pb_grpc
from segserve.bench import crafted
from segserve.errors import FrameTooLarge, InvalidFrame
from segserve.metrics import CODES, METHODS
from segserve.sessions import WRITE_COPIES

IMAGE = frame()
TOKEN = "s3cret-token"
SEGMENT = "/segmentation.v1.Segmenter/Segment"


def size_lie_jpeg() -> bytes:
    return crafted.size_lie_jpeg(IMAGE)


def many_scans_jpeg() -> bytes:
    return crafted.many_scans_jpeg(IMAGE)


def test_the_size_check_is_the_decoders_own_header_read():
    crafted = size_lie_jpeg()
    assert len(crafted) < 4096
    assert codec.encoded_size(crafted) == (16000, 16000)
    with pytest.raises(FrameTooLarge, match="16000x16000"):
        codec.decode_encoded(crafted, codec.Limits(max_pixels=1920 * 1080))


def test_progressive_jpeg_with_thousands_of_scans_is_refused_before_decoding():
    crafted = many_scans_jpeg()
    with pytest.raises(InvalidFrame, match="scans"):
        codec.decode_encoded(crafted)
    # a normal progressive JPEG decodes
    normal = cv2.imencode(".jpg", IMAGE, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])[1].tobytes()
    assert codec.decode_encoded(normal).shape == IMAGE.shape


def test_crafted_frames_over_the_wire_get_their_status(server_factory):
    with server_factory(limits=codec.Limits(max_pixels=1920 * 1080)) as running, channel_for(running) as ch:
        stub = pb_grpc.SegmenterStub(ch)
        for data, code in (
            (size_lie_jpeg(), grpc.StatusCode.RESOURCE_EXHAUSTED),
            (many_scans_jpeg(), grpc.StatusCode.INVALID_ARGUMENT),
            (b"GIF89a" + b"\x00" * 100, grpc.StatusCode.INVALID_ARGUMENT),
        ):
            with pytest.raises(grpc.RpcError) as err:
                stub.Segment(pb.SegmentRequest(frame_id="x", encoded=data), timeout=30)
            assert err.value.code() == code
            assert "474946" not in err.value.details()  # item 8: no frame bytes echoed to logs or callers
        assert wait_idle(running)


def _half_sent(channel: grpc.Channel, release: threading.Event, metadata=None):
    """A unary call whose headers go out but whose message never does (until ``release``)."""

    def never():
        release.wait(120)
        return
        yield

    call = channel.stream_unary(SEGMENT)
    return call.future(never(), timeout=120, metadata=metadata)


def test_unauthenticated_half_sent_calls_are_refused_from_their_headers(server_factory):
    """Item 3: 200 calls with no token that never send their message are refused at once; callers
    with the token and the health check are served meanwhile."""
    release = threading.Event()
    with server_factory(token=TOKEN) as running, channel_for(running) as channel:
        try:
            calls = [_half_sent(channel, release) for _ in range(200)]
            codes = [_code_of(call) for call in calls]
            assert set(codes) == {grpc.StatusCode.UNAUTHENTICATED}
            stub = pb_grpc.SegmenterStub(channel)
            good = stub.Segment(
                raw_request("ok", IMAGE), timeout=30, metadata=(("authorization", f"Bearer {TOKEN}"),)
            )
            assert good.frame_id == "ok"
            health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=30)
            assert health.status == health_pb2.HealthCheckResponse.SERVING
        finally:
            release.set()


def _code_of(future) -> grpc.StatusCode:
    try:
        future.result(timeout=60)
    except grpc.RpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


def test_huge_frame_ids_are_refused_and_never_echoed_whole(server_factory):
    """Item 4: a 1 MiB frame_id is INVALID_ARGUMENT; on a stream the error echoes at most the limit."""
    huge = "x" * (1 << 20)
    with server_factory(max_frame_id_bytes=256) as running, channel_for(running) as channel:
        stub = pb_grpc.SegmenterStub(channel)
        with pytest.raises(grpc.RpcError) as err:
            stub.Segment(raw_request(huge, IMAGE), timeout=30)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "frame_id" in err.value.details()
        answers = list(
            stub.StreamSegment(iter([raw_request(huge, IMAGE), raw_request("ok", IMAGE)]), timeout=30)
        )
        assert (
            len(answers[0].frame_id) <= 256
            and answers[0].error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
        )
        assert answers[1].frame_id == "ok" and not answers[1].HasField("error")


def test_a_stream_that_does_not_read_holds_bounded_bytes(server_factory):
    """Item 4: answers pile up for a client that never reads only up to the per-stream byte bound."""
    big = frame(640, 480)
    with (
        server_factory(max_stream_buffered_bytes=1 << 20, stream_idle_s=0) as running,
        channel_for(running) as channel,
    ):
        stub = pb_grpc.SegmenterStub(channel)
        sent = threading.Event()

        def requests():
            for i in range(300):
                yield raw_request(f"f{i}", big, mask_resolution=pb.MASK_RESOLUTION_FRAME)  # 300 KB answers
            sent.set()

        call = stub.StreamSegment(requests(), timeout=120)
        assert next(call).frame_id == "f0"  # then never read again
        assert wait_idle_frames(running)
        snapshot = state(running)
        assert snapshot["sessions"][0]["read"] < 300  # the reader stopped: flow control pushes back
        # each of the stream's 4 slots holds at most one answer, counted WRITE_COPIES times
        assert snapshot["bytes"] <= WRITE_COPIES * 4 * (640 * 480 + 64)
        call.cancel()
        assert wait_idle(running)


def wait_idle_frames(running) -> bool:
    from conftest import wait_until

    return wait_until(running, lambda s: bool(s["sessions"]) and s["frames"] == 0 and s["depth"] == 0)


def test_metric_labels_come_from_closed_sets(server_factory):
    """Item 5: unknown method names, authenticated or not, add no metric series."""
    with server_factory(token=TOKEN) as running, channel_for(running) as channel:
        for i in range(50):
            call = channel.unary_unary(f"/segmentation.v1.Segmenter/Nope{i}")
            with pytest.raises(grpc.RpcError):
                call(b"", timeout=30)
        for metric in running.service.metrics.registry.collect():
            for sample in metric.samples:
                assert sample.labels.get("method", "Segment") in METHODS | {"other"}
                assert sample.labels.get("code", "OK") in CODES


def test_metrics_listener_is_bounded_and_drops_idle_connections(server_factory):
    """Item 6: loopback by default, at most N connections, an idle one is closed by the server."""
    with server_factory(metrics_port=0, max_metrics_connections=4, metrics_idle_s=0.5) as running:
        port = running.metrics_port
        assert running.server.config.metrics_host == "127.0.0.1"
        idle = [socket.create_connection(("127.0.0.1", port), timeout=60) for _ in range(4)]
        extra = socket.create_connection(("127.0.0.1", port), timeout=60)
        assert extra.recv(1) == b""  # over the bound: closed at once
        for sock in idle:
            assert sock.recv(1) == b""  # idle past metrics_idle_s: closed by the server
            sock.close()
        with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
            sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            reply = b""
            while chunk := sock.recv(65536):
                reply += chunk
        assert reply.startswith(b"HTTP/1.1 200") and b"segserve_inflight_frames" in reply


def test_streams_that_never_send_are_closed_after_the_idle_limit(server_factory):
    """Item 7: streams that open and send nothing hold no slot past --stream-idle-s."""
    release = threading.Event()
    with server_factory(max_streams=2, stream_idle_s=0.5) as running, channel_for(running) as channel:
        stub = pb_grpc.SegmenterStub(channel)

        def silent():
            release.wait(120)
            return
            yield

        try:
            calls = [stub.StreamSegment(silent(), timeout=120) for _ in range(2)]
            for call in calls:
                with pytest.raises(grpc.RpcError) as err:
                    list(call)
                assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            answers = list(stub.StreamSegment(iter([raw_request("camera", IMAGE)]), timeout=30))
            assert [a.frame_id for a in answers] == ["camera"]  # a real camera gets a slot
        finally:
            release.set()


def test_get_model_info_refuses_garbage_request_bytes(server_factory):
    """Item 8."""
    with server_factory() as running, channel_for(running) as channel:
        call = channel.unary_unary("/segmentation.v1.Segmenter/GetModelInfo")
        with pytest.raises(grpc.RpcError) as err:
            call(b"\x0a\x05hello", timeout=30)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert pb_grpc.SegmenterStub(channel).GetModelInfo(pb.GetModelInfoRequest(), timeout=30).name


def test_latest_streams_closed_at_any_moment_never_hang(server_factory):
    """Item 9: a latest-policy stream that half-closes right after a frame replaced a stale one is
    answered in full, every time; nothing leaks."""
    with server_factory(max_batch=2) as running, channel_for(running) as channel:
        stub = pb_grpc.SegmenterStub(channel)
        for round_ in range(30):
            n = 2 + round_ % 5
            reqs = [raw_request(f"r{round_}-{i}", IMAGE, policy=pb.STREAM_POLICY_LATEST) for i in range(n)]
            answers = list(stub.StreamSegment(iter(reqs), timeout=60))
            assert [a.frame_id for a in answers] == [r.frame_id for r in reqs]
            assert not answers[-1].dropped  # the newest frame always runs
        assert wait_idle(running)


def test_deadline_is_checked_before_decoding(server_factory):
    """Item 2: a frame whose deadline passed is not decoded (the progressive bomb below the scan limit
    would cost seconds)."""
    with server_factory() as running:
        from segserve.errors import DeadlineExceeded
        from segserve.types import FrameRequest

        request = FrameRequest(
            "late", encoded=cv2.imencode(".jpg", IMAGE)[1].tobytes(), deadline=time.monotonic() - 1
        )
        with pytest.raises(DeadlineExceeded, match="before decoding"):
            running.call(running.service.pipeline.process(request))
        assert np.array_equal(running.service.batcher.stats.frames, 0)
