"""Device JPEG decode without a GPU: the CPU fallback, and the whole device path (decode straight into
the engine's bound input, then the in-graph resize) run on nvImageCodec's CPU backend feeding a CPU
engine. The GPU backend itself is tested in tests/gpu."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from frames import jpeg, street_frame
from segserve import codec
from segserve.codec import Limits
from segserve.device_decode import DeviceDecoder, EncodedFrame, batch_key, decode_on_cpu, open_decoder
from segserve.engine import Engine, EngineConfig
from segserve.errors import FrameTooLarge, InvalidFrame, ModelError

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
