"""Device JPEG decode without a GPU: the CPU fallback, and the whole device path (decode straight into
the engine's bound input, then the in-graph resize) run on nvImageCodec's CPU backend feeding a CPU
engine. The GPU backend itself is tested in tests/gpu."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path

import cv2
import grpc
import numpy as np
import pytest
from frames import jpeg, png, street_frame
from segserve import codec
from segserve._proto.segmentation.v1 import segmentation_pb2 as pb
from segserve._proto.segmentation.v1 import segmentation_pb2_grpc as pb_grpc
from segserve.client import SegmenterClient
from segserve.codec import Limits
from segserve.device_decode import DeviceDecoder, EncodedFrame, batch_key, decode_on_cpu, open_decoder
from segserve.engine import Engine, EngineConfig
from segserve.errors import FrameTooLarge, InvalidFrame, ModelError
from servers import RunningServer, start_server

CAMVID = sorted((Path(__file__).parent / "fixtures" / "camvid").glob("*/images/*.jpg"))


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


@pytest.fixture(scope="module")
def camvid_jpegs() -> list[bytes]:
    assert len(CAMVID) >= 4, "the CamVid fixture frames are missing"
    return [p.read_bytes() for p in CAMVID[:4]]


@pytest.fixture(scope="module")
def cpu_backend() -> DeviceDecoder:
    pytest.importorskip("nvidia.nvimgcodec", reason="nvImageCodec (nvidia-nvimgcodec-cu13) not installed")
    return DeviceDecoder(memory="cpu")


def test_encoded_frame_takes_its_shape_from_the_header(camvid_jpegs):
    frame = EncodedFrame.from_jpeg(camvid_jpegs[0])
    assert frame.shape == (*cpu_decode(camvid_jpegs[0]).shape[:2], 3)
    with pytest.raises(InvalidFrame, match="JPEG"):
        EncodedFrame.from_jpeg(b"\xff\xd8\xff\x00 not a jpeg")
    with pytest.raises(InvalidFrame, match="not a JPEG"):
        EncodedFrame.from_jpeg(b"\x89PNG\r\n\x1a\n")
    with pytest.raises(InvalidFrame, match="no end-of-image marker"):
        EncodedFrame.from_jpeg(camvid_jpegs[0][:-200])
    with pytest.raises(FrameTooLarge, match="over the limit"):
        EncodedFrame.from_jpeg(camvid_jpegs[0], Limits(max_pixels=1000))


def test_cpu_fallback_decodes_a_batch_and_names_the_bad_frame(camvid_jpegs):
    good = camvid_jpegs[0]
    hw = cpu_decode(good).shape[:2]
    batch, errors = decode_on_cpu([good, good[: len(good) // 3], good], hw)
    assert errors[0] is None and errors[2] is None
    assert errors[1] is not None and "JPEG" in errors[1]
    assert np.array_equal(batch[0], cpu_decode(good)) and np.array_equal(batch[2], batch[0])


def test_no_gpu_means_cpu_decode_and_says_why(toy_model):
    assert open_decoder("cpu", 0) == (None, "the model runs on the CPU")
    plain = Engine(EngineConfig(toy_model))
    assert plain.decoder is None and plain.decode_device == "cpu"
    resizing = Engine(EngineConfig(toy_model, resize_in_graph=True))
    assert resizing.decode_device == "cpu" and resizing.decode_note == "the model runs on the CPU"
    with pytest.raises(ModelError, match="JPEG decode on the device was required"):
        Engine(EngineConfig(toy_model, resize_in_graph=True, device_decode=True))


def test_decoder_writes_bgr_frames_into_consecutive_slots_of_one_buffer(cpu_backend, camvid_jpegs):
    import onnxruntime as ort

    hw = cpu_decode(camvid_jpegs[0]).shape[:2]
    same_size = [d for d in camvid_jpegs if cpu_decode(d).shape[:2] == hw]
    buffer = ort.OrtValue.ortvalue_from_shape_and_type([len(same_size), *hw, 3], np.uint8, "cpu", 0)
    assert cpu_backend.decode_into(same_size, buffer.data_ptr(), hw) == [None] * len(same_size)
    decoded = buffer.numpy()
    for i, data in enumerate(same_size):
        assert np.array_equal(decoded[i], cpu_decode(data))  # BGR; the CPU path is libjpeg-turbo too


def test_decoder_reports_a_frame_it_cannot_decode(cpu_backend, camvid_jpegs):
    hw = cpu_decode(camvid_jpegs[0]).shape[:2]
    out = np.zeros((2, *hw, 3), np.uint8)
    errors = cpu_backend.decode_into([b"\xff\xd8\xff" + b"\x00" * 64, camvid_jpegs[0]], out.ctypes.data, hw)
    assert errors[0] is not None and errors[1] is None
    assert np.array_equal(out[1], cpu_decode(camvid_jpegs[0]))


def test_engine_runs_encoded_frames_through_the_decoder_and_the_in_graph_resize(toy_model, cpu_backend):
    engine = Engine(EngineConfig(toy_model, resize_in_graph=True, io_binding=True, max_batch=4))
    reference = Engine(EngineConfig(toy_model, resize_in_graph=True, io_binding=False))
    engine.use_decoder(cpu_backend)
    assert engine.decode_device == "cpu" and "nvImageCodec" in engine.decode_note
    jpegs = [jpeg(street_frame(640, 360, seed=s)) for s in range(6)]
    frames = [EncodedFrame.from_jpeg(d) for d in jpegs]
    pixels = np.stack([cpu_decode(d) for d in jpegs])

    first = engine.run_encoded(frames[:3])
    bindings = engine.binding_count
    second = engine.run_encoded(frames[3:])  # same batch size and frame size: the same buffers
    assert engine.binding_count == bindings == 1
    assert first.errors == [None] * 3 and second.errors == [None] * 3 and first.decode_us > 0
    assert np.array_equal(np.concatenate([first.labels, second.labels]), reference.run(pixels))
    assert not np.shares_memory(first.labels, second.labels)

    split = engine.run_encoded(frames)  # 6 > max_batch 4: 4 + 2
    assert split.labels.shape == (6, 96, 128) and np.array_equal(split.labels, reference.run(pixels))


def test_a_bad_frame_fails_alone_and_its_batch_falls_back_to_the_cpu(toy_model, cpu_backend):
    engine = Engine(EngineConfig(toy_model, resize_in_graph=True, io_binding=True))
    reference = Engine(EngineConfig(toy_model, resize_in_graph=True, io_binding=False))
    engine.use_decoder(cpu_backend)
    good = [jpeg(street_frame(320, 240, seed=s)) for s in range(2)]
    bad = undefined_quant_table(good[0])
    result = engine.run_encoded([EncodedFrame.from_jpeg(d) for d in (good[0], bad, good[1])])
    assert result.errors[0] is None and result.errors[2] is None and "JPEG" in result.errors[1]
    expected = reference.run(np.stack([cpu_decode(d) for d in good]))
    assert np.array_equal(result.labels[[0, 2]], expected)
    assert engine.decoder is cpu_backend  # one bad frame does not turn device decode off


def test_run_encoded_refuses_mixed_sizes_and_engines_without_the_resize(toy_model, cpu_backend):
    engine = Engine(EngineConfig(toy_model, resize_in_graph=True, io_binding=True))
    mixed = [EncodedFrame.from_jpeg(jpeg(street_frame(w, 240))) for w in (320, 330)]
    with pytest.raises(ValueError, match="one frame size per batch"):
        engine.run_encoded(mixed)
    plain = Engine(EngineConfig(toy_model, io_binding=True))
    with pytest.raises(ValueError, match="resize_in_graph"):
        plain.run_encoded(mixed[:1])
    with pytest.raises(ValueError, match="cannot feed this engine"):
        plain.use_decoder(cpu_backend)


def test_batch_key_keeps_pixels_and_jpegs_apart(camvid_jpegs):
    encoded = EncodedFrame.from_jpeg(camvid_jpegs[0])
    pixels = cpu_decode(camvid_jpegs[0])
    assert encoded.shape == pixels.shape and batch_key(encoded) != batch_key(pixels)
    assert batch_key(EncodedFrame.from_jpeg(camvid_jpegs[0])) == batch_key(encoded)


def test_a_static_batch_model_decodes_into_its_one_batch_size_and_drops_the_rest(tmp_path, cpu_backend):
    import onnx
    from modelgen import byo_model

    static, dynamic = tmp_path / "static4.onnx", tmp_path / "dynamic.onnx"
    onnx.save(byo_model(height=96, width=128, batch=4), str(static))
    onnx.save(byo_model(height=96, width=128), str(dynamic))
    engine = Engine(EngineConfig(static, resize_in_graph=True, io_binding=True))
    reference = Engine(EngineConfig(dynamic, resize_in_graph=True, io_binding=False))
    engine.use_decoder(cpu_backend)
    jpegs = [jpeg(street_frame(320, 240, seed=s)) for s in range(3)]
    result = engine.run_encoded([EncodedFrame.from_jpeg(d) for d in jpegs])
    assert result.errors == [None] * 3 and result.labels.shape == (3, 96, 128)
    assert np.array_equal(result.labels, reference.run(np.stack([cpu_decode(d) for d in jpegs])))
    assert (engine.stats.calls, engine.stats.frames, engine.stats.padding) == (1, 3, 1)
    assert engine.binding_count == 1 and engine.buffers_for((4, 240, 320, 3)).shape[0] == 4


# --- a real server decoding JPEGs with their batch (nvImageCodec's CPU backend feeding a CPU engine) ---

DEVICE_DECODE = {"resize_in_graph": True, "io_binding": True, "device_decode": True}


class WatchedDecoder:
    """The real decoder, counting the frames it decodes; ``hold`` keeps its next batch waiting until
    ``release`` is set, so frames queue behind it and form the following batch together."""

    def __init__(self, inner: DeviceDecoder):
        self.inner = inner
        self.memory, self.location, self.name = inner.memory, inner.location, inner.name
        self.frames = 0
        self.entered = threading.Event()
        self.release = threading.Event()
        self.release.set()

    def hold(self) -> None:
        self.entered.clear()
        self.release.clear()

    def decode_into(self, jpegs, ptr: int, hw: tuple[int, int]) -> list[str | None]:
        self.entered.set()
        assert self.release.wait(60), "the test never released the decoder"
        self.frames += len(jpegs)
        return self.inner.decode_into(jpegs, ptr, hw)


@pytest.fixture(scope="module")
def device_server(toy_model, cpu_backend) -> Iterator[tuple[RunningServer, WatchedDecoder]]:
    running = start_server(toy_model, max_batch=4, engine=DEVICE_DECODE)
    engine = running.service.engine
    assert engine.decoder is not None and "nvImageCodec" in engine.decode_note
    watched = WatchedDecoder(engine.decoder)
    engine.use_decoder(watched)  # type: ignore[arg-type]  # the real decoder, watched
    yield running, watched
    running.drain_and_stop(1.0)


@pytest.fixture(scope="module")
def cpu_server(toy_model) -> Iterator[RunningServer]:
    """The CPU path with the same in-graph resize: what the device path must agree with."""
    running = start_server(toy_model, max_batch=4, engine={"resize_in_graph": True})
    assert running.service.engine.decoder is None
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


def wait_for_depth(running: RunningServer, depth: int) -> None:
    """Until ``depth`` frames wait in the server's batcher, checked each time its loop turns."""

    async def watch() -> bool:
        for _ in range(6000):  # an overall bound of about a minute, not a timing assertion
            if running.service.batcher.depth >= depth:
                return True
            await asyncio.sleep(0.01)
        return False

    assert running.call(watch()), f"{depth} frames never reached the batcher"


