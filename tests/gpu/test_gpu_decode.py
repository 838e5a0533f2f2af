"""JPEG decode on the GPU (nvImageCodec) against OpenCV's CPU decode: the pixels within JPEG tolerance,
and the masks the engine serves from them as the CPU path's."""

from __future__ import annotations

import numpy as np
import pytest
from segserve import codec
from segserve.device_decode import DeviceDecoder, EncodedFrame, open_decoder
from segserve.engine import Engine, EngineConfig

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
