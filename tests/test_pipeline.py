import cv2
import numpy as np
import pytest
from frames import jpeg, png, street_frame
from segserve import codec
from segserve.errors import InvalidFrame, InvalidOptions
from segserve.pipeline import Pipeline
from segserve.types import (
    FrameRequest,
    MaskFormat,
    MaskResolution,
    OutputOptions,
    OverlayFormat,
    PixelFormat,
    RawFrame,
)
from servers import start_server


class LoopPipeline:
    """The pipeline of a real server, awaited on the server's event loop from the test's thread."""

    def __init__(self, running):
        self.running = running
        self.pipeline: Pipeline = running.service.pipeline

    def process(self, request: FrameRequest):
        return self.running.call(self.pipeline.process(request))

    def preprocess(self, frame):
        return self.pipeline.preprocess(frame)


@pytest.fixture(scope="module")
def pipeline(toy_model):
    running = start_server(toy_model, max_batch=4)
    yield LoopPipeline(running), running.service.engine
    running.drain_and_stop(1.0)


def test_full_resolution_outputs_match_the_engine(pipeline):
    pipe, engine = pipeline
    frame = street_frame(640, 360)
    opts = OutputOptions(mask=MaskFormat.RAW, overlay=OverlayFormat.PNG, overlay_alpha=1.0, coverage=True)
    result = pipe.process(FrameRequest("f1", encoded=jpeg(frame), options=opts))
    decoded = codec.decode_encoded(jpeg(frame))
    expected_small = engine.run(pipe.preprocess(decoded)[None])[0]
    expected = cv2.resize(expected_small, (640, 360), interpolation=cv2.INTER_NEAREST)
    mask = np.frombuffer(result.mask.data, np.uint8).reshape(360, 640)
    assert np.array_equal(mask, expected)
    overlay = cv2.imdecode(np.frombuffer(result.overlay.data, np.uint8), cv2.IMREAD_COLOR)
    assert np.array_equal(overlay, engine.metadata.labels.colorize(expected))  # alpha 1: pure class colours
    assert abs(sum(c.fraction for c in result.coverage) - 1.0) < 1e-5
    t = result.timing
    assert t.batch_size == 1 and t.total_us >= t.decode_us + t.postprocess_us + t.encode_us > 0


def test_model_resolution_and_training_format(pipeline):
    pipe, _ = pipeline
    raw = RawFrame(200, 100, PixelFormat.BGR, street_frame(200, 100).tobytes())
    opts = OutputOptions(mask=MaskFormat.PNG_RGB, mask_resolution=MaskResolution.MODEL)
    result = pipe.process(FrameRequest("f2", raw=raw, options=opts))
    rgb = cv2.imdecode(np.frombuffer(result.mask.data, np.uint8), cv2.IMREAD_COLOR)
    assert (
        rgb.shape == (96, 128, 3)
        and (rgb[..., 0] == rgb[..., 1]).all()
        and (rgb[..., 1] == rgb[..., 2]).all()
    )
    assert (result.mask.width, result.mask.height) == (128, 96)


def test_errors_are_typed(pipeline):
    pipe, _ = pipeline
    with pytest.raises(InvalidFrame, match="no frame"):
        pipe.process(FrameRequest("x"))
    with pytest.raises(InvalidOptions, match="overlay_alpha"):
        OutputOptions(overlay_alpha=2.0)
    with pytest.raises(InvalidOptions, match="jpeg_quality"):
        OutputOptions(jpeg_quality=0)