@pytest.fixture(scope="module")
def test_jpegs(camvid_jpegs) -> list[bytes]:
    """Real frames, a synthetic 1080p one and a 4:2:0 one of odd size: the sizes cameras send."""
    odd = street_frame(333, 211, seed=3)
    return [*camvid_jpegs, jpeg(street_frame(1920, 1080, seed=1)), jpeg(odd, quality=75)]


def test_a_server_decodes_jpegs_with_their_batch_and_serves_the_cpu_paths_masks(
    device_server, cpu_server, test_jpegs
):
    running, watched = device_server
    channel, stub = stub_of(running)
    cpu_channel, cpu_stub = stub_of(cpu_server)
    small = [jpeg(street_frame(w, h, seed=w)) for w, h in ((128, 96), (140, 105), (145, 100))]
    with channel, cpu_channel:
        before = watched.frames
        for data in [*test_jpegs, *small]:
            device = segment(stub, data, coverage=True)
            mask = raw_mask(device)
            # The CPU path decodes the whole frame when it needs its pixels (an overlay): the same
            # pixels the device decodes, then the same in-graph resize.
            full = raw_mask(segment(cpu_stub, data, overlay=pb.OVERLAY_ENCODING_JPEG))
            assert mask.shape == full.shape == cpu_decode(data).shape[:2]
            agree = float(np.mean(mask == full))
            assert agree >= 0.995, f"{mask.shape}: masks agree on {agree:.2%} of pixels"
            t = device.timing
            assert t.decode_us > 0 and t.inference_us > 0 and t.total_us >= t.decode_us + t.inference_us
        for data in small:
            # When no n/8 DCT scale under 1 still covers the model's input, the CPU path decodes the whole
            # frame even without an overlay (larger ones it decodes scaled down: other pixels go into
            # the graph's resize, and masks differ by more than JPEG tolerance).
            agree = float(np.mean(raw_mask(segment(stub, data)) == raw_mask(segment(cpu_stub, data))))
            assert agree >= 0.995, f"masks agree on {agree:.2%} of pixels"
        assert watched.frames - before == len(test_jpegs) + 2 * len(small)  # all decoded by nvImageCodec


