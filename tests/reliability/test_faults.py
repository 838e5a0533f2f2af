"""Faults: deadlines, cancellation, streams dropped mid-way, slow readers, shutdown mid-stream,
SIGTERM on a real `segserve serve` process."""

from __future__ import annotations

import queue
import signal
import subprocess
import sys
import textwrap
import threading
import time

import grpc
import pytest
from conftest import channel_for, wait_for
from grpc_health.v1 import health_pb2, health_pb2_grpc
from relutil import REPO, ServeProcess, frame, raw_request
from segserve._proto.segmentation.v1 import segmentation_pb2 as pb
from segserve._proto.segmentation.v1 import segmentation_pb2_grpc as pb_grpc

IMAGE = frame()


def _idle(running) -> bool:
    s = running.service
    return s.admission.in_use == 0 and s.streams.in_use == 0 and not s._sessions and s.batcher.depth == 0


def test_deadline_passed_while_queued_is_not_run(server_factory):
    with server_factory(max_batch=1, per_batch_s=0.3) as running, channel_for(running) as channel:
        stub = pb_grpc.SegmenterStub(channel)
        blocker = stub.Segment.future(raw_request("blocker", IMAGE), timeout=10)
        time.sleep(0.05)  # the blocker is in the engine
        with pytest.raises(grpc.RpcError) as err:
            stub.Segment(raw_request("late", IMAGE), timeout=0.1)
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert blocker.result().frame_id == "blocker"
        assert wait_for(lambda: _idle(running))
        time.sleep(0.4)
        stats = running.service.batcher.stats
        assert running.probe.frames == 1  # "late" never ran
        assert stats.expired + stats.cancelled == 1


def test_client_cancel_while_queued_is_not_run(server_factory):
    with server_factory(max_batch=1, per_batch_s=0.3) as running, channel_for(running) as channel:
        stub = pb_grpc.SegmenterStub(channel)
        blocker = stub.Segment.future(raw_request("blocker", IMAGE), timeout=10)
        time.sleep(0.05)
        doomed = stub.Segment.future(raw_request("doomed", IMAGE), timeout=10)
        time.sleep(0.05)
        assert doomed.cancel()
        assert blocker.result().frame_id == "blocker"
        assert wait_for(lambda: _idle(running))
        time.sleep(0.4)
        assert running.probe.frames == 1
        assert running.service.batcher.stats.cancelled == 1


def test_stream_cancelled_mid_way_releases_its_slots(server_factory):
    with (
        server_factory(max_batch=1, per_batch_s=0.02, max_inflight=4, max_inflight_per_stream=4) as running,
        channel_for(running) as channel,
    ):
        stub = pb_grpc.SegmenterStub(channel)

        def forever():
            i = 0
            while True:
                yield raw_request(f"f{i}", IMAGE)
                i += 1

        call = stub.StreamSegment(forever(), timeout=30)
        got = [next(call) for _ in range(5)]
        assert [r.frame_id for r in got] == [f"f{i}" for i in range(5)]
        assert running.service.admission.in_use > 0  # frames in flight at the moment of the cancel
        call.cancel()
        assert wait_for(lambda: _idle(running), 5), vars(running.service.admission)
        # The server is whole: every slot is back, so a full burst is admitted.
        futures = [stub.Segment.future(raw_request(f"u{i}", IMAGE), timeout=10) for i in range(4)]
        assert [f.result().frame_id for f in futures] == [f"u{i}" for i in range(4)]


def test_client_process_killed_mid_stream_releases_its_slots(server_factory, tmp_path):
    """A client that vanishes (SIGKILL: no half-close, no RST_STREAM) frees its stream and slots."""
    with server_factory(max_batch=1, per_batch_s=0.02, max_streams=1) as running:
        script = tmp_path / "client.py"
        script.write_text(
            textwrap.dedent(
                f"""
                import sys, grpc
                sys.path.insert(0, {str(REPO / "tests" / "reliability")!r})
                from relutil import frame, raw_request
                from segserve._proto.segmentation.v1 import segmentation_pb2_grpc as pb_grpc
                image = frame()
                def forever():
                    i = 0
                    while True:
                        yield raw_request(f"f{{i}}", image)
                        i += 1
                stub = pb_grpc.SegmenterStub(grpc.insecure_channel("127.0.0.1:{running.port}"))
                for i, r in enumerate(stub.StreamSegment(forever())):
                    if i == 3:
                        print("streaming", flush=True)
                """
            )
        )
        proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
        try:
            assert proc.stdout.readline().strip() == "streaming"
            assert running.service.streams.in_use == 1
        finally:
            proc.kill()
            proc.wait()
        assert wait_for(lambda: _idle(running), 10)
        with channel_for(running) as channel:  # the one stream allowed is free again
            stub = pb_grpc.SegmenterStub(channel)
            responses = list(stub.StreamSegment(iter([raw_request("after", IMAGE)]), timeout=10))
            assert [r.frame_id for r in responses] == ["after"]


