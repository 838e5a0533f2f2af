"""The Open Inference Protocol edge, driven by unchanged ``tritonclient.grpc`` code against a real
server on a free loopback port: health, metadata and config as perf_analyzer reads them, ``infer``
with encoded and raw frames (masks equal to ``Segment``'s), requests of several frames, 8 threads
of ``async_infer`` batched together, a 100-request stream with one corrupt frame, statistics,
errors, auth and draining."""

from __future__ import annotations

import asyncio
import json
import queue
import shutil
import subprocess
import threading

import cv2
import grpc
import numpy as np
import pytest
import tritonclient.grpc as tc
from frames import jpeg, png, street_frame
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase
from oiputil import MAX_BATCH, MODEL_HW, MODEL_NAME, segment_mask
from segserve.edge.server import TlsConfig
from servers import start_server
from tritonclient.utils import InferenceServerException

OIP_SERVICE = "inference.GRPCInferenceService"
H, W = MODEL_HW
JPEG_1080 = jpeg(street_frame(1920, 1080, seed=1))


def image_input(*encoded: bytes) -> tc.InferInput:
    tensor = tc.InferInput("IMAGE", [len(encoded), 1], "BYTES")
    tensor.set_data_from_numpy(np.array([[e] for e in encoded], dtype=np.object_))
    return tensor


def images_input(rgb: np.ndarray) -> tc.InferInput:
    tensor = tc.InferInput("images", list(rgb.shape), "UINT8")
    tensor.set_data_from_numpy(rgb)
    return tensor


def rgb_frames(n: int, seed: int = 0) -> np.ndarray:
    return np.stack(
        [
            cv2.cvtColor(cv2.resize(street_frame(640, 480, seed=seed + i), (W, H)), cv2.COLOR_BGR2RGB)
            for i in range(n)
        ]
    )


def timing(result: tc.InferResult) -> dict[str, int]:
    return {k: v.int64_param for k, v in result.get_response().parameters.items()}


def status_of(exc: InferenceServerException) -> str:
    return str(exc.status()).removeprefix("StatusCode.")


# --- health, metadata, config --------------------------------------------------------------------
def test_live_ready_and_server_metadata(client, url):
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready(MODEL_NAME) and client.is_model_ready(MODEL_NAME, "1")
    assert not client.is_model_ready("other") and not client.is_model_ready(MODEL_NAME, "7")
    meta = client.get_server_metadata(as_json=True)
    assert meta["name"] == "segserve"
    assert set(meta["extensions"]) == {"model_configuration", "statistics", "parameters"}
    with grpc.insecure_channel(url) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        status = health.Check(health_pb2.HealthCheckRequest(service=OIP_SERVICE)).status
        assert status == health_pb2.HealthCheckResponse.SERVING
        assert OIP_SERVICE in ProtoReflectionDescriptorDatabase(channel).get_services()


def test_model_metadata_and_config_as_perf_analyzer_reads_them(client):
    meta = client.get_model_metadata(MODEL_NAME, as_json=True)
    assert meta["name"] == MODEL_NAME and meta["versions"] == ["1"]
    shapes = {
        t["name"]: (t["datatype"], [int(d) for d in t["shape"]]) for t in meta["inputs"] + meta["outputs"]
    }
    assert shapes == {
        "IMAGE": ("BYTES", [-1, 1]),
        "images": ("UINT8", [-1, H, W, 3]),
        "labels": ("UINT8", [-1, H, W]),
        "overlay": ("BYTES", [-1, 1]),
        "coverage": ("FP32", [-1, 6]),
    }
    config = client.get_model_config(MODEL_NAME, as_json=True)["config"]
    assert config["name"] == MODEL_NAME and config["max_batch_size"] == MAX_BATCH
    assert int(config["dynamic_batching"]["max_queue_delay_microseconds"]) == 2000
    inputs = {i["name"]: i for i in config["input"]}
    assert inputs["IMAGE"]["data_type"] == "TYPE_STRING" and inputs["IMAGE"]["dims"] == ["1"]
    assert inputs["images"]["data_type"] == "TYPE_UINT8" and inputs["images"]["dims"] == [str(H), str(W), "3"]
    assert all(i["optional"] for i in config["input"])  # a request gives one of the two
    outputs = {o["name"]: (o["data_type"], [int(d) for d in o["dims"]]) for o in config["output"]}
    assert outputs == {
        "labels": ("TYPE_UINT8", [H, W]),
        "overlay": ("TYPE_STRING", [1]),
        "coverage": ("TYPE_FP32", [6]),
    }
    assert "model_transaction_policy" not in config  # perf_analyzer would read `decoupled` from it
    classes = json.loads(config["parameters"]["labels"]["string_value"])["classes"]
    assert [c["id"] for c in classes] == list(range(6))
    with pytest.raises(InferenceServerException) as err:
        client.get_model_config("other")
    assert status_of(err.value) == "NOT_FOUND"