def test_a_corrupt_jpeg_fails_alone_in_its_batch(device_server, cpu_server, test_jpegs):
    running, watched = device_server
    good = test_jpegs[0]
    bad = undefined_quant_table(good)
    channel, stub = stub_of(running)
    cpu_channel, cpu_stub = stub_of(cpu_server)
    with channel, cpu_channel:
        expected = raw_mask(segment(cpu_stub, good, overlay=pb.OVERLAY_ENCODING_JPEG))  # decoded whole
        results: dict[str, object] = {}

        def call(name: str, data: bytes) -> None:
            try:
                results[name] = segment(stub, data)
            except grpc.RpcError as exc:
                results[name] = exc

        watched.hold()
        first = threading.Thread(target=call, args=("first", good))
        batch = (("a", good), ("bad", bad), ("b", good))
        threads = [threading.Thread(target=call, args=item) for item in batch]
        try:
            first.start()
            assert watched.entered.wait(60)  # the first batch is on the engine, held
            for t in threads:
                t.start()
            wait_for_depth(running, 3)  # all three queued: they are the next batch
        finally:
            watched.release.set()
        for t in (first, *threads):
            t.join(60)
        health = segment(stub, good)  # the server serves on
    bad_result = results["bad"]
    assert isinstance(bad_result, grpc.RpcError)
    assert bad_result.code() == grpc.StatusCode.INVALID_ARGUMENT and "JPEG" in bad_result.details()
    for name in ("a", "b"):
        result = results[name]
        assert isinstance(result, pb.SegmentResponse), result
        assert result.timing.batch_size == 3  # the bad frame shared their batch
        assert float(np.mean(raw_mask(result) == expected)) >= 0.995
    assert np.array_equal(raw_mask(health), raw_mask(results["a"]))


