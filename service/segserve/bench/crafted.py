"""Crafted frames for hostile-caller tests and benchmarks (issue 11): a JPEG whose size lies to any
hand-written header parser, and a progressive JPEG with thousands of scans."""

from __future__ import annotations

import struct

import cv2
import numpy as np


def _segments(data: bytes) -> list[tuple[int, int, int]]:
    """(marker, start, end) of a baseline/progressive JPEG's header segments and scans, in order."""
    out, i = [], 2
    while i < len(data) - 1:
        marker = data[i + 1]
        if marker == 0xD9:
            break
        (length,) = struct.unpack(">H", data[i + 2 : i + 4])
        end = i + 2 + length
        if marker == 0xDA:  # entropy-coded data runs to the next marker that is not FF00 or RSTn
            j = end
            while not (data[j] == 0xFF and data[j + 1] not in (0x00, *range(0xD0, 0xD8))):
                j += 1
            end = j
        out.append((marker, i, end))
        i = end
    return out


def size_lie_jpeg(image: np.ndarray, real_wh: tuple[int, int] = (16000, 16000)) -> bytes:
    """Item 1: a 1 KB JPEG whose first SOF-looking bytes (in a comment, after FF 00) say 64x48, while
    the real start-of-frame header, the one libjpeg reads, says 16000x16000."""
    data = bytearray(cv2.imencode(".jpg", image)[1].tobytes())
    sof = next(start for marker, start, _ in _segments(bytes(data)) if marker == 0xC0)
    data[sof + 5 : sof + 9] = struct.pack(">HH", real_wh[1], real_wh[0])
    fake_sof = b"\xff\x00\xff\xc0\x00\x11\x08" + struct.pack(">HH", 48, 64) + b"\x03" + b"\x00" * 9
    comment = b"\xff\xfe" + struct.pack(">H", len(fake_sof) + 2) + fake_sof
    return bytes(data[:2] + comment + data[2:])


def many_scans_jpeg(image: np.ndarray, repeats: int = 3000) -> bytes:
    """Item 2: a small progressive JPEG with one AC scan repeated ``repeats`` times."""
    big = cv2.resize(image, (512, 512))
    data = cv2.imencode(".jpg", big, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])[1].tobytes()
    scans = [(start, end) for marker, start, end in _segments(data) if marker == 0xDA]
    start, end = scans[-1]
    return data[:end] + data[start:end] * repeats + data[end:]
