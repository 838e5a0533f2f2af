"""JPEG decode on the GPU (nvImageCodec) against OpenCV's CPU decode: the pixels within JPEG tolerance,
and the masks the engine and a served replica give from them as the CPU path's."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import grpc
import numpy as np
import pytest
from segserve import codec
from segserve._proto.segmentation.v1 import segmentation_pb2 as pb
from segserve._proto.segmentation.v1 import segmentation_pb2_grpc as pb_grpc
from segserve.device_decode import DeviceDecoder, EncodedFrame, open_decoder
from segserve.engine import Engine, EngineConfig
from servers import RunningServer, start_server

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def decoder() -> DeviceDecoder:
    pytest.importorskip("nvidia.nvimgcodec", reason="nvImageCodec is not installed (carry its wheels)")
    decoder, reason = open_decoder("cuda", 0)
    assert decoder is not None, reason
    return decoder


def undefined_quant_table(data: bytes) -> bytes:
    """A JPEG whose header reads (size, sampling) but whose first component names a quantisation table
    that is not there: every libjpeg-based decoder stops at the start of decoding."""
    sof = data.index(b"\xff\xc0")
    bad = bytearray(data)
    bad[sof + 12] = 3  # after marker 2, length 2, precision 1, height 2, width 2, count 1, id 1, sampling 1
    return bytes(bad)


def cpu_decode(data: bytes) -> np.ndarray:
    """The CPU path's decode."""
    return codec.decode_encoded(data)


def test_device_decode_equals_cpu_decode_within_jpeg_tolerance(decoder, jpegs_1080p):
    import onnxruntime as ort

    batch = jpegs_1080p[:4]
    buffer = ort.OrtValue.ortvalue_from_shape_and_type([len(batch), 1080, 1920, 3], np.uint8, "cuda", 0)
    assert decoder.decode_into(batch, buffer.data_ptr(), (1080, 1920)) == [None] * len(batch)
    decoded = buffer.numpy()
    for i, data in enumerate(batch):
        diff = np.abs(decoded[i].astype(np.int16) - cpu_decode(data))
        # Decoders may round the inverse DCT and upsample chroma a little differently; a wrong channel
        # order, a shifted row or a stale buffer would be tens of levels off.
        assert diff.mean() < 1.0, f"frame {i}: mean difference {diff.mean():.2f}"
        assert np.mean(diff <= 4) >= 0.99, f"frame {i}: {np.mean(diff > 4):.2%} of samples off by > 4"


def test_engine_decodes_on_the_gpu_and_serves_the_cpu_paths_masks(shipped_model, jpegs_1080p):
    gpu = Engine(EngineConfig(shipped_model, providers="cuda", resize_in_graph=True, max_batch=4))
    cpu = Engine(EngineConfig(shipped_model, providers="cpu", resize_in_graph=True))
    assert gpu.decode_device == "cuda:0", gpu.decode_note
    frames = [EncodedFrame.from_jpeg(d) for d in jpegs_1080p[:4]]
    expected = cpu.run(np.stack([cpu_decode(d) for d in jpegs_1080p[:4]]))
    for _ in range(2):  # the second batch reuses the bound buffers
        result = gpu.run_encoded(frames)
        assert result.errors == [None] * 4
        assert float(np.mean(result.labels == expected)) >= 0.995
    assert gpu.binding_count == 1


def test_a_frame_the_gpu_cannot_decode_fails_alone(shipped_model, jpegs_1080p):
    gpu = Engine(EngineConfig(shipped_model, providers="cuda", resize_in_graph=True, max_batch=4))
    good = jpegs_1080p[0]
    bad = undefined_quant_table(good)
    result = gpu.run_encoded([EncodedFrame.from_jpeg(d) for d in (good, bad, good)])
    assert result.errors[0] is None and result.errors[2] is None and result.errors[1]
    assert np.array_equal(result.labels[0], result.labels[2])
    assert gpu.decoder is not None  # one bad frame does not turn device decode off


# --- a served replica: Segment through the pipeline and the batcher ------------------------------