def test_overlays_pngs_and_raw_frames_take_the_cpu_path(device_server, cpu_server, test_jpegs):
    running, watched = device_server
    channel, stub = stub_of(running)
    cpu_channel, cpu_stub = stub_of(cpu_server)
    frame = street_frame(640, 360, seed=5)
    raw = pb.RawImage(width=640, height=360, format=pb.PIXEL_FORMAT_BGR8, data=frame.tobytes())
    with channel, cpu_channel:
        before = watched.frames
        overlay = {"overlay": pb.OVERLAY_ENCODING_PNG, "overlay_alpha": 0.5}
        for data in (test_jpegs[0], jpeg(frame)):
            got, want = segment(stub, data, **overlay), segment(cpu_stub, data, **overlay)
            assert np.array_equal(raw_mask(got), raw_mask(want)) and got.overlay.data == want.overlay.data
            assert (got.overlay.width, got.overlay.height) == (got.mask.width, got.mask.height)
        got, want = segment(stub, png(frame)), segment(cpu_stub, png(frame))
        assert np.array_equal(raw_mask(got), raw_mask(want))
        mask_only = pb.OutputOptions(mask=pb.MASK_ENCODING_RAW)
        request = pb.SegmentRequest(frame_id="raw", raw=raw, outputs=mask_only)
        assert np.array_equal(raw_mask(stub.Segment(request)), raw_mask(cpu_stub.Segment(request)))
        assert watched.frames == before  # none of them went to nvImageCodec