def test_slow_reader_is_bounded_and_then_fully_answered(server_factory):
    """A client that sends fast but does not read: the server stops reading its frames (slots are
    held until responses are written), memory stays bounded; once it reads, every frame arrives."""
    big = frame(640, 480)
    with server_factory(max_batch=4, max_inflight_per_stream=4) as running, channel_for(running) as channel:
        stub = pb_grpc.SegmenterStub(channel)
        n = 400
        sent = []

        def reqs():
            for i in range(n):
                sent.append(i)
                yield raw_request(f"f{i}", big, mask_resolution=pb.MASK_RESOLUTION_FRAME)  # 300 KB answers

        call = stub.StreamSegment(reqs(), timeout=60)
        first = next(call)  # starts the call, then stop reading
        time.sleep(1.5)
        sessions = list(running.service._sessions)
        assert len(sessions) == 1
        session = sessions[0]
        read_while_stalled = session.read_count
        assert read_while_stalled < n  # the reader stopped: flow control pushes back on the sender
        assert session.unwritten <= 64 and running.service.admission.in_use <= 4
        # the stalled stream holds no global slot: other callers are served meanwhile
        assert stub.Segment(raw_request("other", IMAGE), timeout=5).frame_id == "other"
        assert running.service.admission.in_use == 0
        rest = list(call)
        assert [r.frame_id for r in [first, *rest]] == [f"f{i}" for i in range(n)]
        assert all(len(r.mask.data) == 640 * 480 for r in rest)


def _stream_until_end(stub, sent, out, interval, metadata=None):
    def reqs():
        i = 0
        while True:
            sent.append(f"f{i}")
            yield raw_request(f"f{i}", IMAGE)
            i += 1
            time.sleep(interval)

    try:
        for r in stub.StreamSegment(reqs(), timeout=60, metadata=metadata):
            out.append(r)
        out.append(grpc.StatusCode.OK)
    except grpc.RpcError as exc:
        out.append(exc.code())


def test_shutdown_mid_stream_answers_every_accepted_frame(server_factory, caplog):
    caplog.set_level("INFO", logger="segserve.streams")
    with server_factory(max_batch=2, per_batch_s=0.01) as running, channel_for(running) as channel:
        stub = pb_grpc.SegmenterStub(channel)
        health = health_pb2_grpc.HealthStub(channel)
        runs = [([], []) for _ in range(3)]
        threads = [threading.Thread(target=_stream_until_end, args=(stub, s, o, 0.005)) for s, o in runs]
        for t in threads:
            t.start()
        assert wait_for(lambda: all(len(o) > 5 for _, o in runs), 10)
        # a slow, long frame in flight at the drain (a unary call) is answered too
        running.probe.per_batch_s = 0.05
        in_flight = stub.Segment.future(raw_request("unary", IMAGE), timeout=10)
        assert wait_for(lambda: running.service.metrics.requests.labels("Segment")._value.get() == 1)
        statuses: queue.Queue = queue.Queue()
        drainer = threading.Thread(target=running.drain_and_stop, args=(5.0,))
        drainer.start()
        assert wait_for(running.service.draining.is_set)
        try:
            statuses.put(health.Check(health_pb2.HealthCheckRequest(), timeout=1).status)
        except grpc.RpcError as exc:
            statuses.put(exc.code())
        with pytest.raises(grpc.RpcError) as err:
            stub.Segment(raw_request("new", IMAGE), timeout=5)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        for t in threads:
            t.join(10)
        drainer.join(10)
        assert not drainer.is_alive()
        assert in_flight.result().frame_id == "unary"
        assert statuses.get() == health_pb2.HealthCheckResponse.NOT_SERVING  # probes see the drain
        for sent, out in runs:
            *responses, status = out
            assert status == grpc.StatusCode.UNAVAILABLE
            ids = [r.frame_id for r in responses]
            assert ids == sent[: len(ids)]  # in order, no gap
            assert not any(r.HasField("error") or r.dropped for r in responses)  # answered with results
        # every frame the server read was answered (frames after the drain began were not read)
        ended = [r.getMessage().split() for r in caplog.records if r.getMessage().startswith("stream ended")]
        assert len(ended) == 3
        assert sorted(int(e[2]) for e in ended) == sorted(int(e[5]) for e in ended)
        assert sorted(int(e[5]) for e in ended) == sorted(len(o) - 1 for _, o in runs)


def test_sigterm_during_4_streams_answers_every_accepted_frame_and_exits_0(small_model, tmp_path):
    grace = 5.0
    server = ServeProcess(
        small_model,
        "--grace-s",
        str(grace),
        "--log-format",
        "json",
        "--max-batch",
        "4",
        "--intra-op-threads",
        "1",
        log_path=tmp_path / "serve.log",
    )
    try:
        with grpc.insecure_channel(server.address) as channel:
            stub = pb_grpc.SegmenterStub(channel)
            runs = [([], []) for _ in range(4)]
            threads = [threading.Thread(target=_stream_until_end, args=(stub, s, o, 0.002)) for s, o in runs]
            for t in threads:
                t.start()
            assert wait_for(lambda: all(len(o) > 20 for _, o in runs), 20)
            t0 = time.monotonic()
            server.proc.send_signal(signal.SIGTERM)
            rc = server.proc.wait(grace + 5)
            elapsed = time.monotonic() - t0
            for t in threads:
                t.join(10)
    finally:
        code = server.stop(signal.SIGKILL)
    assert rc == code == 0
    assert elapsed < grace
    logs = server.json_logs()
    ended = [e for e in logs if e["msg"].startswith("stream ended")]
    assert len(ended) == 4, server.stderr[-3000:]
    for sent, out in runs:
        *responses, status = out
        assert status == grpc.StatusCode.UNAVAILABLE
        ids = [r.frame_id for r in responses]
        assert ids == sent[: len(ids)]
        assert not any(r.HasField("error") or r.dropped for r in responses)
    # every frame the server read was answered and the client got it
    read = sorted(int(e["msg"].split()[2]) for e in ended)
    answered = sorted(int(e["msg"].split()[5]) for e in ended)
    assert read == answered == sorted(len(o) - 1 for _, o in runs)
    assert any(e["msg"].startswith("drain complete") for e in logs)
