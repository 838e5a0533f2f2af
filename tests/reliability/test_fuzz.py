"""Fuzzing (hypothesis): the frame decoder, request validation and a live server.

More than 10,000 generated inputs in all, mutated from real JPEG/PNG/raw frames and random bytes.
Every input either works or fails with a documented error: InvalidFrame/FrameTooLarge from the
codec, InvalidFrame/InvalidOptions from validation, INVALID_ARGUMENT or RESOURCE_EXHAUSTED from the
server; never another exception, a crash or a hang.
"""

from __future__ import annotations

import contextlib
import queue
import struct
import threading

import cv2
import grpc
import numpy as np
import pytest
from conftest import channel_for, serve, wait_idle
from google.protobuf.message import DecodeError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from relutil import DOCUMENTED_FRAME_CODES, frame
from segserve import codec
from segserve._proto.segmentation.v1 import segmentation_pb2 as pb
from segserve._proto.segmentation.v1 import segmentation_pb2_grpc as pb_grpc
from segserve.codec import Limits
from segserve.edge import convert as protocol
from segserve.edge.segmentation import Malformed
from segserve.edge.segmentation import lenient as _lenient
from segserve.errors import FrameTooLarge, InvalidFrame, InvalidOptions
from segserve.types import PixelFormat, RawFrame

COUNTS: dict[str, int] = {}
FUZZ = settings(
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)
SMALL_LIMITS = Limits(max_frame_bytes=1 << 20, max_pixels=1024 * 1024, max_side=4096)


def _seeds() -> list[bytes]:
    seeds = []
    for w, h, seed in ((64, 48, 0), (17, 9, 1), (1, 1, 2), (128, 96, 3)):
        image = frame(w, h, seed)
        seeds.append(cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 80])[1].tobytes())
        seeds.append(cv2.imencode(".png", image)[1].tobytes())
    image = frame(64, 48, 4)
    seeds.append(cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])[1].tobytes())
    seeds.append(cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_BGR2GRAY))[1].tobytes())
    seeds.append(cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_BGR2GRAY))[1].tobytes())
    seeds.append(cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_BGR2BGRA))[1].tobytes())
    seeds.append(cv2.imencode(".png", image.astype(np.uint16) * 257)[1].tobytes())
    return seeds


SEEDS = _seeds()


def _size_offsets(data: bytes) -> list[int]:
    """Where the width/height fields are: a PNG's IHDR, a JPEG's start-of-frame."""
    if data.startswith(codec.PNG_MAGIC):
        return list(range(16, 24))
    i = data.find(b"\xff\xc0")
    if i < 0:
        i = data.find(b"\xff\xc2")
    return list(range(i + 5, i + 9)) if i >= 0 else [0]


@st.composite
def mutated_images(draw) -> bytes:
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(0, 5))):
        if not data:
            break
        op = draw(st.sampled_from(("flip", "set", "size", "size", "truncate", "insert", "delete", "dup")))
        i = draw(st.integers(0, len(data) - 1))
        if op == "flip":
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "set":
            data[i] = draw(st.integers(0, 255))
        elif op == "size":
            offsets = [o for o in _size_offsets(bytes(data)) if o < len(data)] or [0]
            data[draw(st.sampled_from(offsets))] = draw(st.sampled_from((0, 1, 0x7F, 0x80, 0xFF)))
        elif op == "truncate":
            del data[i:]
        elif op == "insert":
            data[i:i] = draw(st.binary(max_size=24))
        elif op == "delete":
            del data[i : i + draw(st.integers(1, 64))]
        else:
            data[i:i] = data[max(0, i - 64) : i]
    return bytes(data)


random_images = st.one_of(
    st.binary(max_size=256),
    st.binary(max_size=256).map(lambda b: codec.JPEG_MAGIC + b),
    st.binary(max_size=256).map(lambda b: codec.JPEG_MAGIC + b + b"\xff\xd9"),
    st.binary(max_size=256).map(lambda b: codec.PNG_MAGIC + b),
    st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1), st.binary(max_size=64)).map(
        lambda t: codec.PNG_MAGIC + struct.pack(">I4sII", 13, b"IHDR", t[0], t[1]) + t[2]
    ),
)
images = st.one_of(mutated_images(), mutated_images(), mutated_images(), random_images)


def _count(name: str) -> None:
    COUNTS[name] = COUNTS.get(name, 0) + 1


def _check_image(image) -> None:
    assert isinstance(image, np.ndarray) and image.dtype == np.uint8
    assert image.ndim == 3 and image.shape[2] == 3 and image.size > 0