def test_a_jpeg_for_the_device_is_checked_as_the_cpu_path_checks_it(toy_model, cpu_backend):
    progressive = cv2.imencode(".jpg", street_frame(320, 240), [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])[1].tobytes()
    assert progressive.count(b"\xff\xda") > 2
    limits = Limits(max_jpeg_scans=2, max_pixels=100_000)
    running = start_server(toy_model, engine=DEVICE_DECODE, limits=limits)
    channel, stub = stub_of(running)
    try:
        with channel:
            assert running.service.pipeline.decodes_on_device
            for data, status, words in (
                (progressive, grpc.StatusCode.INVALID_ARGUMENT, "scans"),
                (jpeg(street_frame(640, 360)), grpc.StatusCode.RESOURCE_EXHAUSTED, "over the limit"),
                (jpeg(street_frame(320, 240))[:-300], grpc.StatusCode.INVALID_ARGUMENT, "JPEG"),
            ):
                for overlay in (pb.OVERLAY_ENCODING_NONE, pb.OVERLAY_ENCODING_JPEG):  # device, CPU path
                    with pytest.raises(grpc.RpcError) as caught:
                        segment(stub, data, overlay=overlay)
                    assert caught.value.code() == status and words in caught.value.details()
            assert segment(stub, jpeg(street_frame(320, 240))).mask.width == 320
    finally:
        running.drain_and_stop(1.0)


def test_model_info_says_where_jpegs_are_decoded(device_server, cpu_server):
    with SegmenterClient(f"127.0.0.1:{device_server[0].port}") as client:
        info = client.model_info()
    assert info.decode_device == "cpu" and "nvImageCodec" in info.decode_note
    with SegmenterClient(f"127.0.0.1:{cpu_server.port}") as client:
        info = client.model_info()
    assert (info.decode_device, info.decode_note) == ("cpu", "the model runs on the CPU")


def test_serve_option_device_decode(toy_model):
    from segserve.settings import ServeSettings

    assert ServeSettings(model=toy_model).engine_config().device_decode is None  # auto
    assert ServeSettings(model=toy_model, device_decode="on").engine_config().device_decode is True
    off = Engine(ServeSettings(model=toy_model, device_decode="off").engine_config())
    assert off.decoder is None and "turned off" in off.decode_note


def test_the_batcher_never_puts_pixels_and_jpegs_in_one_batch(toy_model, cpu_backend):
    from concurrent.futures import ThreadPoolExecutor

    from segserve.batcher import Batcher

    engine = Engine(EngineConfig(toy_model, resize_in_graph=True, io_binding=True, max_batch=8))
    watched = WatchedDecoder(cpu_backend)
    engine.use_decoder(watched)  # type: ignore[arg-type]
    data = jpeg(street_frame(320, 240))
    encoded, pixels = EncodedFrame.from_jpeg(data), codec.decode_encoded(data)
    bad = EncodedFrame.from_jpeg(undefined_quant_table(data))

    async def main():
        with ThreadPoolExecutor(1) as pool:
            batcher = Batcher(engine.run, pool, max_batch=8, run_encoded=engine.run_encoded)
            batcher.start()
            watched.hold()
            try:
                first = asyncio.ensure_future(batcher.infer(encoded))
                await asyncio.get_running_loop().run_in_executor(None, watched.entered.wait, 60)
                frames = (pixels, encoded, pixels, bad, encoded)  # a lane each: a lane keeps its order
                queued = [batcher.infer(f, lane=k) for k, f in enumerate(frames)]
                rest = asyncio.gather(*queued, return_exceptions=True)
                await asyncio.sleep(0)  # each infer queues its frame at its first step
                assert batcher.depth == 5
            finally:
                watched.release.set()
            results = [await first, *await rest]
            await batcher.close()
            return results

    first, p1, e1, p2, failed, e2 = asyncio.run(main())
    assert isinstance(failed, InvalidFrame) and "JPEG" in str(failed)
    assert [r.batch_size for r in (first, p1, e1, p2, e2)] == [1, 2, 3, 2, 3]
    assert p1.decode_us == 0 and e1.decode_us > 0
    for r in (p1, e1, p2, e2):
        assert np.array_equal(r.labels, first.labels)