@pytest.fixture(scope="module")
def gpu_server(shipped_model) -> Iterator[RunningServer]:
    pytest.importorskip("nvidia.nvimgcodec", reason="nvImageCodec is not installed (carry its wheels)")
    engine = {"providers": "cuda", "resize_in_graph": True, "device_decode": True}
    running = start_server(shipped_model, max_batch=4, engine=engine)
    yield running
    running.drain_and_stop(1.0)


@pytest.fixture(scope="module")
def cpu_server(shipped_model) -> Iterator[RunningServer]:
    running = start_server(shipped_model, max_batch=4, engine={"providers": "cpu", "resize_in_graph": True})
    yield running
    running.drain_and_stop(1.0)


def stub_of(running: RunningServer) -> tuple[grpc.Channel, pb_grpc.SegmenterStub]:
    limits = [("grpc.max_send_message_length", 64 << 20), ("grpc.max_receive_message_length", 64 << 20)]
    channel = grpc.insecure_channel(f"127.0.0.1:{running.port}", options=limits)
    return channel, pb_grpc.SegmenterStub(channel)


def segment(stub: pb_grpc.SegmenterStub, data: bytes, **outputs) -> pb.SegmentResponse:
    options = pb.OutputOptions(**{"mask": pb.MASK_ENCODING_RAW, **outputs})
    return stub.Segment(pb.SegmentRequest(frame_id="f", encoded=data, outputs=options), timeout=60)


def raw_mask(response: pb.SegmentResponse) -> np.ndarray:
    return np.frombuffer(response.mask.data, np.uint8).reshape(response.mask.height, response.mask.width)


def test_a_gpu_server_decodes_on_the_device_and_serves_the_cpu_paths_masks(
    gpu_server, cpu_server, jpegs_1080p
):
    channel, stub = stub_of(gpu_server)
    cpu_channel, cpu_stub = stub_of(cpu_server)
    with channel, cpu_channel:
        info = stub.GetModelInfo(pb.GetModelInfoRequest())
        assert info.decode_device == "cuda:0" and "nvImageCodec" in info.decode_note, info.decode_note
        assert gpu_server.service.pipeline.decodes_on_device
        for data in jpegs_1080p[:4]:
            got = segment(stub, data)
            # The CPU path's whole-frame decode (it decodes the whole frame for an overlay), then the
            # same in-graph resize on the CPU provider.
            want = segment(cpu_stub, data, overlay=pb.OVERLAY_ENCODING_JPEG)
            agree = float(np.mean(raw_mask(got) == raw_mask(want)))
            assert agree >= 0.995, f"masks agree on {agree:.2%} of pixels"
            assert got.timing.decode_us > 0 and got.timing.inference_us > 0
        overlay = segment(stub, jpegs_1080p[0], overlay=pb.OVERLAY_ENCODING_JPEG)  # host pixels: CPU decode
        assert (overlay.overlay.width, overlay.overlay.height) == (1920, 1080)
    assert gpu_server.service.engine.decoder is not None  # no library failure turned it off


def test_a_frame_the_gpu_cannot_decode_fails_alone_among_concurrent_callers(gpu_server, jpegs_1080p):
    good = jpegs_1080p[1]
    frames = [good, undefined_quant_table(good), good, good]
    results: list[object] = [None] * len(frames)
    barrier = threading.Barrier(len(frames))
    channel, stub = stub_of(gpu_server)

    def call(i: int) -> None:
        barrier.wait()
        try:
            results[i] = segment(stub, frames[i])
        except grpc.RpcError as exc:
            results[i] = exc

    with channel:
        threads = [threading.Thread(target=call, args=(i,)) for i in range(len(frames))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    bad = results[1]
    assert isinstance(bad, grpc.RpcError) and bad.code() == grpc.StatusCode.INVALID_ARGUMENT
    masks = [raw_mask(r) for i, r in enumerate(results) if i != 1]
    assert all(isinstance(r, pb.SegmentResponse) for i, r in enumerate(results) if i != 1)
    assert all(np.array_equal(m, masks[0]) for m in masks)
    assert gpu_server.service.engine.decoder is not None
