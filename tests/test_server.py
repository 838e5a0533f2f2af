"""End-to-end: a real server on a free loopback port, called through the generated stub."""

import threading

import cv2
import grpc
import numpy as np
import pytest
from frames import jpeg, png, street_frame
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase
from modelgen import float_logits_model
from segserve._proto.segmentation.v1 import segmentation_pb2 as pb
from segserve._proto.segmentation.v1 import segmentation_pb2_grpc as pb_grpc
from segserve.client import SegmenterClient
from servers import start_server

FRAME_1080 = street_frame(1920, 1080)
JPEG_1080 = jpeg(FRAME_1080)


@pytest.fixture(scope="module")
def channel(target):
    limits = [("grpc.max_send_message_length", 128 << 20), ("grpc.max_receive_message_length", 128 << 20)]
    with grpc.insecure_channel(target, options=limits) as ch:
        yield ch


@pytest.fixture(scope="module")
def stub(channel):
    return pb_grpc.SegmenterStub(channel)


def full_outputs(**kw) -> pb.OutputOptions:
    return pb.OutputOptions(mask=pb.MASK_ENCODING_PNG, overlay=pb.OVERLAY_ENCODING_JPEG, coverage=True, **kw)


def test_health_reflection_and_model_info(channel, stub):
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", "segmentation.v1.Segmenter"):
        status = health.Check(health_pb2.HealthCheckRequest(service=service)).status
        assert status == health_pb2.HealthCheckResponse.SERVING
    services = ProtoReflectionDescriptorDatabase(channel).get_services()
    assert "segmentation.v1.Segmenter" in services and "grpc.health.v1.Health" in services
    info = stub.GetModelInfo(pb.GetModelInfoRequest())
    assert (info.input_width, info.input_height) == (128, 96)
    assert [c.id for c in info.classes] == list(range(6)) and all(len(c.color_rgb) == 3 for c in info.classes)
    assert info.providers[-1] == "CPUExecutionProvider" and info.max_batch == 8 and info.dynamic_batch


def test_segment_1080p_jpeg(stub):
    response = stub.Segment(pb.SegmentRequest(frame_id="cam0-17", encoded=JPEG_1080, outputs=full_outputs()))
    assert response.frame_id == "cam0-17" and response.model == "toy@1"
    mask = cv2.imdecode(np.frombuffer(response.mask.data, np.uint8), cv2.IMREAD_UNCHANGED)
    assert mask.shape == (1080, 1920) and (response.mask.width, response.mask.height) == (1920, 1080)
    assert mask.max() < 6
    overlay = cv2.imdecode(np.frombuffer(response.overlay.data, np.uint8), cv2.IMREAD_COLOR)
    assert overlay.shape == (1080, 1920, 3)
    assert abs(sum(c.fraction for c in response.coverage) - 1) < 1e-4
    t = response.timing
    assert t.batch_size >= 1 and t.total_us > 0 and t.decode_us > 0 and t.encode_us > 0


