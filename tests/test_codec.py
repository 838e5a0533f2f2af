import zlib

import cv2
import numpy as np
import pytest
from frames import jpeg, png, street_frame
from segserve import codec
from segserve.errors import FrameTooLarge, InvalidFrame
from segserve.types import PixelFormat, RawFrame

FRAME = street_frame(320, 240)


def test_jpeg_and_png_decode_to_bgr_with_header_sizes():
    data = jpeg(FRAME)
    assert codec.jpeg_size(data) == (320, 240)
    assert codec.decode_encoded(data).shape == (240, 320, 3)
    lossless = codec.decode_encoded(png(FRAME))
    assert np.array_equal(lossless, FRAME)


def test_raw_rgb_is_converted_to_bgr():
    rgb = FRAME[..., ::-1].copy()
    raw = RawFrame(320, 240, PixelFormat.RGB, rgb.tobytes())
    assert np.array_equal(codec.decode_raw(raw), FRAME)


@pytest.mark.parametrize(
    "data, message",
    [
        (b"", "empty frame"),
        (b"\x00\x01garbage", "neither JPEG nor PNG"),
        (jpeg(FRAME)[:2000], "truncated"),
        (png(FRAME)[:20], "truncated or corrupt PNG"),
        (png(FRAME)[:-300], "corrupt PNG"),
    ],
)
def test_bad_encoded_frames_say_what_is_wrong(data, message):
    with pytest.raises(InvalidFrame, match=message):
        codec.decode_encoded(data)


def test_raw_byte_count_must_match():
    raw = RawFrame(10, 10, PixelFormat.BGR, b"\x00" * 299)
    with pytest.raises(InvalidFrame, match="299 bytes but 10x10x3 needs 300"):
        codec.decode_raw(raw)


def test_zero_and_enormous_sizes():
    with pytest.raises(InvalidFrame, match="zero size"):
        codec.decode_raw(RawFrame(0, 10, PixelFormat.BGR, b""))
    with pytest.raises(FrameTooLarge, match="over the limit"):
        codec.decode_raw(RawFrame(100_000, 100_000, PixelFormat.BGR, b""))


def test_decompression_bomb_is_refused_before_decoding():
    data = bytearray(png(FRAME))
    data[16:24] = (60000).to_bytes(4, "big") + (60000).to_bytes(4, "big")  # IHDR claims 60000x60000
    data[29:33] = zlib.crc32(bytes(data[12:29])).to_bytes(4, "big")  # a valid chunk: only the size lies
    with pytest.raises(FrameTooLarge):
        codec.decode_encoded(bytes(data))


def test_byte_limit():
    with pytest.raises(FrameTooLarge, match="bytes, over the limit"):
        codec.decode_encoded(jpeg(FRAME), codec.Limits(max_frame_bytes=100))


def test_mask_png_round_trip():
    mask = np.random.default_rng(1).integers(0, 12, (50, 70), dtype=np.uint8)
    assert np.array_equal(codec.decode_mask_png(codec.encode_mask_png(mask)), mask)
    rgb = np.dstack([mask] * 3)
    assert np.array_equal(codec.decode_mask_png(codec.encode_mask_png(rgb)), mask)


def test_jpeg_is_decoded_at_the_smallest_n_8_dct_scale_that_covers_the_model():
    data = jpeg(street_frame(1920, 1080))
    assert codec.decode_encoded(data, at_least=(480, 360)).shape == (405, 720, 3)  # 3/8; 2/8 is 270 high
    assert codec.decode_encoded(data, at_least=(200, 100)).shape == (135, 240, 3)  # 1/8
    assert codec.decode_encoded(data, at_least=(1920, 1080)).shape == (1080, 1920, 3)
    assert codec.encoded_size(data) == (1920, 1080)
    reduced = codec.decode_encoded(data, at_least=(480, 360)).astype(int)
    full = cv2.resize(codec.decode_encoded(data), (720, 405), interpolation=cv2.INTER_AREA).astype(int)
    assert np.abs(reduced - full).mean() < 3  # the same picture, area-like downscale


@pytest.mark.parametrize("size", [(1920, 1080), (1001, 777), (641, 359), (97, 61)])
@pytest.mark.parametrize("at_least", [None, (480, 360), (200, 100), (1, 1), (4000, 4000)])
def test_decoded_pixels_predicts_what_decoding_makes(size, at_least):
    """Admission charges ``decoded_pixels`` before decoding: it must match the decoder, odd sizes too."""
    data = jpeg(street_frame(*size))
    decoded = codec.decode_encoded(data, at_least=at_least)
    predicted = codec.decoded_pixels(data, codec.encoded_size(data), at_least)
    assert predicted == decoded.shape[0] * decoded.shape[1]


def test_a_png_is_charged_whole_even_when_a_smaller_decode_would_do():
    data = png(street_frame(640, 360))
    assert codec.decoded_pixels(data, codec.encoded_size(data), (120, 90)) == 640 * 360
    assert codec.decode_encoded(data, at_least=(120, 90)).shape == (360, 640, 3)
