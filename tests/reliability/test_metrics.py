"""The Prometheus endpoint serves every documented metric with live values; logs carry frame ids."""

from __future__ import annotations

import json
import logging
import threading
import urllib.request

import grpc
import pytest
from conftest import channel_for, serve
from relutil import frame, raw_request
from segserve._proto.segmentation.v1 import segmentation_pb2 as pb
from segserve._proto.segmentation.v1 import segmentation_pb2_grpc as pb_grpc
from segserve.logs import JsonFormatter

IMAGE = frame()

DOCUMENTED = (
    "segserve_requests_total",
    "segserve_errors_total",
    "segserve_frames_dropped_total",
    "segserve_request_seconds_bucket",
    "segserve_stage_seconds_bucket",
    "segserve_batch_size_bucket",
    "segserve_inflight_frames",
    "segserve_queue_depth",
    "segserve_active_streams",
)


def _scrape(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return values


def test_metrics_endpoint_serves_the_documented_metrics(small_model):
    with (
        serve(small_model, metrics_port=0, max_batch=1) as running,
        channel_for(running) as channel,
    ):
        stub = pb_grpc.SegmenterStub(channel)
        stub.Segment(raw_request("ok", IMAGE), timeout=5)
        with pytest.raises(grpc.RpcError):
            stub.Segment(pb.SegmentRequest(frame_id="bad", encoded=b"not an image"), timeout=5)

        def fast_latest():
            for i in range(30):
                yield raw_request(f"l{i}", IMAGE, policy=pb.STREAM_POLICY_LATEST if i == 0 else None)
                if i == 0:
                    running.probe.gate.clear()  # the engine holds: the next frames replace each other
            latest_sent.set()

        latest_sent = threading.Event()
        gate_open = threading.Event()

        def held():
            yield raw_request("h", IMAGE)
            gate_open.wait(60)

        holder = stub.StreamSegment(held(), timeout=20)
        next(holder)
        opener = threading.Thread(target=lambda: latest_sent.wait(60) and running.probe.gate.set())
        opener.start()
        dropped = sum(r.dropped for r in stub.StreamSegment(fast_latest(), timeout=60))
        opener.join(60)
        assert dropped > 0
        values = _scrape(running.metrics_port)
        gate_open.set()
        list(holder)
    for name in DOCUMENTED:
        assert any(key.startswith(name) for key in values), name
    assert values['segserve_requests_total{method="Segment"}'] == 2
    assert values['segserve_requests_total{method="StreamSegment"}'] == 31
    assert values['segserve_errors_total{code="INVALID_ARGUMENT",method="Segment"}'] == 1
    assert values["segserve_frames_dropped_total"] == dropped
    assert values['segserve_request_seconds_count{method="Segment"}'] == 1
    assert values['segserve_stage_seconds_count{stage="queue"}'] == 1 + 31 - dropped
    assert values["segserve_batch_size_count"] >= 1 + 31 - dropped
    assert values["segserve_active_streams"] == 1  # the held stream
    assert values["segserve_inflight_frames"] == 0 and values["segserve_queue_depth"] == 0


def test_json_logs_carry_frame_id_and_code_and_cut_long_ids(shared_server, caplog):
    caplog.set_level(logging.INFO, logger="segserve.service")
    with channel_for(shared_server) as channel:
        stub = pb_grpc.SegmenterStub(channel)
        with pytest.raises(grpc.RpcError):
            stub.Segment(pb.SegmentRequest(frame_id="cam1-42", encoded=b"\xff\xd8\xffjunk"), timeout=5)
        with pytest.raises(grpc.RpcError):
            stub.Segment(pb.SegmentRequest(frame_id="x" * 100_000, encoded=b"junk"), timeout=5)
    records = [r for r in caplog.records if r.getMessage().startswith("frame refused")]
    entries = [json.loads(JsonFormatter().format(r)) for r in records]
    assert entries[0]["frame_id"] == "cam1-42" and entries[0]["code"] == "INVALID_ARGUMENT"
    assert entries[0]["method"] == "Segment"
    assert all(len(JsonFormatter().format(r)) < 2000 for r in records)
