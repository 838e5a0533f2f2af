"""Faults: deadlines, cancellation, streams dropped mid-way, slow readers, shutdown mid-stream,
SIGTERM on a real `segserve serve` process. The engine is held at a gate the test opens, so every
step is synchronised with events, never with sleeps."""

from __future__ import annotations

import logging
import queue
import signal
import subprocess
import sys
import textwrap
import threading

import grpc
import pytest
from conftest import channel_for, state, wait_idle, wait_until
from grpc_health.v1 import health_pb2, health_pb2_grpc
from relutil import REPO, ServeProcess, frame, raw_request
from segserve._proto.segmentation.v1 import segmentation_pb2 as pb
from segserve._proto.segmentation.v1 import segmentation_pb2_grpc as pb_grpc

IMAGE = frame()


def test_deadline_passed_while_queued_is_not_run(server_factory):
    with server_factory(max_batch=1) as running, channel_for(running) as channel:
        stub = pb_grpc.SegmenterStub(channel)
        running.probe.gate.clear()
        blocker = stub.Segment.future(raw_request("blocker", IMAGE), timeout=60)
        assert running.probe.wait_entered(1)  # the blocker holds the engine
        with pytest.raises(grpc.RpcError) as err:
            stub.Segment(raw_request("late", IMAGE), timeout=0.2)
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        running.probe.gate.set()
        assert blocker.result().frame_id == "blocker"
        assert wait_idle(running)
        stats = running.service.batcher.stats
        assert running.probe.frames == 1  # "late" never ran
        assert stats.expired + stats.cancelled <= 1


def test_client_cancel_while_queued_is_not_run(server_factory):
    with server_factory(max_batch=1) as running, channel_for(running) as channel:
        stub = pb_grpc.SegmenterStub(channel)
        running.probe.gate.clear()
        blocker = stub.Segment.future(raw_request("blocker", IMAGE), timeout=60)
        assert running.probe.wait_entered(1)
        doomed = stub.Segment.future(raw_request("doomed", IMAGE), timeout=60)
        assert wait_until(running, lambda s: s["depth"] == 1)  # queued behind the blocker
        assert doomed.cancel()
        assert wait_until(running, lambda s: s["frames"] == 1)  # its slot is back before anything ran
        running.probe.gate.set()
        assert blocker.result().frame_id == "blocker"
        assert wait_idle(running)
        assert running.probe.frames == 1


def test_stream_cancelled_mid_way_releases_its_slots(server_factory):
    with (
        server_factory(max_batch=1, max_inflight=4, max_inflight_per_stream=4) as running,
        channel_for(running) as channel,
    ):
        stub = pb_grpc.SegmenterStub(channel)

        def forever():
            i = 0
            while True:
                yield raw_request(f"f{i}", IMAGE)
                i += 1

        call = stub.StreamSegment(forever(), timeout=60)
        got = [next(call) for _ in range(5)]
        assert [r.frame_id for r in got] == [f"f{i}" for i in range(5)]
        running.probe.gate.clear()
        assert wait_until(running, lambda s: s["frames"] > 0)  # frames in flight at the cancel
        call.cancel()
        running.probe.gate.set()
        assert wait_idle(running), state(running)
        # The server is whole: every slot is back, so a full burst is admitted.
        futures = [stub.Segment.future(raw_request(f"u{i}", IMAGE), timeout=30) for i in range(4)]
        assert [f.result().frame_id for f in futures] == [f"u{i}" for i in range(4)]


def test_client_process_killed_mid_stream_releases_its_slots(server_factory, tmp_path):
    """A client that vanishes (SIGKILL: no half-close, no RST_STREAM) frees its stream and slots."""
    with server_factory(max_batch=1, max_streams=1) as running:
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
            assert state(running)["streams"] == 1
        finally:
            proc.kill()
            proc.wait()
        assert wait_idle(running), state(running)
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

        call = stub.StreamSegment(reqs(), timeout=120)
        first = next(call)  # starts the call, then stop reading
        # The reader stops once 4 MiB of answers wait (13 of 300 KB) or 4 frames are in flight:
        # flow control then pushes back on the sender, so far fewer than n frames are read.
        assert wait_until(running, lambda s: s["sessions"] and s["frames"] == 0 and s["depth"] == 0)
        stalled = state(running)
        read_while_stalled = stalled["sessions"][0]["read"]
        assert read_while_stalled < n
        assert stalled["bytes"] <= 4 * 1024 * 1024 + 2 * 640 * 480 + 4 * 640 * 480 * 3
        # the stalled stream holds no global slot: other callers are served meanwhile
        assert stub.Segment(raw_request("other", IMAGE), timeout=30).frame_id == "other"
        rest = list(call)
        assert [r.frame_id for r in [first, *rest]] == [f"f{i}" for i in range(n)]
        assert all(len(r.mask.data) == 640 * 480 for r in rest)