def test_stream_of_100_in_order_with_one_corrupt_frame(stub):
    good = jpeg(street_frame(640, 360, seed=3))

    def requests():
        for i in range(100):
            data = good[: len(good) // 2] if i == 50 else good
            yield pb.SegmentRequest(
                frame_id=f"f{i}", encoded=data, outputs=pb.OutputOptions(mask=pb.MASK_ENCODING_RAW)
            )

    responses = list(stub.StreamSegment(requests()))
    assert [r.frame_id for r in responses] == [f"f{i}" for i in range(100)]
    assert (
        responses[50].HasField("error")
        and responses[50].error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    )
    assert "truncated or corrupt JPEG" in responses[50].error.message
    ok = [r for i, r in enumerate(responses) if i != 50]
    assert all(not r.HasField("error") and len(r.mask.data) == 640 * 360 for r in ok)


BAD_REQUESTS = {
    "empty bytes": (pb.SegmentRequest(encoded=b""), grpc.StatusCode.INVALID_ARGUMENT, "empty frame"),
    "no frame": (pb.SegmentRequest(), grpc.StatusCode.INVALID_ARGUMENT, "no frame"),
    "truncated jpeg": (
        pb.SegmentRequest(encoded=JPEG_1080[:5000]),
        grpc.StatusCode.INVALID_ARGUMENT,
        "truncated",
    ),
    "random bytes": (
        pb.SegmentRequest(encoded=np.random.default_rng(0).bytes(5000)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "neither JPEG nor PNG",
    ),
    "corrupt png": (
        pb.SegmentRequest(encoded=png(street_frame(64, 48))[:-100]),
        grpc.StatusCode.INVALID_ARGUMENT,
        "corrupt PNG",
    ),
    "raw size mismatch": (
        pb.SegmentRequest(
            raw=pb.RawImage(width=640, height=480, format=pb.PIXEL_FORMAT_BGR8, data=b"\x00" * 1000)
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "1000 bytes but 640x480x3 needs 921600",
    ),
    "zero size": (
        pb.SegmentRequest(raw=pb.RawImage(width=0, height=480, format=pb.PIXEL_FORMAT_BGR8)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "zero size",
    ),
    "enormous size": (
        pb.SegmentRequest(
            raw=pb.RawImage(width=1_000_000, height=1_000_000, format=pb.PIXEL_FORMAT_BGR8, data=b"x")
        ),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "over the limit",
    ),
    "no pixel format": (
        pb.SegmentRequest(raw=pb.RawImage(width=2, height=2, data=b"\x00" * 12)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "unknown raw.format value 0",
    ),
    "unknown mask enum": (
        pb.SegmentRequest(encoded=JPEG_1080, outputs=pb.OutputOptions(mask=42)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "unknown outputs.mask value 42",
    ),
    "unknown overlay enum": (
        pb.SegmentRequest(encoded=JPEG_1080, outputs=pb.OutputOptions(overlay=9)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "unknown outputs.overlay value 9",
    ),
    "alpha out of range": (
        pb.SegmentRequest(encoded=JPEG_1080, outputs=pb.OutputOptions(overlay_alpha=1.5)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "overlay_alpha",
    ),
}


@pytest.mark.parametrize("name", BAD_REQUESTS)
def test_bad_input_gets_a_clear_status_and_the_server_stays_healthy(stub, channel, name):
    request, code, message = BAD_REQUESTS[name]
    with pytest.raises(grpc.RpcError) as err:
        stub.Segment(request, timeout=10)
    assert err.value.code() == code
    assert message in err.value.details()
    assert stub.Segment(pb.SegmentRequest(encoded=JPEG_1080), timeout=10).mask.width == 1920
    health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert health.status == health_pb2.HealthCheckResponse.SERVING


def test_message_over_the_limit_is_refused_by_size(toy_model):
    running = start_server(toy_model, max_message_bytes=1 << 20)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as ch:
            stub = pb_grpc.SegmenterStub(ch)
            with pytest.raises(grpc.RpcError) as err:
                stub.Segment(pb.SegmentRequest(encoded=b"\xff\xd8\xff" + b"\x00" * (2 << 20)), timeout=10)
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "larger than max" in err.value.details()
            assert (
                stub.Segment(pb.SegmentRequest(encoded=jpeg(street_frame(320, 240))), timeout=10).mask.width
                == 320
            )
    finally:
        running.drain_and_stop(1)


def test_4k_raw_frame_fits(stub):
    frame = street_frame(3840, 2160)
    raw = pb.RawImage(width=3840, height=2160, format=pb.PIXEL_FORMAT_BGR8, data=frame.tobytes())
    response = stub.Segment(
        pb.SegmentRequest(raw=raw, outputs=pb.OutputOptions(mask=pb.MASK_ENCODING_RAW)), timeout=30
    )
    assert len(response.mask.data) == 3840 * 2160


def test_concurrent_callers_are_batched_and_masks_equal_single_runs(target):
    frames = [street_frame(640, 360, seed=s) for s in range(8)]
    with SegmenterClient(target) as client:
        singles = [client.segment(f).mask for f in frames]
        results: list = [None] * 64
        barrier = threading.Barrier(8)

        def caller(k: int) -> None:
            barrier.wait()
            for j in range(8):
                results[k * 8 + j] = client.segment(frames[(k + j) % 8])

        threads = [threading.Thread(target=caller, args=(k,)) for k in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    assert max(r.timing.batch_size for r in results) > 1
    for k in range(8):
        for j in range(8):
            assert np.array_equal(results[k * 8 + j].mask, singles[(k + j) % 8])


def test_float_logits_model_is_wrapped_and_matches_numpy(tmp_path):
    import onnx
    import onnxruntime as ort
    from segserve.graph import IMAGENET_MEAN, IMAGENET_STD

    raw = float_logits_model(num_classes=9, height=72, width=96, stride=1, seed=5)
    path = tmp_path / "byo.onnx"
    onnx.save(raw, str(path))
    running = start_server(path)
    frame = street_frame(96, 72, seed=9)  # at model size: no resize, the comparison is exact
    try:
        with SegmenterClient(f"127.0.0.1:{running.port}") as client:
            info = client.model_info()
            mask = client.segment(frame).mask
    finally:
        running.drain_and_stop(1)
    rgb = frame[..., ::-1].astype(np.float32)
    x = ((rgb - np.array(IMAGENET_MEAN, np.float32)) / np.array(IMAGENET_STD, np.float32)).transpose(2, 0, 1)[
        None
    ]
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    expected = session.run(None, {"input": np.ascontiguousarray(x)})[0].argmax(1)[0]
    assert info.input_size == (96, 72) and len(info.labels) == 9
    assert np.mean(mask == expected) > 0.999
