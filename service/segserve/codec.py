"""Frame decoding (JPEG, PNG, raw BGR/RGB) with size and work limits, and mask/overlay encoding.

Knows nothing about models. Every failure is an ``InvalidFrame`` or ``FrameTooLarge`` whose message
says what was wrong, so callers can fix their input.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import cv2
import numpy as np
import PIL.Image
import simplejpeg

from segserve.errors import FrameTooLarge, InvalidFrame
from segserve.types import PixelFormat, RawFrame

JPEG_MAGIC = b"\xff\xd8\xff"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# A start-of-scan marker: entropy-coded data stuffs every 0xFF with 0x00 (or a restart marker), so
# the count of these two bytes is an upper bound on the scans libjpeg will decode.
_JPEG_SOS = b"\xff\xda"


@dataclass(frozen=True)
class Limits:
    """Bounds on what a frame may be; a 4K raw frame (24.9 MB) fits the defaults."""

    max_frame_bytes: int = 64 * 1024 * 1024
    max_pixels: int = 8192 * 8192
    max_side: int = 16384
    max_jpeg_scans: int = 64  # progressive JPEGs from cameras and encoders use about 10


def check_size(width: int, height: int, limits: Limits, what: str) -> None:
    if width <= 0 or height <= 0:
        raise InvalidFrame(f"{what} has zero size ({width}x{height})")
    if width > limits.max_side or height > limits.max_side or width * height > limits.max_pixels:
        raise FrameTooLarge(
            f"{what} is {width}x{height} ({width * height / 1e6:.1f} Mpx), over the limit of "
            f"{limits.max_pixels / 1e6:.1f} Mpx and {limits.max_side} px a side"
        )


def jpeg_size(data: bytes) -> tuple[int, int]:
    """(width, height) as libjpeg-turbo itself reads the header (the decoder that will decode it)."""
    try:
        height, width, _, _ = simplejpeg.decode_jpeg_header(data)
    except ValueError as exc:
        raise InvalidFrame(f"truncated or corrupt JPEG header: {exc}") from None
    return width, height


def png_size(data: bytes) -> tuple[int, int]:
    """(width, height) as Pillow's PNG decoder reads the header, without decoding pixels."""
    with _open_png(data) as image:
        return image.size


def _open_png(data: bytes) -> PIL.Image.Image:
    try:
        return PIL.Image.open(io.BytesIO(data), formats=["PNG"])
    except PIL.Image.DecompressionBombError as exc:
        raise FrameTooLarge(f"PNG is too large: {exc}") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise InvalidFrame(f"truncated or corrupt PNG header: {exc}") from None


def encoded_size(data: bytes) -> tuple[int, int]:
    """(width, height) of a JPEG or PNG from its header, read by the library that decodes it."""
    if data.startswith(PNG_MAGIC):
        return png_size(data)
    if data.startswith(JPEG_MAGIC):
        return jpeg_size(data)
    raise InvalidFrame(_not_an_image(data))