def _stream_until_end(stub, sent, out, started: threading.Event, metadata=None):
    def reqs():
        i = 0
        while True:
            sent.append(f"f{i}")
            yield raw_request(f"f{i}", IMAGE)
            i += 1

    try:
        for r in stub.StreamSegment(reqs(), timeout=120, metadata=metadata):
            out.append(r)
            if len(out) == 5:
                started.set()
        out.append(grpc.StatusCode.OK)
    except grpc.RpcError as exc:
        out.append(exc.code())
    started.set()


def _ended_streams(records: list[logging.LogRecord]) -> list[logging.LogRecord]:
    return [r for r in records if getattr(r, "stream_read", None) is not None]


def test_shutdown_mid_stream_answers_every_accepted_frame(server_factory, caplog):
    caplog.set_level("INFO", logger="segserve.sessions")
    with server_factory(max_batch=2) as running, channel_for(running) as channel:
        stub = pb_grpc.SegmenterStub(channel)
        health = health_pb2_grpc.HealthStub(channel)
        runs = [([], [], threading.Event()) for _ in range(3)]
        threads = [threading.Thread(target=_stream_until_end, args=run) for run in [(stub, *r) for r in runs]]
        for t in threads:
            t.start()
        assert all(started.wait(60) for _, _, started in runs)
        running.probe.gate.clear()  # frames in flight at the drain
        in_flight = stub.Segment.future(raw_request("unary", IMAGE), timeout=60)
        # every stream holds its 4 per-stream slots at the gate, and the unary call holds one more
        assert wait_until(running, lambda s: s["frames"] == 3 * 4 + 1)
        drainer = threading.Thread(target=running.drain_and_stop, args=(30.0,))
        drainer.start()
        assert wait_until(running, lambda s: s["draining"])
        statuses: queue.Queue = queue.Queue()
        try:
            statuses.put(health.Check(health_pb2.HealthCheckRequest(), timeout=10).status)
        except grpc.RpcError as exc:
            statuses.put(exc.code())
        with pytest.raises(grpc.RpcError) as err:
            stub.Segment(raw_request("new", IMAGE), timeout=10)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        running.probe.gate.set()
        for t in threads:
            t.join(60)
        drainer.join(60)
        assert not drainer.is_alive()
        assert in_flight.result(timeout=60).frame_id == "unary"
        assert statuses.get() == health_pb2.HealthCheckResponse.NOT_SERVING  # probes see the drain
        for sent, out, _ in runs:
            *responses, status = out
            assert status == grpc.StatusCode.UNAVAILABLE
            ids = [r.frame_id for r in responses]
            assert ids == sent[: len(ids)]  # in order, no gap
            assert not any(r.HasField("error") or r.dropped for r in responses)  # answered with results
        # every frame the server read was answered (frames after the drain began were not read)
        ended = _ended_streams(caplog.records)
        assert len(ended) == 3
        assert all(r.stream_read == r.stream_answered for r in ended)
        assert sorted(r.stream_answered for r in ended) == sorted(len(o) - 1 for _, o, _ in runs)


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
            runs = [([], [], threading.Event()) for _ in range(4)]
            threads = [threading.Thread(target=_stream_until_end, args=(stub, *r)) for r in runs]
            for t in threads:
                t.start()
            assert all(started.wait(60) for _, _, started in runs)
            server.proc.send_signal(signal.SIGTERM)
            rc = server.proc.wait(60)
            for t in threads:
                t.join(10)
    finally:
        code = server.stop(signal.SIGKILL)
    assert rc == code == 0
    logs = server.json_logs()
    ended = [e for e in logs if "stream_read" in e]
    assert len(ended) == 4, server.stderr[-3000:]
    for sent, out, _ in runs:
        *responses, status = out
        assert status == grpc.StatusCode.UNAVAILABLE
        ids = [r.frame_id for r in responses]
        assert ids == sent[: len(ids)]
        assert not any(r.HasField("error") or r.dropped for r in responses)
    # every frame the server read was answered and the client got it
    read = sorted(e["stream_read"] for e in ended)
    answered = sorted(e["stream_answered"] for e in ended)
    assert read == answered == sorted(len(o) - 1 for _, o, _ in runs)
    assert any(e.get("drain") == "complete" for e in logs)