def test_mask_and_overlay_made_together_equal_each_made_alone(pipeline):
    """Both wanted: the overlay and the mask are made side by side on the pool; the bytes are the same.
    (Raw frames: a JPEG without an overlay is decoded at a reduced DCT scale, so its mask may differ.)"""
    pipe, _ = pipeline
    raw = RawFrame(480, 270, PixelFormat.BGR, street_frame(480, 270, seed=3).tobytes())
    mask_only = OutputOptions(mask=MaskFormat.PNG, coverage=True)
    overlay_only = OutputOptions(mask=MaskFormat.NONE, overlay=OverlayFormat.JPEG, overlay_alpha=0.4)
    both = OutputOptions(mask=MaskFormat.PNG, overlay=OverlayFormat.JPEG, overlay_alpha=0.4, coverage=True)
    alone_mask = pipe.process(FrameRequest("m", raw=raw, options=mask_only))
    alone_overlay = pipe.process(FrameRequest("o", raw=raw, options=overlay_only))
    together = [pipe.process(FrameRequest(f"b{i}", raw=raw, options=both)) for i in range(3)]
    for result in together:
        assert result.mask.data == alone_mask.mask.data and result.coverage == alone_mask.coverage
        assert result.overlay.data == alone_overlay.overlay.data
        assert (result.overlay.width, result.overlay.height) == (480, 270)
        t = result.timing
        assert t.postprocess_us > 0 and t.encode_us > 0
        assert t.total_us >= t.decode_us + t.postprocess_us + t.encode_us


def test_a_cpu_install_decodes_jpegs_on_the_cpu_as_before(pipeline):
    pipe, engine = pipeline
    assert engine.decoder is None and engine.decode_device == "cpu"
    assert engine.decode_note == "the model runs on the CPU" and not pipe.pipeline.decodes_on_device
    frame, size = pipe.pipeline.decode(FrameRequest("f", encoded=jpeg(street_frame(640, 360))))
    assert isinstance(frame, np.ndarray) and frame.shape == (135, 240, 3) and size == (640, 360)  # DCT 3/8


def test_admission_charges_the_pixels_a_frame_will_decode_to_and_its_answers(pipeline):
    """The byte budget bounds what frames really hold: a JPEG is charged its decoded pixels, read from
    its header at the door (a 36 KB JPEG of 1080p becomes 6 MB), and every frame the answers built
    from it: the mask at its resolution, the overlay at the frame's size."""
    pipe, _ = pipeline
    p = pipe.pipeline
    w, h = 640, 360
    model_w, model_h = p._model_wh
    encoded = jpeg(street_frame(w, h))
    overlay = OutputOptions(overlay=OverlayFormat.JPEG)
    with_overlay = FrameRequest("o", encoded=encoded, options=overlay)
    assert p.cost(with_overlay) == with_overlay.nbytes + 3 * w * h + w * h + 3 * w * h
    mask_only = FrameRequest("m", encoded=encoded)  # decoded at a DCT scale near the model's size
    frame, _ = p.decode(mask_only)
    assert isinstance(frame, np.ndarray) and frame.shape[:2] != (h, w)
    assert p.cost(mask_only) == mask_only.nbytes + frame.size + w * h
    at_model = OutputOptions(mask_resolution=MaskResolution.MODEL)
    model_mask = FrameRequest("s", encoded=encoded, options=at_model)
    assert p.cost(model_mask) == model_mask.nbytes + frame.size + model_w * model_h
    training_format = FrameRequest("t", encoded=encoded, options=OutputOptions(mask=MaskFormat.PNG_RGB))
    assert p.cost(training_format) == training_format.nbytes + frame.size + 3 * w * h
    nothing = FrameRequest("n", encoded=encoded, options=OutputOptions(mask=MaskFormat.NONE))
    assert p.cost(nothing) == nothing.nbytes + frame.size
    png_mask_only = FrameRequest("p", encoded=png(street_frame(w, h)))  # a PNG decodes whole
    assert p.cost(png_mask_only) == png_mask_only.nbytes + 3 * w * h + w * h
    pixels = RawFrame(200, 100, PixelFormat.BGR, street_frame(200, 100).tobytes())
    raw = FrameRequest("r", raw=pixels, options=overlay)
    assert p.cost(raw) == raw.nbytes + 200 * 100 + 3 * 200 * 100  # its pixels are its own bytes
    lying = FrameRequest("l", raw=RawFrame(100_000, 100_000, PixelFormat.BGR, b"\0" * 30), options=overlay)
    assert p.cost(lying) == lying.nbytes  # over the pixel limit: refused by decoding, charged its bytes
    not_an_image = FrameRequest("x", encoded=b"\xff\xd8 not a jpeg")  # refused by decode, charged its bytes
    assert p.cost(not_an_image) == not_an_image.nbytes