@settings(FUZZ, max_examples=4000)
@given(data=images, reduced=st.booleans(), small=st.booleans())
def test_fuzz_decode_encoded(data, reduced, small):
    _count("decode_encoded")
    limits = SMALL_LIMITS if small else Limits()
    try:
        image = codec.decode_encoded(data, limits, (16, 12) if reduced else None)
    except (InvalidFrame, FrameTooLarge) as exc:
        assert str(exc)
        return
    _check_image(image)
    width, height = codec.encoded_size(data)  # the size the pipeline reports must be readable too
    assert width > 0 and height > 0


@settings(FUZZ, max_examples=1500)
@given(
    width=st.one_of(st.integers(0, 70), st.integers(0, 2**32 - 1)),
    height=st.one_of(st.integers(0, 70), st.integers(0, 2**32 - 1)),
    fmt=st.sampled_from(list(PixelFormat)),
    extra=st.one_of(st.just(0), st.integers(-10, 10)),
)
def test_fuzz_decode_raw(width, height, fmt, extra):
    _count("decode_raw")
    size = width * height * 3 + extra if width * height <= 70 * 70 else extra % 64
    data = bytes(max(0, size))
    try:
        image = codec.decode_raw(RawFrame(width, height, fmt, data), SMALL_LIMITS)
    except (InvalidFrame, FrameTooLarge):
        return
    _check_image(image)
    assert image.shape == (height, width, 3)


# mostly valid values (so that most requests get far enough to run), sometimes any int32
enum_values = st.one_of(*[st.integers(0, 2)] * 6, st.integers(3, 6), st.integers(-(2**31), 2**31 - 1))
frames_field = st.one_of(
    images.map(lambda b: ("encoded", b)),
    st.sampled_from(SEEDS).map(lambda b: ("encoded", b)),
    st.sampled_from(SEEDS).map(lambda b: ("encoded", b)),
    st.tuples(st.integers(0, 80), st.integers(0, 80), enum_values, st.sampled_from((0, 0, 0, -1, 1, -3))).map(
        lambda t: (
            "raw",
            pb.RawImage(width=t[0], height=t[1], format=t[2], data=bytes(max(0, t[0] * t[1] * 3 + t[3]))),
        )
    ),
    st.tuples(st.integers(0, 80), st.integers(0, 80), enum_values, st.integers(-5, 5)).map(
        lambda t: (
            "raw",
            pb.RawImage(width=t[0], height=t[1], format=t[2], data=bytes(max(0, t[0] * t[1] * 3 + t[3]))),
        )
    ),
    st.none(),
)
requests = st.builds(
    lambda fid, f, mask, res, overlay, alpha, quality, coverage, cap, policy: _request(
        fid, f, mask, res, overlay, alpha, quality, coverage, cap, policy
    ),
    st.text(max_size=40),
    frames_field,
    enum_values,
    enum_values,
    enum_values,
    st.one_of(st.none(), st.floats(0, 1, width=32), st.floats(width=32, allow_nan=True, allow_infinity=True)),
    st.one_of(st.none(), st.integers(1, 100), st.integers(0, 2**32 - 1)),
    st.booleans(),
    st.integers(-(2**63), 2**63 - 1),
    enum_values,
)

# requests that pass validation (the frame may still be corrupt): they reach decode, the batcher,
# postprocessing and every output encoder, at odd sizes such as 1x1 and 17x9
valid_requests = st.builds(
    lambda *a: _request(*a),
    st.text(max_size=12),
    st.one_of(
        st.sampled_from(SEEDS).map(lambda b: ("encoded", b)),
        mutated_images().map(lambda b: ("encoded", b)),
        st.tuples(st.integers(1, 40), st.integers(1, 40), st.sampled_from((1, 2))).map(
            lambda t: ("raw", pb.RawImage(width=t[0], height=t[1], format=t[2], data=bytes(t[0] * t[1] * 3)))
        ),
    ),
    st.integers(0, 4),
    st.integers(0, 2),
    st.integers(0, 3),
    st.one_of(st.none(), st.floats(0, 1, width=32)),
    st.one_of(st.none(), st.integers(1, 100)),
    st.booleans(),
    st.integers(0, 2**40),
    st.just(0),
)


def _request(fid, f, mask, res, overlay, alpha, quality, coverage, cap, policy) -> pb.SegmentRequest:
    msg = pb.SegmentRequest(frame_id=fid, capture_time_us=cap, stream_policy=policy)
    if f is not None:
        if f[0] == "encoded":
            msg.encoded = f[1]
        else:
            msg.raw.CopyFrom(f[1])
    o = msg.outputs
    o.mask, o.mask_resolution, o.overlay, o.coverage = mask, res, overlay, coverage
    if alpha is not None:
        o.overlay_alpha = alpha
    if quality is not None:
        o.overlay_jpeg_quality = quality
    return msg