# --- infer -----------------------------------------------------------------------------------------
def test_infer_jpeg_labels_equal_segment(client, segmenter):
    result = client.infer(MODEL_NAME, [image_input(JPEG_1080)], request_id="cam0-17")
    labels = result.as_numpy("labels")
    assert labels.dtype == np.uint8 and labels.shape == (1, H, W)
    assert result.get_response().id == "cam0-17" and result.get_response().model_name == MODEL_NAME
    assert result.as_numpy("overlay") is None and result.as_numpy("coverage") is None
    np.testing.assert_array_equal(labels[0], segment_mask(segmenter, encoded=JPEG_1080))
    t = timing(result)
    assert t["batch_size"] >= 1 and t["frames"] == 1
    assert t["total_us"] >= t["inference_us"] > 0 and t["decode_us"] > 0


def test_infer_raw_images_batch_equals_segment(client, segmenter):
    rgb = rgb_frames(3)
    result = client.infer(MODEL_NAME, [images_input(rgb)])
    labels = result.as_numpy("labels")
    assert labels.shape == (3, H, W)
    for i in range(3):
        np.testing.assert_array_equal(labels[i], segment_mask(segmenter, rgb=rgb[i]))
    assert timing(result)["frames"] == 3


def test_infer_several_encoded_frames_of_any_size(client, segmenter):
    frames = [jpeg(street_frame(320, 240, seed=5)), png(street_frame(200, 150, seed=6)), JPEG_1080]
    labels = client.infer(MODEL_NAME, [image_input(*frames)]).as_numpy("labels")
    for i, encoded in enumerate(frames):
        np.testing.assert_array_equal(labels[i], segment_mask(segmenter, encoded=encoded))


def test_overlay_and_coverage_on_request(client):
    outputs = [tc.InferRequestedOutput(name) for name in ("labels", "overlay", "coverage")]
    result = client.infer(MODEL_NAME, [image_input(JPEG_1080)], outputs=outputs)
    labels, overlay, coverage = (result.as_numpy(n) for n in ("labels", "overlay", "coverage"))
    assert overlay.shape == (1, 1) and coverage.shape == (1, 6) and coverage.dtype == np.float32
    image = cv2.imdecode(np.frombuffer(overlay[0, 0], np.uint8), cv2.IMREAD_COLOR)
    assert image.shape == (1080, 1920, 3)
    expected = np.bincount(labels[0].ravel(), minlength=6) / labels[0].size
    np.testing.assert_allclose(coverage[0], expected, atol=1e-6)
    only = client.infer(MODEL_NAME, [image_input(JPEG_1080)], outputs=[tc.InferRequestedOutput("coverage")])
    assert only.as_numpy("labels") is None and only.as_numpy("coverage").shape == (1, 6)
    # Without an overlay the frame is decoded straight to the model's size (a reduced JPEG scale), as
    # on segmentation.v1: compare with a plain request, not with the overlay request's labels.
    by_parameter = client.infer(MODEL_NAME, [image_input(JPEG_1080)], parameters={"coverage": True})
    plain = client.infer(MODEL_NAME, [image_input(JPEG_1080)]).as_numpy("labels")
    np.testing.assert_array_equal(by_parameter.as_numpy("labels"), plain)
    expected = np.bincount(plain[0].ravel(), minlength=6) / plain[0].size
    np.testing.assert_allclose(by_parameter.as_numpy("coverage")[0], expected, atol=1e-6)


@pytest.mark.parametrize(
    ("make_inputs", "status", "words"),
    [
        (lambda: [image_input(b"\xff\xd8 not really a jpeg")], "INVALID_ARGUMENT", ""),
        (lambda: [image_input(JPEG_1080), images_input(rgb_frames(1))], "INVALID_ARGUMENT", "exactly one"),
        (lambda: [images_input(np.zeros((1, H, W + 1, 3), np.uint8))], "INVALID_ARGUMENT", "input size"),
        (lambda: [image_input(*[JPEG_1080] * (MAX_BATCH + 1))], "INVALID_ARGUMENT", "max_batch_size"),
        (lambda: [tc.InferInput("IMAGE", [1, 1], "FP32").set_data_from_numpy(np.zeros((1, 1), np.float32))],
         "INVALID_ARGUMENT", "BYTES"),
    ],
)  # fmt: skip
def test_bad_requests_get_invalid_argument(client, make_inputs, status, words):
    with pytest.raises(InferenceServerException) as err:
        client.infer(MODEL_NAME, make_inputs())
    assert status_of(err.value) == status and words in err.value.message()