def decoded_pixels(data: bytes, size: tuple[int, int], at_least: tuple[int, int] | None = None) -> int:
    """Pixels ``decode_encoded(data, at_least=at_least)`` will make, from the header's ``size``
    (``encoded_size(data)``, read once by the caller): what admission charges before anything is
    decoded. A JPEG with ``at_least`` is decoded at the smallest n/8 DCT scale (n = 1..8) covering
    it, as libjpeg-turbo scales (sizes rounded up); a PNG always decodes whole."""
    width, height = size
    if at_least is None or not data.startswith(JPEG_MAGIC):
        return width * height
    min_w, min_h = at_least
    for n in range(1, 9):
        w, h = -(-width * n // 8), -(-height * n // 8)
        if w >= min_w and h >= min_h:
            return w * h
    return width * height


def _not_an_image(data: bytes) -> str:
    return f"frame is neither JPEG nor PNG ({len(data)} bytes); send raw pixels as `raw`"


def decode_encoded(
    data: bytes, limits: Limits = Limits(), at_least: tuple[int, int] | None = None
) -> np.ndarray:
    """JPEG or PNG bytes -> BGR uint8 (H, W, 3). Sizes are checked before any pixel is decoded.

    The size check and the decode are made by the same library (libjpeg-turbo through simplejpeg,
    libpng through Pillow), so no header trick can make them disagree. With ``at_least`` (width,
    height), a JPEG is decoded at the smallest n/8 DCT scale that still covers it: several times
    faster than a full decode and alias-free. Use ``encoded_size`` for the original size.
    """
    if not data:
        raise InvalidFrame("empty frame: no image bytes")
    if len(data) > limits.max_frame_bytes:
        raise FrameTooLarge(f"frame is {len(data)} bytes, over the limit of {limits.max_frame_bytes}")
    if data.startswith(JPEG_MAGIC):
        return _decode_jpeg(data, limits, at_least)
    if data.startswith(PNG_MAGIC):
        return _decode_png(data, limits)
    raise InvalidFrame(_not_an_image(data))


def _decode_jpeg(data: bytes, limits: Limits, at_least: tuple[int, int] | None) -> np.ndarray:
    width, height = jpeg_size(data)
    check_size(width, height, limits, "JPEG")
    scans = data.count(_JPEG_SOS)
    if scans > limits.max_jpeg_scans:
        raise InvalidFrame(
            f"JPEG has {scans} scans, over the limit of {limits.max_jpeg_scans} (cameras write at most ~10)"
        )
    min_w, min_h = at_least if at_least is not None else (0, 0)
    try:
        # strict: a cut-off or corrupt JPEG is an error, not a grey-filled frame
        image = simplejpeg.decode_jpeg(data, "BGR", min_width=min_w, min_height=min_h, strict=True)
    except ValueError as exc:
        raise InvalidFrame(
            f"truncated or corrupt JPEG ({len(data)} bytes, {width}x{height}): {exc}"
        ) from None
    return image


def _decode_png(data: bytes, limits: Limits) -> np.ndarray:
    with _open_png(data) as image:
        width, height = image.size
        check_size(width, height, limits, "PNG")
        try:
            rgb = np.asarray(image.convert("RGB"))
        except (OSError, ValueError, SyntaxError) as exc:
            raise InvalidFrame(f"corrupt PNG ({len(data)} bytes, {width}x{height}): {exc}") from None
    if rgb.shape != (height, width, 3):
        raise InvalidFrame(
            f"corrupt PNG: decoded {rgb.shape[1]}x{rgb.shape[0]}, header says {width}x{height}"
        )
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)


def decode_raw(raw: RawFrame, limits: Limits = Limits()) -> np.ndarray:
    """Raw BGR or RGB pixels -> BGR uint8 (H, W, 3) (a view when the input is already BGR)."""
    check_size(raw.width, raw.height, limits, "raw frame")
    expected = raw.width * raw.height * 3
    if len(raw.data) != expected:
        raise InvalidFrame(
            f"raw frame has {len(raw.data)} bytes but {raw.width}x{raw.height}x3 needs {expected}"
        )
    image = np.frombuffer(raw.data, np.uint8).reshape(raw.height, raw.width, 3)
    if raw.format is PixelFormat.RGB:
        return cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    return image


def encode_png(image: np.ndarray, compression: int = 1) -> bytes:
    """PNG at a fast compression level (1: about 3x faster than the default 3, a little larger)."""
    ok, buf = cv2.imencode(".png", image, [cv2.IMWRITE_PNG_COMPRESSION, compression])
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return buf.tobytes()


# Class-ID masks are flat runs of a few values: run-length deflate with no row filter is about 4x
# faster than the default adaptive filter at level 1, and smaller (1080p CamVid mask: 5.7 ms, 18.7 KB
# vs 24.7 ms, 20.9 KB, measured on this project's 2-core machine).
_MASK_PNG_PARAMS = [cv2.IMWRITE_PNG_COMPRESSION, 1, cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_RLE]
if hasattr(cv2, "IMWRITE_PNG_FILTER"):  # OpenCV >= 4.11
    _MASK_PNG_PARAMS += [cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_NONE]


def encode_mask_png(mask: np.ndarray) -> bytes:
    """PNG tuned for class-ID masks (greyscale ids or the (k,k,k) training format)."""
    ok, buf = cv2.imencode(".png", mask, _MASK_PNG_PARAMS)
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return buf.tobytes()


def encode_jpeg(image: np.ndarray, quality: int = 85) -> bytes:
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return buf.tobytes()


def decode_mask_png(data: bytes) -> np.ndarray:
    """A greyscale or (k,k,k) RGB mask PNG -> (H, W) uint8 class ids."""
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise InvalidFrame("mask PNG could not be decoded")
    return image if image.ndim == 2 else np.ascontiguousarray(image[..., 0])