@settings(FUZZ, max_examples=2500)
@given(msg=requests)
def test_fuzz_request_validation(msg):
    _count("request_from_proto")
    try:
        request = protocol.request_from_proto(msg)
        protocol.stream_policy(msg)
    except (InvalidFrame, InvalidOptions) as exc:
        assert str(exc)
        return
    assert (request.encoded is None) != (request.raw is None)
    assert 0.0 <= request.options.overlay_alpha <= 1.0 and 1 <= request.options.jpeg_quality <= 100


@settings(FUZZ, max_examples=1000)
@given(
    data=st.one_of(
        st.binary(max_size=200),
        requests.map(lambda m: m.SerializeToString()).flatmap(
            lambda b: st.integers(0, max(0, len(b) - 1)).map(
                lambda i: b[:i] + bytes([b[i] ^ 0x80]) + b[i + 1 :] if b else b
            )
        ),
    )
)
def test_fuzz_request_bytes(data):
    """Any bytes on the wire: the server's parser yields a message or ``Malformed``, never raises."""
    _count("request_bytes")
    parsed = _lenient(pb.SegmentRequest.FromString)(data)
    if isinstance(parsed, Malformed):
        with pytest.raises(DecodeError):
            pb.SegmentRequest.FromString(data)
        return
    with contextlib.suppress(InvalidFrame, InvalidOptions):
        protocol.request_from_proto(parsed)


@pytest.fixture(scope="module")
def fuzz_server(small_model):
    limits = Limits(max_frame_bytes=1 << 20, max_pixels=1024 * 1024, max_side=4096)
    with serve(small_model, limits=limits, max_inflight=64, max_inflight_per_stream=8) as running:
        yield running


class LiveStream:
    """One long StreamSegment call fed one request at a time."""

    def __init__(self, stub):
        self._in: queue.Queue = queue.Queue()
        self._call = stub.StreamSegment(iter(self._in.get, None), timeout=600)

    def ask(self, msg: pb.SegmentRequest) -> pb.SegmentResponse:
        self._in.put(msg)
        return next(self._call)

    def close(self):
        self._in.put(None)
        return list(self._call)


def test_fuzz_live_server(fuzz_server):
    """Generated requests through a live stream and as unary calls (and raw bytes, grpcurl-style)."""
    codes: dict[str, int] = {}
    with channel_for(fuzz_server) as channel:
        stub = pb_grpc.SegmenterStub(channel)
        raw_segment = channel.unary_unary("/segmentation.v1.Segmenter/Segment")
        stream = LiveStream(stub)
        lock = threading.Lock()

        @settings(FUZZ, max_examples=1500)
        @given(
            msg=st.one_of(requests, valid_requests), unary=st.integers(0, 9), mangle=st.binary(max_size=40)
        )
        def run(msg, unary, mangle):
            _count("live")
            msg.outputs.overlay = msg.outputs.overlay % 4 if msg.outputs.overlay > 3 else msg.outputs.overlay
            if unary == 0:
                try:
                    response = stub.Segment(msg, timeout=30)
                    code = "OK" if response.frame_id == msg.frame_id else "WRONG_ID"
                except grpc.RpcError as exc:
                    code = exc.code().name
            elif unary == 1:
                try:
                    raw_segment(mangle + msg.SerializeToString()[:64], timeout=30)
                    code = "OK"
                except grpc.RpcError as exc:
                    code = exc.code().name
            else:
                msg.stream_policy = 0
                response = stream.ask(msg)
                assert response.frame_id == msg.frame_id
                code = grpc.StatusCode.OK.name
                if response.HasField("error"):
                    code = next(s.name for s in grpc.StatusCode if s.value[0] == response.error.code)
            with lock:
                codes[code] = codes.get(code, 0) + 1
            assert code in DOCUMENTED_FRAME_CODES, code

        run()
        assert stream.close() == []
        health = stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=5)
        assert health.name == "toy"  # still serving
    assert wait_idle(fuzz_server)
    print("live fuzz status codes:", codes)


def test_fuzz_total_is_at_least_10000():
    """Runs last in this module: the generated inputs above add up."""
    total = sum(COUNTS.values())
    print("fuzz inputs:", COUNTS, "total", total)
    if len(COUNTS) < 5:
        pytest.skip("run the whole module to count")
    assert total >= 10_000, COUNTS