def test_unknown_model_malformed_message_and_unimplemented(client, url):
    with pytest.raises(InferenceServerException) as err:
        client.infer("not-served", [image_input(JPEG_1080)])
    assert status_of(err.value) == "NOT_FOUND" and "toy" in err.value.message()
    with grpc.insecure_channel(url) as channel:
        call = channel.unary_unary(f"/{OIP_SERVICE}/ModelInfer")
        with pytest.raises(grpc.RpcError) as rpc:
            call(b"\x0a\xff\xff\xff", timeout=30)
        assert rpc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(InferenceServerException) as err:
        client.get_model_repository_index()
    assert status_of(err.value) == "UNIMPLEMENTED"


# --- batching across callers -------------------------------------------------------------------------
class SubmissionBarrier:
    """Holds the batcher's submissions until ``parties`` frames are ready, then lets them in together,
    as 8 cameras firing at once would: the test's stand-in for timing, so batching is certain."""

    def __init__(self, service, parties: int):
        self.batcher = service.batcher
        self.original = self.batcher.infer
        self.parties = parties
        self.arrived = 0
        self.open: asyncio.Event | None = None

    async def __call__(self, *args, **kwargs):
        if self.open is None:
            self.open = asyncio.Event()
        self.arrived += 1
        if self.arrived >= self.parties:
            self.open.set()
        await self.open.wait()
        return await self.original(*args, **kwargs)

    def __enter__(self):
        self.batcher.infer = self
        return self

    def __exit__(self, *exc):
        self.batcher.infer = self.original


def test_async_infer_from_8_threads_is_batched(client, oip_server, segmenter):
    before = client.get_inference_statistics(MODEL_NAME, as_json=True)["model_stats"][0]
    encoded = [jpeg(street_frame(640, 360, seed=20 + i)) for i in range(8)]
    answers: queue.Queue = queue.Queue()
    start = threading.Barrier(8)

    def caller(i: int) -> None:
        start.wait()
        client.async_infer(
            MODEL_NAME,
            [image_input(encoded[i])],
            callback=lambda result, error, i=i: answers.put((i, result, error)),
            request_id=f"t{i}",
        )

    with SubmissionBarrier(oip_server.service, parties=8):
        threads = [threading.Thread(target=caller, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        got = [answers.get(timeout=120) for _ in range(8)]
        for t in threads:
            t.join()
    assert all(error is None for _, _, error in got), [str(e) for _, _, e in got if e]
    sizes = [timing(result)["batch_size"] for _, result, _ in got]
    assert max(sizes) > 1, sizes
    for i, result, _ in got:
        assert result.get_response().id == f"t{i}"
        np.testing.assert_array_equal(
            result.as_numpy("labels")[0], segment_mask(segmenter, encoded=encoded[i])
        )
    after = client.get_inference_statistics(MODEL_NAME, as_json=True)["model_stats"][0]
    batches = {int(b["batch_size"]) for b in after.get("batch_stats", [])}
    assert max(batches) > 1
    frames = int(after["inference_count"]) - int(before.get("inference_count", 0))
    runs = int(after["execution_count"]) - int(before.get("execution_count", 0))
    assert frames == 8 and runs < frames


# --- streaming -------------------------------------------------------------------------------------------
def test_stream_of_100_in_order_with_one_corrupt_frame(client, segmenter):
    corrupt = 37
    encoded = [jpeg(street_frame(320, 240, seed=100 + i), quality=80) for i in range(100)]
    encoded[corrupt] = encoded[corrupt][: len(encoded[corrupt]) // 3]  # a truncated JPEG
    answers: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    try:
        for i, frame in enumerate(encoded):
            client.async_stream_infer(MODEL_NAME, [image_input(frame)], request_id=f"f{i}")
        got = [answers.get(timeout=120) for _ in range(100)]
    finally:
        client.stop_stream()
    for i, (result, error) in enumerate(got):
        if i == corrupt:
            assert result is None and error is not None
            assert error.message().startswith(f"[request id: f{corrupt}] INVALID_ARGUMENT:")
            continue
        assert error is None, f"frame {i}: {error}"
        assert result.get_response().id == f"f{i}"  # in request order, ids echoed
    for i in (0, 36, 38, 99):
        np.testing.assert_array_equal(
            got[i][0].as_numpy("labels")[0], segment_mask(segmenter, encoded=encoded[i])
        )


def test_stream_bad_requests_answered_and_stream_goes_on(client):
    answers: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    try:
        client.async_stream_infer("not-served", [image_input(JPEG_1080)], request_id="a")
        client.async_stream_infer(
            MODEL_NAME, [images_input(np.zeros((1, 2, 2, 3), np.uint8))], request_id="b"
        )
        client.async_stream_infer(MODEL_NAME, [image_input(JPEG_1080, JPEG_1080)], request_id="c")
        got = [answers.get(timeout=120) for _ in range(3)]
    finally:
        client.stop_stream()
    assert got[0][1].message().startswith("[request id: a] NOT_FOUND:")
    assert got[1][1].message().startswith("[request id: b] INVALID_ARGUMENT:")
    result, error = got[2]
    assert error is None and result.get_response().id == "c" and result.as_numpy("labels").shape == (2, H, W)


# --- statistics and metrics ----------------------------------------------------------------------------
def test_inference_statistics_count_successes_and_failures(client, oip_server):
    def stats() -> dict:
        return client.get_inference_statistics(MODEL_NAME, as_json=True)["model_stats"][0]

    def count(s: dict, key: str) -> int:
        return int(s.get("inference_stats", {}).get(key, {}).get("count", 0))

    registry = oip_server.service.metrics.registry
    requests_before = registry.get_sample_value("segserve_requests_total", {"method": "ModelInfer"}) or 0
    before = stats()
    for _ in range(3):
        client.infer(MODEL_NAME, [image_input(JPEG_1080)])
    client.infer(MODEL_NAME, [images_input(rgb_frames(2))])
    with pytest.raises(InferenceServerException):
        client.infer(MODEL_NAME, [image_input(b"garbage")])
    after = stats()
    assert count(after, "success") - count(before, "success") == 4
    assert count(after, "fail") - count(before, "fail") == 1
    for key in ("queue", "compute_input", "compute_infer", "compute_output"):
        assert count(after, key) == count(after, "success")
    infer = after["inference_stats"]
    assert int(infer["compute_infer"]["ns"]) > 0 and int(infer["success"]["ns"]) >= int(
        infer["compute_infer"]["ns"]
    )
    assert int(after["inference_count"]) - int(before.get("inference_count", 0)) == 5
    assert int(after["last_inference"]) > 0
    assert client.get_inference_statistics(as_json=True)["model_stats"][0]["name"] == MODEL_NAME
    requests_after = registry.get_sample_value("segserve_requests_total", {"method": "ModelInfer"})
    assert requests_after - requests_before == 6  # frames: 3 + 2 + the bad one
    errors = registry.get_sample_value(
        "segserve_errors_total", {"method": "ModelInfer", "code": "INVALID_ARGUMENT"}
    )
    assert errors >= 1


# --- auth and draining -----------------------------------------------------------------------------------
def test_token_is_required_like_on_segmentation_v1(oip_model):
    running = start_server(oip_model, token="oip-t0ken")
    try:
        with tc.InferenceServerClient(f"127.0.0.1:{running.port}") as c:
            with pytest.raises(InferenceServerException) as err:
                c.infer(MODEL_NAME, [image_input(JPEG_1080)])
            assert status_of(err.value) == "UNAUTHENTICATED"
            result = c.infer(
                MODEL_NAME, [image_input(JPEG_1080)], headers={"authorization": "Bearer oip-t0ken"}
            )
            assert result.as_numpy("labels").shape == (1, H, W)
    finally:
        running.drain_and_stop(1.0)


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl CLI to make a certificate")
def test_tls_like_on_segmentation_v1(oip_model, tmp_path):
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", "server.key", "-out", "server.crt", "-days", "2", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
        cwd=tmp_path, check=True, capture_output=True,
    )  # fmt: skip
    tls = TlsConfig(tmp_path / "server.crt", tmp_path / "server.key")
    running = start_server(oip_model, tls=tls)
    try:
        url = f"localhost:{running.port}"
        with tc.InferenceServerClient(url, ssl=True, root_certificates=str(tmp_path / "server.crt")) as c:
            assert c.infer(MODEL_NAME, [image_input(JPEG_1080)]).as_numpy("labels").shape == (1, H, W)
        with tc.InferenceServerClient(url) as plain, pytest.raises(InferenceServerException) as err:
            plain.infer(MODEL_NAME, [image_input(JPEG_1080)], client_timeout=30)
        assert status_of(err.value) == "UNAVAILABLE"
    finally:
        running.drain_and_stop(1.0)


def test_not_ready_and_unavailable_while_draining(oip_model):
    running = start_server(oip_model)

    async def begin_drain() -> None:
        running.service.begin_drain()

    try:
        with tc.InferenceServerClient(f"127.0.0.1:{running.port}") as c:
            assert c.is_server_ready()
            running.call(begin_drain())
            assert c.is_server_live() and not c.is_server_ready() and not c.is_model_ready(MODEL_NAME)
            with pytest.raises(InferenceServerException) as err:
                c.infer(MODEL_NAME, [image_input(JPEG_1080)])
            assert status_of(err.value) == "UNAVAILABLE"
    finally:
        running.drain_and_stop(1.0)
